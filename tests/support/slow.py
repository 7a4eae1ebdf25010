"""A machine whose one step takes as long as its input says, for the CLI's progress and Ctrl-C tests.

Input (JSON): ``{"seconds": 2.0, "marker": "/path"}``. The step writes
``marker`` when it starts; if the marker already exists (a resumed run), it
does not wait again.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from statecraft import Finish, Machine, Step, StepContext


class Wait(BaseModel):
    seconds: float = 0.0
    marker: str = ""
    waited: bool = False


def wait(state: Wait, ctx: StepContext) -> object:
    marker = Path(state.marker)
    if not marker.exists():
        marker.write_text("started")
        time.sleep(state.seconds)
    return Finish(update={"waited": True}, reason="waited")


machine = Machine("slow", "1", Wait, [Step("wait", wait, writes=["waited"], may_finish=True)])
