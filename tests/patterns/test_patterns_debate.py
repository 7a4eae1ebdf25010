"""Debate: independent advocates, an explicit rubric, a human gate on disagreement."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from statecraft import Engine, Machine, RunStatus
from statecraft.outcomes import ApprovalPolicy
from statecraft.patterns import (
    BranchContext,
    Criterion,
    DebateRecord,
    Stage,
    debate,
    pipeline,
)


class Position(BaseModel):
    verdict: Literal["accept", "escalate"]
    risks: list[str]
    rationale: str = ""


class Case(BaseModel):
    risks: list[str] = []
    debate: DebateRecord | None = None
    outcome: str | None = None


def _cautious(case: Any, w: BranchContext) -> dict[str, Any]:
    risks = list(case.risks)
    case.risks.append("tampered")  # must not leak to the other advocate
    return {"verdict": "escalate" if risks else "accept", "risks": risks, "rationale": "any risk blocks"}


def _relaxed(case: Any, w: BranchContext) -> dict[str, Any]:
    risks = [r for r in case.risks if r.startswith("high")]
    return {"verdict": "escalate" if risks else "accept", "risks": risks[::-1], "rationale": "only high risks"}


def _machine(advocates: Any = None, approvers: ApprovalPolicy | None = None) -> Machine[Case]:
    return Machine("debate", "1", Case, steps=[
        debate("judge", advocates=advocates or {"cautious": _cautious, "relaxed": _relaxed},
               rubric=[Criterion("verdict"), Criterion("risks", compare="same_set")],
               position_model=Position, into="debate", next="decide", approvers=approvers,
               inputs=lambda s, c: Case(risks=list(s.risks))),
        *pipeline([Stage("decide", lambda s, c: {"outcome": s.debate.resolution["verdict"]},
                         writes=["outcome"])]),
    ])


def test_agreement_continues_without_a_human(engine: Engine) -> None:
    run = engine.start(_machine(), {"risks": ["high:b", "high:a"]})
    assert run.status is RunStatus.DONE and run.state["outcome"] == "escalate"
    record = DebateRecord.model_validate(run.state["debate"])
    assert record.agreement and record.resolved_by == "consensus"
    assert record.criteria["risks"].agree  # same set, different order
    judge = next(e for e in engine.events(run.run_id) if e.event_type == "judge.decided")
    assert judge.decision == "agree"


def test_disagreement_asks_a_human_with_both_positions_and_the_differing_criteria(engine: Engine) -> None:
    policy = ApprovalPolicy(1, group={"user:counsel"})
    run = engine.start(_machine(approvers=policy), {"risks": ["medium:x"]}, by="user:analyst")
    assert run.status is RunStatus.WAITING_FOR_APPROVAL
    assert run.pending is not None
    assert run.pending.reason == "advocates disagree on verdict, risks"
    assert run.pending.approver_group == ("user:counsel",)
    record = DebateRecord.model_validate(run.state["debate"])
    assert record.disagreements == ["verdict", "risks"] and record.proposed_by == "cautious"
    assert record.positions["relaxed"]["risks"] == []
    requested = next(e for e in engine.events(run.run_id) if e.event_type == "approval.requested")
    summary = json.loads(requested.payload_json or "{}")["summary"]
    assert "cautious: escalate; relaxed: accept" in summary
    assert "cautious says: any risk blocks" in summary and "relaxed says: only high risks" in summary
    judge = next(e for e in engine.events(run.run_id) if e.event_type == "judge.decided")
    criteria = json.loads(judge.payload_json or "{}")["criteria"]
    assert criteria["verdict"] == {"agree": False, "values": {"cautious": "escalate", "relaxed": "accept"}}
    done = engine.approve(run.run_id, by="user:counsel")
    assert done.status is RunStatus.DONE and done.state["outcome"] == "escalate"


def test_advocates_work_on_their_own_copies_of_the_input(engine: Engine) -> None:
    run = engine.start(_machine(), {"risks": []})
    record = DebateRecord.model_validate(run.state["debate"])
    # _cautious appended "tampered" to its copy; _relaxed (concurrent) never saw it
    assert "tampered" not in json.dumps(record.positions["relaxed"])
    assert record.agreement


def test_an_advocate_without_a_valid_position_means_no_consensus(engine: Engine) -> None:
    def rambling(case: Any, w: BranchContext) -> dict[str, Any]:
        return {"verdict": "maybe", "risks": []}

    run = engine.start(_machine({"cautious": _cautious, "rambling": rambling}), {"risks": []})
    assert run.status is RunStatus.WAITING_FOR_APPROVAL
    assert run.pending is not None and "no position from rambling" in (run.pending.reason or "")


def test_debate_definitions_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="at least two advocates"):
        debate("d", advocates={"a": _cautious}, rubric=[Criterion("verdict")], position_model=Position,
               into="debate", next="x")
    with pytest.raises(ValueError, match="needs a rubric"):
        debate("d", advocates={"a": _cautious, "b": _relaxed}, rubric=[], position_model=Position,
               into="debate", next="x")
    with pytest.raises(ValueError, match="not an advocate"):
        debate("d", advocates={"a": _cautious, "b": _relaxed}, rubric=[Criterion("verdict")],
               position_model=Position, into="debate", next="x", prefer="c")
