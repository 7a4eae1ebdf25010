"""Each LLM call is recorded whole, as its own ``agent.called`` event, and counted once.

Through the real ``anthropic`` SDK against the loopback stand-in, on real
SQLite files; the reviewer queries of docs/audit.md are run on the result.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

from statecraft import Engine, Goto, Machine, RunStatus, Step, StepContext
from statecraft.audit.verify import verify_ledger
from statecraft.store.blobs import blob_json, sha256_hex
from tests.agents.claude_machines import (
    CONTRACT,
    SONNET,
    TASK,
    Doc,
    agent,
    machine,
    publish,
    quick_retries,
)
from tests.support.fake_anthropic import FakeAnthropic, api_error, json_message, usage

AUDIT_DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def _calls(engine: Engine, run_id: str) -> list[Any]:
    return [e for e in engine.events(run_id) if e.event_type == "agent.called"]


def payload(event: Any) -> dict[str, Any]:
    return json.loads(event.payload_json or "{}")  # type: ignore[no-any-return]


def _blob(db: Path, digest: str) -> Any:
    conn = sqlite3.connect(db)
    try:
        return json.loads(conn.execute("SELECT body FROM blob WHERE sha256 = ?", (digest,)).fetchone()[0])
    finally:
        conn.close()


def test_two_calls_in_one_step_are_two_events_each_counted_once_in_the_run_totals(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(
        json_message(CONTRACT, model=SONNET, usage_block=usage(1000, 200)),
        json_message({**CONTRACT, "confidence": 70}, model=SONNET, usage_block=usage(1100, 300)),
    )
    triage = agent(fake_anthropic)

    def twice(state: Doc, ctx: StepContext) -> Any:
        # Self-consistency: ask twice, keep the surer answer.
        first, second = triage(state, ctx), triage(state, ctx)
        assert isinstance(first, Goto) and isinstance(second, Goto)
        return max(first, second, key=lambda g: g.update["confidence"])

    twice.agent_name = "triage-twice"  # type: ignore[attr-defined]
    run = engine.start(machine(twice), TASK)

    assert run.status is RunStatus.DONE and run.state["confidence"] == 90
    first, second = _calls(engine, run.run_id)
    assert (first.tokens_in, first.tokens_out, first.cost_micros) == (1000, 200, 1000 * 3 + 200 * 15)
    assert (second.tokens_in, second.tokens_out, second.cost_micros) == (1100, 300, 1100 * 3 + 300 * 15)
    step = next(e for e in engine.events(run.run_id) if e.event_type == "step.completed" and e.from_step == "triage")
    assert (step.tokens_in, step.cost_micros, step.model_id) == (0, 0, None)  # not counted a second time
    assert (run.tokens_in, run.tokens_out, run.cost_micros) == (2100, 500, 6000 + 7800)
    assert verify_ledger(engine.db).ok


def test_a_call_event_holds_the_prompt_blob_the_raw_answer_both_models_and_the_stop_reason(
    fake_anthropic: FakeAnthropic, engine: Engine, db_path: Path
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model="claude-sonnet-4-6-20260101", usage_block=usage(900, 100)))
    triage = agent(fake_anthropic)
    run = engine.start(machine(triage), TASK)

    [call] = _calls(engine, run.run_id)
    detail = payload(call)
    assert (call.agent_name, call.agent_version, call.prompt_version) == ("triage", "2", "triage-v1")
    assert (call.model_provider, call.model_id) == ("anthropic", "claude-sonnet-4-6-20260101")  # who answered
    assert (detail["model_requested"], detail["model_answered"]) == (SONNET, "claude-sonnet-4-6-20260101")
    assert detail["stop_reason"] == "end_turn" and detail["request_id"].startswith("req_fake")
    assert call.latency_ms is not None and call.latency_ms >= 0 and call.attempt == 1
    # The prompt's digest is its blob's hash, and the blob is its body.
    assert call.input_sha256 == detail["prompt_digest"] == triage.prompt_digest
    assert _blob(db_path, call.input_sha256) == json.loads(blob_json(triage.prompt_material()))
    # The raw answer, as the API sent it.
    raw = _blob(db_path, call.output_sha256)
    assert raw["content"][0]["text"] == json.dumps(CONTRACT) and raw["usage"]["input_tokens"] == 900
    # And what was sent can be proven: the request body's hash.
    assert detail["request_sha256"] == sha256_hex(blob_json(fake_anthropic.last.body))


def test_a_failed_call_keeps_the_model_it_asked_for(fake_anthropic: FakeAnthropic, engine: Engine) -> None:
    fake_anthropic.push(api_error(529, "Overloaded"), json_message(CONTRACT, model=SONNET))
    run = engine.start(machine(agent(fake_anthropic), retry=quick_retries(2)), TASK)

    assert run.status is RunStatus.DONE
    failed, ok = _calls(engine, run.run_id)
    assert (failed.outcome, failed.error_code, failed.model_id, failed.attempt) == (
        "failure", "llm_overloaded", SONNET, 1)
    assert (failed.tokens_in, payload(failed)["status_code"]) == (0, 529)  # an error answer is not billed
    assert (ok.outcome, ok.attempt) == ("success", 2)
    attempt_failed = next(e for e in engine.events(run.run_id) if e.event_type == "step.attempt_failed")
    assert failed.run_seq == attempt_failed.run_seq - 1  # committed with the failed attempt


def test_tokens_of_a_call_abandoned_at_the_step_timeout_are_still_counted(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET).slow(3))
    triage = agent(fake_anthropic)
    run = engine.start(machine(triage, timeout=timedelta(milliseconds=400)), TASK)

    assert run.status is RunStatus.FAILED and run.error_code == "timeout"
    [call] = _calls(engine, run.run_id)
    estimate = payload(call)["input_tokens_estimated"]
    assert estimate > 0 and payload(call)["usage_estimated"] is True
    assert (call.outcome, call.model_id, call.tokens_in) == ("timeout", SONNET, estimate)
    assert call.cost_micros == estimate * 3  # Sonnet: $3 per million input tokens
    assert (run.tokens_in, run.cost_micros) == (estimate, estimate * 3)  # the run's totals count it


def test_an_async_call_cancelled_at_the_step_timeout_is_counted_too(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET).slow(3))
    run = engine.start(machine(agent(fake_anthropic, asynchronous=True), timeout=timedelta(milliseconds=400)), TASK)

    assert run.status is RunStatus.FAILED and run.error_code == "timeout"
    [call] = _calls(engine, run.run_id)
    assert call.outcome == "timeout" and call.tokens_in == payload(call)["input_tokens_estimated"] > 0
    assert run.tokens_in == call.tokens_in


def test_a_request_timing_out_in_the_client_counts_its_estimated_input_tokens(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET).slow(3))
    run = engine.start(machine(agent(fake_anthropic, timeout=timedelta(milliseconds=300))), TASK)

    assert run.status is RunStatus.FAILED and run.error_code == "llm_timeout"
    [call] = _calls(engine, run.run_id)
    assert (call.outcome, call.error_code, call.model_id) == ("timeout", "llm_timeout", SONNET)
    assert call.tokens_in == payload(call)["input_tokens_estimated"] > 0 and payload(call)["usage_estimated"]


# -- a prompt edited without a version bump ------------------------------------------------------


def test_a_prompt_edited_without_a_version_bump_is_flagged_on_its_calls(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(*[json_message(CONTRACT, model=SONNET) for _ in range(4)])
    original = agent(fake_anthropic)
    edited = agent(fake_anthropic, system="You triage documents. Be strict.")  # same prompt_version
    bumped = agent(fake_anthropic, system="You triage documents. Be strict.", prompt_version="triage-v2")

    first = engine.start(machine(original), TASK)
    second = engine.start(machine(edited, name="claude-triage-edited"), TASK)
    third = engine.start(machine(bumped, name="claude-triage-bumped"), TASK)
    fourth = engine.start(machine(original), TASK)

    [before] = _calls(engine, first.run_id)
    [after] = _calls(engine, second.run_id)
    [honest] = _calls(engine, third.run_id)
    [again] = _calls(engine, fourth.run_id)
    assert "prompt_digest_changed" not in payload(before)  # nothing was known to differ yet
    assert payload(after)["prompt_digest_changed"] is True
    assert [o["prompt_digest"] for o in payload(after)["other_prompt_digests"]] == [original.prompt_digest]
    assert payload(after)["other_prompt_digests"][0]["first_run_id"] == first.run_id
    assert "prompt_digest_changed" not in payload(honest)  # a new version is a new prompt
    assert payload(again)["other_prompt_digests"][0]["prompt_digest"] == edited.prompt_digest  # both now answer to v1


# -- the reviewer queries still answer --------------------------------------------------------------


def _query(name: str) -> str:
    text = AUDIT_DOC.read_text(encoding="utf-8")
    return dict((n, sql) for sql, n in re.findall(r"```sql\n(-- (q\w+)[^\n]*\n.*?)```", text, re.S))[name]


def test_the_reviewer_queries_for_cost_per_model_and_per_prompt_version_count_each_call_once(
    fake_anthropic: FakeAnthropic, engine: Engine, db_path: Path
) -> None:
    fake_anthropic.push(
        api_error(529, "Overloaded"),
        json_message(CONTRACT, model=SONNET, usage_block=usage(1000, 200)),
        json_message(CONTRACT, model=SONNET, usage_block=usage(500, 100)),
    )
    runs = [engine.start(machine(agent(fake_anthropic), retry=quick_retries(2)), TASK) for _ in range(2)]
    window = {"since": "2000-01-01T00:00:00.000000Z", "until": "2100-01-01T00:00:00.000000Z"}
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        per_model = {r["model_id"]: dict(r) for r in conn.execute(_query("q6"), window)}
        per_prompt = [dict(r) for r in conn.execute(_query("q7"), {**window, "model_id": "-", "prompt_version": "triage-v1"})]
        per_run = {r["run_id"]: dict(r) for r in conn.execute(_query("q6b"), window)}
    finally:
        conn.close()

    assert per_model[SONNET]["calls"] == 3  # the failed call too, at no cost
    assert per_model[SONNET]["cost_micros"] == sum(r.cost_micros for r in runs) == 6000 + 3000
    assert per_model[SONNET]["tokens_in"] == 1500
    assert sorted(r["run_id"] for r in per_prompt) == sorted(r.run_id for r in runs)
    assert {k: v["cost_micros"] for k, v in per_run.items()} == {r.run_id: r.cost_micros for r in runs}


def test_an_async_engine_records_the_same_call_events(fake_anthropic: FakeAnthropic, db_path: Path) -> None:
    from statecraft import AsyncEngine

    fake_anthropic.push(json_message(CONTRACT, model=SONNET, usage_block=usage(1000, 200)))
    m = machine(agent(fake_anthropic, asynchronous=True))

    async def main() -> Any:
        async with AsyncEngine(db_path) as engine:
            run = await engine.start(m, TASK)
            return run, await engine.events(run.run_id)

    run, events = asyncio.run(main())
    [call] = [e for e in events if e.event_type == "agent.called"]
    assert (call.tokens_in, call.model_id, run.tokens_in) == (1000, SONNET, 1000)


def test_a_function_agent_reporting_its_own_usage_keeps_it_on_the_step_event(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    # A function agent reporting usage itself is unchanged: its usage stays on the step event.
    from statecraft import Usage

    def local(state: Doc, ctx: StepContext) -> Goto:
        ctx.record_usage(Usage(10, 5, 7, "local", "tiny-model", "p0"))
        return Goto("legal", update={"kind": "contract"})

    m = Machine("local", "1", Doc, [
        Step("triage", local, next=["legal"], writes=["kind"]),
        Step("legal", publish, writes=["done"], may_finish=True),
    ])
    run = engine.start(m, TASK)

    step = next(e for e in engine.events(run.run_id) if e.event_type == "step.completed" and e.from_step == "triage")
    assert (step.tokens_in, step.model_id, run.cost_micros) == (10, "tiny-model", 7)
    assert not _calls(engine, run.run_id)
