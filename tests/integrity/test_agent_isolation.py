"""Agents and fan-out branches cannot write outside their declared fields (issue #8).

Every attempt gets a read-only copy of its state view; the engine computes the
next state only from the committed checkpoint and the validated ``update``.
Each test here is a reproduction that persisted an undeclared write before.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from statecraft import Engine, Finish, Machine, RunStatus, Step
from statecraft.machine import ReadOnlyStateError
from statecraft.patterns import BranchCall, run_parallel


class Grant(BaseModel):
    approved_budget: int = 100
    answer: str = ""
    notes: list[str] = []
    limits: dict[str, int] = {"daily": 10}


def _machine(agent: Any, *, reads: list[str] | None = None) -> Machine[Grant]:
    return Machine("grant", "1", Grant, steps=[
        Step("answer", agent, writes=["answer"], reads=reads, may_finish=True),
    ])


def _committed_state(engine: Engine, run_id: str) -> dict[str, Any]:
    return engine.get(run_id).state


def test_assigning_an_unowned_field_in_place_fails_the_run_and_commits_nothing(engine: Engine) -> None:
    def agent(s: Any, ctx: Any) -> Finish:
        s.approved_budget = 10**9
        return Finish(update={"answer": "yes"})

    run = engine.start(_machine(agent), {})
    assert run.status is RunStatus.FAILED
    assert run.error_code == "state_mutation"
    assert "approved_budget" in (run.reason or "")
    assert _committed_state(engine, run.run_id)["approved_budget"] == 100
    failed = engine.events(run.run_id)[-1]
    assert failed.event_type == "run.failed" and failed.decision == "illegal_outcome"


def test_an_in_place_write_is_never_retried(engine: Engine) -> None:
    from statecraft import RetryPolicy

    calls: list[int] = []

    def agent(s: Any, ctx: Any) -> Finish:
        calls.append(ctx.attempt)
        s.approved_budget = 1
        return Finish(update={"answer": "yes"})

    machine = Machine("grant", "1", Grant, retry=RetryPolicy(max_attempts=3), steps=[
        Step("answer", agent, writes=["answer"], may_finish=True),
    ])
    run = engine.start(machine, {})
    assert run.status is RunStatus.FAILED and calls == [1]


@pytest.mark.parametrize("reads", [None, ["approved_budget", "notes", "limits"]])
def test_mutating_a_nested_container_of_the_view_fails_the_run_and_commits_nothing(
    engine: Engine, reads: list[str] | None
) -> None:
    def agent(s: Any, ctx: Any) -> Finish:
        s.notes.append("approved by the agent itself")
        s.limits["daily"] = 10**6
        return Finish(update={"answer": "yes"})

    run = engine.start(_machine(agent, reads=reads), {})
    assert run.status is RunStatus.FAILED and run.error_code == "state_mutation"
    state = _committed_state(engine, run.run_id)
    assert state["notes"] == [] and state["limits"] == {"daily": 10}


def test_a_change_returned_through_update_is_the_only_change_committed(engine: Engine) -> None:
    seen: list[Any] = []

    def agent(s: Any, ctx: Any) -> Finish:
        seen.append(s)
        return Finish(update={"answer": f"budget is {s.approved_budget}"})

    run = engine.start(_machine(agent), {"approved_budget": 7})
    assert run.status is RunStatus.DONE
    assert run.state == {"approved_budget": 7, "answer": "budget is 7", "notes": [], "limits": {"daily": 10}}
    # The agent kept a reference; writing to it later cannot change the run either.
    with pytest.raises(ReadOnlyStateError):
        seen[0].approved_budget = 5
    assert isinstance(seen[0], Grant)  # methods and isinstance survive the read-only copy


def test_each_attempt_gets_a_fresh_view(engine: Engine) -> None:
    from statecraft import RetryPolicy

    views: list[Any] = []

    def agent(s: Any, ctx: Any) -> Finish:
        views.append(s)
        if ctx.attempt == 1:
            raise RuntimeError("flaky")
        return Finish(update={"answer": "ok"})

    machine = Machine("grant", "1", Grant, retry=RetryPolicy(max_attempts=2, initial_interval=__import__("datetime").timedelta(0)), steps=[
        Step("answer", agent, writes=["answer"], may_finish=True),
    ])
    run = engine.start(machine, {})
    assert run.status is RunStatus.DONE
    assert len(views) == 2 and views[0] is not views[1]


def test_a_fan_out_branch_mutating_its_input_changes_nothing_committed(engine: Engine) -> None:
    def branch(given: Any, bctx: Any) -> dict[str, int]:
        given.notes.append("branch was here")  # a copy: reaches neither the view nor the state
        given.limits["daily"] = 10**6
        return {"n": len(given.notes)}

    def fan(s: Any, ctx: Any) -> Finish:
        result = run_parallel(ctx, [BranchCall(f"b{i}", branch, input=s) for i in range(3)])
        # Every branch saw its own copy: none saw another's append.
        assert [r.output for r in result.branches.values()] == [{"n": 1}] * 3
        return Finish(update={"answer": "fanned"})

    run = engine.start(_machine(fan), {})
    assert run.status is RunStatus.DONE, run.reason
    state = _committed_state(engine, run.run_id)
    assert state["notes"] == [] and state["limits"] == {"daily": 10} and state["answer"] == "fanned"


def test_a_fan_out_branch_assigning_a_field_of_the_state_fails_only_that_branch(engine: Engine) -> None:
    def branch(given: Any, bctx: Any) -> str:
        given.approved_budget = 10**9
        return "never"

    def fan(s: Any, ctx: Any) -> Finish:
        result = run_parallel(ctx, [BranchCall("b", branch, input=s)])
        report = result.branches["b"]
        return Finish(update={"answer": f"{report.status}: {report.error}"})

    run = engine.start(_machine(fan), {})
    assert run.status is RunStatus.DONE
    state = _committed_state(engine, run.run_id)
    assert state["approved_budget"] == 100
    assert state["answer"].startswith("failure: ReadOnlyStateError")
