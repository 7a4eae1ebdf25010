"""``async def`` agents and fan-out branches: awaited on one event loop, cancelled for real at a timeout."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from typing import Any

from statecraft import Engine, Finish, Machine, RunStatus, Step
from statecraft.patterns import BranchCall, Quorum, run_parallel
from tests.support.reliability import Counter, assert_ledger_ok


def test_an_async_agent_is_awaited_and_its_outcome_committed(engine: Engine) -> None:
    async def counts(state: Counter, ctx: Any) -> Finish:
        await asyncio.sleep(0)
        return Finish(update={"n": state.n + 41}, reason="awaited")

    m = Machine("async", "1", Counter, [Step("count", counts, writes=["n"], may_finish=True)])
    run = engine.start(m, {"n": 1})
    assert run.status is RunStatus.DONE and run.state["n"] == 42
    assert engine.events(run.run_id)[-1].reason == "awaited"


def test_an_object_with_an_async_call_is_an_async_agent(engine: Engine) -> None:
    class Agent:
        agent_name = "async.object"

        async def __call__(self, state: Counter, ctx: Any) -> Finish:
            return Finish(update={"n": 7})

    m = Machine("async", "1", Counter, [Step("count", Agent(), writes=["n"], may_finish=True)])
    assert engine.start(m, {}).state["n"] == 7


def test_a_step_timeout_cancels_an_async_agent_for_real(engine: Engine) -> None:
    cancelled = threading.Event()

    async def hangs(state: Counter, ctx: Any) -> Finish:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Finish()

    m = Machine("async", "1", Counter, [
        Step("hang", hangs, may_finish=True, timeout=timedelta(milliseconds=200)),
    ])
    run = engine.start(m, {})
    assert run.status is RunStatus.FAILED and run.error_code == "timeout"
    assert cancelled.wait(5), "the coroutine was left running after its timeout"
    assert_ledger_ok(engine)


def test_an_async_agent_that_raises_is_retried_like_any_agent(engine: Engine) -> None:
    from statecraft import RetryPolicy

    calls: list[int] = []

    async def flaky(state: Counter, ctx: Any) -> Finish:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("try again")
        return Finish(update={"n": 1})

    m = Machine("async", "1", Counter, [
        Step("flaky", flaky, writes=["n"], may_finish=True,
             retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(0))),
    ])
    run = engine.start(m, {})
    assert run.status is RunStatus.DONE and calls == [1, 2]


def test_async_fan_out_branches_run_concurrently_on_one_event_loop(engine: Engine) -> None:
    loops: set[int] = set()
    running, peak = [0], [0]
    lock = threading.Lock()

    async def branch(given: Any, bctx: Any) -> int:
        loops.add(id(asyncio.get_running_loop()))
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.2)
        with lock:
            running[0] -= 1
        return int(given)

    def fan(state: Counter, ctx: Any) -> Finish:
        result = run_parallel(ctx, [BranchCall(f"b{i}", branch, input=i) for i in range(8)], max_concurrency=8)
        return Finish(update={"n": sum(result.outputs.values())})

    m = Machine("async", "1", Counter, [Step("fan", fan, writes=["n"], may_finish=True)])
    run = engine.start(m, {})
    assert run.status is RunStatus.DONE and run.state["n"] == sum(range(8))
    assert len(loops) == 1
    assert peak[0] == 8  # all eight were awaiting at once
    called = [e for e in engine.events(run.run_id) if e.event_type == "agent.called"]
    assert len(called) == 8 and all(e.outcome == "success" for e in called)


def test_an_abandoned_async_branch_is_cancelled(engine: Engine) -> None:
    cancelled = threading.Event()
    slow_started = threading.Event()

    async def quick(given: Any, bctx: Any) -> str:
        while not slow_started.is_set():  # so the slow one is inside its await when abandoned
            await asyncio.sleep(0.01)
        return "ok"

    async def slow(given: Any, bctx: Any) -> str:
        slow_started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "late"

    def fan(state: Counter, ctx: Any) -> Finish:
        started = time.monotonic()
        result = run_parallel(
            ctx, [BranchCall("quick", quick), BranchCall("slow", slow)], completion=Quorum(1),
        )
        assert time.monotonic() - started < 10
        assert result.branches["slow"].status == "cancelled"
        return Finish()

    m = Machine("async", "1", Counter, [Step("fan", fan, may_finish=True)])
    assert engine.start(m, {}).status is RunStatus.DONE
    assert cancelled.wait(5), "the abandoned async branch kept running"
