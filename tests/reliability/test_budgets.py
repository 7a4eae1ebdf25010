"""Budgets and loop bounds: strict defaults, every limit stops the run before the next agent call."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest

from statecraft import Engine, Finish, Goto, Machine, RunError, RunStatus, Step, Usage
from statecraft.policy import Budget
from tests.support.reliability import Counter, assert_ledger_ok


def ping(state: Counter, ctx: Any) -> object:
    return Goto("pong", update={"n": state.n + 1})


def pong(state: Counter, ctx: Any) -> object:
    return Goto("ping") if state.n < 10_000 else Finish()


def thrashing(**kwargs: Any) -> Machine[Counter]:
    """ping <-> pong forever (until n reaches 10,000): only a bound stops it."""
    return Machine("thrash", "1", Counter, [
        Step("ping", ping, next=["pong"], writes=["n"]),
        Step("pong", pong, next=["ping"], may_finish=True),
    ], **kwargs)


def test_a_machine_that_sets_nothing_is_still_bounded(engine: Engine) -> None:
    run = engine.start(thrashing(), {})
    assert (run.status, run.error_code) == (RunStatus.FAILED, "budget_exceeded")
    assert run.steps_taken == 100
    last = engine.events(run.run_id)[-1]
    assert (last.event_type, last.actor_type, last.decision) == ("run.failed", "system", "budget:max_steps")
    assert json.loads(last.payload_json or "{}") == {"budget": "max_steps", "limit": 100, "used": 100, "step": "ping"}


def test_max_visits_catches_a_to_b_to_a_thrashing_early(engine: Engine) -> None:
    run = engine.start(thrashing(budget=Budget(max_visits=3)), {})
    assert (run.status, run.error_code) == (RunStatus.FAILED, "budget_exceeded")
    assert run.steps_taken == 6  # ping, pong three times each
    assert "max_visits budget of 3" in (run.reason or "")


class Spender:
    """Reports ``tokens`` and ``cost`` per call and loops on itself."""

    def __init__(self, tokens: int, cost: int) -> None:
        self.tokens, self.cost, self.calls = tokens, cost, 0

    def __call__(self, state: Counter, ctx: Any) -> object:
        self.calls += 1
        ctx.record_usage(Usage(tokens_in=self.tokens, tokens_out=0, cost_micros=self.cost,
                               model_provider="anthropic", model_id="claude-test"))
        return Goto("spend", update={"n": state.n + 1})


def spending(agent: Spender, budget: Budget) -> Machine[Counter]:
    return Machine("spend", "1", Counter, [
        Step("spend", agent, next=["spend", "done"], writes=["n"]),
        Step("done", lambda s, c: Finish(), may_finish=True),
    ], budget=budget)


@pytest.mark.parametrize(
    ("budget", "name", "calls"),
    [(Budget(max_tokens=1000), "max_tokens", 4), (Budget(max_cost_micros=2_000), "max_cost_micros", 4)],
)
def test_token_and_cost_budgets_stop_the_run_before_the_next_call(
    engine: Engine, budget: Budget, name: str, calls: int
) -> None:
    agent = Spender(tokens=300, cost=600)
    run = engine.start(spending(agent, budget), {})
    assert (run.status, run.error_code) == (RunStatus.FAILED, "budget_exceeded")
    assert agent.calls == calls  # the call that crossed is the last one made
    assert json.loads(engine.events(run.run_id)[-1].payload_json or "{}")["budget"] == name


def test_a_budget_gate_asks_a_human_and_approval_with_a_new_limit_continues(engine: Engine) -> None:
    agent = Spender(tokens=300, cost=0)
    m = spending(agent, Budget(max_tokens=1000, on_exceeded="request_approval"))
    run = engine.start(m, {})
    assert run.status is RunStatus.WAITING_FOR_APPROVAL and agent.calls == 4
    assert run.pending is not None and run.pending.resume_at == "spend"
    asked = engine.events(run.run_id)[-1]
    assert (asked.event_type, asked.actor_type, asked.decision) == ("approval.requested", "system", "extend_budget:max_tokens")
    with pytest.raises(RunError, match="--extend max_tokens="):
        engine.approve(run.run_id, by="finance@example.com")
    with pytest.raises(RunError, match="does not exceed"):
        engine.approve(run.run_id, by="finance@example.com", extend={"max_tokens": 1000})
    again = engine.approve(run.run_id, by="finance@example.com", extend={"max_tokens": 2000}, comment="worth it")
    assert again.status is RunStatus.WAITING_FOR_APPROVAL and agent.calls == 7  # 2100 >= 2000: asks again
    granted = [e for e in engine.events(run.run_id) if e.event_type == "approval.granted"][0]
    assert json.loads(granted.payload_json or "{}")["budget"] == {"max_tokens": 2000}
    assert granted.actor_id == "finance@example.com"
    failed = engine.reject(run.run_id, by="finance@example.com", reason="enough")
    assert failed.status is RunStatus.FAILED
    assert_ledger_ok(engine)


def test_a_run_deadline_abandons_a_hung_agent_and_fails_the_run(engine: Engine) -> None:
    def hangs(state: Counter, ctx: Any) -> object:
        time.sleep(2)
        return Finish()

    m = Machine("slow", "1", Counter, [Step("s0", hangs, may_finish=True)],
                budget=Budget(deadline=timedelta(milliseconds=200)))
    started = time.monotonic()
    run = engine.start(m, {})
    assert time.monotonic() - started < 1.5
    assert (run.status, run.error_code) == (RunStatus.FAILED, "budget_exceeded")
    last = engine.events(run.run_id)[-1]
    assert (last.outcome, last.attempt) == ("timeout", 1)
    assert json.loads(last.payload_json or "{}")["budget"] == "deadline"
    assert_ledger_ok(engine)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Budget(max_tokens=0)
    with pytest.raises(ValueError):
        Budget(deadline=timedelta(0))
    with pytest.raises(ValueError):
        Budget(on_exceeded="shrug")  # type: ignore[arg-type]
