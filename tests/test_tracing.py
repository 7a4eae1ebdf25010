"""OpenTelemetry spans: one run is one tree, named and attributed per the GenAI conventions.

Uses the real OpenTelemetry SDK with its in-memory exporter, and a Claude step
through the real ``anthropic`` SDK against the loopback stand-in, under a step
timeout (the agent runs on another thread: its spans must still nest).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from statecraft import ClaudeAgent, Engine, Finish, Goto, Machine, RunStatus, Step
from statecraft.patterns import BranchCall, run_parallel
from tests.agents.test_claude_agent import CONTRACT, SONNET, Triage
from tests.support.fake_anthropic import FakeAnthropic, fake_anthropic, json_message, usage  # noqa: F401

otel_sdk = pytest.importorskip("opentelemetry.sdk.trace", reason="the OpenTelemetry SDK is a test dependency")
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


class Doc(BaseModel):
    kind: str | None = None
    confidence: int | None = None
    sources: int = 0


def _decide(state: Any, out: Triage, ctx: Any) -> Goto:
    return Goto("gather", update={"kind": out.kind, "confidence": out.confidence})


def test_one_run_is_one_trace_of_run_step_attempt_llm_and_tool_spans(
    spans: InMemorySpanExporter, fake_anthropic: FakeAnthropic, db_path: Path  # noqa: F811
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET, usage_block=usage(1000, 200)))
    triage = ClaudeAgent(
        agent_name="triage", prompt_version="triage-v1", model=SONNET, system="Triage.",
        prompt="Classify <task>.", output=Triage, decide=_decide, client=fake_anthropic.client(),
    )

    def branch(given: Any, bctx: Any) -> int:
        return 1

    def gather(state: Doc, ctx: Any) -> Finish:
        result = run_parallel(ctx, [BranchCall("a", branch), BranchCall("b", branch)])
        ctx.once("notify", lambda key: {"sent": True})
        return Finish(update={"sources": len(result.outputs)})

    m = Machine("traced", "1", Doc, [
        Step("triage", triage, next=["gather"], writes=["kind", "confidence"], timeout=timedelta(seconds=10)),
        Step("gather", gather, writes=["sources"], may_finish=True),
    ])
    with Engine(db_path) as engine:
        run = engine.start(m, "a supplier contract")
        events = {e.seq: e for e in engine.events(run.run_id)}
    assert run.status is RunStatus.DONE

    finished = spans.get_finished_spans()
    by_name: dict[str, list[Any]] = {}
    for s in finished:
        by_name.setdefault(s.name, []).append(s)
    [root] = by_name["invoke_workflow statecraft"]
    # One trace: every span of the run shares the root's trace id and reaches it by parents.
    ids = {s.context.span_id: s for s in finished}
    ours = [s for s in finished if s.context.trace_id == root.context.trace_id]
    assert len(ours) == len(finished), [s.name for s in finished if s not in ours]
    for s in ours:
        node = s
        while node.parent is not None:
            node = ids[node.parent.span_id]
        assert node is root, f"{s.name} does not lead to the run span"

    [chat] = by_name[f"chat {SONNET}"]
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.provider.name"] == "anthropic"
    assert chat.attributes["gen_ai.request.model"] == SONNET
    assert chat.attributes["gen_ai.usage.input_tokens"] == 1000
    assert chat.attributes["gen_ai.usage.output_tokens"] == 200
    attempt = ids[chat.parent.span_id]  # on another thread (step timeout), still under its attempt
    assert attempt.name == "invoke_agent triage" and attempt.attributes["statecraft.attempt"] == 1
    step = ids[attempt.parent.span_id]
    assert step.name == "step triage" and step.attributes["statecraft.run_id"] == run.run_id
    seq = step.attributes["statecraft.audit.seq"]
    assert events[seq].event_type == "step.completed" and events[seq].from_step == "triage"

    [tool] = by_name["execute_tool notify"]
    assert tool.attributes["gen_ai.tool.name"] == "notify"
    branches = by_name["invoke_agent a"] + by_name["invoke_agent b"]
    assert {ids[b.parent.span_id].name for b in branches} == {"invoke_agent gather"}
    assert {ids[tool.parent.span_id].name} == {"invoke_agent gather"}


def test_a_failed_attempt_marks_its_span_as_an_error(spans: InMemorySpanExporter, engine: Engine) -> None:
    def boom(state: Doc, ctx: Any) -> Finish:
        raise RuntimeError("the tool is down")

    run = engine.start(Machine("boom", "1", Doc, [Step("boom", boom, may_finish=True)]), {})
    assert run.status is RunStatus.FAILED
    [attempt] = [s for s in spans.get_finished_spans() if s.name == "invoke_agent boom"]
    assert attempt.attributes["error.type"] == "RuntimeError"
    assert attempt.status.status_code.name == "ERROR"


_NO_PROVIDER_THEN_ONE = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from statecraft.tracing import span

with span("step before", {"statecraft.step": "a"}) as before:
    before.set(statecraft__event_type="x")  # a no-op, not an error
    assert trace.get_current_span() is trace.INVALID_SPAN, trace.get_current_span()
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # after import: used from the next span on
with span("step after", {"statecraft.step": "b"}):
    assert trace.get_current_span().is_recording()
print([s.name for s in exporter.get_finished_spans()])
"""


def test_spans_are_skipped_until_a_tracer_provider_is_set_and_used_from_then_on() -> None:
    # Skipping spans without a provider (issue #11) must not cache the absence: a service
    # that configures OpenTelemetry after importing statecraft still gets its spans.
    # A fresh process: this test session has set a provider already (set once per process).
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _NO_PROVIDER_THEN_ONE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['step after']"
