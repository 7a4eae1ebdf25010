"""One timeout/abandon implementation (``TimedCall``) for a step's attempt and a fan-out's branches.

Each test tries to break a promise of the shared primitive: a call that ends
at the moment it is abandoned is counted once (never both ended and
abandoned), an abandoned call's result never reaches anyone, an async call is
really cancelled, the end is never reported from inside ``start()`` (the
fan-out's cap lock would deadlock), and neither a step nor a fan-out starts
an agent's thread by any other road.
"""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from statecraft import Engine, Finish, Machine, RetryPolicy, RunStatus, Step
from statecraft.execution import DaemonThreads, TimedCall, attempt_async, run_attempt
from statecraft.patterns import BranchCall, run_parallel
from tests.support.reliability import Counter

ROOT = Path(__file__).resolve().parents[1]


def test_a_call_that_ends_on_its_own_reports_its_value_once_from_its_own_thread() -> None:
    ends: list[tuple[int, Any]] = []
    call = TimedCall(lambda x: x * 2, (21,), on_end=lambda c: ends.append((threading.get_ident(), c.value)))
    call.start()
    assert call.wait(threading.Event()) is None
    assert (call.state, call.value, call.error) == ("done", 42, None)
    assert len(ends) == 1 and ends[0][1] == 42 and ends[0][0] != threading.get_ident()
    assert not call.abandon(), "a call that ended cannot be abandoned afterwards"


def test_an_abandoned_calls_result_is_dropped_and_on_end_never_called() -> None:
    release = threading.Event()
    ends: list[TimedCall] = []
    abandoned = threading.Event()
    call = TimedCall(
        lambda: release.wait(5) and "late", timeout_s=0.05, on_abandon=abandoned.set, on_end=ends.append
    )
    call.start()
    assert call.wait(threading.Event()) == "timeout"
    assert call.state == "abandoned" and abandoned.is_set()
    release.set()
    time.sleep(0.1)  # the thread returns "late" now
    assert call.value is None and call.state == "abandoned" and ends == []


def test_a_lost_lease_abandons_the_call_before_its_deadline() -> None:
    lost = threading.Event()
    call = TimedCall(lambda: time.sleep(5), timeout_s=30)
    call.start()
    threading.Timer(0.05, lost.set).start()
    began = time.monotonic()
    assert call.wait(lost) == "lost"
    assert time.monotonic() - began < 1


@pytest.mark.parametrize("seed", range(3))
def test_ending_and_abandoning_at_the_same_moment_is_one_or_the_other_never_both(seed: int) -> None:
    # 300 calls whose end races their abandonment: exactly one side wins each.
    for i in range(300):
        gate = threading.Event()
        ends: list[TimedCall] = []
        call = TimedCall(gate.wait, (1,), on_end=ends.append)
        call.start()
        if (i + seed) % 2:
            gate.set()
        won = call.abandon()
        gate.set()
        call.finished.wait(2)
        time.sleep(0.001)
        if won:
            assert call.state == "abandoned" and ends == [] and call.value is None
        else:
            assert call.state == "done" and ends == [call] and call.value is True


def test_an_abandoned_coroutine_is_cancelled_for_real() -> None:
    cancelled = threading.Event()

    async def hangs() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    call = TimedCall(hangs, timeout_s=0.05)
    call.start()
    assert call.wait(threading.Event()) == "timeout"
    assert cancelled.wait(2), "the coroutine was left running"


def test_a_coroutine_function_that_raises_when_called_ends_the_call_with_its_error() -> None:
    async def needs_an_argument(x: int) -> int:
        return x

    call = TimedCall(needs_an_argument, (), timeout_s=1)  # calling it raises TypeError
    call.start()
    assert call.wait(threading.Event()) is None
    assert isinstance(call.error, TypeError) and call.state == "done"


def test_the_end_of_an_instant_coroutine_is_never_reported_from_inside_start() -> None:
    # A coroutine that is done before start() returns must not call on_end on
    # the starting thread while start() holds its lock (a deadlock), nor at all
    # from that thread (the fan-out calls start() under its cap lock).
    starter = threading.get_ident()
    seen: list[int] = []

    async def instant() -> int:
        return 1

    for _ in range(200):
        call = TimedCall(instant, on_end=lambda c: seen.append(threading.get_ident()))
        call.start()
        assert call.finished.wait(2)
    time.sleep(0.05)
    assert len(seen) == 200 and starter not in seen


