"""Malformed or schema-violating model output is an attempt failure: retried by policy, then the error edge."""

from __future__ import annotations

from statecraft import Engine, RetryPolicy, RunStatus
from statecraft.agents.errors import LLMInvalidOutput
from tests.agents.claude_machines import CONTRACT, SONNET, TASK, agent, machine, quick_retries
from tests.support.fake_anthropic import FakeAnthropic, json_message

GARBAGE = json_message("Sure! Here is the JSON: {kind: contract}", model=SONNET)
WRONG_SCHEMA = json_message({"kind": "poem", "confidence": 3, "reason": "?"}, model=SONNET)


def _types(engine: Engine, run_id: str) -> list[str]:
    return [e.event_type for e in engine.events(run_id)]


def test_invalid_output_is_retried_when_the_policy_says_so(fake_anthropic: FakeAnthropic, engine: Engine) -> None:
    fake_anthropic.push(GARBAGE, WRONG_SCHEMA, json_message(CONTRACT, model=SONNET))
    policy = quick_retries(3, retry_on_invalid_output=True)
    run = engine.start(machine(agent(fake_anthropic), retry=policy), TASK)

    assert run.status is RunStatus.DONE and run.state["kind"] == "contract"
    assert len(fake_anthropic.requests) == 3
    failures = [e for e in engine.events(run.run_id) if e.event_type == "step.attempt_failed"]
    assert [(e.error_code, e.decision) for e in failures] == [
        ("invalid_llm_output", "retry:2"), ("invalid_llm_output", "retry:3"),
    ]
    assert "not JSON" in (failures[0].reason or "") and "first at 'kind'" in (failures[1].reason or "")


def test_invalid_output_is_not_retried_by_default(fake_anthropic: FakeAnthropic, engine: Engine) -> None:
    fake_anthropic.push(WRONG_SCHEMA)
    run = engine.start(machine(agent(fake_anthropic), retry=quick_retries(3)), TASK)

    assert run.status is RunStatus.FAILED and run.error_code == "invalid_llm_output"
    assert len(fake_anthropic.requests) == 1  # the same prompt would likely draw the same answer


def test_invalid_output_takes_the_steps_error_edge_to_its_fallback(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(WRONG_SCHEMA)
    run = engine.start(machine(agent(fake_anthropic), on_error="fallback"), TASK)

    assert run.status is RunStatus.DONE and run.step == "fallback"
    edge = next(e for e in engine.events(run.run_id) if e.event_type == "step.error_edge")
    assert (edge.error_code, edge.to_step, edge.decision) == ("invalid_llm_output", "fallback", "on_error:fallback")
    assert _types(engine, run.run_id)[2:] == ["agent.called", "step.error_edge", "run.completed"]


def test_retries_exhausted_on_invalid_output_then_take_the_error_edge(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(GARBAGE, GARBAGE)
    policy = quick_retries(2, retry_on_invalid_output=True)
    run = engine.start(machine(agent(fake_anthropic), retry=policy, on_error="fallback"), TASK)

    assert run.status is RunStatus.DONE and run.step == "fallback"
    assert len(fake_anthropic.requests) == 2
    assert _types(engine, run.run_id).count("agent.called") == 2  # both answers, recorded whole


def test_invalid_output_can_escalate_to_a_human(fake_anthropic: FakeAnthropic, engine: Engine) -> None:
    fake_anthropic.push(WRONG_SCHEMA)
    run = engine.start(machine(agent(fake_anthropic), escalate_on_error=True), TASK)

    assert run.status is RunStatus.WAITING_FOR_APPROVAL
    gate = engine.events(run.run_id)[-1]
    assert (gate.event_type, gate.error_code, gate.decision) == (
        "approval.requested", "invalid_llm_output", "escalate:triage")


def test_the_policy_flag_is_what_decides_and_a_listed_class_still_refuses() -> None:
    error = LLMInvalidOutput("claude: answer does not validate")

    assert not RetryPolicy(max_attempts=3).is_retryable(error)
    assert RetryPolicy(max_attempts=3, retry_on_invalid_output=True).is_retryable(error)
    assert not RetryPolicy(
        max_attempts=3, retry_on_invalid_output=True, non_retryable=frozenset({"LLMInvalidOutput"})
    ).is_retryable(error)


def test_the_flag_is_part_of_the_machine_digest_only_when_set(fake_anthropic: FakeAnthropic) -> None:
    plain = machine(agent(fake_anthropic), retry=quick_retries(2))
    same = machine(agent(fake_anthropic), retry=quick_retries(2, retry_on_invalid_output=False))
    flagged = machine(agent(fake_anthropic), retry=quick_retries(2, retry_on_invalid_output=True))

    assert plain.digest == same.digest != flagged.digest
