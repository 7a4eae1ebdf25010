"""Quorum gates (four-eyes) and refusals, against a real SQLite file."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from statecraft import ApprovalMismatch, Engine, Finish, Goto, Machine, RunStatus, Step
from statecraft.audit.verify import verify_ledger
from statecraft.errors import ApprovalRefused
from statecraft.outcomes import ApprovalPolicy, RequestApproval
from statecraft.patterns import amount_above

FINANCE = {"user:cfo", "user:controller", "user:treasurer"}


class Bill(BaseModel):
    amount_cents: int = 0
    paid: bool = False


def _review(state: Any, ctx: Any) -> Goto:
    return Goto("pay")


def _pay(state: Any, ctx: Any) -> Finish:
    return Finish(update={"paid": True})


def _plain_gate(state: Any, ctx: Any) -> RequestApproval:
    return RequestApproval("please look", resume_at="pay")


MACHINE: Machine[Bill] = Machine("bill", "1", Bill, steps=[
    Step("review", _review, next=["pay"],
         escalate=[amount_above("amount_cents", 10_000, name="big", approvers=ApprovalPolicy(2, group=FINANCE))]),
    Step("pay", _pay, may_finish=True, writes=["paid"]),
])
PLAIN: Machine[Bill] = Machine("plain", "1", Bill, steps=[
    Step("review", _plain_gate, next=["pay"]),
    Step("pay", _pay, may_finish=True, writes=["paid"]),
])


def _big(engine: Engine, by: str = "user:clerk") -> str:
    run = engine.start(MACHINE, {"amount_cents": 50_000}, by=by)
    assert run.status is RunStatus.WAITING_FOR_APPROVAL
    return run.run_id


def _count(engine: Engine, run_id: str) -> int:
    return len(engine.events(run_id))


def test_a_four_eyes_gate_waits_for_two_distinct_approvers_each_audited(engine: Engine) -> None:
    run_id = _big(engine)
    first = engine.approve(run_id, by="user:cfo", comment="ok by me")
    assert first.status is RunStatus.WAITING_FOR_APPROVAL
    assert first.pending is not None
    assert first.pending.approved_by == ("user:cfo",) and first.pending.required == 2
    assert first.pending.approver_group == tuple(sorted(FINANCE))
    assert first.pending.rules == ("big",)
    partial = engine.events(run_id)[-1]
    assert partial.event_type == "approval.granted"
    assert (partial.from_status, partial.to_status) == ("WAITING_FOR_APPROVAL", "WAITING_FOR_APPROVAL")
    assert partial.outcome == "pending" and partial.actor_id == "user:cfo"
    assert '"quorum_reached":false' in (partial.payload_json or "")
    done = engine.approve(run_id, by="user:treasurer")
    assert done.status is RunStatus.DONE and done.state["paid"] is True
    granted = [e for e in engine.events(run_id) if e.event_type == "approval.granted"]
    assert [e.actor_id for e in granted] == ["user:cfo", "user:treasurer"]
    assert granted[1].to_status == "RUNNING" and granted[1].outcome == "success"
    requested = next(e for e in engine.events(run_id) if e.event_type == "approval.requested")
    assert {e.caused_by_event_id for e in granted} == {requested.event_id}
    assert verify_ledger(engine.db).ok


@pytest.mark.parametrize(
    ("by", "why"),
    [
        ("user:clerk", "not in the approver group"),
        ("user:intern", "not in the approver group"),
    ],
)
def test_approvers_outside_the_group_are_refused_and_nothing_is_written(engine: Engine, by: str, why: str) -> None:
    run_id = _big(engine)
    before = _count(engine, run_id)
    with pytest.raises(ApprovalRefused, match=why) as caught:
        engine.approve(run_id, by=by)
    assert caught.value.actor == by and caught.value.run_id == run_id
    assert _count(engine, run_id) == before


def test_the_same_approver_twice_is_refused(engine: Engine) -> None:
    run_id = _big(engine)
    engine.approve(run_id, by="user:cfo")
    with pytest.raises(ApprovalRefused, match="already approved"):
        engine.approve(run_id, by="user:cfo")
    assert engine.get(run_id).status is RunStatus.WAITING_FOR_APPROVAL


def test_the_actor_who_started_the_run_may_not_approve_it(engine: Engine) -> None:
    run_id = _big(engine, by="user:cfo")
    before = _count(engine, run_id)
    with pytest.raises(ApprovalRefused, match="started this run"):
        engine.approve(run_id, by="user:cfo")
    assert _count(engine, run_id) == before


def test_the_digest_still_binds_each_approval(engine: Engine) -> None:
    run_id = _big(engine)
    with pytest.raises(ApprovalMismatch):
        engine.approve(run_id, by="user:cfo", digest="0" * 64)
    digest = engine.get(run_id).pending.proposal_digest  # type: ignore[union-attr]
    assert engine.approve(run_id, by="user:cfo", digest=digest).status is RunStatus.WAITING_FOR_APPROVAL


def test_one_rejection_by_a_member_fails_the_gate_and_outsiders_cannot_reject(engine: Engine) -> None:
    run_id = _big(engine)
    engine.approve(run_id, by="user:cfo")
    with pytest.raises(ApprovalRefused, match="not in the approver group"):
        engine.reject(run_id, by="user:intern", reason="no")
    run = engine.reject(run_id, by="user:controller", reason="vendor not on contract")
    assert run.status is RunStatus.FAILED and run.error_code == "rejected"


def test_a_retried_gate_asks_again_and_counts_approvals_from_zero(engine: Engine) -> None:
    run_id = _big(engine)
    engine.approve(run_id, by="user:cfo")
    engine.reject(run_id, by="user:controller", reason="wrong cost centre")
    again = engine.retry(run_id, by="ops")
    assert again.status is RunStatus.WAITING_FOR_APPROVAL
    assert again.pending is not None and again.pending.approved_by == ()
    assert engine.approve(run_id, by="user:cfo").status is RunStatus.WAITING_FOR_APPROVAL


def test_a_gate_without_a_policy_keeps_the_single_approval_rule(engine: Engine) -> None:
    run = engine.start(PLAIN, {}, by="alice")
    assert run.pending is not None and run.pending.required == 1 and run.pending.approver_group is None
    done = engine.approve(run.run_id, by="alice")  # no policy: self-approval is not forbidden
    assert done.status is RunStatus.DONE
    granted = engine.events(run.run_id)[-2]
    assert granted.payload_json is not None and "quorum_reached" not in granted.payload_json


MACHINE_SOURCE = """
from pydantic import BaseModel
from statecraft import Finish, Goto, Machine, Step
from statecraft.outcomes import ApprovalPolicy
from statecraft.patterns import amount_above

