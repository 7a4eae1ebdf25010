"""Benchmark: what one ``Engine.start`` of a one-step run costs, durable (issue #11).

A one-step run started with ``Engine.start`` (``advance=True``) commits
twice when nothing is wasted: run created + started (+ its lease), then the
step's outcome. Every extra commit is an fsync at ``synchronous=FULL``, so
on a real disk this figure shows the per-run overhead that
bench_compare.py's 20-step rounds spread thin. Prints the median and
quartiles of the wall time of ``start`` over ``--runs`` runs, and the
commits per run that changed the database.

Usage::

    python bench/bench_start.py                      # a temp dir on the real disk, 200 runs
    python bench/bench_start.py --dir /dev/shm --runs 500

Compare two commits by running this script with each on ``PYTHONPATH``
(a git worktree), alternately, as bench/README.md does. Not a timed test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from statecraft import Engine, Finish, Machine, Step
from statecraft.store.txn import read_on_writer


class Counter(BaseModel):
    n: int = 0


def _count(state: Counter, ctx: object) -> Finish:
    return Finish(update={"n": state.n + 1})


MACHINE = Machine("bench_one_step", "1", Counter, [Step("count", _count, writes=["n"], may_finish=True)])


def measure(path: Path, runs: int) -> tuple[list[float], float]:
    """Wall µs of each ``start``, and the writing commits per run (traced on the writer connection)."""
    engine = Engine(path)
    try:
        engine.start(MACHINE, {"n": 0})  # warm: schema, machine registered, writer connection open
        raw = read_on_writer(engine.db, lambda tx: tx.raw)
        marks: list[int] = []
        commits = 0

        def trace(sql: str) -> None:
            nonlocal commits
            if raw is None:
                return
            if sql.startswith("BEGIN"):
                marks.append(raw.total_changes)
            elif sql == "COMMIT" and marks:
                commits += raw.total_changes != marks.pop()

        if raw is not None:
            raw.set_trace_callback(trace)
        timings = []
        for i in range(runs):
            started = time.perf_counter()
            engine.start(MACHINE, {"n": i})
            timings.append((time.perf_counter() - started) * 1e6)
        return timings, commits / runs
    finally:
        engine.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="directory for the database (default: a temp dir on disk)")
    parser.add_argument("--runs", type=int, default=200, help="runs to start (default 200)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        timings, commits = measure(Path(tmp) / "start.db", args.runs)
    q1, median, q3 = statistics.quantiles(timings, n=4)
    print(
        f"Engine.start of a 1-step run, synchronous=FULL, {args.runs} runs: "
        f"{median:,.0f} µs median (q1–q3 {q1:,.0f}–{q3:,.0f}); {commits:.2f} writing commits per run"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
