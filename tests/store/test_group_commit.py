"""Group commit: units from several threads share one transaction, each under its own savepoint.

A unit that raises rolls back alone; every caller returns only once the
transaction holding its unit has committed (so an acknowledgement still means
durable); the ledger stays one chain.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from statecraft import Database, Engine, Finish, Goto, Machine, RunStatus, Step
from statecraft.errors import StoreError
from statecraft.store.txn import Tx, group_write
from tests.support.reliability import Counter, assert_ledger_ok


def _put(key: str, fail: bool = False) -> Any:
    def work(tx: Tx) -> str:
        tx.run(
            "INSERT INTO statecraft_meta (key, value) VALUES (:k, 'x')", {"k": key}
        )
        if fail:
            raise ValueError(f"unit {key} refuses")
        return key

    return work


def _queue_behind_an_open_transaction(
    db: Database, units: dict[str, Any]
) -> tuple[dict[str, Any], list[threading.Thread], threading.Event]:
    """Start a leader whose transaction stays open, queue ``units`` behind it; return (results, threads, release)."""
    inside, release = threading.Event(), threading.Event()

    def leader_unit(tx: Tx) -> str:
        tx.run("INSERT INTO statecraft_meta (key, value) VALUES ('q:lead', 'x')")
        inside.set()
        release.wait(10)
        return "lead"

    results: dict[str, Any] = {}

    def submit(name: str, work: Any) -> None:
        try:
            results[name] = group_write(db, work)
        except BaseException as exc:
            results[name] = exc

    # Daemon threads: a caller that is never woken fails the test instead of hanging pytest's exit.
    lead = threading.Thread(target=submit, args=("lead", leader_unit), daemon=True)
    lead.start()
    assert inside.wait(5)
    threads = [threading.Thread(target=submit, args=(name, work), daemon=True) for name, work in units.items()]
    for t in threads:
        t.start()
    for _ in range(500):
        if len(db_writer_pending(db)) == len(units):
            break
        threading.Event().wait(0.01)
    assert len(db_writer_pending(db)) == len(units)
    return results, [lead, *threads], release


def _join_all(threads: list[threading.Thread], timeout_s: float) -> None:
    """Join every thread within one overall deadline; fail if any is still waiting."""
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0))
    assert not any(t.is_alive() for t in threads), "a queued caller was never woken"


def test_queued_units_commit_together_and_a_failing_one_rolls_back_alone(db_path: Path) -> None:
    db = Database(db_path)
    units = {k: _put(f"q:{k}", fail=k == "c") for k in ("b", "c", "d")}
    # All three are queued behind the open transaction before it commits.
    results, threads, release = _queue_behind_an_open_transaction(db, units)
    release.set()
    _join_all(threads, 10)
    assert results["lead"] == "lead" and results["b"] == "q:b" and results["d"] == "q:d"
    assert isinstance(results["c"], ValueError)
    raw = sqlite3.connect(db_path)
    keys = {r[0] for r in raw.execute("SELECT key FROM statecraft_meta WHERE key LIKE 'q:%'")}
    raw.close()
    assert keys == {"q:lead", "q:b", "q:d"}
    db.close()


def db_writer_pending(db: Database) -> list[Any]:
    from statecraft.store import txn

    return list(txn._writer(db).group.pending)


def test_a_unit_is_visible_to_another_connection_when_its_caller_returns(db_path: Path) -> None:
    db = Database(db_path)
    seen: list[int] = []

    def check_after(i: int) -> None:
        group_write(db, _put(f"v:{i}"))
        # Acknowledged: another connection must already see it.
        other = sqlite3.connect(db_path)
        seen.append(other.execute("SELECT COUNT(*) FROM statecraft_meta WHERE key = ?", (f"v:{i}",)).fetchone()[0])
        other.close()

    threads = [threading.Thread(target=check_after, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [1] * 16
    db.close()


def test_thirty_two_concurrent_runs_share_commits_and_the_ledger_stays_one_chain(db_path: Path) -> None:
    steps = 10

    def agent(i: int) -> Any:
        def step(state: Counter, ctx: Any) -> object:
            return Finish(update={"n": state.n + 1}) if i == steps - 1 else Goto(f"s{i + 1}", update={"n": state.n + 1})

        return step

    m = Machine("count", "1", Counter, [
        Step(f"s{i}", agent(i), next=[f"s{i + 1}"] if i < steps - 1 else [], writes=["n"], may_finish=i == steps - 1)
        for i in range(steps)
    ])
    with Engine(db_path, synchronous="NORMAL") as engine:
        runs = [engine.start(m, {}, advance=False) for _ in range(32)]
        done: list[Any] = []
        threads = [threading.Thread(target=lambda r=r: done.append(engine.advance(r.run_id))) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(done) == 32
        assert all(r.status is RunStatus.DONE and r.state["n"] == steps for r in done)
        assert_ledger_ok(engine)


def test_more_units_than_one_batch_holds_are_led_on_until_every_caller_returned(
    db_path: Path, monkeypatch: Any
) -> None:
    """150 queued units: batches of at most 64, each led by the caller the previous leader handed it to."""
    from statecraft.store import txn

    db = Database(db_path)
    batches: list[int] = []
    run_batch = txn._run_batch

    def counted(db_: Any, writer: Any, batch: list[Any]) -> None:
        batches.append(len(batch))
        run_batch(db_, writer, batch)

    monkeypatch.setattr(txn, "_run_batch", counted)
    units = {f"u{i:03d}": _put(f"q:u{i:03d}") for i in range(150)}
    results, threads, release = _queue_behind_an_open_transaction(db, units)
    release.set()
    _join_all(threads, 20)
    assert results == {"lead": "lead", **{name: f"q:{name}" for name in units}}
    assert batches == [1, 64, 64, 22]  # the open transaction alone, then the queue in arrival order
    assert txn._writer(db).group.pending == [] and not txn._writer(db).group.leading
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT COUNT(*) FROM statecraft_meta WHERE key LIKE 'q:%'").fetchone()[0] == 151
    raw.close()
    # The group is idle again: a lone unit leads and commits at once.
    assert group_write(db, _put("q:after")) == "q:after"
    db.close()


def test_a_commit_that_fails_wakes_every_caller_of_its_batch_with_the_error(db_path: Path) -> None:
    """The database is closed while units are queued: each caller gets the error, none hangs."""
    db = Database(db_path)
    units = {f"c{i}": _put(f"q:c{i}") for i in range(5)}
    results, threads, release = _queue_behind_an_open_transaction(db, units)
    db_closed = threading.Thread(target=db.close)  # waits for the open transaction's writer lock
    db_closed.start()
    release.set()
    _join_all([*threads, db_closed], 20)
    assert results["lead"] == "lead"
    for name in units:
        assert isinstance(results[name], StoreError), results[name]
    raw = sqlite3.connect(db_path)
    assert raw.execute("SELECT COUNT(*) FROM statecraft_meta WHERE key LIKE 'q:c%'").fetchone()[0] == 0
    raw.close()


class _Interrupted(BaseException):
    """Stands for an asynchronous interrupt landing in a leader between taking its batch and running it."""


def test_a_leader_interrupted_before_running_its_batch_fails_its_units_loudly_and_frees_the_group(
    db_path: Path, monkeypatch: Any
) -> None:
    """No queued caller is left waiting, none is told its write went through, and the next write leads."""
    from statecraft.store import txn

    db = Database(db_path)
    units = {f"i{i}": _put(f"q:i{i}") for i in range(3)}
    results, threads, release = _queue_behind_an_open_transaction(db, units)
    first = txn._writer(db).group.pending[0]

    def interrupted(db_: Any, writer: Any, batch: list[Any]) -> None:
        raise _Interrupted

    monkeypatch.setattr(txn, "_run_batch", interrupted)  # the open transaction's leader is past this call
    release.set()
    _join_all(threads, 20)
    monkeypatch.undo()
    assert results["lead"] == "lead"
    leader = next(name for name in units if units[name] is first.work)
    assert isinstance(results[leader], _Interrupted)
    for name in units:
        if name != leader:
            assert isinstance(results[name], StoreError) and "interrupted" in str(results[name]), results[name]
    assert not txn._writer(db).group.leading and txn._writer(db).group.pending == []
    assert group_write(db, _put("q:after")) == "q:after"
    raw = sqlite3.connect(db_path)
    assert {r[0] for r in raw.execute("SELECT key FROM statecraft_meta WHERE key LIKE 'q:%'")} == {"q:lead", "q:after"}
    raw.close()
    db.close()
