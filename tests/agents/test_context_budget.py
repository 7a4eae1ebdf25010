"""Context budgeting: a per-call input-token budget, cut by a declared policy, or refused before sending."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statecraft import DefinitionError, Engine, RunStatus
from statecraft.agents.context import ContextBudget, estimate_tokens, fit
from tests.agents.claude_machines import CONTRACT, SONNET, Doc, agent, machine, quick_retries
from tests.support.fake_anthropic import FakeAnthropic, json_message

LONG_TASK = "Clause. " * 8000  # ~64,000 characters: ~21,000 estimated tokens
NOTES = "Earlier reviewer notes. " * 2000  # ~48,000 characters


def _payload(event: Any) -> dict[str, Any]:
    return json.loads(event.payload_json or "{}")  # type: ignore[no-any-return]


def _call(engine: Engine, run_id: str) -> Any:
    [call] = [e for e in engine.events(run_id) if e.event_type == "agent.called"]
    return call


def test_a_call_over_budget_is_cut_per_the_policy_and_the_cut_is_recorded(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET))
    budget = ContextBudget(max_input_tokens=2_000, cut=("task",))
    run = engine.start(machine(agent(fake_anthropic, context_budget=budget)), LONG_TASK)

    assert run.status is RunStatus.DONE
    sent = fake_anthropic.last.body
    assert estimate_tokens(sent) <= 2_000
    assert "task cut by statecraft to meet the context budget" in sent["messages"][0]["content"]
    context = _payload(_call(engine, run.run_id))["context"]
    assert context["budget_tokens"] == 2_000 and context["tokens_sent"] <= 2_000 < context["tokens_before"]
    [cut] = context["cuts"]
    assert cut["part"] == "task" and cut["chars_before"] == len(LONG_TASK) > cut["chars_after"] > 0


def test_state_fields_give_way_first_when_the_policy_lists_them_first(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET))
    budget = ContextBudget(max_input_tokens=1_500, cut=("state.notes", "task"))
    m = machine(agent(fake_anthropic, context_budget=budget), initial=lambda task: Doc(title="Acme MSA", notes=NOTES))

    run = engine.start(m, "Review the Acme MSA.")

    content = fake_anthropic.last.body["messages"][0]["content"]
    assert "Acme MSA" in content and "state.notes cut by statecraft" in content
    assert "task cut" not in content  # the notes were enough
    assert [c["part"] for c in _payload(_call(engine, run.run_id))["context"]["cuts"]] == ["state.notes"]


def test_a_call_still_over_budget_fails_before_sending_and_is_not_retried(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    budget = ContextBudget(max_input_tokens=2_000, cut=())  # nothing may be cut
    m = machine(agent(fake_anthropic, context_budget=budget), retry=quick_retries(3))

    run = engine.start(m, LONG_TASK)

    assert (run.status, run.error_code) == (RunStatus.FAILED, "context_over_budget")
    assert "over the context budget of 2000" in (run.reason or "") and "not sent" in (run.reason or "")
    assert fake_anthropic.requests == []  # failed before sending
    assert run.tokens_in == 0


def test_a_call_within_budget_is_sent_uncut(fake_anthropic: FakeAnthropic, engine: Engine) -> None:
    fake_anthropic.push(json_message(CONTRACT, model=SONNET))
    budget = ContextBudget(max_input_tokens=50_000)
    run = engine.start(machine(agent(fake_anthropic, context_budget=budget)), LONG_TASK)

    assert LONG_TASK.strip() in fake_anthropic.last.body["messages"][0]["content"]
    assert _payload(_call(engine, run.run_id))["context"]["cuts"] == []


@settings(max_examples=40, deadline=None, derandomize=True)
@given(size=st.integers(min_value=0, max_value=5_000), budget=st.integers(min_value=40, max_value=1_500))
def test_the_cut_keeps_the_longest_prefix_that_fits(size: int, budget: int) -> None:
    text = "".join(random.Random(size).choice("abcdefgh éß ") for _ in range(size))

    def build(task: str, state: Any) -> dict[str, Any]:
        return {"system": "S", "messages": [{"role": "user", "content": f"<task>{task}</task>"}]}

    fitted = fit(ContextBudget(max_input_tokens=budget), estimate_tokens, build, text, {})

    if estimate_tokens(build(text, {})) <= budget:
        assert fitted.fits and fitted.cuts == ()
    elif fitted.fits:
        [cut] = fitted.cuts
        assert fitted.tokens <= budget
        marker = fitted.params["messages"][0]["content"][len("<task>") + cut.chars_after:]
        one_more = text[: cut.chars_after + 1] + marker[: -len("</task>")]
        assert cut.chars_after == len(text) or estimate_tokens(build(one_more, {})) > budget
    else:
        assert fitted.tokens > budget  # not even an empty task fits: refused, never sent


@pytest.mark.parametrize("bad", [
    {"max_input_tokens": 0}, {"max_input_tokens": 100, "cut": ("everything",)},
    {"max_input_tokens": 100, "cut": ("state.",)}, {"max_input_tokens": 100, "cut": ("task", "task")},
])
def test_a_bad_budget_is_refused_when_declared(bad: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError):
        ContextBudget(**bad)


def test_the_estimate_errs_on_the_safe_side_for_english_text() -> None:
    # Claude's tokenizer averages about 3.5-4 characters per English token.
    text = "The supplier shall deliver the goods within thirty days of the purchase order. " * 50
    assert estimate_tokens({"messages": [{"role": "user", "content": text}]}) >= len(text) / 3.5
