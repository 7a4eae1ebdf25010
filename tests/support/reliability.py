"""Helpers for tests/reliability: small machines built per test, a ledger check, a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel

from statecraft import Engine, Finish, Goto, Machine, Step
from statecraft.audit.verify import verify_ledger


class Counter(BaseModel):
    """A state with one integer."""

    n: int = 0


def chain(*agents: Callable[..., object], **machine_kwargs: Any) -> Machine[Counter]:
    """A linear machine ``s0 -> s1 -> …`` whose steps run ``agents``; the last may finish."""
    steps = []
    for i, agent in enumerate(agents):
        last = i == len(agents) - 1
        steps.append(Step(f"s{i}", agent, next=() if last else (f"s{i + 1}",), may_finish=last, writes=("n",)))
    return Machine("chain", "1", Counter, steps, **machine_kwargs)


def goto(step: str) -> Callable[..., object]:
    def agent(state: Counter, ctx: Any) -> object:
        return Goto(step)

    return agent


def finish(state: Counter, ctx: Any) -> object:
    return Finish()


def event_types(engine: Engine, run_id: str) -> list[str]:
    return [e.event_type for e in engine.events(run_id)]


def assert_ledger_ok(engine: Engine) -> None:
    """The chain verifies and every run row equals the fold of its events."""
    report = verify_ledger(engine.db)
    assert report.ok, report.reason


class FakeClock:
    """A settable UTC clock for lease and deadline tests; thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now += delta


def steps_of(engine: Engine, run_id: str, types: Sequence[str] = ("step.completed",)) -> list[str]:
    """``from_step`` of the run's events of the given types, in order."""
    return [e.from_step or "" for e in engine.events(run_id) if e.event_type in types]
