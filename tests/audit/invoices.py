"""A small invoice machine and a reviewed ledger of it: what the reviewer tests query.

``invoice`` v2: ``extract`` (model ``claude-extract``, prompt ``p1``) →
``check`` (model ``claude-check``, prompt ``p2``; asks for approval over
1000) → ``post``. A negative amount fails at ``extract``.

:func:`build_reviewed` starts six runs through a real :class:`Engine` with a
clock that advances one minute per reading, from 2025-03-01T09:00Z:

=====  ==========  =========  =================================================
run    amount      by         what happens
=====  ==========  =========  =================================================
r1     500         svc:intake DONE, no gate
r2     5000        user:carol gate; approved by user:alice ("matches PO 77")
r3     9000        user:dave  gate; approved by user:dave, no comment (self-approval)
r4     7000        user:erin  gate; rejected by user:bob ("vendor unknown")
r5     -1          svc:intake FAILED at extract (invalid_input)
r6     8000        svc:intake gate; never decided (no terminal event)
=====  ==========  =========  =================================================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statecraft import Engine, Fail, Finish, Goto, Machine, RequestApproval, Step, StepContext, Usage


class Invoice(BaseModel):
    amount: int = 0
    vendor: str = ""
    checked: bool = False
    posted: bool = False


def extract(state: Invoice, ctx: StepContext) -> object:
    ctx.record_usage(Usage(1000, 200, 3_000, "anthropic", "claude-extract", "p1"))
    if state.amount < 0:
        return Fail("negative amount", error_code="invalid_input")
    return Goto("check", update={"vendor": f"vendor-{state.amount % 7}"}, reason="fields extracted")


def check(state: Invoice, ctx: StepContext) -> object:
    ctx.record_usage(Usage(2000, 100, 7_000, "anthropic", "claude-check", "p2"))
    if state.amount > 1000:
        return RequestApproval(f"amount {state.amount} over 1000", resume_at="post", update={"checked": True})
    return Goto("post", update={"checked": True}, reason="under the limit")


def post(state: Invoice, ctx: StepContext) -> object:
    return Finish(update={"posted": True}, reason="posted")


extract.agent_version = "1"  # type: ignore[attr-defined]
check.agent_version = "3"  # type: ignore[attr-defined]

machine = Machine(
    "invoice",
    "2",
    Invoice,
    steps=[
        Step("extract", extract, next=["check"], writes=["vendor"]),
        Step("check", check, next=["post"], writes=["checked"]),
        Step("post", post, may_finish=True, writes=["posted"]),
    ],
)

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def minute_clock(start: datetime = T0) -> Callable[[], datetime]:
    """A clock that advances one minute each time it is read."""
    ticks = iter(range(10**9))
    return lambda: start + timedelta(minutes=next(ticks))


@dataclass
class Reviewed:
    """The reviewed ledger: its file and run ids ``r1`` … ``r6``."""

    path: Path
    runs: dict[str, str]


def build_reviewed(path: Path) -> Reviewed:
    ids = iter(f"r{i}" for i in range(1, 100))
    with Engine(path, machines=[machine], clock=minute_clock(), new_id=lambda: next(ids)) as engine:
        plan: list[tuple[int, str]] = [
            (500, "svc:intake"), (5000, "user:carol"), (9000, "user:dave"),
            (7000, "user:erin"), (-1, "svc:intake"), (8000, "svc:intake"),
        ]
        for amount, by in plan:
            actor_type = "service" if by.startswith("svc") else "human"
            engine.start(machine, {"amount": amount}, by=by, actor_type=actor_type)
        engine.approve("r2", by="user:alice", comment="matches PO 77")
        engine.approve("r3", by="user:dave")
        engine.reject("r4", by="user:bob", reason="vendor unknown")
    return Reviewed(path, {f"r{i}": f"r{i}" for i in range(1, 7)})


def rows_as_dicts(cursor: Any) -> list[dict[str, Any]]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]
