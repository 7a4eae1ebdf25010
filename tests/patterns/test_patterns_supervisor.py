"""Supervisor-worker: bounded rounds and depth, explicit convergence, isolated specialists."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from statecraft import Engine, Machine, RunStatus
from statecraft.audit.verify import verify_ledger
from statecraft.patterns import (
    Accept,
    BranchContext,
    Drop,
    Redelegate,
    Split,
    Stage,
    Subtask,
    SubtaskResult,
    Supervision,
    pipeline,
    supervisor,
)


class Case(BaseModel):
    sup: Supervision | None = None
    summary: dict[str, Any] | None = None


def _finish() -> list[Any]:
    return pipeline([Stage("report", lambda s, c: {"summary": dict(s.sup.output)}, writes=["summary"])])


def _plan(state: Any, ctx: Any) -> list[Subtask]:
    return [Subtask(id="who", specialist="parties", instruction="find the parties"),
            Subtask(id="when", specialist="dates", instruction="find dates")]


def _synth(state: Any, sup: Supervision, ctx: Any) -> dict[str, Any]:
    return {"accepted": sorted(sup.accepted), "missing": len(sup.missing)}


SEEN: list[Any] = []


def parties(task: Subtask, w: BranchContext) -> dict[str, Any]:
    SEEN.append(task)
    if "whole" in task.instruction:
        return {"names": ["Acme"]}
    return {"names": []}


def dates(task: Subtask, w: BranchContext) -> dict[str, Any]:
    SEEN.append(task)
    return {"dates": ["2025-01-01"]}


def _review(result: SubtaskResult, state: Any, ctx: Any) -> Any:
    if result.subtask.specialist == "parties" and not result.output["names"]:
        return Redelegate("search the whole document", reason="nothing in the preamble")
    return Accept()


def _machine(review: Any = _review, max_rounds: int = 3, max_depth: int = 2, plan: Any = _plan,
             specialists: Any = None) -> Machine[Case]:
    return Machine("sup", "1", Case, steps=[
        *supervisor("boss", plan=plan, specialists=specialists or {"parties": parties, "dates": dates},
                    review=review, synthesize=_synth, into="sup", next="report",
                    max_rounds=max_rounds, max_depth=max_depth),
        *_finish(),
    ])


def _types(engine: Engine, run_id: str) -> list[str]:
    return [e.event_type for e in engine.events(run_id)]


def test_the_supervisor_delegates_reviews_redelegates_and_converges_complete(engine: Engine) -> None:
    SEEN.clear()
    run = engine.start(_machine(), {})
    assert run.status is RunStatus.DONE
    sup = Supervision.model_validate(run.state["sup"])
    assert sup.complete and sup.converged and sup.round == 2 and sup.missing == []
    assert sorted(sup.accepted) == ["when", "who.r2"]
    redo = next(r for r in sup.results if r.subtask.id == "who.r2")
    assert redo.subtask.parent == "who" and redo.subtask.depth == 1  # a redo, not a deeper split
    assert run.state["summary"] == {"accepted": ["when", "who.r2"], "missing": 0}
    types = _types(engine, run.run_id)
    assert types.count("supervisor.delegated") == 2 and types.count("supervisor.converged") == 1
    assert types.count("supervisor.reviewed") == 3
    reviewed = [json.loads(e.payload_json or "{}") | {"verdict": e.decision}
                for e in engine.events(run.run_id) if e.event_type == "supervisor.reviewed"]
    assert {(r["subtask"], r["verdict"]) for r in reviewed} == {
        ("who", "redelegated"), ("when", "accepted"), ("who.r2", "accepted")}
    assert verify_ledger(engine.db).ok


def test_specialists_see_only_their_own_subtask(engine: Engine) -> None:
    SEEN.clear()
    engine.start(_machine(), {})
    assert sorted(t.id for t in SEEN) == ["when", "who", "who.r2"]
    # a subtask carries no results of other specialists: these are all its fields
    assert set(Subtask.model_fields) == {"id", "specialist", "instruction", "input", "parent", "depth"}
    assert all(t.input is None for t in SEEN)


def test_after_max_rounds_it_synthesizes_with_what_exists_and_says_what_is_missing(engine: Engine) -> None:
    def never_satisfied(result: SubtaskResult, state: Any, ctx: Any) -> Any:
        if result.subtask.specialist == "parties":
            return Redelegate("try again")
        return Accept()

    run = engine.start(_machine(review=never_satisfied, max_rounds=2), {})
    assert run.status is RunStatus.DONE
    sup = Supervision.model_validate(run.state["sup"])
    assert sup.round == 2 and not sup.complete
    assert sup.missing == ["who.r2 (parties): refused: refused: max_rounds 2 reached (wanted to re-delegate: try again)"]
    converged = next(e for e in engine.events(run.run_id) if e.event_type == "supervisor.converged")
    assert converged.decision == "partial"
    assert run.state["summary"] == {"accepted": ["when"], "missing": 1}


def test_a_split_deeper_than_max_depth_is_refused(engine: Engine) -> None:
    def split_everything(result: SubtaskResult, state: Any, ctx: Any) -> Any:
        if result.subtask.depth == 1 and result.subtask.specialist == "dates":
            return Split([Subtask(id="when.q1", specialist="dates"), Subtask(id="when.q2", specialist="dates")])
        if result.subtask.depth == 2:
            return Split([Subtask(id=f"{result.subtask.id}.x", specialist="dates")], reason="deeper")
        return Accept()

    run = engine.start(_machine(review=split_everything, max_depth=2), {})
    sup = Supervision.model_validate(run.state["sup"])
    children = [r for r in sup.results if r.subtask.parent == "when"]
    assert [c.subtask.depth for c in children] == [2, 2]
    assert all(c.verdict == "refused" and "max_depth 2" in (c.note or "") for c in children)
    assert len(sup.missing) == 2 and "who" in sup.accepted


def test_failures_are_dropped_by_default_and_reported_missing(engine: Engine) -> None:
    def broken(task: Subtask, w: BranchContext) -> Any:
        raise RuntimeError("service down")

    m = Machine("sup2", "1", Case, steps=[
        *supervisor("boss", plan=_plan, specialists={"parties": broken, "dates": dates},
                    synthesize=_synth, into="sup", next="report"),
        *_finish(),
    ])
    run = engine.start(m, {})
    sup = Supervision.model_validate(run.state["sup"])
    assert sup.missing == ["who (parties): dropped: specialist parties ended with failure: RuntimeError: service down"]


def test_a_plan_naming_an_unknown_specialist_fails_the_run(engine: Engine) -> None:
    def bad_plan(state: Any, ctx: Any) -> list[Subtask]:
        return [Subtask(id="x", specialist="lawyer")]

    run = engine.start(_machine(plan=bad_plan), {})
    assert run.status is RunStatus.FAILED and run.error_code == "bad_plan"
    assert "unknown specialist 'lawyer'" in (run.reason or "")


def test_supervisor_bounds_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="at least one specialist"):
        supervisor("b", plan=_plan, specialists={}, synthesize=_synth, into="sup", next="r")
    with pytest.raises(ValueError, match="must be >= 1"):
        supervisor("b", plan=_plan, specialists={"d": dates}, synthesize=_synth, into="sup", next="r",
                   max_rounds=0)
    steps = supervisor("b", plan=_plan, specialists={"d": dates}, synthesize=_synth, into="sup", next="r")
    assert [s.name for s in steps] == ["b", "b_specialists"]
    assert steps[0].next == ("b_specialists", "r") and steps[1].next == ("b",)
    assert Drop("x").reason == "x"
