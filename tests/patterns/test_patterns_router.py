"""Router-worker: rules first, agent second, fallback always; every decision audited."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from statecraft import Engine, Finish, Machine, RunStatus, Step
from statecraft.agents.base import Usage
from statecraft.patterns import BranchContext, RouteDecision, Rule, router


class Ticket(BaseModel):
    text: str = ""
    vip: bool = False
    route: RouteDecision | None = None
    handled_by: str | None = None


def _worker(name: str) -> Any:
    def handle(state: Any, ctx: Any) -> Finish:
        return Finish(update={"handled_by": name})
    handle.__qualname__ = f"handle_{name}"
    return handle


RULES = [
    Rule("vip_first", route="priority", when=lambda s: s.vip),
    Rule("money", route="billing", keywords=["refund", "invoice", "credit card"]),
    Rule("breakage", route="technical", keywords=["error", "crash"]),
]


def _machine(agent: Any = None, rules: list[Rule] = RULES) -> Machine[Ticket]:
    routes = {"billing": "billing", "technical": "technical", "priority": "priority"}
    return Machine("support", "1", Ticket, steps=[
        router("triage", rules=rules, routes=routes, fallback="humans", agent=agent,
               text=lambda s, c: s.text, into="route"),
        *[Step(n, _worker(n), may_finish=True, writes=["handled_by"])
          for n in ("billing", "technical", "priority", "humans")],
    ])


def _decision(engine: Engine, run_id: str) -> tuple[Any, dict[str, Any]]:
    event = next(e for e in engine.events(run_id) if e.event_type == "route.decided")
    return event, json.loads(event.payload_json or "{}")


def test_the_first_matching_rule_decides_and_the_audit_says_which_and_why(engine: Engine) -> None:
    run = engine.start(_machine(), {"text": "App shows an error after my refund"})
    assert run.state["handled_by"] == "billing"  # "money" is declared before "breakage"
    assert run.state["route"] == {"route": "billing", "step": "billing", "decided_by": "rule", "rule": "money",
                                  "matched_rules": ["money", "breakage"]}
    event, payload = _decision(engine, run.run_id)
    assert event.decision == "billing" and event.agent_name == "router:triage"
    assert payload["rule"] == "money" and payload["decided_by"] == "rule"
    assert payload["matched_rules"] == ["money", "breakage"]  # the conflict is visible
    assert payload["features"]["keyword_hits"] == {"money": ["refund"], "breakage": ["error"]}
    assert payload["features"]["text_chars"] == len("App shows an error after my refund")


def test_a_predicate_rule_routes_on_state_not_text(engine: Engine) -> None:
    run = engine.start(_machine(), {"text": "refund please", "vip": True})
    assert run.state["handled_by"] == "priority"
    assert _decision(engine, run.run_id)[1]["rule"] == "vip_first"


def test_keywords_match_whole_words_and_phrases_only(engine: Engine) -> None:
    run = engine.start(_machine(), {"text": "the errors of terror; credit\n card"})
    event, payload = _decision(engine, run.run_id)
    assert payload["features"]["keyword_hits"] == {"money": ["credit card"]}
    assert event.decision == "billing"


def test_the_agent_settles_what_no_rule_matched_and_its_usage_is_audited(engine: Engine) -> None:
    def classifier(state: Any, w: BranchContext) -> str:
        w.record_usage(Usage(tokens_in=12, tokens_out=1, model_id="tiny"))
        return "technical"

    run = engine.start(_machine(classifier), {"text": "it is slow"})
    assert run.state["handled_by"] == "technical"
    assert run.state["route"]["decided_by"] == "agent"
    call = next(e for e in engine.events(run.run_id) if e.event_type == "agent.called")
    assert call.tokens_in == 12 and call.model_id == "tiny" and call.decision == "technical"
    assert run.tokens_in == 12


@pytest.mark.parametrize(
    ("answer", "why"),
    [(None, "did not choose"), ("sales", "unknown route 'sales'"), (RuntimeError("llm down"), "router agent failed")],
)
def test_whatever_the_agent_cannot_settle_goes_to_the_mandatory_fallback(engine: Engine, answer: Any, why: str) -> None:
    def classifier(state: Any, w: BranchContext) -> Any:
        if isinstance(answer, Exception):
            raise answer
        return answer

    run = engine.start(_machine(classifier), {"text": "hello"})
    assert run.status is RunStatus.DONE and run.state["handled_by"] == "humans"
    event, payload = _decision(engine, run.run_id)
    assert event.decision == "fallback" and payload["decided_by"] == "fallback"
    assert why in (event.reason or "")


def test_without_an_agent_unmatched_input_still_reaches_the_fallback(engine: Engine) -> None:
    run = engine.start(_machine(), {"text": "hello"})
    assert run.state["handled_by"] == "humans"
    assert "no rule matched and no agent" in (_decision(engine, run.run_id)[0].reason or "")


def test_router_definitions_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="undeclared route 'sales'"):
        router("t", rules=[Rule("r", route="sales", keywords=["x"])], routes={"a": "a"}, fallback="f")
    with pytest.raises(ValueError, match="reserved"):
        router("t", rules=[], routes={"fallback": "a"}, fallback="f")
    with pytest.raises(ValueError, match="keywords or a predicate"):
        Rule("empty", route="a")
    step = router("t", rules=[], routes={"a": "x", "b": "x"}, fallback="f")
    assert step.next == ("x", "f")
