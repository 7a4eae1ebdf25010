"""Escalation rules: judged by the machine (pure), independent of the agent's own judgement."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from statecraft.errors import MachineDefinitionError
from statecraft.machine import AppliedOutcome, Machine, Step
from statecraft.outcomes import ApprovalPolicy, Finish, Goto, RequestApproval
from statecraft.patterns import (
    EscalationRule,
    amount_above,
    flagged_terms,
    low_confidence,
    missing_fields,
)

FOUR_EYES = ApprovalPolicy(2, group={"user:cfo", "user:controller", "user:treasurer"})


class Bill(BaseModel):
    amount_cents: int = 0
    note: str = ""
    po: str | None = "PO-1"
    confidence: int | None = 95
    decision: str | None = None


def _pay(state: Any, ctx: Any) -> Goto:
    return Goto("pay", update={"decision": "pay"}, reason="looks fine")


def _done(state: Any, ctx: Any) -> Finish:
    return Finish()


RULES = [
    amount_above("amount_cents", 1_000_000, name="big", approvers=FOUR_EYES),
    flagged_terms("note", ["gift card", "wire transfer"], name="fraud_words",
                  approvers=ApprovalPolicy(1, group={"user:cfo"})),
    missing_fields(["po"], name="no_po"),
    low_confidence("confidence", 80),
]


def _machine(rules: list[EscalationRule] = RULES) -> Machine[Bill]:
    return Machine("bill", "1", Bill, steps=[
        Step("review", _pay, next=["pay"], writes=["decision"], escalate=rules),
        Step("pay", _done, may_finish=True),
    ])


def _judge(state: Bill, outcome: Any = None) -> AppliedOutcome[Bill]:
    m = _machine()
    judged = m.apply("review", state, outcome or _pay(state, None))
    assert isinstance(judged, AppliedOutcome)
    return judged


def test_a_move_that_trips_no_rule_passes_unchanged() -> None:
    judged = _judge(Bill(amount_cents=500))
    assert isinstance(judged.outcome, Goto)
    assert judged.next_step == "pay"
    assert judged.state.decision == "pay"


def test_an_amount_over_the_threshold_turns_the_agents_goto_into_a_gate_with_the_rule_as_reason() -> None:
    judged = _judge(Bill(amount_cents=1_250_000))
    gate = judged.outcome
    assert isinstance(gate, RequestApproval)
    assert gate.reason == "escalation rule 'big': amount_cents 1250000 > 1000000"
    assert gate.resume_at == "pay"  # approval leads where the agent wanted to go
    assert gate.update == {"decision": "pay"}  # with the agent's proposal
    assert gate.rules == ("big",)
    assert gate.policy == FOUR_EYES
    assert judged.next_step == "review"
    assert "looks fine" in (gate.summary or "")


def test_every_fired_rule_is_named_and_the_strictest_policy_wins() -> None:
    judged = _judge(Bill(amount_cents=2_000_000, note="Urgent: buy a Gift  Card", po=None))
    gate = judged.outcome
    assert isinstance(gate, RequestApproval)
    assert gate.rules == ("big", "fraud_words", "no_po")
    assert "flagged terms ['gift card'] in ['note']" in gate.reason
    assert "required fields missing: ['po']" in gate.reason
    assert gate.policy is not None and gate.policy.required == 2


def test_a_rule_sees_the_state_the_agent_proposes_not_the_old_one() -> None:
    rule = EscalationRule("decided_pay", lambda s: s.decision == "pay")
    m = _machine([rule])
    judged = m.apply("review", Bill(), _pay(Bill(), None))
    assert isinstance(judged, AppliedOutcome) and isinstance(judged.outcome, RequestApproval)


def test_an_agents_own_request_keeps_its_resume_point_and_names_the_rule_too() -> None:
    own = RequestApproval("agent is unsure", resume_at="pay", policy=ApprovalPolicy(3, group={"a", "b", "c"}))
    judged = _judge(Bill(amount_cents=2_000_000), own)
    gate = judged.outcome
    assert isinstance(gate, RequestApproval)
    assert gate.reason.endswith("; agent: agent is unsure")
    assert gate.policy is not None and gate.policy.required == 3  # the agent asked for more
    assert gate.rules == ("big",)


def test_a_rule_that_raises_fires_fail_closed() -> None:
    broken = EscalationRule("broken", lambda s: 1 / 0)
    judged = _machine([broken]).apply("review", Bill(), _pay(Bill(), None))
    assert isinstance(judged, AppliedOutcome) and isinstance(judged.outcome, RequestApproval)
    assert "could not be evaluated (ZeroDivisionError" in judged.outcome.reason


def test_a_missing_confidence_counts_as_low() -> None:
    judged = _judge(Bill(confidence=None))
    assert isinstance(judged.outcome, RequestApproval)
    assert judged.outcome.rules == ("low_confidence",)


def test_flagged_terms_match_whole_words_only() -> None:
    rule = flagged_terms("note", ["urgent"])
    assert rule.check(Bill(note="URGENT payment")) is not None
    assert rule.check(Bill(note="insurgent payment")) is None


def test_a_step_with_rules_may_not_finish_and_rules_are_part_of_the_digest() -> None:
    with pytest.raises(MachineDefinitionError, match="a finish cannot be gated"):
        Machine("x", "1", Bill, steps=[Step("review", _done, may_finish=True, escalate=RULES)])
    with pytest.raises(MachineDefinitionError, match="duplicate escalation rule"):
        _machine([RULES[0], RULES[0]])
    with pytest.raises(MachineDefinitionError, match="is not an EscalationRule"):
        _machine(["amount > 5"])  # type: ignore[list-item]
    assert _machine(RULES).digest != _machine(RULES[:1]).digest
    assert _machine(RULES).describe()["steps"][0]["escalate"][0]["name"] == "big"


def test_approval_policies_validate_their_shape() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        ApprovalPolicy(0)
    with pytest.raises(ValueError, match="group has only 1"):
        ApprovalPolicy(2, group={"user:a"})
    p = ApprovalPolicy(2, group=["b", "a"], excluded=["c"])
    assert ApprovalPolicy.from_json(p.describe()) == p
    assert p.refusal("a", approved_by=["a"], started_by="s", requested_by="r") is not None
    assert p.refusal("z", approved_by=[], started_by="s", requested_by="r") is not None
    assert p.refusal("a", approved_by=[], started_by="a", requested_by="r") is not None
    assert p.refusal("a", approved_by=[], started_by="s", requested_by="a") is not None
    assert p.refusal("a", approved_by=["b"], started_by="s", requested_by="r") is None


def test_a_gate_with_named_approvers_cannot_be_passed_by_a_timeout() -> None:
    from datetime import timedelta

    with pytest.raises(MachineDefinitionError, match="cannot be approved by a timeout"):
        Machine("x", "1", Bill, steps=[
            Step("review", _pay, next=["pay"], writes=["decision"], escalate=RULES[:1],
                 approval_deadline=timedelta(hours=1), on_approval_timeout="approve"),
            Step("pay", _done, may_finish=True),
        ])
