"""Leases: one engine advances a run at a time; takeovers are audited; stale engines commit nothing."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from statecraft import Engine, Finish, Goto, LeaseHeld, Machine, RunStatus, Step
from statecraft.store.txn import read_on_writer, write_tx
from tests.support.reliability import Counter, FakeClock, assert_ledger_ok, chain, event_types, finish


class Gate:
    """An agent that blocks until released, and says when it has started."""

    def __init__(self, then: object) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.then = then
        self.calls = 0

    def __call__(self, state: Counter, ctx: Any) -> object:
        self.calls += 1
        self.started.set()
        self.release.wait(10)
        return self.then


def blocking(agent: Gate) -> Machine[Counter]:
    return Machine("block", "1", Counter, [
        Step("wait", agent, next=["end"]),
        Step("end", lambda s, c: Finish(), may_finish=True),
    ])


def _in_thread(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def test_a_live_lease_keeps_a_second_engine_out(db_path: Path) -> None:
    agent = Gate(Goto("end"))
    m = blocking(agent)
    with Engine(db_path) as a, Engine(db_path, machines=[m]) as b:
        run = a.start(m, {}, advance=False)
        t, box = _in_thread(a.advance, run.run_id)
        assert agent.started.wait(5)
        with pytest.raises(LeaseHeld) as held:
            b.advance(run.run_id)
        assert held.value.owner == a.owner
        assert b.runnable() == []
        agent.release.set()
        t.join(5)
        assert box["result"].status is RunStatus.DONE
        assert "lease.taken_over" not in event_types(a, run.run_id)


def test_released_leases_free_a_hung_step_at_once_and_fence_what_it_returns(db_path: Path) -> None:
    agent = Gate(Goto("end"))
    m = blocking(agent)
    with Engine(db_path) as hung, Engine(db_path, machines=[m]) as other:
        run = hung.start(m, {}, advance=False)
        t, box = _in_thread(hung.advance, run.run_id)
        assert agent.started.wait(5)
        assert other.runnable() == []  # leased, not expired
        assert hung.release_leases() == 1  # the worker gives up on it (drain timeout)
        assert other.runnable() == [run.run_id]  # free now, not after the lease's 60 s
        agent.release.set()
        t.join(5)  # the abandoned step returns, and commits nothing
        assert hung.get(run.run_id).step == "wait" and "step.completed" not in event_types(hung, run.run_id)
        agent.started.clear()
        finished = other.advance(run.run_id)
        assert finished.status is RunStatus.DONE
        assert hung.release_leases() == 0
        assert_ledger_ok(other)


def test_an_expired_lease_is_taken_over_and_the_takeover_is_audited(db_path: Path, clock: FakeClock) -> None:
    m = blocking(Gate(Goto("end")))
    with Engine(db_path, clock=clock) as dead, Engine(db_path, clock=clock, machines=[m]) as alive:
        run = dead.start(m, {}, advance=False)
        assert dead.runner.acquire(run.run_id) is not None  # and then its process "hangs"
        with pytest.raises(LeaseHeld):
            alive.advance(run.run_id)
        clock.advance(timedelta(seconds=61))
        assert alive.runnable() == [run.run_id]
        m.steps["wait"].agent.release.set()  # type: ignore[union-attr]
        done = alive.advance(run.run_id)
        assert done.status is RunStatus.DONE
        taken = [e for e in alive.events(run.run_id) if e.event_type == "lease.taken_over"]
        assert len(taken) == 1
        assert (taken[0].actor_type, taken[0].actor_id, taken[0].to_status) == ("system", alive.owner, "RUNNING")
        assert json.loads(taken[0].payload_json or "{}")["previous_owner"] == dead.owner
        assert_ledger_ok(alive)


def test_a_lease_of_a_dead_local_process_is_taken_over_at_once(db_path: Path) -> None:
    m = blocking(Gate(Goto("end")))
    m.steps["wait"].agent.release.set()  # type: ignore[union-attr]
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{socket.gethostname()}:{int(gone.stdout)}:deadbeef"
    with Engine(db_path, machines=[m]) as engine:
        run = engine.start(m, {}, advance=False)
        with write_tx(engine.db) as tx:
            tx.run("UPDATE run SET lease_owner = :o, lease_expires_at = '2999-01-01T00:00:00.000000Z' "
                   "WHERE run_id = :r", {"o": dead_owner, "r": run.run_id})
        assert engine.runnable() == [run.run_id]
        done = engine.resume(run.run_id)
        assert done.status is RunStatus.DONE
        taken = [e for e in engine.events(run.run_id) if e.event_type == "lease.taken_over"][0]
        assert json.loads(taken.payload_json or "{}")["owner_gone"] is True
    with Engine(db_path, machines=[m], trust_local_pids=False) as careful:
        run = careful.start(m, {}, advance=False)
        with write_tx(careful.db) as tx:
            tx.run("UPDATE run SET lease_owner = :o, lease_expires_at = '2999-01-01T00:00:00.000000Z' "
                   "WHERE run_id = :r", {"o": dead_owner, "r": run.run_id})
        with pytest.raises(LeaseHeld):
            careful.resume(run.run_id)


def test_a_stalled_engine_commits_nothing_after_its_lease_was_taken_over(db_path: Path, clock: FakeClock) -> None:
    first_call = threading.Event()
    release = threading.Event()
    calls: list[int] = []

    def stalls_once(state: Counter, ctx: Any) -> object:
        calls.append(len(calls))
        if len(calls) == 1:
            first_call.set()
            release.wait(10)  # e.g. a GC pause or a frozen VM: no renewals either
            return Goto("end", update={"n": 666})
        return Goto("end")

    m = Machine("stall", "1", Counter, [
        Step("wait", stalls_once, next=["end"], writes=["n"]),
        Step("end", lambda s, c: Finish(), may_finish=True),
    ])
    with Engine(db_path, clock=clock) as stalled, Engine(db_path, clock=clock, machines=[m]) as rescuer:
        run = stalled.start(m, {}, advance=False)
        t, box = _in_thread(stalled.advance, run.run_id)
        assert first_call.wait(5)  # the stalled engine is inside the agent call
        clock.advance(timedelta(minutes=5))  # its lease expires without renewal
        rescued = rescuer.advance(run.run_id)
        release.set()  # the stalled engine wakes up and tries to commit
        t.join(5)
        assert "error" not in box
        assert rescued.status is RunStatus.DONE
        assert len(calls) == 2  # at-least-once: both engines ran the step …
        events = rescuer.events(run.run_id)
        completed = [e for e in events if e.event_type == "step.completed"]
        assert len(completed) == 1  # … and only the rescuer's call committed
        assert rescuer.get(run.run_id).state["n"] == 0
        assert box["result"].status is RunStatus.DONE  # the stalled engine saw the run moved on
        assert_ledger_ok(rescuer)


def test_the_lease_is_renewed_while_a_long_step_runs(db_path: Path) -> None:
    agent = Gate(Goto("end"))
    m = blocking(agent)
    with Engine(db_path, lease=timedelta(milliseconds=300)) as a, Engine(db_path, machines=[m]) as b:
        run = a.start(m, {}, advance=False)
        t, box = _in_thread(a.advance, run.run_id)
        assert agent.started.wait(5)
        first = a.get(run.run_id).lease_expires_at
        time.sleep(1.0)  # more than three lease periods
        assert a.get(run.run_id).lease_expires_at != first
        with pytest.raises(LeaseHeld):
            b.advance(run.run_id)
        agent.release.set()
        t.join(5)
        assert box["result"].status is RunStatus.DONE
        assert box["result"].lease_owner is None  # released at the terminal status


def test_a_run_cancelled_during_its_step_commits_nothing_more(engine: Engine) -> None:
    agent = Gate(Goto("end", update={"n": 1}))
    m = blocking(agent)
    run = engine.start(m, {}, advance=False)
    t, box = _in_thread(engine.advance, run.run_id)
    assert agent.started.wait(5)
    engine.cancel(run.run_id, by="ops", reason="customer withdrew")
    agent.release.set()
    t.join(5)
    final = engine.get(run.run_id)
    assert (final.status, final.error_code, final.state["n"]) == (RunStatus.FAILED, "cancelled", 0)
    assert event_types(engine, run.run_id)[-1] == "run.cancelled"
    assert_ledger_ok(engine)


def test_a_step_that_keeps_killing_its_process_fails_the_run_as_a_crash_loop(db_path: Path, clock: FakeClock) -> None:
    m = blocking(Gate(Goto("end")))
    with Engine(db_path, clock=clock, crash_loop_limit=3, machines=[m]) as engine:
        run = engine.start(m, {}, advance=False)
        for i in range(4):  # four engines take the step, each "dies" inside it
            with Engine(db_path, clock=clock) as doomed:
                doomed.runner.acquire(run.run_id)
            clock.advance(timedelta(minutes=2))
        final = engine.advance(run.run_id)
        assert (final.status, final.error_code) == (RunStatus.FAILED, "crash_loop")
        assert event_types(engine, run.run_id).count("lease.taken_over") == 4


def test_a_step_outcome_commits_only_under_the_lease_even_when_the_run_did_not_move(db_path: Path) -> None:
    # The run-position fence (run_seq) alone is not enough: a lease can change
    # hands without a ledger event (an operator clears a stuck lease, a second
    # engine then takes the free lease). The stale engine's outcome must still
    # commit nothing; only the lease-owner fence on the outcome's UPDATE says so.
    import sqlite3

    entered = threading.Event()
    release = threading.Event()
    second_inside = threading.Event()
    second_release = threading.Event()
    calls: list[str] = []

    def agent(state: Counter, ctx: Any) -> object:
        calls.append(ctx.run_id)
        if len(calls) == 1:
            entered.set()
            release.wait(10)
            return Goto("end", update={"n": 666})
        second_inside.set()
        second_release.wait(10)
        return Goto("end", update={"n": 1})

    m = Machine("fence", "1", Counter, [
        Step("wait", agent, next=["end"], writes=["n"]),
        Step("end", lambda s, c: Finish(), may_finish=True),
    ])
    with Engine(db_path, machines=[m]) as stale, Engine(db_path, machines=[m]) as second:
        run = stale.start(m, {}, advance=False)
        t1, box1 = _in_thread(stale.advance, run.run_id)
        assert entered.wait(5)
        seq_before = stale.get(run.run_id).run_seq
        raw = sqlite3.connect(db_path)
        raw.execute("UPDATE run SET lease_owner = NULL, lease_expires_at = NULL WHERE run_id = ?", (run.run_id,))
        raw.commit()
        raw.close()
        t2, box2 = _in_thread(second.advance, run.run_id)
        assert second_inside.wait(5)
        assert second.get(run.run_id).run_seq == seq_before  # no ledger event moved the run
        release.set()  # the stale engine returns its outcome and tries to commit
        t1.join(5)
        assert "error" not in box1, box1
        assert [e.event_type for e in second.events(run.run_id)].count("step.completed") == 0
        second_release.set()
        t2.join(5)
        done = second.get(run.run_id)
        assert done.status is RunStatus.DONE and done.state["n"] == 1
        completed = [e for e in second.events(run.run_id) if e.event_type == "step.completed"]
        assert len(completed) == 1
        assert_ledger_ok(second)


def _writing_commits(engine: Engine, action: Any) -> int:
    """How many transactions on the engine's writer connection changed a row while ``action()`` ran.

    A transaction that changed nothing commits without writing the WAL (no
    fsync); each one that changed a row costs a commit on disk.
    """
    raw = read_on_writer(engine.db, lambda tx: tx.raw)
    assert raw is not None
    marks: list[int] = []
    commits = 0

    def trace(sql: str) -> None:
        nonlocal commits
        if sql.startswith("BEGIN"):
            marks.append(raw.total_changes)
        elif sql == "COMMIT" and marks:
            commits += raw.total_changes != marks.pop()

    raw.set_trace_callback(trace)
    try:
        action()
    finally:
        raw.set_trace_callback(None)
    return commits


def test_start_takes_the_lease_in_the_runs_own_transaction(db_path: Path) -> None:
    # Issue #11: created, started and leased in one commit, then one commit per
    # step; taking the lease by a transaction of its own cost an fsync per run.
    one_step = Machine("one", "1", Counter, [Step("count", lambda s, c: Finish(update={"n": s.n + 1}), writes=["n"], may_finish=True)])
    with Engine(db_path) as engine:
        runs: list[Any] = []
        commits = _writing_commits(engine, lambda: runs.append(engine.start(one_step, {"n": 1})))
        assert runs[0].status is RunStatus.DONE and runs[0].state["n"] == 2
        assert commits == 2  # run.created + run.started + the lease; run.completed
        assert runs[0].lease_owner is None  # a finished run holds no lease
        # Without advancing, start takes no lease: a worker may have the run at once.
        idle = engine.start(one_step, {"n": 1}, advance=False)
        assert idle.status is RunStatus.RUNNING and idle.lease_owner is None
        assert_ledger_ok(engine)


def test_approve_retry_and_start_created_take_the_lease_in_their_own_transaction(db_path: Path) -> None:
    from statecraft import RequestApproval

    def ask(state: Counter, ctx: Any) -> object:
        return RequestApproval("continue?", resume_at="finish")

    gated = Machine("gated_lease", "1", Counter, steps=[
        Step("ask", ask, next=["finish"]),
        Step("finish", lambda s, c: Finish(update={"n": 1}), may_finish=True, writes=["n"]),
    ])
    one_step = Machine("one_b", "1", Counter, [Step("count", lambda s, c: Finish(update={"n": s.n + 1}), writes=["n"], may_finish=True)])
    with Engine(db_path) as engine:
        waiting = engine.start(gated, {}).run_id
        rejected = engine.start(gated, {}).run_id
        engine.reject(rejected, by="bob@example.com", reason="not yet")
        idle = engine.create(one_step, {}).run_id
        done: list[Any] = []
        # Each: the request's event and the lease in one commit, then the step that finishes.
        assert _writing_commits(engine, lambda: done.append(engine.approve(waiting, by="alice@example.com"))) == 2
        assert _writing_commits(engine, lambda: done.append(engine.start_created(idle))) == 2
        # A retry re-runs the gate step, which asks again: one commit for the retry and its lease, one for the ask.
        assert _writing_commits(engine, lambda: done.append(engine.retry(rejected, by="ops@example.com"))) == 2
        assert [r.status for r in done] == [RunStatus.DONE, RunStatus.DONE, RunStatus.WAITING_FOR_APPROVAL]
        assert all(r.lease_owner is None for r in done)
        assert_ledger_ok(engine)


def test_a_lease_of_its_own_with_under_half_its_term_left_is_renewed_before_the_step(db_path: Path) -> None:
    clock = FakeClock()
    seen: list[str | None] = []

    def look(state: Counter, ctx: Any) -> Finish:
        seen.append(engine.get(ctx.run_id).lease_expires_at)
        return Finish()

    machine = Machine("look", "1", Counter, [Step("look", look, may_finish=True)])
    with Engine(db_path, clock=clock, lease=timedelta(seconds=60)) as engine:
        run_id = engine.start(machine, {}, advance=False).run_id
        with write_tx(engine.db) as tx:  # this engine's lease, 20 of its 60 s left
            tx.run(
                "UPDATE run SET lease_owner = :me, lease_expires_at = '2026-01-01T00:00:20.000000Z' WHERE run_id = :r",
                {"me": engine.owner, "r": run_id},
            )
        assert engine.advance(run_id).status is RunStatus.DONE
    assert seen == ["2026-01-01T00:01:00.000000Z"]  # renewed to a full term before the agent ran


_STARTS_THEN_DIES = """
import os, signal, sys
from statecraft import Engine
from statecraft.runner import StepRunner
from tests.support.reliability import chain, finish

