"""Machines for the crash, concurrency and worker tests, loadable by path in subprocesses.

``steps20``: 20 steps ``s0 … s19``; each appends its name to ``trail`` and adds
one to ``n``, so a lost or doubled commit shows in the final state. Every
agent call appends ``run_id step attempt pid`` to the file named by
``$STATECRAFT_WITNESS`` (O_APPEND, one write per line), so tests can compare
what ran with what committed. ``$STATECRAFT_STEP_SLEEP_MS`` makes each call
sleep up to that many milliseconds (seeded by run, step and attempt).

``sleepy``: one step that sleeps ``$STATECRAFT_SLEEPY_S`` seconds, then finishes
(for graceful-stop tests).
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from pydantic import BaseModel, Field

from statecraft import Finish, Goto, Machine, Step, StepContext

STEPS = 20


class Trail(BaseModel):
    """The state: how many steps committed, and which, in order."""

    n: int = 0
    trail: list[str] = Field(default_factory=list)


def _witness(ctx: StepContext) -> None:
    path = os.environ.get("STATECRAFT_WITNESS")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.run_id} {ctx.step} {ctx.attempt} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def _make(i: int) -> Any:
    last = i == STEPS - 1
    name = f"s{i}"

    def agent(state: Trail, ctx: StepContext) -> object:
        _witness(ctx)
        sleep_ms = int(os.environ.get("STATECRAFT_STEP_SLEEP_MS", "0") or 0)
        if sleep_ms:
            time.sleep(random.Random(f"{ctx.run_id}{name}{ctx.attempt}").uniform(0, sleep_ms) / 1000)
        update = {"n": state.n + 1, "trail": [*state.trail, name]}
        return Finish(update=update) if last else Goto(f"s{i + 1}", update=update)

    agent.__qualname__ = f"step{i}"
    return agent


steps20 = Machine(
    "steps20",
    "1",
    Trail,
    [
        Step(f"s{i}", _make(i), next=() if i == STEPS - 1 else (f"s{i + 1}",),
             may_finish=i == STEPS - 1, writes=("n", "trail"))
        for i in range(STEPS)
    ],
)


def _sleep(state: Trail, ctx: StepContext) -> object:
    _witness(ctx)
    time.sleep(float(os.environ.get("STATECRAFT_SLEEPY_S", "1")))
    return Finish(update={"n": state.n + 1, "trail": [*state.trail, "nap"]})


sleepy = Machine("sleepy", "1", Trail, [Step("nap", _sleep, may_finish=True, writes=("n", "trail"))])
