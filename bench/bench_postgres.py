"""Benchmark: durable steps per second with 1, 4 and 16 worker processes, PostgreSQL next to SQLite.

For each backend and worker count: create RUNS detached runs of a 20-step
machine of no-op agents (tests/support/crashy.py ``steps20``), start that many
real ``statecraft worker --until-idle`` processes on the database, and time
from their start until every run is DONE (process start-up included, so small
totals understate the steady rate). Then the floors, in the same run:

- PostgreSQL: one psycopg connection, one transaction per step holding one
  UPDATE of a run row and one INSERT of an event row, commit — what a durable
  step cannot be cheaper than (``synchronous_commit`` as the server has it);
- SQLite: the same with the stdlib driver, WAL, ``synchronous=FULL``.

statecraft's per-step cost is then compared with its floor (µs per step for
one worker process against µs per floor transaction). Every step also takes
the ledger's lock (one hash chain: appends are serialised), which is what
bounds the rate as workers are added.

Usage::

    python bench/bench_postgres.py                    # 200 runs, workers 1, 4, 16
    python bench/bench_postgres.py --runs 400 --workers 1 4 16 --json

Needs the local PostgreSQL server (``$STATECRAFT_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432/test``); each measurement uses a fresh
schema, dropped afterwards. Not a timed test: figures depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
STEPS20 = f"{REPO / 'tests' / 'support' / 'crashy.py'}:steps20"
PG = os.environ.get("STATECRAFT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def pg_schema() -> Iterator[str]:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    try:
        yield f"{PG}{'&' if '?' in PG else '?'}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def statecraft_rate(url: str, runs: int, workers: int) -> dict[str, float]:
    from statecraft import Engine
    from statecraft.loader import load_machine

    machine = load_machine(STEPS20)
    with Engine(url, machines=[machine]) as engine:
        for _ in range(runs):
            engine.start(machine, {}, ref=STEPS20, advance=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "statecraft", "worker", "--until-idle", "--concurrency", "1", "--poll", "0.02",
             "--db", url],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    for p in procs:
        p.wait()
    wall = time.perf_counter() - started
    with Engine(url, machines=[machine]) as engine:
        done = sum(1 for r in engine.list(limit=runs + 1) if r.status.value == "DONE")
    steps = done * 20
    return {"steps": steps, "wall_s": round(wall, 3), "steps_per_s": round(steps / wall, 1),
            "us_per_step": round(wall / max(steps, 1) * 1e6, 1), "done": done}


def pg_floor(url: str, transactions: int) -> float:
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE floor_run (id text PRIMARY KEY, n bigint)")
        conn.execute("CREATE TABLE floor_event (seq bigint PRIMARY KEY, run_id text, body text)")
        conn.execute("INSERT INTO floor_run VALUES ('r', 0)")
        conn.commit()
        started = time.perf_counter()
        for i in range(transactions):
            conn.execute("UPDATE floor_run SET n = %s WHERE id = 'r'", (i,))
            conn.execute("INSERT INTO floor_event VALUES (%s, 'r', 'x')", (i,))
            conn.commit()
        return (time.perf_counter() - started) / transactions * 1e6


def sqlite_floor(path: str, transactions: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE floor_run (id TEXT PRIMARY KEY, n INTEGER)")
    conn.execute("CREATE TABLE floor_event (seq INTEGER PRIMARY KEY, run_id TEXT, body TEXT)")
    conn.execute("INSERT INTO floor_run VALUES ('r', 0)")
    started = time.perf_counter()
    for i in range(transactions):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("UPDATE floor_run SET n = ? WHERE id = 'r'", (i,))
        conn.execute("INSERT INTO floor_event VALUES (?, 'r', 'x')", (i,))
        conn.execute("COMMIT")
    conn.close()
    return (time.perf_counter() - started) / transactions * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for workers in args.workers:
        with pg_schema() as url:
            rows.append({"backend": "postgresql", "workers": workers, **statecraft_rate(url, args.runs, workers)})
        with tempfile.TemporaryDirectory() as tmp:
            rows.append({"backend": "sqlite", "workers": workers,
                         **statecraft_rate(str(Path(tmp) / "s.db"), args.runs, workers)})
    with pg_schema() as url:
        pg_us = pg_floor(url, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_us = sqlite_floor(str(Path(tmp) / "f.db"), 2000)
    one = {r["backend"]: r for r in rows if r["workers"] == min(args.workers)}
    floors = {"postgresql_floor_us_per_tx": round(pg_us, 1), "sqlite_floor_us_per_tx": round(sqlite_us, 1),
              "postgresql_ratio_one_worker": round(one["postgresql"]["us_per_step"] / pg_us, 2),
              "sqlite_ratio_one_worker": round(one["sqlite"]["us_per_step"] / sqlite_us, 2)}
    if args.json:
        print(json.dumps({"rows": rows, **floors}))
        return
    print(f"{'backend':<11} {'workers':>7} {'steps':>6} {'wall s':>7} {'steps/s':>8} {'µs/step':>8}")
    for r in rows:
        print(f"{r['backend']:<11} {r['workers']:>7} {r['steps']:>6} {r['wall_s']:>7} {r['steps_per_s']:>8} {r['us_per_step']:>8}")
    print(f"floor (one UPDATE + one INSERT per transaction): PostgreSQL {pg_us:.0f} µs/tx, SQLite {sqlite_us:.0f} µs/tx")
    print(f"one worker vs its floor: PostgreSQL {floors['postgresql_ratio_one_worker']}×, "
          f"SQLite {floors['sqlite_ratio_one_worker']}×")


if __name__ == "__main__":
    main()
