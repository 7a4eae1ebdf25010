"""Benchmark: durable transition throughput, next to SQLite's own floor on the same disk.

Five figures, each measured in the same process, on the same file system, with
the same ``synchronous`` setting (WAL mode throughout):

1. **raw floor**: the stdlib ``sqlite3`` driver, one transaction per step:
   ``BEGIN IMMEDIATE``; one UPDATE of a run row; one INSERT of an event row;
   ``COMMIT``. Nothing durable can be cheaper than this.
2. **schema floor**: a step commit's own statements on statecraft's own
   schema (fenced run UPDATE, ledger head SELECT, audit INSERT through its
   triggers and indexes), every value computed in advance: what the schema
   costs without any of the engine's Python.
3. **statecraft, one run at a time**: a 20-step machine of no-op agents,
   advanced inline by one ``Engine``; per committed step: the run row and the
   hash-chained audit event (which is also the checkpoint: a view) in one
   transaction, exactly as production does (leases, budgets, fencing
   included). Reported per step (agent steps only) and per transition (every
   event, including create/start).
4. **32 concurrent runs**: 32 threads sharing one ``Engine``, each advancing its
   own 20-step run; total durable steps per second.
5. **group commit (what it would give)**: the same step commits
   (``statecraft.transition.write_transition``, unchanged) for 32 runs batched
   into one transaction, i.e. one fsync per 32 steps. statecraft does not do
   this today: each step is acknowledged only once durable on its own.

Disk latency drifts a lot from one moment to the next on shared machines, so
the floors and statecraft are measured in rounds: 20 raw transactions, 20
schema transactions, then one 20-step run, ``--pairs`` times; each round
gives ratios, and the medians (and the raw ratio's quartiles) are reported.
"Per step" times ``advance`` (the 20 step commits, lease taken and
released); "per transition" also counts creating and starting the run (22
transitions).

Usage::

    python bench/bench_transitions.py                      # FULL, 60 rounds
    python bench/bench_transitions.py --synchronous NORMAL --dir /dev/shm
    python bench/bench_transitions.py --pairs 200 --json

Not a timed test: the figures depend on the machine. Target (issue #3): a
durable statecraft step costs at most 1.5x the raw floor at synchronous=FULL.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statecraft import Engine, Finish, Goto, Machine, Step
from statecraft._time import format_utc, utc_now
from statecraft.audit.chain import HEAD_SQL, INSERT_SQL
from statecraft.lifecycle import RunStatus
from statecraft.store.txn import _positional, write_tx
from statecraft.transition import _FENCED, RUN_COLUMNS, write_transition

STEPS = 20


class Empty(BaseModel):
    """The no-op machine's state."""

    n: int = 0


def _noop(i: int) -> Any:
    last = i == STEPS - 1

    def agent(state: Empty, ctx: object) -> object:
        return Finish() if last else Goto(f"s{i + 1}")

    agent.__qualname__ = f"noop{i}"
    return agent


MACHINE = Machine(
    "bench20",
    "1",
    Empty,
    [
        Step(f"s{i}", _noop(i), next=[] if i == STEPS - 1 else [f"s{i + 1}"], may_finish=i == STEPS - 1)
        for i in range(STEPS)
    ],
)


def _fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


