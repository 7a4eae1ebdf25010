"""Small Claude machines for the tests of per-call records and of the controls in front of a model.

``triage`` (a :class:`ClaudeAgent`, or an :class:`AsyncClaudeAgent`) classifies the
run's task and routes to ``legal`` / ``archive``; both finish. Every agent talks
to the loopback stand-in through the real SDK.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from statecraft import Finish, Goto, Machine, RetryPolicy, Step, StepContext
from statecraft.agents.claude import AsyncClaudeAgent, ClaudeAgent
from tests.support.fake_anthropic import FakeAnthropic

SONNET = "claude-sonnet-4-6"
CONTRACT = {"kind": "contract", "confidence": 90, "reason": "it has signatures and terms"}
TASK = "Please review the attached supplier contract for Acme GmbH before Friday."


class Triage(BaseModel):
    """The document's kind and how sure the model is."""

    kind: Literal["contract", "invoice", "other"]
    confidence: int = Field(ge=0, le=100)
    reason: str


class Doc(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str = "untitled"
    notes: str = ""
    customer: str = "c-1"
    kind: str | None = None
    confidence: int | None = None
    done: bool = False


def route(state: Any, out: Triage, ctx: StepContext) -> Goto:
    return Goto("legal" if out.kind == "contract" else "archive",
                update={"kind": out.kind, "confidence": out.confidence}, reason=out.reason)


def publish(state: Doc, ctx: StepContext) -> Finish:
    return Finish(update={"done": True})


def agent(fake: FakeAnthropic, *, asynchronous: bool = False, **overrides: Any) -> Any:
    """A triage agent talking to ``fake`` (SDK retries off); ``overrides`` are ClaudeAgent arguments."""
    kwargs: dict[str, Any] = dict(
        agent_name="triage", agent_version="2", prompt_version="triage-v1", model=SONNET,
        system="You triage incoming business documents.", prompt="Classify the document described in <task>.",
        output=Triage, decide=route, api_key="sk-ant-test", base_url=fake.base_url,
    )
    kwargs.update(overrides)
    return (AsyncClaudeAgent if asynchronous else ClaudeAgent)(**kwargs)


def machine(
    triage: Any, *, name: str = "claude-triage", initial: Callable[[Any], Doc] | None = None, **step: Any
) -> Machine[Doc]:
    """``triage`` → ``legal`` | ``archive`` (| ``fallback`` when the step declares ``on_error``)."""
    steps = [
        Step("triage", triage, next=["legal", "archive"], writes=["kind", "confidence"], **step),
        Step("legal", publish, writes=["done"], may_finish=True),
        Step("archive", publish, writes=["done"], may_finish=True),
    ]
    if step.get("on_error") == "fallback":
        steps.append(Step("fallback", publish, writes=["done"], may_finish=True))
    return Machine(name, "1", Doc, steps, initial=initial)


def quick_retries(attempts: int, **kwargs: Any) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, initial_interval=timedelta(milliseconds=5), **kwargs)


class ManualClock:
    """An engine clock that moves only when told (breaker cool-downs without sleeping)."""

    def __init__(self, start: datetime = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def counter(prefix: str) -> Callable[[], str]:
    """Run ids ``prefix-1``, ``prefix-2``, … (deterministic canary choices)."""
    n = iter(range(1, 10**9))
    return lambda: f"{prefix}-{next(n)}"
