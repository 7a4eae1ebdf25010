"""A small machine for engine and CLI tests, loadable by path (``tests/support/toy.py``).

Input: text. ``count`` counts words; ``gate`` asks for approval when there are
more than ``threshold`` words; ``publish`` finishes. Text containing the word
``explode`` makes ``count`` raise; ``wander`` makes it name an undeclared step;
``trespass`` makes it write a field it does not own; ``negative`` breaks the
schema (``words`` must be >= 0).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from statecraft import Finish, Goto, Machine, RequestApproval, Step, StepContext


class Doc(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str = ""
    words: int = Field(default=0, ge=0)
    threshold: int = 3
    published: bool = False


def count(state: Doc, ctx: StepContext) -> object:
    text = str(ctx.task or "")
    if "explode" in text:
        raise RuntimeError("the counter exploded")
    if "wander" in text:
        return Goto("nowhere", update={"words": 1})
    if "trespass" in text:
        return Goto("gate", update={"published": True})
    if "negative" in text:
        return Goto("gate", update={"words": -5})
    if "garbage" in text:
        return {"not": "an outcome"}
    return Goto("gate", update={"words": len(text.split())}, reason="counted words")


count.agent_version = "1"  # type: ignore[attr-defined]


def gate(state: Doc, ctx: StepContext) -> object:
    if state.words > state.threshold:
        return RequestApproval(
            f"{state.words} words exceed the threshold of {state.threshold}",
            resume_at="publish",
            summary="long document",
        )
    return Goto("publish")


def publish(state: Doc, ctx: StepContext) -> object:
    return Finish(update={"published": True}, reason="published")


def _initial(task: object) -> Doc:
    text = str(task or "")
    return Doc(title=text.split("\n", 1)[0][:40])


machine = Machine(
    "toy",
    "1",
    Doc,
    steps=[
        Step("count", count, next=["gate"], writes=["words"], description="count words"),
        Step("gate", gate, next=["publish"], reads=["words", "threshold"]),
        Step("publish", publish, may_finish=True, writes=["published"]),
    ],
    initial=_initial,
)