class Bill(BaseModel):
    amount_cents: int = 0

machine = Machine("bill", "1", Bill, steps=[
    Step("review", lambda s, c: Goto("pay"), next=["pay"], escalate=[amount_above(
        "amount_cents", 10_000, approvers=ApprovalPolicy(2, group={"user:cfo", "user:controller"}))]),
    Step("pay", lambda s, c: Finish(), may_finish=True),
])
"""


def test_the_cli_shows_approvals_so_far_and_refuses_with_one_line(cli: Any, tmp_path: Any) -> None:
    ref = str(tmp_path / "bill.py")
    (tmp_path / "bill.py").write_text(MACHINE_SOURCE)
    (tmp_path / "in.json").write_text(json.dumps({"amount_cents": 50_000}))
    started = cli.json("start", ref, "--input", str(tmp_path / "in.json"), "--by", "user:clerk")
    run_id = started["run_id"]
    refused = cli("approve", run_id, "--by", "user:clerk", "--no-digest")
    assert refused.exit_code == 1
    assert refused.stderr.strip().startswith("error: run") and "approval refused" in refused.stderr
    assert cli("approve", run_id, "--by", "user:cfo", "--no-digest").exit_code == 0
    shown = cli("status", run_id)
    assert "1 of 2 (user:cfo)" in shown.stdout
    as_json = cli.json("status", run_id)
    assert as_json["pending"]["approved_by"] == ["user:cfo"] and as_json["pending"]["required"] == 2
    assert cli.json("approve", run_id, "--by", "user:controller", "--no-digest")["status"] == "DONE"
    verified = cli("audit", "verify")
    assert verified.exit_code == 0, verified.output
