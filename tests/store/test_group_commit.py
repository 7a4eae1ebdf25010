"""Group commit: units from several threads share one transaction, each under its own savepoint.

A unit that raises rolls back alone; every caller returns only once the
transaction holding its unit has committed (so an acknowledgement still means
durable); the ledger stays one chain.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from statecraft import Database, Engine, Finish, Goto, Machine, RunStatus, Step
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


def test_queued_units_commit_together_and_a_failing_one_rolls_back_alone(db_path: Path) -> None:
    db = Database(db_path)
    inside, release = threading.Event(), threading.Event()

    def leader_unit(tx: Tx) -> str:
        tx.run("INSERT INTO statecraft_meta (key, value) VALUES ('t:lead', 'x')")
        inside.set()
        release.wait(10)  # while this transaction is open, the others queue
        return "lead"

    results: dict[str, Any] = {}

    def submit(name: str, work: Any) -> None:
        try:
            results[name] = group_write(db, work)
        except BaseException as exc:
            results[name] = exc

    lead = threading.Thread(target=submit, args=("lead", leader_unit))
    lead.start()
    assert inside.wait(5)
    followers = [
        threading.Thread(target=submit, args=(k, _put(f"t:{k}", fail=k == "c"))) for k in ("b", "c", "d")
    ]
    for t in followers:
        t.start()
    # All three are queued behind the open transaction before it commits.
    for _ in range(200):
        if len(db_writer_pending(db)) == 3:
            break
        threading.Event().wait(0.01)
    assert len(db_writer_pending(db)) == 3
    release.set()
    for t in [lead, *followers]:
        t.join(10)
    assert results["lead"] == "lead" and results["b"] == "t:b" and results["d"] == "t:d"
    assert isinstance(results["c"], ValueError)
    raw = sqlite3.connect(db_path)
    keys = {r[0] for r in raw.execute("SELECT key FROM statecraft_meta WHERE key LIKE 't:%'")}
    raw.close()
    assert keys == {"t:lead", "t:b", "t:d"}
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
