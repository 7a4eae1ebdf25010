"""Circuit breakers: open after N consecutive failures, fail fast, probe after the cool-down.

Engines here run on a manual clock, so a cool-down passes without sleeping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from statecraft import Budget, Engine, Machine, RunStatus
from statecraft.agents.breaker import CircuitBreaker
from statecraft.audit.verify import verify_ledger
from tests.agents.claude_machines import CONTRACT, SONNET, TASK, ManualClock, agent, machine, quick_retries
from tests.support.fake_anthropic import FakeAnthropic, api_error, json_message

BREAKER = CircuitBreaker(failure_threshold=3, cooldown=timedelta(seconds=30))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def engine(db_path: Path, clock: ManualClock) -> Iterator[Engine]:
    with Engine(db_path, clock=clock) as eng:
        yield eng


def _ledger_events(engine: Engine) -> list[Any]:
    """The breaker's ledger events (no run), oldest first."""
    return [e for e in engine.events() if e.event_type.startswith("circuit.")]


def _guarded(fake: FakeAnthropic, **step: Any) -> Machine[Any]:
    return machine(agent(fake, breaker=BREAKER), **step)


def test_after_n_consecutive_failures_it_opens_and_runs_fail_fast_with_circuit_open(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(*[api_error(529, "Overloaded") for _ in range(3)])
    m = _guarded(fake_anthropic)

    failed = [engine.start(m, TASK) for _ in range(3)]
    assert [r.error_code for r in failed] == ["llm_overloaded"] * 3
    [opened] = _ledger_events(engine)
    fast = engine.start(m, TASK)

    assert (fast.status, fast.error_code) == (RunStatus.FAILED, "circuit_open")
    assert len(fake_anthropic.requests) == 3  # not sent
    assert "not sent" in (fast.reason or "") and "anthropic:claude-sonnet-4-6" in (fast.reason or "")
    assert (opened.event_type, opened.run_id, opened.actor_type, opened.decision) == (
        "circuit.opened", None, "system", "open")
    assert opened.error_code == "llm_overloaded"
    detail = json.loads(opened.payload_json or "{}")
    assert (detail["breaker"], detail["failures"], detail["run_id"]) == (f"anthropic:{SONNET}", 3, failed[2].run_id)
    assert verify_ledger(engine.db).ok  # ledger events without a run verify like payload.redacted


def test_an_open_circuit_takes_the_steps_error_edge(fake_anthropic: FakeAnthropic, engine: Engine) -> None:
    fake_anthropic.push(*[api_error(503, "down") for _ in range(3)])
    m = _guarded(fake_anthropic, on_error="fallback")
    for _ in range(3):
        engine.start(m, TASK)

    run = engine.start(m, TASK)

    assert run.status is RunStatus.DONE and run.step == "fallback"
    edge = next(e for e in engine.events(run.run_id) if e.event_type == "step.error_edge")
    assert edge.error_code == "circuit_open"


def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes_it(
    fake_anthropic: FakeAnthropic, engine: Engine, clock: ManualClock
) -> None:
    fake_anthropic.push(*[api_error(529, "Overloaded") for _ in range(3)], json_message(CONTRACT, model=SONNET),
                        json_message(CONTRACT, model=SONNET))
    m = _guarded(fake_anthropic)
    for _ in range(3):
        engine.start(m, TASK)
    clock.advance(timedelta(seconds=29))
    assert engine.start(m, TASK).error_code == "circuit_open"  # still cooling down

    clock.advance(timedelta(seconds=2))
    probe = engine.start(m, TASK)
    after = engine.start(m, TASK)

    assert probe.status is RunStatus.DONE and after.status is RunStatus.DONE
    assert [e.event_type for e in _ledger_events(engine)] == ["circuit.opened", "circuit.half_opened", "circuit.closed"]
    [called] = [e for e in engine.events(probe.run_id) if e.event_type == "agent.called"]
    assert json.loads(called.payload_json or "{}")["breaker_probe"] is True


def test_a_failed_probe_opens_it_again_for_another_cooldown(
    fake_anthropic: FakeAnthropic, engine: Engine, clock: ManualClock
) -> None:
    fake_anthropic.push(*[api_error(529, "Overloaded") for _ in range(4)])
    m = _guarded(fake_anthropic)
    for _ in range(3):
        engine.start(m, TASK)
    clock.advance(timedelta(seconds=31))

    assert engine.start(m, TASK).error_code == "llm_overloaded"  # the probe, sent and failed
    assert engine.start(m, TASK).error_code == "circuit_open"

    assert [e.event_type for e in _ledger_events(engine)] == ["circuit.opened", "circuit.half_opened", "circuit.opened"]
    assert len(fake_anthropic.requests) == 4


def test_while_a_probe_is_in_flight_other_calls_still_fail_fast(
    fake_anthropic: FakeAnthropic, engine: Engine, clock: ManualClock
) -> None:
    from statecraft.agents import breaker as breakers

    fake_anthropic.push(*[api_error(529, "Overloaded") for _ in range(3)])
    m = _guarded(fake_anthropic)
    for _ in range(3):
        engine.start(m, TASK)
    clock.advance(timedelta(seconds=31))
    name = f"anthropic:{SONNET}"
    probe = breakers.admit(BREAKER, name, engine.db, clock(), timedelta(seconds=10), ("r-probe", "triage"))

    run = engine.start(m, TASK)

    assert probe.probe and run.error_code == "circuit_open"
    assert "a probe call is in flight" in (run.reason or "")
    clock.advance(timedelta(seconds=11))  # the probe's lease ran out (its process died): probe again
    assert breakers.admit(BREAKER, name, engine.db, clock(), timedelta(seconds=10), ("r-2", "triage")).probe


def test_answers_that_prove_the_api_is_up_do_not_open_it(fake_anthropic: FakeAnthropic, engine: Engine) -> None:
    fake_anthropic.push(
        api_error(529, "Overloaded"), api_error(529, "Overloaded"), api_error(400, "bad"),
        api_error(529, "Overloaded"), api_error(529, "Overloaded"), api_error(429, "slow down"),
        json_message({"kind": "poem"}, model=SONNET),
    )
    m = _guarded(fake_anthropic)

    codes = [engine.start(m, TASK).error_code for _ in range(7)]

    assert codes == ["llm_overloaded", "llm_overloaded", "llm_bad_request", "llm_overloaded",
                     "llm_overloaded", "llm_rate_limited", "invalid_llm_output"]
    assert _ledger_events(engine) == []  # never 3 *consecutive* failures


def test_a_retry_policy_waits_out_the_cooldown_instead_of_hammering(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(*[api_error(529, "Overloaded") for _ in range(3)])
    m = _guarded(fake_anthropic)
    for _ in range(3):
        engine.start(m, TASK)
    patient = _guarded(fake_anthropic, retry=quick_retries(3))

    run = engine.start(patient, TASK, advance=False)
    engine.advance(run.run_id, max_transitions=1)

    waiting = engine.events(run.run_id)[-1]
    assert (waiting.event_type, waiting.error_code) == ("step.attempt_failed", "circuit_open")
    assert json.loads(waiting.payload_json or "{}")["delay_ms"] >= 29_000  # retry_after: the cool-down left


def test_the_breakers_state_is_shared_by_every_engine_on_the_database(
    fake_anthropic: FakeAnthropic, engine: Engine, db_path: Path, clock: ManualClock
) -> None:
    fake_anthropic.push(*[api_error(529, "Overloaded") for _ in range(3)])
    m = _guarded(fake_anthropic)
    for _ in range(3):
        engine.start(m, TASK)

    with Engine(db_path, clock=clock) as other:  # another Database object: another process's view
        run = other.start(m, TASK)

    assert run.error_code == "circuit_open" and len(fake_anthropic.requests) == 3


def test_an_open_circuit_spends_nothing_of_the_runs_cost_budget(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(*[api_error(529, "Overloaded") for _ in range(3)])
    budgeted = machine(agent(fake_anthropic, breaker=BREAKER), name="budgeted")
    budgeted = Machine(budgeted.name, "1", budgeted.state_model, list(budgeted.steps.values()),
                       budget=Budget(max_cost_micros=1_000))
    for _ in range(3):
        engine.start(budgeted, TASK)

    run = engine.start(budgeted, TASK)

    assert (run.error_code, run.cost_micros, run.tokens_in) == ("circuit_open", 0, 0)


@pytest.mark.parametrize("bad", [
    {"failure_threshold": 0}, {"cooldown": timedelta(0)}, {"probe_timeout": timedelta(seconds=-1)}, {"name": ""},
])
def test_a_bad_breaker_is_refused_when_declared(bad: dict[str, Any]) -> None:
    from statecraft import DefinitionError

    with pytest.raises(DefinitionError):
        CircuitBreaker(**bad)
