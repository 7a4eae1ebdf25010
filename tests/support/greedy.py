"""A machine that loops until ``max_steps`` (3) stops it and asks a human for more (CLI tests)."""

from __future__ import annotations

from pydantic import BaseModel

from statecraft import Budget, Finish, Goto, Machine, Step, StepContext


class Count(BaseModel):
    n: int = 0


def loop(state: Count, ctx: StepContext) -> object:
    if state.n >= 4:
        return Finish(update={"n": state.n + 1})
    return Goto("loop", update={"n": state.n + 1})


machine = Machine(
    "greedy", "1", Count,
    [Step("loop", loop, next=["loop"], may_finish=True, writes=["n"])],
    max_steps=3,
    budget=Budget(on_exceeded="request_approval"),
)
