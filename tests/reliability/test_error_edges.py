"""Error edges and escalation: where a run goes when a step fails after its retries."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from statecraft import Engine, Finish, Goto, Machine, MachineDefinitionError, RetryPolicy, RunStatus, Step
from tests.support.reliability import Counter, assert_ledger_ok, event_types


def broken(state: Counter, ctx: Any) -> object:
    raise RuntimeError("the summariser is down")


def fallback(state: Counter, ctx: Any) -> object:
    return Goto("report", update={"n": 99}, reason="used the cheap summariser")


def report(state: Counter, ctx: Any) -> object:
    return Finish()


def degradable() -> Machine[Counter]:
    return Machine("degrade", "1", Counter, [
        Step("summarise", broken, next=["report"], on_error="fallback",
             retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=1))),
        Step("fallback", fallback, next=["report"], writes=["n"]),
        Step("report", report, may_finish=True),
    ])


def test_a_failing_step_takes_its_error_edge_and_the_error_is_audited(engine: Engine) -> None:
    run = engine.start(degradable(), {})
    assert run.status is RunStatus.DONE and run.state["n"] == 99
    assert event_types(engine, run.run_id) == [
        "run.created", "run.started", "step.attempt_failed", "step.error_edge",
        "step.completed", "run.completed",
    ]
    edge = [e for e in engine.events(run.run_id) if e.event_type == "step.error_edge"][0]
    assert (edge.from_step, edge.to_step, edge.to_status) == ("summarise", "fallback", "RUNNING")
    assert edge.reason == "RuntimeError: the summariser is down"
    assert (edge.error_code, edge.outcome, edge.attempt, edge.actor_type) == ("agent_error", "failure", 2, "system")
    assert edge.decision == "on_error:fallback"
    assert run.steps_taken == 3  # the error edge counts as a step: error loops are bounded too
    assert_ledger_ok(engine)


def test_error_edges_are_validated_and_drawn() -> None:
    with pytest.raises(MachineDefinitionError, match="on_error step 'nowhere' does not exist"):
        Machine("m", "1", Counter, [Step("a", broken, on_error="nowhere", may_finish=True)])
    with pytest.raises(MachineDefinitionError, match="exclusive"):
        Machine("m", "1", Counter, [
            Step("a", broken, next=["b"], on_error="b", escalate_on_error=True),
            Step("b", report, may_finish=True),
        ])
    m = degradable()
    assert ("summarise", "fallback", "error") in m.edges()
    assert "fallback" in m.mermaid()
    # A step only reachable through an error edge is reachable.
    assert "fallback" in m.steps


def escalating() -> Machine[Counter]:
    attempts = {"n": 0}

    def flaky(state: Counter, ctx: Any) -> object:
        attempts["n"] += 1
        if attempts["n"] <= 2:
            raise ConnectionError("ledger service unreachable")
        return Finish(update={"n": attempts["n"]})

    return Machine("escalate", "1", Counter, [
        Step("book", flaky, may_finish=True, writes=["n"], escalate_on_error=True,
             retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=1))),
    ])


def test_escalate_instead_of_fail_asks_a_human_and_approval_runs_the_step_again(engine: Engine) -> None:
    run = engine.start(escalating(), {})
    assert run.status is RunStatus.WAITING_FOR_APPROVAL
    assert run.pending is not None and run.pending.resume_at == "book"
    assert "failed after 2 attempt(s)" in (run.pending.reason or "")
    asked = engine.events(run.run_id)[-1]
    assert (asked.event_type, asked.actor_type, asked.error_code) == ("approval.requested", "system", "agent_error")
    assert json.loads(asked.payload_json or "{}")["error"] == "ConnectionError: ledger service unreachable"
    done = engine.approve(run.run_id, by="ops@example.com", comment="ledger is back")
    assert done.status is RunStatus.DONE and done.state["n"] == 3
    assert_ledger_ok(engine)


def test_rejecting_an_escalation_fails_the_run(engine: Engine) -> None:
    run = engine.start(escalating(), {})
    failed = engine.reject(run.run_id, by="ops@example.com", reason="give up")
    assert (failed.status, failed.error_code) == (RunStatus.FAILED, "rejected")
