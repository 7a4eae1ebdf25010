"""Retries and timeouts: declared on the step, decided by the engine, every attempt audited."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from statecraft import Engine, Fail, Finish, Goto, Machine, RetryPolicy, RunStatus, Step, Usage
from tests.support.reliability import Counter, assert_ledger_ok, chain, event_types, finish

FAST = dict(initial_interval=timedelta(milliseconds=1), max_interval=timedelta(milliseconds=5))


class Flaky:
    """Raises ``exc`` for the first ``failures`` calls, then finishes."""

    def __init__(self, failures: int, exc: BaseException | None = None) -> None:
        self.failures = failures
        self.exc = exc or ConnectionError("connection reset")
        self.calls = 0
        self.attempts: list[int] = []

    def __call__(self, state: Counter, ctx: Any) -> object:
        self.calls += 1
        self.attempts.append(ctx.attempt)
        if self.calls <= self.failures:
            raise self.exc
        return Finish(update={"n": self.calls})


def test_a_flaky_agent_is_retried_and_every_failed_attempt_is_audited(engine: Engine) -> None:
    agent = Flaky(2)
    policy = RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=10), backoff_coefficient=2.0)
    run = engine.start(chain(agent, retry=policy), {})
    assert run.status is RunStatus.DONE and run.state["n"] == 3
    assert agent.attempts == [1, 2, 3]
    events = engine.events(run.run_id)
    failed = [e for e in events if e.event_type == "step.attempt_failed"]
    assert [e.attempt for e in failed] == [1, 2]
    assert all(e.outcome == "failure" and e.error_code == "agent_error" for e in failed)
    assert all(e.reason == "ConnectionError: connection reset" for e in failed)
    assert all((e.to_status, e.to_step) == ("RUNNING", "s0") for e in failed)
    payloads = [json.loads(e.payload_json or "{}") for e in failed]
    assert [p["delay_ms"] for p in payloads] == [10, 20]  # initial, then x2
    assert all(p["error_type"] == "ConnectionError" for p in payloads)
    assert events[-1].event_type == "run.completed" and events[-1].attempt == 3
    assert_ledger_ok(engine)


def test_the_default_policy_does_not_retry(engine: Engine) -> None:
    agent = Flaky(1)
    run = engine.start(chain(agent), {})
    assert run.status is RunStatus.FAILED and run.error_code == "agent_error"
    assert agent.calls == 1
    assert "step.attempt_failed" not in event_types(engine, run.run_id)


def test_after_the_last_attempt_the_run_fails_with_the_last_error(engine: Engine) -> None:
    agent = Flaky(10, TimeoutError("upstream slow"))
    run = engine.start(chain(agent, retry=RetryPolicy(max_attempts=3, **FAST)), {})
    assert run.status is RunStatus.FAILED
    assert agent.calls == 3
    last = engine.events(run.run_id)[-1]
    assert (last.event_type, last.attempt, last.error_code) == ("run.failed", 3, "agent_error")
    assert last.reason == "TimeoutError: upstream slow"
    assert json.loads(last.payload_json or "{}")["attempts"] == 3
    assert_ledger_ok(engine)


class Declined(Exception):
    """A card decline: retrying cannot help."""


class SelfDeclared(Exception):
    non_retryable = True


@pytest.mark.parametrize(
    ("exc", "policy"),
    [
        (Declined("card declined"), RetryPolicy(max_attempts=5, non_retryable=frozenset({"Declined"}), **FAST)),
        (Declined("card declined"), RetryPolicy(max_attempts=5, non_retryable=[Exception], **FAST)),  # type: ignore[arg-type]
        (SelfDeclared("no"), RetryPolicy(max_attempts=5, **FAST)),
    ],
    ids=["by-name", "by-base-class", "declared-by-the-error"],
)
def test_non_retryable_errors_fail_at_once(engine: Engine, exc: Exception, policy: RetryPolicy) -> None:
    agent = Flaky(10, exc)
    run = engine.start(chain(agent, retry=policy), {})
    assert run.status is RunStatus.FAILED and agent.calls == 1
    assert json.loads(engine.events(run.run_id)[-1].payload_json or "{}")["retryable"] is False


def test_an_agent_error_code_and_retry_after_are_honoured(engine: Engine) -> None:
    from statecraft.agents.errors import LLMRateLimited

    exc = LLMRateLimited("slow down", retry_after=timedelta(milliseconds=60))
    agent = Flaky(1, exc)
    run = engine.start(chain(agent, retry=RetryPolicy(max_attempts=2, **FAST)), {})
    assert run.status is RunStatus.DONE
    failed = [e for e in engine.events(run.run_id) if e.event_type == "step.attempt_failed"][0]
    assert failed.error_code == exc.error_code
    assert json.loads(failed.payload_json or "{}")["delay_ms"] == 60  # the service's wait, not 1 ms


def test_a_fail_outcome_and_an_illegal_outcome_are_never_retried(engine: Engine) -> None:
    calls: list[str] = []

    def fails(state: Counter, ctx: Any) -> object:
        calls.append("fail")
        return Fail("the document is not a contract", error_code="not_a_contract")

    def wanders(state: Counter, ctx: Any) -> object:
        calls.append("wander")
        return Goto("nowhere")

    policy = RetryPolicy(max_attempts=4, **FAST)
    a = engine.start(chain(fails, retry=policy), {})
    b = engine.start(chain(wanders, finish, retry=policy), {})
    assert (a.status, a.error_code) == (RunStatus.FAILED, "not_a_contract")
    assert (b.status, b.error_code) == (RunStatus.FAILED, "undeclared_edge")
    assert calls == ["fail", "wander"]


def test_jitter_and_backoff_are_bounded_by_max_interval() -> None:
    policy = RetryPolicy(
        max_attempts=10, initial_interval=timedelta(seconds=1), backoff_coefficient=3,
        max_interval=timedelta(seconds=20), jitter=0.5,
    )
    rng = random.Random(7)
    delays = [policy.delay(n, rng).total_seconds() for n in range(1, 8)]
    assert all(0 < d <= 20 for d in delays)
    assert delays[0] <= 1 and delays[0] >= 0.5
    assert max(delays[4:]) <= 20 and min(delays[4:]) >= 10  # capped, then jittered down by at most half
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(initial_interval=timedelta(seconds=5), max_interval=timedelta(seconds=1))


def test_a_hung_agent_is_abandoned_at_its_timeout_and_retried(engine: Engine) -> None:
    release = threading.Event()
    attempts: list[int] = []

    def hangs_once(state: Counter, ctx: Any) -> object:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            release.wait(10)  # hung: never answers in time
        return Finish(update={"n": ctx.attempt})

    m = Machine("hang", "1", Counter, [
        Step("s0", hangs_once, may_finish=True, writes=["n"], timeout=timedelta(milliseconds=150),
             retry=RetryPolicy(max_attempts=2, **FAST)),
    ])
    started = time.monotonic()
    run = engine.start(m, {})
    release.set()
    assert time.monotonic() - started < 5
    assert run.status is RunStatus.DONE and run.state["n"] == 2
    failed = [e for e in engine.events(run.run_id) if e.event_type == "step.attempt_failed"]
    assert len(failed) == 1
    assert (failed[0].outcome, failed[0].error_code, failed[0].attempt) == ("timeout", "timeout", 1)
    assert 140 <= (failed[0].latency_ms or 0) < 2000
    assert_ledger_ok(engine)


def test_timeouts_after_the_last_attempt_fail_the_run_with_outcome_timeout(engine: Engine) -> None:
    def hangs(state: Counter, ctx: Any) -> object:
        time.sleep(1)
        return Finish()

    m = Machine("hang", "1", Counter, [Step("s0", hangs, may_finish=True, timeout=timedelta(milliseconds=50))])
    run = engine.start(m, {})
    assert (run.status, run.error_code) == (RunStatus.FAILED, "timeout")
    last = engine.events(run.run_id)[-1]
    assert (last.event_type, last.outcome) == ("run.failed", "timeout")


def test_usage_of_failed_attempts_is_counted(engine: Engine) -> None:
    def spends_then_fails(state: Counter, ctx: Any) -> object:
        ctx.record_usage(Usage(tokens_in=100, tokens_out=10, cost_micros=500))
        if ctx.attempt < 3:
            raise ConnectionError("reset")
        return Finish()

    run = engine.start(chain(spends_then_fails, retry=RetryPolicy(max_attempts=3, **FAST)), {})
    assert (run.tokens_in, run.tokens_out, run.cost_micros) == (300, 30, 1500)
    assert sum(e.cost_micros or 0 for e in engine.events(run.run_id)) == 1500


def test_a_crash_during_backoff_resumes_with_the_next_attempt_not_the_first(db_path: Path) -> None:
    attempts: list[int] = []

    def flaky(state: Counter, ctx: Any) -> object:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("reset")
        return Finish()

    m = chain(flaky, retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=200)))
    with Engine(db_path) as first:
        run = first.start(m, {}, advance=False)
        first.advance(run.run_id, max_transitions=1)  # attempt 1 fails; the process "dies" in the backoff
        row = first.get(run.run_id)
        assert row.status is RunStatus.RUNNING and row.lease_owner is None
    with Engine(db_path, machines=[m]) as second:
        done = second.resume(run.run_id)
    assert done.status is RunStatus.DONE
    assert attempts == [1, 2, 3]