def die(self, run_id):  # after start's commit, before advancing takes a step
    os.kill(os.getpid(), signal.SIGKILL)

StepRunner.begin = die
Engine(sys.argv[1]).start(chain(finish), {"n": 41})
"""


def test_a_run_whose_starter_is_killed_right_after_committing_it_is_taken_over_at_once(db_path: Path) -> None:
    # The one new window of taking the lease in start's transaction: kill -9
    # between that commit and the first step. The run is RUNNING under a dead
    # process's lease; a worker on this host must not wait out its 60 s.
    died = subprocess.run(
        [sys.executable, "-c", _STARTS_THEN_DIES, str(db_path)], cwd=Path(__file__).resolve().parents[2],
        capture_output=True, text=True, timeout=60,
    )
    assert died.returncode == -9, died.stderr
    with Engine(db_path, machines=[chain(finish)]) as engine:
        [left] = engine.list()
        assert left.status is RunStatus.RUNNING and left.lease_owner is not None
        assert left.lease_owner != engine.owner
        started = time.monotonic()
        done = engine.advance(left.run_id)
        assert time.monotonic() - started < 10  # not the lease's 60 s
        assert done.status is RunStatus.DONE and done.state["n"] == 41
        assert "lease.taken_over" in event_types(engine, left.run_id)
        assert_ledger_ok(engine)
