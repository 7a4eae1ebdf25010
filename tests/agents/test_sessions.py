"""Session agents: a conversation kept across turns and runs, bounded, with its own audit events."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from statecraft import Engine, RunStatus, StepContext, StoreError
from statecraft._time import utc_now
from statecraft.agents.session import Exchange, Session
from statecraft.audit.verify import verify_ledger
from tests.agents.claude_machines import CONTRACT, SONNET, agent, machine, quick_retries, route
from tests.support.fake_anthropic import FakeAnthropic, json_message

BY_CUSTOMER = Session(key=lambda state, ctx: state.customer)


def _answer(n: int) -> Any:
    return json_message({**CONTRACT, "reason": f"answer {n}"}, model=SONNET)


def _roles(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, a short mark of the content) of each message sent."""
    out = []
    for m in body["messages"]:
        content = m["content"]
        mark = json.loads(content)["reason"] if m["role"] == "assistant" else content.split("\n")[1][:40]
        out.append((m["role"], mark))
    return out


def _events(engine: Engine, run_id: str, kind: str) -> list[Any]:
    return [e for e in engine.events(run_id) if e.event_type == kind]


def test_a_conversation_persists_across_runs_under_its_session_id(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(*[_answer(n) for n in (1, 2, 3)])
    m = machine(agent(fake_anthropic, session=BY_CUSTOMER))

    first = engine.start(m, {"customer": "c-1", "title": "first"})
    second = engine.start(m, {"customer": "c-1", "title": "second"})
    other = engine.start(m, {"customer": "c-2", "title": "other"})

    assert [r.status for r in (first, second, other)] == [RunStatus.DONE] * 3
    one, two, three = (r.body for r in fake_anthropic.requests)
    assert len(one["messages"]) == 1
    assert [role for role, _ in _roles(two)] == ["user", "assistant", "user"]
    assert _roles(two)[1] == ("assistant", "answer 1") and '"first"' in two["messages"][0]["content"]
    assert len(three["messages"]) == 1  # another session, another conversation
    [appended] = _events(engine, second.run_id, "session.appended")
    detail = json.loads(appended.payload_json or "{}")
    assert (detail["session_id"], detail["seq"], detail["history_exchanges"]) == ("c-1", 2, 1)
    [call] = _events(engine, second.run_id, "agent.called")
    assert json.loads(call.payload_json or "{}")["session"] == {"session_id": "c-1", "exchanges_sent": [1], "summary": False}
    assert appended.run_seq == call.run_seq + 1  # the exchange after the call that made it
    assert verify_ledger(engine.db).ok


def test_a_retried_attempt_replaces_its_exchange_instead_of_adding_one(
    fake_anthropic: FakeAnthropic, engine: Engine, db_path: Path
) -> None:
    fake_anthropic.push(_answer(1), _answer(2))
    failures = iter([RuntimeError("decide crashed once")])

    def flaky(state: Any, out: Any, ctx: StepContext) -> Any:
        for error in failures:
            raise error
        return route(state, out, ctx)

    m = machine(agent(fake_anthropic, session=BY_CUSTOMER, decide=flaky), retry=quick_retries(2))
    run = engine.start(m, {"customer": "c-9", "title": "retried"})

    assert run.status is RunStatus.DONE
    assert len(fake_anthropic.requests[1].body["messages"]) == 1  # its own first exchange is not history
    conn = sqlite3.connect(db_path)
    rows = conn.execute("SELECT seq, assistant_text FROM session_entry WHERE session_id = 'c-9'").fetchall()
    conn.close()
    assert [(seq, json.loads(text)["reason"]) for seq, text in rows] == [(1, "answer 2")]
    # The ledger shows both writes of seq 1: the failed attempt's, then its replacement.
    assert [json.loads(e.payload_json or "{}")["seq"] for e in _events(engine, run.run_id, "session.appended")] == [1, 1]


def _summarize(previous: str | None, exchanges: Sequence[Exchange]) -> str:
    folded = ", ".join(json.loads(e.assistant)["reason"] for e in exchanges)
    return f"{previous}; then {folded}" if previous else f"so far: {folded}"


def test_over_its_bound_the_older_exchanges_are_summarized_by_the_hook(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(*[_answer(n) for n in range(1, 6)])
    session = Session(key=lambda state, ctx: state.customer, max_exchanges=2, keep=1, summarize=_summarize)
    m = machine(agent(fake_anthropic, session=session))

    runs = [engine.start(m, {"customer": "c-3", "title": f"turn {n}"}) for n in range(1, 6)]

    fourth, fifth = fake_anthropic.requests[3].body, fake_anthropic.requests[4].body
    assert "<conversation_summary>\nso far: answer 1, answer 2\n</conversation_summary>" in fourth["system"]
    assert [mark for role, mark in _roles(fourth) if role == "assistant"] == ["answer 3"]
    assert [mark for role, mark in _roles(fifth) if role == "assistant"] == ["answer 3", "answer 4"]
    assert "so far: answer 1, answer 2" in fifth["system"]  # the summary stays until the next one
    [summarized] = _events(engine, runs[3].run_id, "session.summarized")
    detail = json.loads(summarized.payload_json or "{}")
    assert (detail["method"], detail["covers_through"], detail["exchanges_folded"]) == ("summarize", 2, [1, 2])
    assert summarized.decision == "summarize" and summarized.output_sha256 is not None


def test_without_a_hook_the_older_exchanges_are_dropped(fake_anthropic: FakeAnthropic, engine: Engine) -> None:
    fake_anthropic.push(*[_answer(n) for n in range(1, 5)])
    session = Session(key=lambda state, ctx: state.customer, max_exchanges=2, keep=1)
    m = machine(agent(fake_anthropic, session=session))

    runs = [engine.start(m, {"customer": "c-4", "title": f"turn {n}"}) for n in range(1, 5)]

    fourth = fake_anthropic.requests[3].body
    assert "<conversation_summary>" not in fourth["system"]
    assert [mark for role, mark in _roles(fourth) if role == "assistant"] == ["answer 3"]
    [dropped] = _events(engine, runs[3].run_id, "session.summarized")
    assert json.loads(dropped.payload_json or "{}")["method"] == "drop"


def test_a_token_bound_compacts_too(fake_anthropic: FakeAnthropic, engine: Engine) -> None:
    fake_anthropic.push(*[_answer(n) for n in range(1, 4)])
    session = Session(key=lambda state, ctx: state.customer, max_exchanges=20, max_tokens=100, keep=1)
    m = machine(agent(fake_anthropic, session=session))

    for n in range(1, 4):
        engine.start(m, {"customer": "c-5", "title": f"turn {n} " + "x" * 300})

    assert len(fake_anthropic.requests[2].body["messages"]) == 3  # one exchange kept, then the new message


def test_a_session_agent_outside_an_engine_says_it_needs_one(fake_anthropic: FakeAnthropic) -> None:
    from tests.agents.claude_machines import Doc

    ctx = StepContext(run_id="r", machine="m", machine_version="1", step="triage", attempt=1,
                      started_by="t", load_task=lambda: "x", clock=utc_now)
    with pytest.raises(StoreError, match="engine's database"):
        agent(fake_anthropic, session=BY_CUSTOMER)(Doc(), ctx)
    assert fake_anthropic.requests == []


@pytest.mark.parametrize("bad", [
    {"max_exchanges": 0}, {"keep": 5, "max_exchanges": 2}, {"max_tokens": 0}, {"summarize": "yes"},
])
def test_a_bad_session_is_refused_when_declared(bad: dict[str, Any]) -> None:
    from statecraft import DefinitionError

    with pytest.raises(DefinitionError):
        Session(key=lambda s, c: "x", **bad)
