"""ClaudeAgent through the real ``anthropic`` SDK, over HTTP, against the loopback stand-in.

Nothing here reaches the network: ``tests/conftest.py`` fails any connection
to a non-loopback address, and one test below proves the guard also covers the
SDK's transport.
"""

from __future__ import annotations

import logging
import socket
from datetime import timedelta
from typing import Any, Literal

import anthropic
import pytest
from pydantic import BaseModel, ConfigDict, Field

from statecraft import DefinitionError, Engine, Fail, Finish, Goto, Machine, RetryPolicy, RunStatus, Step, StepContext, Usage
from statecraft._time import utc_now
from statecraft.agents.claude import ClaudeAgent
from statecraft.agents.errors import (
    AgentError,
    LLMInvalidOutput,
    LLMAuthError,
    LLMBadRequest,
    LLMError,
    LLMNotFound,
    LLMOverloaded,
    LLMPermissionDenied,
    LLMProtocolError,
    LLMRateLimited,
    LLMSpendLimitReached,
    LLMTimeout,
    LLMUnavailable,
)
from statecraft.agents.pricing import ModelPrice
from tests.support.fake_anthropic import (
    FakeAnthropic,
    Reply,
    api_error,
    json_message,
    message,
    raw,
    tool_use_message,
    usage,
)

SONNET = "claude-sonnet-4-6"
TASK = "Please review the attached supplier contract for Acme GmbH before Friday."


class Triage(BaseModel):
    """The document's kind and how sure the model is."""

    kind: Literal["contract", "invoice", "other"]
    confidence: int = Field(ge=0, le=100)
    reason: str


class Review(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str = "untitled"
    kind: str | None = None
    confidence: int | None = None
    done: bool = False


def route(state: Any, out: Triage, ctx: StepContext) -> Goto:
    return Goto(
        "legal" if out.kind == "contract" else "archive",
        update={"kind": out.kind, "confidence": out.confidence},
        reason=out.reason,
    )


def make_agent(fake: FakeAnthropic, **overrides: Any) -> ClaudeAgent[Triage]:
    kwargs: dict[str, Any] = dict(
        agent_name="triage",
        agent_version="2",
        prompt_version="triage-v1",
        model=SONNET,
        system="You triage incoming business documents.",
        prompt="Classify the document described in <task>.",
        output=Triage,
        decide=route,
        client=fake.client(),
    )
    kwargs.update(overrides)
    return ClaudeAgent(**kwargs)


def make_ctx(task: Any = TASK) -> StepContext:
    return StepContext(
        run_id="run-1",
        machine="review",
        machine_version="1",
        step="triage",
        attempt=1,
        started_by="tester",
        load_task=lambda: task,
        clock=utc_now,
    )


CONTRACT = {"kind": "contract", "confidence": 90, "reason": "it has signatures and terms"}


# -- a successful call ----------------------------------------------------------


def test_a_structured_answer_becomes_a_goto_with_tokens_and_integer_cost_recorded(
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET, usage_block=usage(1000, 200)))
    agent = make_agent(fake_anthropic)
    ctx = make_ctx()

    outcome = agent(Review(title="Acme"), ctx)

    assert outcome == Goto(
        "legal", update={"kind": "contract", "confidence": 90}, reason="it has signatures and terms"
    )
    # Sonnet 4.6: $3 / MTok in, $15 / MTok out -> 1000*3 + 200*15 micro-USD.
    [call] = ctx.calls  # the call is recorded whole, as its own agent.called event
    assert call.event_type == "agent.called" and call.outcome == "success"
    assert call.usage == Usage(
        tokens_in=1000,
        tokens_out=200,
        cost_micros=6000,
        model_provider="anthropic",
        model_id=SONNET,
        prompt_version="triage-v1",
    )
    assert isinstance(call.usage.cost_micros, int)
    assert ctx.usage == Usage()  # nothing on the step's own event: counted once
    fake_anthropic.assert_all_used()


