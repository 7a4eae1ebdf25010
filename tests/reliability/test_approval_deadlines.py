"""Approval deadlines: a gate that waits too long fails, or is approved by default where declared."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from statecraft import (
    ApprovalExpired, Engine, Finish, Goto, IllegalTransition, Machine, MachineDefinitionError, RequestApproval, RunStatus, Step,
)
from statecraft.policy import Budget
from tests.support.reliability import Counter, FakeClock, assert_ledger_ok


def asks(state: Counter, ctx: Any) -> object:
    return RequestApproval("refund of 900 EUR", resume_at="refund")


def refund(state: Counter, ctx: Any) -> object:
    return Finish(update={"n": 900})


def gated(on_timeout: str = "fail") -> Machine[Counter]:
    return Machine("refund", "1", Counter, [
        Step("review", asks, next=["refund"], approval_deadline=timedelta(hours=4), on_approval_timeout=on_timeout),
        Step("refund", refund, may_finish=True, writes=["n"]),
    ])


def test_a_gate_past_its_deadline_fails_with_a_system_event(db_path: Path, clock: FakeClock) -> None:
    with Engine(db_path, clock=clock) as engine:
        run = engine.start(gated(), {})
        assert run.status is RunStatus.WAITING_FOR_APPROVAL
        asked = engine.events(run.run_id)[-1]
        assert json.loads(asked.payload_json or "{}")["deadline_at"] == "2026-01-01T04:00:00.000000Z"
        clock.advance(timedelta(hours=3, minutes=59))
        assert engine.expire_approvals() == []
        clock.advance(timedelta(minutes=1))
        [expired] = engine.expire_approvals()
        assert (expired.status, expired.error_code, expired.pending) == (RunStatus.FAILED, "approval_expired", None)
        event = engine.events(run.run_id)[-1]
        assert (event.event_type, event.actor_type, event.outcome) == ("approval.expired", "system", "timeout")
        assert event.caused_by_event_id == asked.event_id
        assert engine.expire_approvals() == []  # once
        assert_ledger_ok(engine)


def test_approve_by_default_only_where_the_step_says_so(db_path: Path, clock: FakeClock) -> None:
    m = gated(on_timeout="approve")
    with Engine(db_path, clock=clock) as engine:
        run = engine.start(m, {})
        clock.advance(timedelta(hours=5))
        [approved] = engine.expire_approvals()
        assert (approved.status, approved.step) == (RunStatus.RUNNING, "refund")
        event = engine.events(run.run_id)[-1]
        assert (event.event_type, event.actor_type, event.decision) == ("approval.expired", "system", "approve_by_default")
        assert engine.runnable() == [run.run_id]  # a worker continues it
        assert engine.advance(run.run_id).status is RunStatus.DONE
    with pytest.raises(MachineDefinitionError, match="needs an approval_deadline"):
        Machine("m", "1", Counter, [
            Step("review", asks, next=["refund"], on_approval_timeout="approve"),
            Step("refund", refund, may_finish=True, writes=["n"]),
        ])


def test_a_decision_after_the_deadline_is_refused_and_writes_nothing(db_path: Path, clock: FakeClock) -> None:
    # Issue #8: approve after the deadline wrote approval.expired, then raised.
    # A request that raises has written nothing; the worker records the expiry.
    with Engine(db_path, clock=clock) as engine:
        run = engine.start(gated(), {})
        clock.advance(timedelta(days=1))
        before = engine.events()
        for decide in (
            lambda: engine.approve(run.run_id, by="late@example.com"),
            lambda: engine.reject(run.run_id, by="late@example.com", reason="too late"),
        ):
            with pytest.raises(ApprovalExpired, match="deadline 2026-01-01T04:00:00.000000Z has passed") as info:
                decide()
            assert isinstance(info.value, IllegalTransition)
            assert engine.events() == before
        [expired] = engine.expire_approvals()
        assert (expired.status, expired.error_code) == (RunStatus.FAILED, "approval_expired")
        assert not [e for e in engine.events(run.run_id) if e.event_type == "approval.granted"]


def test_a_budget_gate_is_never_approved_by_default(db_path: Path, clock: FakeClock) -> None:
    def loop(state: Counter, ctx: Any) -> object:
        return Goto("loop", update={"n": state.n + 1})

    m = Machine("greedy", "1", Counter, [
        Step("loop", loop, next=["loop", "end"], writes=["n"], approval_deadline=timedelta(minutes=5),
             on_approval_timeout="approve"),
        Step("end", lambda s, c: Finish(), may_finish=True),
    ], max_steps=3, budget=Budget(on_exceeded="request_approval"))
    with Engine(db_path, clock=clock) as engine:
        run = engine.start(m, {})
        assert run.status is RunStatus.WAITING_FOR_APPROVAL
        clock.advance(timedelta(minutes=6))
        [expired] = engine.expire_approvals()
        assert (expired.status, expired.error_code) == (RunStatus.FAILED, "approval_expired")
