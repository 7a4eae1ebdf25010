"""WAL checkpoints beside the steps or inside them: per-step latency, median and tail (issue #11).

statecraft runs SQLite's WAL checkpoints on a background thread
(statecraft/store/checkpoint.py); SQLite's default runs one inside the
commit that takes the WAL past 1,000 pages. This script runs the 20-step
counter of bench_compare.py on two databases in one process, one engine
each: one as shipped, one with the background checkpoints switched off and
the writer's automatic checkpoint back at SQLite's default (1,000 pages).
The two alternate, five runs at a time, so the machine's noise hits both
alike. For each it prints wall µs per step, per-step latency percentiles
(from the engine's ``on_event`` hook: the time between two committed
steps of one run), the WAL's size at the end, and how many checkpoints the
thread ran.

Figures are printed, never asserted (timing depends on the machine).

Usage::

    python bench/bench_checkpoint.py                  # temp dir on the real disk, 40 alternations
    python bench/bench_checkpoint.py --dir /dev/shm --rounds 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_compare import _STARTS, STEPS, Statecraft  # noqa: E402

from statecraft.store import txn  # noqa: E402


class _Timed:
    """One engine on its own file, recording the time between two committed steps of a run."""

    def __init__(self, path: Path, background: bool) -> None:
        self.contender = Statecraft(path, "FULL")
        self.latencies_us: list[float] = []
        self.walls_us: list[float] = []
        self._last = 0.0
        self.contender.engine._on_event = self._on_event
        self.contender.run_one()  # opens the writer connection
        writer = txn._writer(self.contender.engine.db)
        self.writer = writer
        if not background:
            assert writer.checkpoints is not None and writer.raw is not None
            writer.checkpoints.close()
            writer.checkpoints = None
            writer.raw.execute("PRAGMA wal_autocheckpoint = 1000")  # SQLite's default
        self.path = path

    def _on_event(self, report: Any) -> None:
        now = time.perf_counter()
        if report.event_type in ("step.completed", "run.completed"):
            self.latencies_us.append((now - self._last) * 1e6)
        self._last = now

    def round(self, runs: int) -> None:
        started = time.perf_counter()
        for _ in range(runs):
            done = self.contender.engine.start(self.contender.machine, {"n": next(_STARTS)})
            assert done.status.value == "DONE"
        self.walls_us.append((time.perf_counter() - started) / (runs * STEPS) * 1e6)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None, help="directory for the database files (default: a new temp dir)")
    parser.add_argument("--rounds", type=int, default=40, help="alternations of the two (default 40)")
    parser.add_argument("--runs", type=int, default=5, help="20-step runs per engine per alternation (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        pair = {"background": _Timed(Path(tmp) / "background.db", True),
                "in the commit": _Timed(Path(tmp) / "in-commit.db", False)}
        for timed in pair.values():
            timed.latencies_us.clear()
        for i in range(args.rounds):
            for timed in (pair.values() if i % 2 == 0 else reversed(pair.values())):
                timed.round(args.runs)
        where = "tmpfs" if args.dir is not None and str(args.dir).startswith("/dev/shm") else "disk"
        print(f"20-step counter, synchronous=FULL, {where} ({tmp}); {args.rounds} alternations x {args.runs} runs")
        print(f"{'checkpoints':>16} {'µs/step':>9} {'p50':>7} {'p90':>7} {'p99':>7} {'p99.9':>7} {'max':>7} {'WAL MB':>7} {'thread ran':>10}")
        for name, timed in pair.items():
            lat = timed.latencies_us
            wal = os.path.getsize(f"{timed.path}-wal") / 1e6
            ran = timed.writer.checkpoints.checkpoints if timed.writer.checkpoints is not None else 0
            print(f"{name:>16} {statistics.median(timed.walls_us):9.0f} {_pct(lat, .5):7.0f} {_pct(lat, .9):7.0f} "
                  f"{_pct(lat, .99):7.0f} {_pct(lat, .999):7.0f} {max(lat):7.0f} {wal:7.1f} {ran:10d}")
        ratios = sorted(b / a for b, a in zip(pair["background"].walls_us, pair["in the commit"].walls_us))
        print(f"background / in the commit, µs/step per alternation: median {statistics.median(ratios):.3f} "
              f"(range {ratios[0]:.3f}–{ratios[-1]:.3f}); load average {os.getloadavg()[0]:.2f}")
        for timed in pair.values():
            timed.contender.close()


if __name__ == "__main__":
    main()