def test_a_fan_out_of_many_instant_async_branches_under_a_small_cap_neither_hangs_nor_exceeds_it(
    engine: Engine,
) -> None:
    live = 0
    most = 0
    lock = threading.Lock()

    async def branch(value: int, bctx: Any) -> int:
        nonlocal live, most
        with lock:
            live += 1
            most = max(most, live)
        await asyncio.sleep(0)
        with lock:
            live -= 1
        return value

    def fan(state: Counter, ctx: Any) -> Finish:
        result = run_parallel(ctx, [BranchCall(f"b{i}", branch, i) for i in range(60)], max_concurrency=2)
        return Finish(update={"n": sum(result.outputs.values())})

    m = Machine("fan", "1", Counter, [Step("fan", fan, writes=["n"], may_finish=True)])
    run = engine.start(m, {})
    assert run.status is RunStatus.DONE and run.state["n"] == sum(range(60))
    assert most <= 2


def test_branches_that_end_just_as_they_time_out_are_each_recorded_once(engine: Engine) -> None:
    # Branches of ~timeout length: each attempt is either a success or a
    # timeout, never both and never lost; the cap holds throughout.
    live = 0
    most = 0
    lock = threading.Lock()

    def branch(value: int, bctx: Any) -> int:
        nonlocal live, most
        with lock:
            live += 1
            most = max(most, live)
        time.sleep(0.02 + (value % 3) * 0.005)
        with lock:
            live -= 1
        return value

    def fan(state: Counter, ctx: Any) -> Finish:
        result = run_parallel(
            ctx, [BranchCall(f"b{i}", branch, i) for i in range(24)], max_concurrency=4,
            branch_timeout=timedelta(milliseconds=25),
        )
        return Finish(update={"n": len(result.branches)})

    m = Machine("fan", "1", Counter, [Step("fan", fan, writes=["n"], may_finish=True, timeout=timedelta(seconds=30))])
    run = engine.start(m, {})
    assert run.status is RunStatus.DONE and run.state["n"] == 24
    calls = [e for e in engine.events(run.run_id) if e.event_type == "agent.called"]
    by_branch: dict[str, list[str]] = {}
    for e in calls:
        by_branch.setdefault(str(e.decision), []).append(str(e.outcome))
    assert sorted(by_branch) == sorted(f"b{i}" for i in range(24))
    assert all(outcomes in (["success"], ["timeout"]) for outcomes in by_branch.values()), by_branch
    # A timed-out thread may still be running when the next attempt starts
    # (the documented hazard), so `most` may pass the cap only by those.
    timeouts = sum(o == ["timeout"] for o in by_branch.values())
    assert most <= 4 + timeouts


def test_a_retry_gets_the_input_as_given_whatever_the_abandoned_attempt_still_does_to_its_copy(
    engine: Engine,
) -> None:
    # Attempt 1 mutates its input, times out, and keeps mutating in the
    # background while attempt 2 runs: attempt 2 must see the input as given.
    seen: list[list[str]] = []
    still_running = threading.Event()

    def branch(given: dict[str, list[str]], bctx: Any) -> int:
        if bctx.attempt == 1:
            given["notes"].append("attempt 1 was here")
            for _ in range(80):  # 400 ms: runs on after it is abandoned at 200 ms
                time.sleep(0.005)
                given["notes"].append("still here")
                still_running.set()
            return -1
        time.sleep(0.05)  # overlaps the abandoned attempt's writes
        seen.append(list(given["notes"]))
        return len(given["notes"])

    def fan(state: Counter, ctx: Any) -> Finish:
        result = run_parallel(
            ctx, [BranchCall("b", branch, {"notes": ["as given"]})], branch_timeout=timedelta(milliseconds=200),
            retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=1)),
        )
        return Finish(update={"n": result.branches["b"].output})

    m = Machine("fan", "1", Counter, [Step("fan", fan, writes=["n"], may_finish=True)])
    run = engine.start(m, {})
    assert still_running.is_set()
    assert run.status is RunStatus.DONE and run.state["n"] == 1
    assert seen == [["as given"]]
    outcomes = [e.outcome for e in engine.events(run.run_id) if e.event_type == "agent.called"]
    assert outcomes == ["timeout", "success"]


def test_run_attempt_and_attempt_async_give_the_same_verdict_for_the_same_timeout() -> None:
    from statecraft.agents.base import StepContext

    async def slow(view: Any, ctx: Any) -> str:
        await asyncio.sleep(5)
        return "late"

    def make_ctx() -> StepContext:
        return StepContext(
            run_id="r", machine="m", machine_version="1", step="s", attempt=1, started_by="t",
            load_task=lambda: None, clock=lambda: datetime.now(timezone.utc),
        )

    abandoned: list[str] = []
    sync = run_attempt(slow, None, make_ctx(), timeout_s=0.05, lost=threading.Event(), abandon=lambda: abandoned.append("sync"))
    on_loop = asyncio.run(
        attempt_async(slow, None, make_ctx(), timeout_s=0.05, lost=threading.Event(), abandon=lambda: abandoned.append("async"))
    )
    assert (sync.timed_out, sync.lost, sync.outcome) == (True, False, None)
    assert (on_loop.timed_out, on_loop.lost, on_loop.outcome) == (True, False, None)
    assert abandoned == ["sync", "async"]


