"""Idempotent side effects: stable keys, ``ctx.once`` runs an effect once, the payment machine pays once."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from machines.payments import Bank
from machines.payments import machine as payments
from statecraft import Engine, Finish, Goto, Machine, RetryPolicy, RunStatus, Step
from tests.support.reliability import Counter, FakeClock, assert_ledger_ok

FAST = RetryPolicy(max_attempts=3, initial_interval=timedelta(milliseconds=1))


def test_once_runs_the_effect_once_across_retries_and_returns_the_record(engine: Engine) -> None:
    effects: list[str] = []
    keys: list[str] = []
    results: list[Any] = []

    def pays_then_crashes(state: Counter, ctx: Any) -> object:
        keys.append(ctx.idempotency_key("pay"))
        result = ctx.once("pay", lambda key: effects.append(key) or {"charge": "ch_1", "at": (1, 2)})
        results.append(result)
        if ctx.attempt < 3:
            raise ConnectionError("lost the answer")
        return Finish()

    m = Machine("pay", "1", Counter, [Step("s0", pays_then_crashes, may_finish=True, retry=FAST)])
    run = engine.start(m, {})
    assert run.status is RunStatus.DONE
    assert len(set(keys)) == 1 and len(keys[0]) == 64  # stable across retries
    assert effects == keys[:1]  # the effect ran once
    assert results == [{"charge": "ch_1", "at": [1, 2]}] * 3  # always the recorded (JSON) result
    events = engine.events(run.run_id)
    used = [json.loads(e.payload_json or "{}").get("effects") for e in events if e.attempt]
    assert [u[0]["replayed"] for u in used] == [False, True, True]
    assert {u[0]["idempotency_key"] for u in used} == {keys[0]}
    assert_ledger_ok(engine)


def test_a_resumed_run_gets_the_recorded_result_with_the_same_key(db_path: Path, clock: FakeClock) -> None:
    effects: list[str] = []
    keys: list[str] = []

    def pays_then_dies(state: Counter, ctx: Any) -> object:
        keys.append(ctx.idempotency_key("pay"))
        ctx.once("pay", lambda key: effects.append(key) or "ch_1")
        if len(keys) == 1:
            raise KeyboardInterrupt  # not an agent failure: the process "dies" mid-step, lease held
        return Finish()

    m = Machine("pay", "1", Counter, [Step("s0", pays_then_dies, may_finish=True)])
    with Engine(db_path, clock=clock) as first:
        run = first.start(m, {}, advance=False)
        try:
            first.advance(run.run_id)
        except KeyboardInterrupt:
            pass
    clock.advance(timedelta(minutes=2))
    with Engine(db_path, clock=clock, machines=[m]) as second:
        done = second.resume(run.run_id)
    assert done.status is RunStatus.DONE
    assert keys[0] == keys[1] and effects == [keys[0]]


def test_each_visit_of_a_looping_step_gets_its_own_key(engine: Engine) -> None:
    keys: list[str] = []

    def pay_each(state: Counter, ctx: Any) -> object:
        keys.append(ctx.once("pay", lambda key: key))
        if state.n < 2:
            return Goto("pay", update={"n": state.n + 1})
        return Finish()

    m = Machine("loop", "1", Counter, [Step("pay", pay_each, next=["pay"], may_finish=True, writes=["n"])])
    assert engine.start(m, {}).status is RunStatus.DONE
    assert len(keys) == 3 and len(set(keys)) == 3


def test_an_abandoned_attempt_cannot_start_a_side_effect(engine: Engine) -> None:
    effects: list[str] = []
    abandoned_error: list[BaseException] = []
    done = threading.Event()

    def slow_then_pays(state: Counter, ctx: Any) -> object:
        if ctx.attempt == 1:
            time.sleep(0.3)  # past the 100 ms timeout: this attempt is abandoned
            try:
                ctx.once("pay", lambda key: effects.append("late") or 1)
            except BaseException as exc:
                abandoned_error.append(exc)
            done.set()
            return Finish()
        return Finish()  # the retry decides not to pay (say, the order was cancelled)

    m = Machine("late", "1", Counter, [
        Step("s0", slow_then_pays, may_finish=True, timeout=timedelta(milliseconds=100), retry=FAST),
    ])
    run = engine.start(m, {})
    assert done.wait(5)
    assert run.status is RunStatus.DONE
    assert effects == []  # the abandoned attempt's late call never reached the service
    assert type(abandoned_error[0]).__name__ == "AttemptAbandoned"


def test_the_payment_machine_charges_each_amount_once_through_a_flaky_bank(
    engine: Engine, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("STATECRAFT_BANK_FLAKY", "0.4")  # lost answers, after the bank charged
    bank = Bank(tmp_path / "bank.db")
    amounts = [1200, 350, 99, 4000, 1]
    run = engine.start(payments, {"bank": str(bank.path), "account": "acct_1", "amounts": amounts})
    while run.status is RunStatus.FAILED:  # five lost answers in a row: the operator retries
        run = engine.retry(run.run_id, by="ops")
    assert run.status is RunStatus.DONE
    charges = bank.charges()
    assert sorted(c[2] for c in charges) == sorted(amounts)  # each amount exactly once
    assert len({c[0] for c in charges}) == len(amounts)
    assert run.state["paid"] == [c[3] for c in charges]
    assert bank.requests() >= len(amounts)
    assert_ledger_ok(engine)
