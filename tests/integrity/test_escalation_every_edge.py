"""Escalation rules are judged on every edge that leaves a step, and fail closed (issue #8).

Reproduction: a step with ``escalate=[amount_above("amount_cents", 1_000_000)]``
and ``on_error="pay"`` whose agent raises took the error edge to ``pay`` and
paid 9,999,999 with no human.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statecraft import ApprovalPolicy, Engine, Finish, Goto, Machine, RetryPolicy, RunStatus, Step
from statecraft.patterns import EscalationRule, amount_above
from tests.support.reliability import FakeClock, assert_ledger_ok


class Invoice(BaseModel):
    amount_cents: int = 0
    paid_cents: int = 0


paid: list[int] = []


def review_raises(s: Any, ctx: Any) -> Goto:
    raise RuntimeError("the reviewing service is down")


def pay(s: Any, ctx: Any) -> Finish:
    paid.append(s.amount_cents)
    return Finish(update={"paid_cents": s.amount_cents})


def _machine(rule: EscalationRule, **review: Any) -> Machine[Invoice]:
    return Machine("invoice", "1", Invoice, steps=[
        Step("review", review_raises, next=["pay"], on_error="pay", escalate=[rule], **review),
        Step("pay", pay, writes=["paid_cents"], may_finish=True),
    ])


BIG = amount_above("amount_cents", 1_000_000, name="big")


def test_an_error_edge_out_of_an_escalating_step_asks_a_human_instead_of_paying(engine: Engine) -> None:
    paid.clear()
    run = engine.start(_machine(BIG), {"amount_cents": 9_999_999})
    assert run.status is RunStatus.WAITING_FOR_APPROVAL and paid == []
    assert run.pending is not None and run.pending.resume_at == "pay"
    assert "escalation rule 'big'" in (run.pending.reason or "")
    assert "the reviewing service is down" in (run.pending.reason or "")
    assert run.pending.rules == ("big",)
    asked = engine.events(run.run_id)[-1]
    assert asked.event_type == "approval.requested" and asked.error_code == "agent_error"
    assert json.loads(asked.payload_json or "{}")["rules"] == ["big"]

    done = engine.approve(run.run_id, by="cfo@example.com", digest=run.pending.proposal_digest)
    assert done.status is RunStatus.DONE and paid == [9_999_999]
    assert_ledger_ok(engine)


def test_an_error_edge_below_every_rule_is_taken_without_a_human(engine: Engine) -> None:
    paid.clear()
    run = engine.start(_machine(BIG), {"amount_cents": 500})
    assert run.status is RunStatus.DONE and paid == [500]
    assert "step.error_edge" in [e.event_type for e in engine.events(run.run_id)]


def test_rejecting_the_error_edge_gate_fails_the_run_and_pays_nothing(engine: Engine) -> None:
    paid.clear()
    run = engine.start(_machine(BIG), {"amount_cents": 9_999_999})
    failed = engine.reject(run.run_id, by="cfo@example.com", reason="not without a review")
    assert failed.status is RunStatus.FAILED and paid == []


def test_retries_exhausted_before_the_error_edge_still_meet_the_rule(engine: Engine) -> None:
    paid.clear()
    machine = _machine(BIG, retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(0)))
    run = engine.start(machine, {"amount_cents": 9_999_999})
    assert run.status is RunStatus.WAITING_FOR_APPROVAL and paid == []
    assert [e.event_type for e in engine.events(run.run_id)].count("step.attempt_failed") == 2


def test_a_rule_that_cannot_be_judged_on_the_error_edge_fails_closed(engine: Engine) -> None:
    paid.clear()

    def broken(state: Any) -> bool:
        raise KeyError("no such field")

    run = engine.start(_machine(EscalationRule("broken", broken)), {"amount_cents": 1})
    assert run.status is RunStatus.WAITING_FOR_APPROVAL and paid == []
    assert "could not be evaluated" in (run.pending.reason or "")  # type: ignore[union-attr]


def test_the_error_edge_gate_keeps_the_rules_approval_policy(engine: Engine) -> None:
    paid.clear()
    four_eyes = ApprovalPolicy(2, group={"cfo@example.com", "controller@example.com"})
    rule = amount_above("amount_cents", 1_000_000, name="big", approvers=four_eyes)
    run = engine.start(_machine(rule), {"amount_cents": 9_999_999})
    assert run.pending is not None and run.pending.required == 2
    once = engine.approve(run.run_id, by="cfo@example.com", digest=run.pending.proposal_digest)
    assert once.status is RunStatus.WAITING_FOR_APPROVAL and paid == []
    twice = engine.approve(run.run_id, by="controller@example.com", digest=run.pending.proposal_digest)
    assert twice.status is RunStatus.DONE and paid == [9_999_999]


def test_a_gate_raised_by_a_rule_is_never_approved_by_its_deadline(db_path: Path) -> None:
    paid.clear()
    clock = FakeClock()

    def review(s: Any, ctx: Any) -> Goto:
        return Goto("pay")

    machine = Machine("invoice", "1", Invoice, steps=[
        Step("review", review, next=["pay"], escalate=[BIG],
             approval_deadline=timedelta(hours=1), on_approval_timeout="approve"),
        Step("pay", pay, writes=["paid_cents"], may_finish=True),
    ])
    with Engine(db_path, clock=clock) as engine:
        run = engine.start(machine, {"amount_cents": 9_999_999})
        assert run.status is RunStatus.WAITING_FOR_APPROVAL
        clock.advance(timedelta(hours=2))
        [expired] = engine.expire_approvals()
        assert expired.status is RunStatus.FAILED and expired.error_code == "approval_expired"
        assert paid == []
        assert_ledger_ok(engine)
