"""Benchmark: durable transition throughput, next to SQLite's own floor on the same disk.

Four figures, each measured in the same process, on the same file system, with
the same ``synchronous`` setting (WAL mode throughout):

1. **raw floor**: the stdlib ``sqlite3`` driver, one transaction per step:
   ``BEGIN IMMEDIATE``; one UPDATE of a run row; one INSERT of an event row;
   ``COMMIT``. Nothing durable can be cheaper than this.
2. **statecraft, one run at a time**: a 20-step machine of no-op agents,
   advanced inline by one ``Engine``; per committed step: the run row, the
   checkpoint and the hash-chained audit event in one transaction, exactly as
   production does (leases, budgets, fencing included). Reported per step
   (agent steps only) and per transition (every event, including create/start).
3. **32 concurrent runs**: 32 threads sharing one ``Engine``, each advancing its
   own 20-step run; total durable steps per second.
4. **group commit (what it would give)**: the same step commits
   (``statecraft.transition.write_transition``, unchanged) for 32 runs batched
   into one transaction, i.e. one fsync per 32 steps. statecraft does not do
   this today: each step is acknowledged only once durable on its own.

Disk latency drifts a lot from one moment to the next on shared machines, so
the floor and statecraft are measured in pairs: 20 raw transactions, then one
20-step run, ``--pairs`` times; each pair gives a ratio, and the medians
(and the ratio's quartiles) are reported. "Per step" times ``advance`` (the
20 step commits, lease taken and released); "per transition" also counts
creating and starting the run (22 transitions).

Usage::

    python bench/bench_transitions.py                      # FULL, 60 pairs
    python bench/bench_transitions.py --synchronous NORMAL
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statecraft import Engine, Finish, Goto, Machine, Step
from statecraft._time import format_utc, utc_now
from statecraft.lifecycle import RunStatus
from statecraft.store.txn import write_tx
from statecraft.transition import RUN_COLUMNS, write_transition

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


def paired(path: Path, synchronous: str, pairs: int) -> dict[str, list[float]]:
    """Alternate a raw block of 20 transactions with one 20-step statecraft run, ``pairs`` times.

    Disk latency drifts (other tenants, write-back); pairing blocks a few
    milliseconds apart makes each ratio compare like with like.
    """
    raw = RawFloor(path.with_name("raw.db"), synchronous)
    out: dict[str, list[float]] = {"raw": [], "step": [], "run": [], "ratio": []}
    with Engine(_fresh(path), synchronous=synchronous) as engine:  # type: ignore[arg-type]
        for _ in range(3):  # warm caches, the schema, the blob cache
            engine.start(MACHINE, {})
            raw.block(STEPS)
        for _ in range(pairs):
            floor = raw.block(STEPS) / STEPS
            started = time.perf_counter()
            run = engine.start(MACHINE, {}, advance=False)
            created = time.perf_counter()
            done = engine.advance(run.run_id)
            ended = time.perf_counter()
            assert done.status is RunStatus.DONE and done.steps_taken == STEPS
            step = (ended - created) / STEPS
            out["raw"].append(floor * 1e6)
            out["step"].append(step * 1e6)
            out["run"].append((ended - started) / (STEPS + 2) * 1e6)  # + run.created, run.started
            out["ratio"].append(step / floor)
    raw.conn.close()
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
        "statecraft_us_per_step": round(med["step"], 1),
        "statecraft_steps_per_s": round(1e6 / med["step"]),
        "statecraft_us_per_transition_incl_create_start": round(med["run"], 1),
        "overhead_us_per_step": round(med["step"] - med["raw"], 1),
        "ratio_to_floor_median": round(statistics.median(pairs["ratio"]), 2),
        "ratio_to_floor_quartiles": [round(q[0], 2), round(q[2], 2)],
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