def test_no_agent_or_branch_thread_is_started_outside_timed_call() -> None:
    # The one implementation: execution.py's step attempt and parallel.py's
    # branches start threads only through TimedCall, whose threads come from
    # DaemonThreads (and the event loop's own).
    allowed = {"statecraft/execution.py": {"DaemonThreads", "_start_loop"}, "statecraft/patterns/parallel.py": set()}
    for rel, may in allowed.items():
        tree = ast.parse((ROOT / rel).read_text())
        starters = {
            top.name
            for top in tree.body
            if isinstance(top, (ast.ClassDef, ast.FunctionDef))
            for node in ast.walk(top)
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("threading.Thread", "Thread")
        }
        assert starters <= may, f"{rel} starts threads in {starters - may}: use TimedCall"


# -- the reused daemon threads under every plain call (DaemonThreads) ----------------------


def _on(pool: DaemonThreads, fn: Any, name: str = "statecraft-test") -> threading.Event:
    done = threading.Event()

    def call() -> None:
        fn()
        done.set()

    pool.run(call, name)
    return done


def test_a_thread_whose_call_ended_takes_the_next_call_and_carries_its_name() -> None:
    pool = DaemonThreads(idle_s=5.0)
    seen: list[tuple[int, str, bool]] = []

    def note() -> None:
        me = threading.current_thread()
        seen.append((me.ident or 0, me.name, me.daemon))

    assert _on(pool, note, "first").wait(5)
    time.sleep(0.05)  # the thread is back in the idle list
    assert _on(pool, note, "second").wait(5)
    assert seen[0][0] == seen[1][0], "the idle thread was not reused"
    assert [(name, daemon) for _, name, daemon in seen] == [("first", True), ("second", True)]


def test_a_call_that_never_returns_holds_only_its_own_thread() -> None:
    pool = DaemonThreads(idle_s=5.0)
    release = threading.Event()
    try:
        hung = _on(pool, release.wait)
        others = [_on(pool, lambda: None) for _ in range(20)]  # no cap: none waits for the hung one
        assert all(done.wait(5) for done in others)
        assert not hung.is_set()
    finally:
        release.set()


def test_idle_threads_leave_after_idle_s_and_beyond_max_idle_at_once() -> None:
    pool = DaemonThreads(idle_s=0.2, max_idle=2)
    threads: list[threading.Thread] = []
    lock = threading.Lock()
    gate = threading.Barrier(5)

    def hold() -> None:
        with lock:
            threads.append(threading.current_thread())
        gate.wait(5)  # five calls at once: five threads

    assert all(done.wait(5) for done in [_on(pool, hold) for _ in range(5)])
    deadline = time.monotonic() + 5
    while sum(t.is_alive() for t in threads) > 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(t.is_alive() for t in threads) == 2, "more idle threads kept than max_idle"
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads), "an idle thread outlived idle_s"


def test_a_call_handed_over_as_its_idle_thread_times_out_still_runs() -> None:
    # The race in _serve: the idle wait times out while run() pops the same
    # thread; the call must run (on that thread), never be lost.
    for _ in range(200):
        pool = DaemonThreads(idle_s=0.001)
        assert _on(pool, lambda: None).wait(5)
        time.sleep(0.001)
        assert _on(pool, lambda: None).wait(5), "a call handed to a leaving thread was lost"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_hand_calls_to_its_parents_idle_threads() -> None:
    # Real processes: the parent leaves idle threads in the shared pool, then
    # a child forked from it runs a TimedCall; the parent's threads do not
    # exist in the child, so a call handed to one would hang forever.
    code = """
import os, sys, threading
from statecraft.execution import TimedCall
calls = [TimedCall(lambda: 1) for _ in range(4)]
for c in calls:
    c.start()
assert all(c.wait(threading.Event()) is None for c in calls)
pid = os.fork()
if pid == 0:
    call = TimedCall(lambda: 7)
    call.start()
    ok = call.finished.wait(5) and call.value == 7
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_a_process_whose_agent_never_returns_still_exits() -> None:
    # Daemon threads, reused or not: a hung agent abandoned at its timeout
    # cannot keep the interpreter alive at exit (a real subprocess).
    code = """
import threading, time
from statecraft.execution import TimedCall
call = TimedCall(time.sleep, (3600,), timeout_s=0.05)
call.start()
assert call.wait(threading.Event()) == "timeout"
print("abandoned")
"""
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "abandoned", out.stderr
    assert time.monotonic() - started < 30