class RawFloor:
    """One stdlib connection doing the floor's transactions: one UPDATE + one INSERT each, WAL."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self.conn = sqlite3.connect(_fresh(path), isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")
        self.conn.execute("CREATE TABLE run (run_id TEXT PRIMARY KEY, run_seq INTEGER, state_sha256 TEXT)")
        self.conn.execute("CREATE TABLE event (seq INTEGER PRIMARY KEY, run_id TEXT, run_seq INTEGER, body TEXT)")
        self.conn.execute("INSERT INTO run VALUES ('r', 0, '')")
        self.i = 0

    def block(self, n: int) -> float:
        """Seconds for ``n`` transactions."""
        body = "x" * 400  # about an audit row's size
        started = time.perf_counter()
        for _ in range(n):
            self.i += 1
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("UPDATE run SET run_seq = ?, state_sha256 = ? WHERE run_id = 'r'", (self.i, f"{self.i:064d}"))
            self.conn.execute("INSERT INTO event (run_id, run_seq, body) VALUES ('r', ?, ?)", (self.i, body))
            self.conn.execute("COMMIT")
        return time.perf_counter() - started


class SchemaFloor:
    """A step commit's own statements on statecraft's schema, every value computed in advance.

    Per transaction, as a step commits: ``BEGIN IMMEDIATE``; the fenced run
    UPDATE (a real run row); the ledger head SELECT; the audit INSERT (a real
    ``step.completed`` row, through the table's triggers and AUDIT.md's
    indexes); ``COMMIT``. No Python decides, serialises or hashes anything in
    the timed loop. Its distance to the raw floor is what the schema costs;
    a statecraft step's distance to it is what the engine costs.
    """

    def __init__(self, path: Path, synchronous: str) -> None:
        with Engine(_fresh(path), synchronous=synchronous) as engine:  # type: ignore[arg-type]
            run_id = engine.start(MACHINE, {}).run_id  # its rows are the templates
        self.conn = sqlite3.connect(path, isolation_level=None)
        for pragma in ("journal_mode = WAL", f"synchronous = {synchronous}", "foreign_keys = ON", "recursive_triggers = ON"):
            self.conn.execute(f"PRAGMA {pragma}")  # as Database sets them
        self.conn.execute("UPDATE run SET status = 'RUNNING', lease_owner = 'bench' WHERE run_id = ?", (run_id,))
        found = self.conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM run WHERE run_id = ?", (run_id,)).fetchone()
        self.row = dict(zip(RUN_COLUMNS, found))
        cursor = self.conn.execute(
            "SELECT * FROM audit_event WHERE run_id = ? AND event_type = 'step.completed' ORDER BY seq DESC LIMIT 1",
            (run_id,),
        )
        self.event = dict(zip([d[0] for d in cursor.description], cursor.fetchone()))
        self.update_sql, self.update_values = _positional(_FENCED)
        self.insert_sql, self.insert_values = _positional(INSERT_SQL)
        self.seq, self.prev_hash = self.conn.execute(HEAD_SQL).fetchone()

    def block(self, n: int) -> float:
        """Seconds for ``n`` transactions."""
        updates, inserts = [], []
        for _ in range(n):
            expected = self.row["run_seq"]
            entry_hash, event_id = os.urandom(32).hex(), str(uuid.uuid4())
            self.row.update(run_seq=expected + 1, updated_at=format_utc(utc_now()), last_event_id=event_id)
            self.seq += 1
            updates.append(self.update_values({**self.row, "expected_seq": expected, "fence_owner": "bench", "release": False}))
            inserts.append(self.insert_values({
                **self.event, "seq": self.seq, "prev_hash": self.prev_hash, "entry_hash": entry_hash,
                "event_id": event_id, "run_seq": expected + 1,
            }))
            self.prev_hash = entry_hash
        conn = self.conn
        started = time.perf_counter()
        for update, insert in zip(updates, inserts):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(self.update_sql, update)
            conn.execute(HEAD_SQL).fetchone()
            conn.execute(self.insert_sql, insert)
            conn.execute("COMMIT")
        return time.perf_counter() - started


def paired(path: Path, synchronous: str, pairs: int) -> dict[str, list[float]]:
    """Alternate a raw block, a schema block (20 transactions each) and one 20-step statecraft run, ``pairs`` times.

    Disk latency drifts (other tenants, write-back); measuring the three a few
    milliseconds apart makes each ratio compare like with like.
    """
    raw = RawFloor(path.with_name("raw.db"), synchronous)
    schema = SchemaFloor(path.with_name("schema.db"), synchronous)
    out: dict[str, list[float]] = {"raw": [], "schema": [], "step": [], "run": [], "ratio": [], "schema_ratio": []}
    with Engine(_fresh(path), synchronous=synchronous) as engine:  # type: ignore[arg-type]
        for _ in range(3):  # warm caches, the schema, the blob cache
            engine.start(MACHINE, {})
            raw.block(STEPS)
            schema.block(STEPS)
        for _ in range(pairs):
            floor = raw.block(STEPS) / STEPS
            schema_floor = schema.block(STEPS) / STEPS
            started = time.perf_counter()
            run = engine.start(MACHINE, {}, advance=False)
            created = time.perf_counter()
            done = engine.advance(run.run_id)
            ended = time.perf_counter()
            assert done.status is RunStatus.DONE and done.steps_taken == STEPS
            step = (ended - created) / STEPS
            out["raw"].append(floor * 1e6)
            out["schema"].append(schema_floor * 1e6)
            out["schema_ratio"].append(schema_floor / floor)
            out["step"].append(step * 1e6)
            out["run"].append((ended - started) / (STEPS + 2) * 1e6)  # + run.created, run.started
            out["ratio"].append(step / floor)
    raw.conn.close()
    schema.conn.close()
    return out


def statecraft_concurrent(path: Path, synchronous: str, runs: int, threads: int) -> float:
    """Durable steps per second with ``threads`` runs advancing at once (one engine)."""
    with Engine(_fresh(path), synchronous=synchronous) as engine:  # type: ignore[arg-type]
        engine.start(MACHINE, {})
        ids = [engine.start(MACHINE, {}, advance=False).run_id for _ in range(runs)]
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            done = list(pool.map(engine.advance, ids))
        elapsed = time.perf_counter() - started
        assert all(r.status is RunStatus.DONE for r in done)
        return sum(r.steps_taken for r in done) / elapsed


def group_commit(path: Path, synchronous: str, batch: int, rounds: int) -> float:
    """µs per step when ``batch`` runs' step commits share one transaction (one fsync)."""
    with Engine(_fresh(path), synchronous=synchronous) as engine:  # type: ignore[arg-type]
        ids = [engine.start(MACHINE, {}, advance=False).run_id for _ in range(batch)]
        with engine.db.read() as conn:
            rows = {
                r[0]: dict(zip(RUN_COLUMNS, r))
                for r in conn.exec_driver_sql(
                    f"SELECT {', '.join(RUN_COLUMNS)} FROM run WHERE status = 'RUNNING'"
                ).all()
            }
        lock = threading.Lock()
        started = time.perf_counter()
        for i in range(rounds):
            with lock, write_tx(engine.db) as tx:
                now = format_utc(utc_now())
                for run_id in ids:
                    rows[run_id] = write_transition(
                        tx, engine.db.ledger_id, rows[run_id], event_type="step.completed",
                        to_status=RunStatus.RUNNING, to_step=f"s{(i + 1) % STEPS}", actor_type="agent",
                        actor_id="noop", now=now, count_step=True,
                        extra={"decision": "goto", "outcome": "success", "attempt": 1, "latency_ms": 0},
                    ).run
        elapsed = time.perf_counter() - started
    return elapsed / (rounds * batch) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--pairs", type=int, default=60, help="raw block / statecraft run pairs")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--dir", help="directory for the database files (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="statecraft-bench-"))
    sync = args.synchronous
    pairs = paired(base / "sc.db", sync, args.pairs)
    concurrent = statecraft_concurrent(base / "cc.db", sync, args.concurrency * 2, args.concurrency)
    grouped = group_commit(base / "gc.db", sync, args.concurrency, max(10, 400 // args.concurrency))
    med = {k: statistics.median(v) for k, v in pairs.items()}
    q = statistics.quantiles(pairs["ratio"], n=4)
    result = {
        "synchronous": sync,
        "pairs": args.pairs,
        "raw_floor_us_per_tx": round(med["raw"], 1),
        "raw_floor_tx_per_s": round(1e6 / med["raw"]),
        "schema_floor_us_per_tx": round(med["schema"], 1),
        "schema_floor_ratio_to_raw_median": round(med["schema_ratio"], 2),
        "statecraft_us_per_step": round(med["step"], 1),
        "statecraft_steps_per_s": round(1e6 / med["step"]),
        "statecraft_us_per_transition_incl_create_start": round(med["run"], 1),
        "overhead_us_per_step": round(med["step"] - med["raw"], 1),
        "ratio_to_floor_median": round(statistics.median(pairs["ratio"]), 2),
        "ratio_to_floor_quartiles": [round(q[0], 2), round(q[2], 2)],
        "ratio_to_schema_floor_median": round(statistics.median(s / f for s, f in zip(pairs["step"], pairs["schema"])), 2),
        f"concurrent_{args.concurrency}_runs_steps_per_s": round(concurrent),
        f"group_commit_{args.concurrency}_us_per_step": round(grouped, 1),
        f"group_commit_{args.concurrency}_steps_per_s": round(1e6 / grouped),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    if args.json:
        print(json.dumps(result))
    else:
        width = max(len(k) for k in result)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
