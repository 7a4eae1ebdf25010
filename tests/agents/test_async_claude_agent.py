"""AsyncClaudeAgent: the real ``anthropic.AsyncAnthropic`` client against the loopback stand-in."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statecraft import AsyncEngine, Engine, Machine, RetryPolicy, RunStatus, Step
from statecraft.agents.claude import AsyncClaudeAgent
from tests.agents.test_claude_agent import CONTRACT, SONNET, Triage, route
from tests.support.fake_anthropic import FakeAnthropic, api_error, json_message, usage


class Doc(BaseModel):
    title: str = "Acme MSA"
    kind: str | None = None
    confidence: int | None = None


def _machine(fake: FakeAnthropic, **step: Any) -> Machine[Doc]:
    agent = AsyncClaudeAgent(
        agent_name="triage", prompt_version="triage-v1", model=SONNET,
        system="You triage incoming business documents.", prompt="Classify the document in <task>.",
        output=Triage, decide=route, api_key="sk-ant-test", base_url=fake.base_url,
    )
    return Machine("triage", "1", Doc, [
        Step("triage", agent, next=["legal", "archive"], writes=["kind", "confidence"], **step),
        Step("legal", lambda s, c: __import__("statecraft").Finish(), may_finish=True),
        Step("archive", lambda s, c: __import__("statecraft").Finish(), may_finish=True),
    ])


def test_an_async_claude_step_runs_through_async_anthropic_on_the_services_loop(
    fake_anthropic: FakeAnthropic, db_path: Path
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET, usage_block=usage(1000, 200)))
    m = _machine(fake_anthropic)

    async def main() -> Any:
        async with AsyncEngine(db_path) as engine:
            return await engine.start(m, "Please review the supplier contract."), await engine.events()

    run, events = asyncio.run(main())
    assert run.status is RunStatus.DONE and run.state["kind"] == "contract"
    assert run.cost_micros == 6000 and run.tokens_in == 1000
    call = next(e for e in events if e.event_type == "agent.called")
    assert (call.model_id, call.tokens_out, call.outcome) == (SONNET, 200, "success")
    assert fake_anthropic.last.body["messages"][0]["content"].count("supplier contract") == 1
    fake_anthropic.assert_all_used()


def test_the_sync_engine_awaits_an_async_claude_step_too_and_retries_a_429(
    fake_anthropic: FakeAnthropic, db_path: Path
) -> None:
    fake_anthropic.push(
        api_error(429, "slow down", headers={"retry-after-ms": "10"}),
        json_message(CONTRACT, model=SONNET),
    )
    m = _machine(fake_anthropic, retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(0)))
    with Engine(db_path) as engine:
        run = engine.start(m, "a contract")
        assert run.status is RunStatus.DONE
        failed = [e for e in engine.events(run.run_id) if e.event_type == "step.attempt_failed"]
        assert len(failed) == 1 and failed[0].error_code == "llm_rate_limited"
    fake_anthropic.assert_all_used()


def test_a_step_timeout_cancels_the_http_request(fake_anthropic: FakeAnthropic, db_path: Path) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET).slow(5.0))
    m = _machine(fake_anthropic, timeout=timedelta(milliseconds=300))

    async def main() -> Any:
        async with AsyncEngine(db_path) as engine:
            started = asyncio.get_running_loop().time()
            run = await engine.start(m, "a contract")
            return run, asyncio.get_running_loop().time() - started

    run, took = asyncio.run(main())
    assert run.status is RunStatus.FAILED and run.error_code == "timeout"
    assert took < 4.0  # not waiting for the slow answer
