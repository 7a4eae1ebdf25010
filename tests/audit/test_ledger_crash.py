"""kill -9 during appends, and concurrent writers: the ledger loses no acknowledged event and never forks.

A real child process appends ledger events in a loop (``chain.append_event``,
one write transaction each, ``synchronous=FULL``) and prints ``seq
entry_hash`` on stdout after each commit returns: that line is the
acknowledgement. The parent kills it with SIGKILL at a seeded random moment,
then checks the file: every acknowledged event is there with the same hash,
``PRAGMA integrity_check`` is ok, no row is partial, and the ledger verifies.
Several rounds append to the same file. The seed is printed (``-s``) and
named in failures; ``STATECRAFT_LEDGER_CRASH_SEED`` replays a schedule.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from statecraft.audit.verify import verify_ledger
from statecraft.store.db import Database

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 4

APPENDER = r"""
import sys
from datetime import UTC, datetime
from statecraft._time import format_utc
from statecraft.audit.chain import append_event
from statecraft.store.db import Database

db = Database(sys.argv[1])
tag, count = sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
for i in range(count):
    with db.write() as conn:
        row = append_event(conn, ledger_id=db.ledger_id, fields={
            "event_type": "bench.append", "actor_type": "service", "actor_id": f"svc:{tag}",
            "occurred_at": format_utc(datetime.now(UTC)), "reason": f"{tag} append {i} " + "x" * (i % 500),
        }, payload={"i": i, "pad": "y" * (i % 700)})
    print(row["seq"], row["entry_hash"], flush=True)
"""


def _start(db: Path, tag: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", APPENDER, str(db), tag, str(count)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _acknowledged(stdout: str) -> list[tuple[int, str]]:
    acked = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and len(parts[1]) == 64:  # a cut-off last line is no ack
            acked.append((int(parts[0]), parts[1]))
    return acked


def test_kill_9_during_appends_loses_no_acknowledged_event_and_leaves_no_partial_row(tmp_path) -> None:
    seed = int(os.environ.get("STATECRAFT_LEDGER_CRASH_SEED") or random.SystemRandom().randrange(10**9))
    print(f"ledger crash seed {seed}")
    rng = random.Random(seed)
    db_path = tmp_path / "ledger.db"
    Database(db_path).close()
    acked: dict[int, str] = {}
    for round_no in range(ROUNDS):
        child = _start(db_path, f"r{round_no}", 100_000)
        assert child.stdout is not None
        ready = child.stdout.readline().strip()
        if ready != "ready":
            child.kill()
            _, err = child.communicate(timeout=30)
            raise AssertionError(f"seed {seed}: the appender did not start: {ready!r} {err[-2000:]}")
        time.sleep(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        out, err = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL, f"seed {seed}: the child ended by itself: {err[-2000:]}"
        round_acks = _acknowledged(out)
        acked.update(round_acks)
        where = f"seed {seed}, round {round_no}, {len(round_acks)} acknowledged this round"
        print(where)

        conn = sqlite3.connect(db_path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", where
            stored = dict(conn.execute("SELECT seq, entry_hash FROM audit_event"))
            partial = conn.execute(
                "SELECT COUNT(*) FROM audit_event WHERE entry_hash IS NULL OR prev_hash IS NULL "
                "OR event_type IS NULL OR (payload_sha256 IS NULL AND seq > 1)"
            ).fetchone()[0]
        finally:
            conn.close()
        lost = {s: h for s, h in acked.items() if stored.get(s) != h}
        assert not lost, f"{where}: acknowledged events lost or changed: {sorted(lost)[:5]}"
        assert partial == 0, where
        with Database(db_path, create=False) as db:
            report = verify_ledger(db)
        assert report.ok, f"{where}: {report.reason}"
        assert report.last_seq == max(stored)
    assert len(acked) >= ROUNDS, f"seed {seed}: the children barely appended; the test proves little"


def test_concurrent_writers_never_fork_the_chain(tmp_path) -> None:
    db_path = tmp_path / "ledger.db"
    Database(db_path).close()
    children = [_start(db_path, f"w{i}", 60) for i in range(3)]
    outputs = [c.communicate(timeout=120) for c in children]

    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err
    seqs = sorted(s for out, _ in outputs for s, _h in _acknowledged(out))
    with Database(db_path, create=False) as db:
        report = verify_ledger(db)

    assert seqs == list(range(2, 2 + 3 * 60))  # every append got its own seq after the genesis
    assert report.ok and report.last_seq == 181, report
