"""Parallel fan-out through a real engine: cap, timeout, retry, completion policies, audit.

No timing is asserted (bench/bench_fanout.py measures wall time); concurrency
is proved with barriers, and timeouts with branches that block until released.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from statecraft import Engine, Machine, RunStatus
from statecraft.audit.verify import verify_ledger
from statecraft.patterns import (
    All,
    BranchContext,
    Deadline,
    FanOutResult,
    Quorum,
    Stage,
    fan_out,
    pipeline,
)
from statecraft.policy import RetryPolicy


class Job(BaseModel):
    topic: str = "x"
    results: FanOutResult | None = None
    note: str | None = None


def _machine(step: Any, *extra: Any) -> Machine[Job]:
    end = pipeline([Stage("done", lambda s, c: {"note": "done"}, writes=["note"])])
    return Machine("fan", "1", Job, steps=[step, *end, *extra])


def _ok(value: Any) -> Any:
    def branch(inp: Any, w: BranchContext) -> Any:
        return value
    return branch


def _calls(engine: Engine, run_id: str) -> list[Any]:
    return [e for e in engine.events(run_id) if e.event_type == "agent.called"]


def test_every_branch_call_is_its_own_audit_event_and_the_aggregate_is_in_the_state(engine: Engine) -> None:
    step = fan_out("ask", branches={"a": _ok({"n": 1}), "b": _ok({"n": 2}), "c": _ok([3])}, into="results",
                   next="done")
    run = engine.start(_machine(step), {"topic": "t"})
    assert run.status is RunStatus.DONE
    agg = FanOutResult.model_validate(run.state["results"])
    assert agg.outputs == {"a": {"n": 1}, "b": {"n": 2}, "c": [3]} and agg.satisfied
    calls = _calls(engine, run.run_id)
    assert sorted(e.agent_name for e in calls) == ["a", "b", "c"]
    for e in calls:
        assert e.outcome == "success" and e.attempt == 1 and e.latency_ms is not None
        assert e.input_sha256 and e.output_sha256 and e.to_status == "RUNNING" and e.to_step == "ask"
    summary = next(e for e in engine.events(run.run_id) if e.event_type == "fanout.completed")
    payload = json.loads(summary.payload_json or "{}")
    assert payload["branches"]["a"] == {"status": "success", "attempts": 1}
    assert payload["policy"] == "all" and payload["stopped"] == "all_finished"
    assert verify_ledger(engine.db).ok


def test_the_cap_is_reached_and_never_exceeded() -> None:
    # A barrier of `cap` parties proves `cap` branches ran at the same time; a
    # counter proves no more than `cap` ever did.
    from datetime import UTC, datetime

    from statecraft.agents.base import StepContext
    from statecraft.patterns import BranchCall, run_parallel

    cap, lock, running, peak = 3, threading.Lock(), [0], [0]
    barrier = threading.Barrier(cap, timeout=10)

    def branch(inp: Any, w: BranchContext) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            if inp < cap:
                barrier.wait()
            return inp
        finally:
            with lock:
                running[0] -= 1

    ctx = StepContext(run_id="r", machine="m", machine_version="1", step="s", attempt=1, started_by="t",
                      load_task=lambda: None, clock=lambda: datetime.now(UTC))
    agg = run_parallel(ctx, [BranchCall(str(i), branch, input=i) for i in range(8)], max_concurrency=cap)
    assert agg.satisfied and len(agg.outputs) == 8
    assert peak[0] == cap


def test_a_failing_branch_is_retried_and_each_attempt_audited(engine: Engine) -> None:
    def flaky(inp: Any, w: BranchContext) -> str:
        if w.attempt < 3:
            raise ConnectionError(f"attempt {w.attempt} lost")
        return "third time"

    step = fan_out("ask", branches={"flaky": flaky, "ok": _ok(1)}, into="results", next="done",
                   retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=1)))
    run = engine.start(_machine(step), {})
    agg = FanOutResult.model_validate(run.state["results"])
    assert agg.branches["flaky"].status == "success" and agg.branches["flaky"].attempts == 3
    flaky_events = [e for e in _calls(engine, run.run_id) if e.agent_name == "flaky"]
    assert [(e.attempt, e.outcome) for e in flaky_events] == [(1, "failure"), (2, "failure"), (3, "success")]
    assert flaky_events[0].reason == "ConnectionError: attempt 1 lost"
    assert flaky_events[0].error_code == "branch_error"


def test_a_timed_out_branch_is_abandoned_flagged_and_not_fatal(engine: Engine) -> None:
    release = threading.Event()
    seen_cancel = threading.Event()

    def stuck(inp: Any, w: BranchContext) -> str:
        if w.cancelled.wait(10):
            seen_cancel.set()
        release.wait(10)
        return "too late"

    step = fan_out("ask", branches={"stuck": stuck, "ok": _ok(1)}, into="results", next="done",
                   branch_timeout=timedelta(milliseconds=50))
    run = engine.start(_machine(step), {})
    release.set()
    assert run.status is RunStatus.DONE
    agg = FanOutResult.model_validate(run.state["results"])
    assert agg.satisfied and agg.branches["stuck"].status == "timeout"
    assert agg.flagged.keys() == {"stuck"}
    assert seen_cancel.wait(5)  # the abandoned branch was told to stop
    stuck_event = next(e for e in _calls(engine, run.run_id) if e.agent_name == "stuck")
    assert stuck_event.outcome == "timeout" and stuck_event.error_code == "timeout"
    assert stuck_event.output_sha256 is None


def test_a_quorum_finishes_early_and_cancels_the_rest(engine: Engine) -> None:
    release = threading.Event()

    def slow(inp: Any, w: BranchContext) -> str:
        w.cancelled.wait(10)
        return "late"

    step = fan_out("ask", branches={"a": _ok(1), "slow": slow, "b": _ok(2)}, into="results", next="done",
                   completion=Quorum(2))
    run = engine.start(_machine(step), {})
    release.set()
    agg = FanOutResult.model_validate(run.state["results"])
    assert agg.stopped == "quorum_reached" and agg.satisfied
    assert agg.branches["slow"].status == "cancelled"
    slow_event = next(e for e in _calls(engine, run.run_id) if e.agent_name == "slow")
    assert slow_event.outcome == "cancelled" and slow_event.error_code == "quorum_reached"


def test_an_unreachable_quorum_fails_the_run_unless_an_on_failure_edge_is_declared(engine: Engine) -> None:
    def broken(inp: Any, w: BranchContext) -> str:
        raise RuntimeError("down")

    branches = {"a": _ok(1), "b": broken, "c": broken}
    strict = fan_out("ask", branches=branches, into="results", next="done", completion=Quorum(2))
    run = engine.start(_machine(strict), {})
    assert run.status is RunStatus.FAILED and run.error_code == "fan_out_unsatisfied"
    assert "quorum_unreachable" in (run.reason or "")

    degrade = fan_out("ask", branches=branches, into="results", next="done", completion=Quorum(2),
                      on_failure="fallback")
    fallback = pipeline([Stage("fallback", lambda s, c: {"note": "degraded"}, writes=["note"])])
    run = engine.start(_machine(degrade, *fallback), {})
    assert run.status is RunStatus.DONE and run.state["note"] == "degraded"
    assert FanOutResult.model_validate(run.state["results"]).satisfied is False


def test_a_deadline_returns_partial_results_and_flags_what_did_not_finish(engine: Engine) -> None:
    def slow(inp: Any, w: BranchContext) -> str:
        w.cancelled.wait(10)
        return "late"

    step = fan_out("ask", branches={"slow": slow, "slow2": slow, "fast": _ok("f")}, into="results",
                   next="done", max_concurrency=2,
                   completion=Deadline(timedelta(milliseconds=100), min_success=0))
    run = engine.start(_machine(step), {})
    agg = FanOutResult.model_validate(run.state["results"])
    assert agg.stopped == "deadline"
    # Two slots take work in order: both slow branches block them, "fast" never starts.
    assert {k: r.status for k, r in agg.branches.items()} == {
        "slow": "timeout", "slow2": "timeout", "fast": "not_started"}
    assert agg.satisfied  # min_success=0: partial results are acceptable
    assert run.status is RunStatus.DONE
    assert sorted(e.error_code for e in _calls(engine, run.run_id)) == ["deadline", "deadline"]


def test_a_strict_all_fails_on_the_first_final_failure(engine: Engine) -> None:
    def broken(inp: Any, w: BranchContext) -> str:
        raise ValueError("bad input")

    step = fan_out("ask", branches={"a": _ok(1), "b": broken}, into="results", next="done",
                   completion=All(strict=True))
    run = engine.start(_machine(step), {})
    assert run.status is RunStatus.FAILED and run.error_code == "fan_out_unsatisfied"


def test_an_output_that_breaks_the_contract_is_a_flagged_failure(engine: Engine) -> None:
    class Answer(BaseModel):
        score: int

    step = fan_out("ask", branches={"good": _ok({"score": 3}), "bad": _ok({"score": "high"})},
                   into="results", next="done", output_model=Answer)
    run = engine.start(_machine(step), {})
    agg = FanOutResult.model_validate(run.state["results"])
    assert agg.branches["good"].output == {"score": 3}
    assert agg.branches["bad"].status == "failure"
    assert "output broke its contract" in (agg.branches["bad"].error or "")
    bad = next(e for e in _calls(engine, run.run_id) if e.agent_name == "bad")
    assert bad.error_code == "invalid_output"


def test_branches_get_their_own_inputs_and_the_runs_task(engine: Engine) -> None:
    seen: dict[str, Any] = {}

    def echo(inp: Any, w: BranchContext) -> Any:
        seen[w.branch] = (inp, w.task)
        return inp

    step = fan_out("ask", branches={"x": echo, "y": echo}, into="results", next="done",
                   inputs=lambda s, c: {"x": {"q": s.topic}})
    run = engine.start(_machine(step), {"topic": "billing"})
    assert seen["x"] == ({"q": "billing"}, {"topic": "billing"})
    assert seen["y"][0].topic == "billing"  # no input given: the state view
    assert run.status is RunStatus.DONE


def test_fan_out_rejects_nonsense_at_build_time() -> None:
    with pytest.raises(ValueError, match="at least one branch"):
        fan_out("x", branches={}, into="results")
    with pytest.raises(ValueError, match="max_concurrency"):
        fan_out("x", branches={"a": _ok(1)}, into="results", max_concurrency=0)
    with pytest.raises(ValueError, match="n >= 1"):
        Quorum(0)


def test_a_state_stored_before_the_rename_to_branches_still_loads() -> None:
    old = {"policy": "all", "satisfied": True, "stopped": "all_finished",
           "workers": {"a": {"status": "success", "output": 1, "attempts": 1}}}
    result = FanOutResult.model_validate(old)
    assert result.outputs == {"a": 1}
    assert "workers" not in result.model_dump() and result.model_dump()["branches"]["a"]["attempts"] == 1