def test_the_request_carries_model_system_prompt_output_schema_task_and_state(
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.push(json_message(CONTRACT))
    make_agent(fake_anthropic, max_tokens=512)(Review(title="Acme"), make_ctx())

    sent = fake_anthropic.last
    assert sent.method == "POST" and sent.path == "/v1/messages"
    assert sent.headers["anthropic-version"]
    assert sent.headers["x-stainless-retry-count"] == "0"
    body = sent.body
    assert body["model"] == SONNET
    assert body["max_tokens"] == 512
    assert body["system"] == "You triage incoming business documents."
    fmt = body["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    assert fmt["schema"]["type"] == "object"
    assert set(fmt["schema"]["properties"]) == {"kind", "confidence", "reason"}
    assert fmt["schema"]["properties"]["kind"]["enum"] == ["contract", "invoice", "other"]
    assert "tools" not in body and "tool_choice" not in body
    [user] = body["messages"]
    assert user["role"] == "user"
    content = user["content"]
    assert f"<task>\n{TASK}\n</task>" in content
    assert '"title": "Acme"' in content
    assert content.endswith("Classify the document described in <task>.")


def test_tool_mode_forces_one_tool_whose_input_schema_is_the_output_model(
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.push(tool_use_message(CONTRACT, name="submit_triage", model=SONNET))
    agent = make_agent(fake_anthropic, structured_output="tool")

    outcome = agent(Review(), make_ctx())

    assert isinstance(outcome, Goto) and outcome.step == "legal"
    body = fake_anthropic.last.body
    assert body["tools"] == [
        {
            "name": "submit_triage",
            "description": "The document's kind and how sure the model is.",
            "input_schema": Triage.model_json_schema(),
        }
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "submit_triage"}
    assert "output_config" not in body
    assert TASK in body["messages"][0]["content"]


def test_a_json_task_is_sent_as_json_and_a_long_one_is_truncated_with_a_marker(
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.push(json_message(CONTRACT), json_message(CONTRACT))
    agent = make_agent(fake_anthropic, max_task_chars=40)

    agent(Review(), make_ctx({"customer": "Acme", "pages": 3}))
    first = fake_anthropic.last.body["messages"][0]["content"]
    agent(Review(), make_ctx("x" * 100))
    second = fake_anthropic.last.body["messages"][0]["content"]

    assert '"customer": "Acme"' in first
    assert "x" * 40 + "\n[… task truncated by statecraft: 60 of 100 characters omitted]" in second
    assert "x" * 41 not in second


def test_the_template_may_place_the_task_and_the_state_itself(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.push(json_message(CONTRACT))
    agent = make_agent(fake_anthropic, prompt="Task: $task\nKnown so far: $state\nCost: 5 $$")

    agent(Review(title="Acme"), make_ctx("check it"))

    content = fake_anthropic.last.body["messages"][0]["content"]
    assert content.startswith("Task: check it\nKnown so far: {")
    assert content.endswith("Cost: 5 $")
    assert "<task>" not in content and "<state>" not in content


def test_cache_tokens_count_as_input_and_are_priced_at_their_own_rates(
    fake_anthropic: FakeAnthropic,
) -> None:
    block = usage(
        100, 50, cache_creation_input_tokens=2000, cache_read_input_tokens=10_000,
        ephemeral_5m=1000, ephemeral_1h=1000,
    )
    fake_anthropic.push(json_message(CONTRACT, model="claude-haiku-4-5-20251001", usage_block=block))
    ctx = make_ctx()

    make_agent(fake_anthropic, model="claude-haiku-4-5")(Review(), ctx)

    # Haiku 4.5 ($/MTok): in 1, out 5, 5m write 1.25, 1h write 2, read 0.10.
    used = ctx.calls[0].usage
    assert used.tokens_in == 100 + 2000 + 10_000
    assert used.tokens_out == 50
    assert used.cost_micros == 100 * 1 + 50 * 5 + 1250 + 2000 + 1000
    assert used.model_id == "claude-haiku-4-5-20251001"


def test_the_served_model_is_recorded_and_priced_not_the_requested_alias(
    fake_anthropic: FakeAnthropic,
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model="claude-opus-4-1-20250805", usage_block=usage(10, 10)))
    ctx = make_ctx()

    make_agent(fake_anthropic, model="claude-opus-4-1")(Review(), ctx)

    used = ctx.calls[0].usage
    assert used.model_id == "claude-opus-4-1-20250805"
    assert used.cost_micros == 10 * 15 + 10 * 75
    assert ctx.calls[0].payload["model_requested"] == "claude-opus-4-1"


def test_an_unknown_model_costs_zero_with_one_warning_and_keeps_its_tokens(
    fake_anthropic: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    fake_anthropic.push(
        json_message(CONTRACT, model="claude-nova-9-1", usage_block=usage(70, 30)),
        json_message(CONTRACT, model="claude-nova-9-1", usage_block=usage(70, 30)),
    )
    agent = make_agent(fake_anthropic, model="claude-nova-9-1")
    ctx = make_ctx()

    with caplog.at_level(logging.WARNING, logger="statecraft.agents.pricing"):
        agent(Review(), ctx)
        agent(Review(), ctx)

    total = ctx.calls[0].usage + ctx.calls[1].usage  # two calls, two records
    assert (total.tokens_in, total.tokens_out, total.cost_micros) == (140, 60, 0)
    warnings = [r for r in caplog.records if "claude-nova-9-1" in r.getMessage()]
    assert len(warnings) == 1


def test_a_price_table_passed_to_the_agent_overrides_the_default(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET, usage_block=usage(1000, 1000)))
    ctx = make_ctx()
    prices = {"claude-sonnet-4-6": ModelPrice.usd_per_mtok("1.5", "7.5")}

    make_agent(fake_anthropic, prices=prices)(Review(), ctx)

    assert ctx.calls[0].usage.cost_micros == 1500 + 7500


# -- answers that are not the structured result ----------------------------------


@pytest.mark.parametrize(
    ("reply", "mode", "fragment"),
    [
        (json_message({"kind": "memo", "confidence": 90, "reason": "x"}), "json_schema", "first at 'kind'"),
        (json_message({"kind": "invoice", "confidence": 900, "reason": "x"}), "json_schema", "'confidence'"),
        (json_message("Sure! Here is the JSON you asked for: {kind: contract}"), "json_schema", "not JSON"),
        (json_message('{"kind": "contract", "confid', stop_reason="max_tokens"), "json_schema", "max_tokens=1024"),
        (message([]), "json_schema", "no text in the answer"),
        (tool_use_message({"kind": "contract"}, name="submit_triage"), "tool", "2 error(s)"),
        (tool_use_message(CONTRACT, name="some_other_tool"), "tool", "no 'submit_triage' tool call"),
        (json_message(CONTRACT), "tool", "got ['text']"),
    ],
    ids=["enum", "bound", "prose", "truncated", "empty", "missing-fields", "wrong-tool", "text-not-tool"],
)
def test_an_answer_that_does_not_validate_fails_the_attempt_with_a_precise_reason_and_its_usage(
    fake_anthropic: FakeAnthropic, reply: Reply, mode: str, fragment: str
) -> None:
    fake_anthropic.push(reply)
    ctx = make_ctx()

    with pytest.raises(LLMInvalidOutput) as raised:
        make_agent(fake_anthropic, structured_output=mode)(Review(), ctx)

    error = raised.value
    assert error.error_code == "invalid_llm_output" and error.non_retryable  # unless the policy says so
    assert fragment in str(error)
    assert "\n" not in str(error) and len(str(error)) <= 480
    [call] = ctx.calls
    assert (call.outcome, call.error_code) == ("failure", "invalid_llm_output")
    assert call.usage.tokens_in == 100 and call.usage.tokens_out == 20  # the tokens were spent


def test_a_refusal_fails_the_step_with_its_own_code(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.push(message([{"type": "text", "text": ""}], stop_reason="refusal"))
    ctx = make_ctx()

    outcome = make_agent(fake_anthropic)(Review(), ctx)

    assert outcome == Fail(f"{SONNET} refused to answer (stop_reason=refusal)", "llm_refusal")
    assert ctx.calls[0].usage.tokens_in == 100 and ctx.calls[0].error_code == "llm_refusal"


def test_decide_sees_the_state_view_the_validated_output_and_the_context(
    fake_anthropic: FakeAnthropic,
) -> None:
    seen: list[Any] = []

    def decide(state: Any, out: Triage, ctx: StepContext) -> Finish:
        seen.extend([state, out, ctx.run_id])
        return Finish(update={"done": True})

    fake_anthropic.push(json_message(CONTRACT))
    view = Review(title="Acme")

    assert make_agent(fake_anthropic, decide=decide)(view, make_ctx()) == Finish(update={"done": True})
    assert seen == [view, Triage.model_validate(CONTRACT), "run-1"]


# -- failed calls ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected", "retryable", "code"),
    [
        (api_error(429, "rate limited", headers={"retry-after": "7"}), LLMRateLimited, True, "llm_rate_limited"),
        (api_error(529, "Overloaded"), LLMOverloaded, True, "llm_overloaded"),
        (api_error(500, "Internal server error"), LLMUnavailable, True, "llm_unavailable"),
        (api_error(503, "unavailable"), LLMUnavailable, True, "llm_unavailable"),
        (api_error(504, "gateway timeout"), LLMTimeout, True, "llm_timeout"),
        (api_error(401, "invalid x-api-key"), LLMAuthError, False, "llm_auth_error"),
        (api_error(403, "not allowed"), LLMPermissionDenied, False, "llm_permission_denied"),
        (api_error(400, "max_tokens: field required"), LLMBadRequest, False, "llm_bad_request"),
        (api_error(404, "model: claude-nope"), LLMNotFound, False, "llm_not_found"),
        (api_error(413, "prompt is too long"), LLMBadRequest, False, "llm_bad_request"),
        (api_error(402, "credit balance too low"), LLMSpendLimitReached, False, "llm_spend_limit_reached"),
        (
            api_error(429, "spend limit", error_code="enforced_spend_limit_reached"),
            LLMSpendLimitReached, False, "llm_spend_limit_reached",
        ),
        (
            api_error(400, "key disabled", error_code="cmek_key_disabled"),
            LLMPermissionDenied, False, "llm_permission_denied",
        ),
    ],
    ids=lambda v: str(v.status) if isinstance(v, Reply) else None,
)
def test_an_http_error_raises_our_error_saying_whether_to_retry(
    fake_anthropic: FakeAnthropic, reply: Reply, expected: type[LLMError], retryable: bool, code: str
) -> None:
    fake_anthropic.push(reply)
    ctx = make_ctx()

    with pytest.raises(LLMError) as info:
        make_agent(fake_anthropic)(Review(), ctx)

    exc = info.value
    assert type(exc) is expected
    assert RetryPolicy(max_attempts=5).is_retryable(exc) is retryable
    assert exc.non_retryable is not retryable
    assert exc.error_code == code
    assert isinstance(exc.__cause__, anthropic.APIStatusError)
    assert (exc.run_id, exc.step, exc.agent_name) == ("run-1", "triage", "triage")
    assert exc.status_code == reply.status
    assert exc.model_id == SONNET
    assert exc.request_id and exc.request_id.startswith("req_fake")
    assert reply.body["error"]["message"] in str(exc) and "\n" not in str(exc)
    assert ctx.usage == Usage()  # nothing answered, nothing recorded
    assert len(fake_anthropic.requests) == 1  # the SDK did not retry on its own


def test_a_rate_limit_carries_the_servers_retry_after(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.push(
        api_error(429, headers={"retry-after": "7"}),
        api_error(429, headers={"retry-after-ms": "1500", "retry-after": "2"}),
        api_error(429),
    )
    agent = make_agent(fake_anthropic)
    waits = []
    for _ in range(3):
        with pytest.raises(LLMRateLimited) as info:
            agent(Review(), make_ctx())
        waits.append(info.value.retry_after)
    assert waits == [timedelta(seconds=7), timedelta(milliseconds=1500), None]


@pytest.mark.parametrize(
    "reply",
    [
        raw(b'{"type": "message", "content": [{"type": "te'),
        raw(b'{"hello": "world"}'),
        raw(b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
    ],
    ids=["truncated-json", "not-a-message", "html"],
)
def test_a_response_that_is_not_a_messages_api_response_is_a_retryable_protocol_error(
    fake_anthropic: FakeAnthropic, reply: Reply
) -> None:
    fake_anthropic.push(reply)

    with pytest.raises(LLMProtocolError) as info:
        make_agent(fake_anthropic)(Review(), make_ctx())

    assert RetryPolicy(max_attempts=3).is_retryable(info.value)
    assert info.value.error_code == "llm_protocol_error"


def test_a_slow_answer_times_out_as_a_retryable_error(fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.push(json_message(CONTRACT).slow(10))
    agent = make_agent(fake_anthropic, timeout=timedelta(milliseconds=300))

    with pytest.raises(LLMTimeout) as info:
        agent(Review(), make_ctx())

    assert isinstance(info.value.__cause__, anthropic.APITimeoutError)
    assert RetryPolicy(max_attempts=3).is_retryable(info.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_is_a_retryable_unavailable_error() -> None:
    agent = ClaudeAgent(
        agent_name="triage", prompt_version="v1", model=SONNET, system="s",
        prompt="p", output=Triage, decide=route,
        api_key="sk-ant-test", base_url=f"http://127.0.0.1:{_closed_port()}",
    )
    with pytest.raises(LLMUnavailable) as info:
        agent(Review(), make_ctx())
    assert type(info.value) is LLMUnavailable
    assert isinstance(info.value.__cause__, anthropic.APIConnectionError)
    assert RetryPolicy(max_attempts=3).is_retryable(info.value)


def test_the_network_guard_stops_the_sdk_before_it_leaves_the_machine() -> None:
    # 192.0.2.1 is TEST-NET-1: no DNS involved, so only the guard can stop it.
    agent = ClaudeAgent(
        agent_name="triage", prompt_version="v1", model=SONNET, system="s",
        prompt="p", output=Triage, decide=route,
        api_key="sk-ant-test", base_url="http://192.0.2.1", timeout=timedelta(seconds=2),
    )
    with pytest.raises(LLMUnavailable) as info:
        agent(Review(), make_ctx())
    chain: list[str] = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("tests must not touch the network" in text for text in chain), chain


def test_without_a_client_one_is_built_from_the_environment_with_sdk_retries_off(
    fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.base_url)
    fake_anthropic.push(api_error(529, "Overloaded"), json_message(CONTRACT))
    agent = make_agent(fake_anthropic, client=None)

    with pytest.raises(LLMOverloaded):
        agent(Review(), make_ctx())
    assert len(fake_anthropic.requests) == 1  # no SDK retry: the engine decides
    assert isinstance(agent(Review(), make_ctx()), Goto)

    sent = fake_anthropic.last.headers
    assert "sk-ant-from-env" in (sent.get("x-api-key", "") + sent.get("authorization", ""))


def test_without_any_credentials_the_call_fails_as_a_non_retryable_auth_error(
    fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.base_url)
    agent = make_agent(fake_anthropic, client=None)

    with pytest.raises(LLMAuthError) as info:
        agent(Review(), make_ctx())

    assert not RetryPolicy(max_attempts=3).is_retryable(info.value)
    assert "ANTHROPIC_API_KEY" in str(info.value)
    assert fake_anthropic.requests == []


# -- definition errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"prompt": "Classify $document"}, "unknown placeholders ['document']"),
        ({"prompt": "costs 5$"}, "not a valid string.Template"),
        ({"output": dict}, "output must be a pydantic BaseModel subclass"),
        ({"max_tokens": 0}, "max_tokens must be a positive integer"),
        ({"structured_output": "xml"}, "structured_output must be"),
        ({"prompt_version": ""}, "prompt_version must be a non-empty string"),
        ({"timeout": timedelta(0)}, "timeout must be a positive timedelta"),
        ({"tool_name": "has space"}, "tool_name 'has space' must match"),
    ],
)
def test_a_badly_built_agent_is_refused_at_construction(
    fake_anthropic: FakeAnthropic, overrides: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(DefinitionError, match=None) as info:
        make_agent(fake_anthropic, **overrides)
    assert fragment in str(info.value)


def test_the_prompt_digest_changes_with_the_prompt_but_not_with_the_client(
    fake_anthropic: FakeAnthropic,
) -> None:
    a = make_agent(fake_anthropic)
    assert make_agent(fake_anthropic, client=None).prompt_digest == a.prompt_digest
    assert make_agent(fake_anthropic, system="Be brief.").prompt_digest != a.prompt_digest
    assert make_agent(fake_anthropic, structured_output="tool").prompt_digest != a.prompt_digest
    assert len(a.prompt_digest) == 64


def test_the_agent_declares_what_the_audit_log_and_the_machine_digest_need(
    fake_anthropic: FakeAnthropic,
) -> None:
    agent = make_agent(fake_anthropic)
    step = Step("triage", agent, next=["legal"])
    assert (step.agent_name, step.agent_version, step.prompt_version) == ("triage", "2", "triage-v1")


# -- end to end: a machine run by the engine on a real SQLite file ---------------------


def publish(state: Review, ctx: StepContext) -> Finish:
    return Finish(update={"done": True})


def review_machine(agent: ClaudeAgent[Triage], retry: RetryPolicy | None = None) -> Machine[Review]:
    return Machine(
        "claude-review",
        "1",
        Review,
        steps=[
            Step("triage", agent, next=["legal", "archive"], writes=["kind", "confidence"], retry=retry),
            Step("legal", publish, writes=["done"], may_finish=True),
            Step("archive", publish, writes=["done"], may_finish=True),
        ],
    )


def _verify(engine: Engine) -> None:
    verify = pytest.importorskip("statecraft.audit.verify")
    report = verify.verify_ledger(engine.db)
    assert report.ok, report


def test_a_claude_step_runs_in_the_engine_and_its_usage_is_audited(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET, usage_block=usage(1200, 300)))
    machine = review_machine(make_agent(fake_anthropic))

    run = engine.start(machine, TASK)

    assert run.status is RunStatus.DONE
    assert run.state["kind"] == "contract" and run.state["done"] is True
    assert (run.tokens_in, run.tokens_out, run.cost_micros) == (1200, 300, 1200 * 3 + 300 * 15)
    [event] = [
        e for e in engine.events(run.run_id) if e.event_type == "step.completed" and e.from_step == "triage"
    ]
    assert event.event_type == "step.completed" and event.to_step == "legal"
    assert (event.agent_name, event.agent_version, event.prompt_version) == ("triage", "2", "triage-v1")
    assert (event.tokens_in, event.tokens_out, event.cost_micros) == (0, 0, 0)  # on the call's own event
    [called] = [e for e in engine.events(run.run_id) if e.event_type == "agent.called"]
    assert called.run_seq == event.run_seq - 1  # committed with the step, just before it
    assert (called.agent_name, called.agent_version, called.prompt_version) == ("triage", "2", "triage-v1")
    assert (called.model_provider, called.model_id) == ("anthropic", SONNET)
    assert (called.tokens_in, called.tokens_out, called.cost_micros) == (1200, 300, 8100)
    assert event.reason == "it has signatures and terms"
    assert TASK in fake_anthropic.last.body["messages"][0]["content"]  # the task reached the model
    _verify(engine)


def test_garbage_from_the_model_fails_the_run_with_a_precise_audited_reason(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(json_message({"kind": "poem", "confidence": 3, "reason": "?"}, model=SONNET))
    run = engine.start(review_machine(make_agent(fake_anthropic)), TASK)

    assert run.status is RunStatus.FAILED
    assert run.error_code == "invalid_llm_output"
    assert "first at 'kind'" in (run.reason or "")
    called, failed = engine.events(run.run_id)[-2:]
    assert failed.event_type == "run.failed" and failed.error_code == "invalid_llm_output"
    assert called.event_type == "agent.called" and called.error_code == "invalid_llm_output"
    assert (called.model_id, called.tokens_in, called.tokens_out) == (SONNET, 100, 20)
    _verify(engine)


def _run_or_raise(engine: Engine, machine: Machine[Review]) -> Any:
    try:
        return engine.start(machine, TASK)
    except AgentError as exc:  # an engine that lets agent errors escape leaves the run RUNNING
        pytest.fail(f"the engine let {type(exc).__name__} escape instead of failing or retrying the run: {exc}")


def test_a_non_retryable_llm_error_fails_the_run_with_its_error_code(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(api_error(401, "invalid x-api-key"))
    run = _run_or_raise(engine, review_machine(make_agent(fake_anthropic), RetryPolicy(max_attempts=3)))

    assert run.status is RunStatus.FAILED
    assert run.error_code == "llm_auth_error"
    assert len(fake_anthropic.requests) == 1  # not retried
    _verify(engine)


def test_a_retryable_llm_error_is_retried_by_the_engine_and_the_run_completes(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(api_error(529, "Overloaded"), json_message(CONTRACT, model=SONNET))
    policy = RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=10))
    run = _run_or_raise(engine, review_machine(make_agent(fake_anthropic), policy))

    assert run.status is RunStatus.DONE
    assert len(fake_anthropic.requests) == 2
    _verify(engine)
