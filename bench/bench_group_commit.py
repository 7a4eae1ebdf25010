"""Group commit from the inside: where 32 concurrent runs' time goes, next to one run at a time (issue #11).

bench_compare.py gives the 32-run throughput and its ratio to one run; this
says why it is what it is. Both modes advance the same 20-step counter
(bench_compare's ``Statecraft``) on one engine, alternating, and count:

- **units per batch**: step commits per transaction (``store/txn.py``'s
  ``_run_batch``; one run at a time gives 1);
- **CPU per step**, the whole process's (``time.process_time``), and the
  part spent inside batches by the thread leading them
  (``time.thread_time``), with the batches' wall time per step;
- **the GIL ceiling**: 1 / (CPU per step). Python runs one thread at a time,
  so no number of runs advances more steps per second than that, however
  many steps one fsync acknowledges.

When the 32-run rate sits at its GIL ceiling, batching has done what it can:
only less CPU per step raises it. The in-batch CPU per step against one
run's shows what batching saved (a ``BEGIN``, a ``COMMIT`` and its fsync
per unit); the rest against one run's shows what the threads cost.

Usage::

    python bench/bench_group_commit.py                    # temp dir on the real disk
    python bench/bench_group_commit.py --dir /dev/shm --rounds 6 --runs 32

Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bench_compare as bc

from statecraft.store import txn


class BatchClock:
    """Wraps ``txn._run_batch``: batches, units, and the leading thread's CPU and wall time inside them."""

    def __init__(self) -> None:
        self.reset()
        self._run_batch = txn._run_batch

    def reset(self) -> None:
        self.batches = self.units = 0
        self.cpu_s = self.wall_s = 0.0

    def __enter__(self) -> BatchClock:
        def counted(db: Any, writer: Any, batch: list[Any]) -> None:
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                self._run_batch(db, writer, batch)
            finally:
                self.cpu_s += time.thread_time() - cpu
                self.wall_s += time.perf_counter() - wall
                self.batches += 1
                self.units += len(batch)

        txn._run_batch = counted
        return self

    def __exit__(self, *exc: object) -> None:
        txn._run_batch = self._run_batch


def measure(contender: Any, clock: BatchClock, runs: int) -> dict[str, float]:
    """One round: ``runs`` runs at once (1: one after another); rates and CPU per step."""
    clock.reset()
    wall, cpu = time.perf_counter(), time.process_time()
    if runs == 1:
        for _ in range(32):
            contender.run_one()
        steps = 32 * bc.STEPS
    else:
        contender.run_many(runs)
        steps = runs * bc.STEPS
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "steps_per_s": steps / wall,
        "cpu_us_per_step": cpu / steps * 1e6,
        "gil_ceiling_steps_per_s": steps / cpu,
        "units_per_batch": clock.units / max(clock.batches, 1),
        "in_batch_cpu_us_per_step": clock.cpu_s / steps * 1e6,
        "in_batch_wall_us_per_step": clock.wall_s / steps * 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="directory for the database file (default: a new temp dir)")
    parser.add_argument("--rounds", type=int, default=6, help="alternations of the two modes (default 6)")
    parser.add_argument("--runs", type=int, default=bc.CONCURRENT_RUNS, help="runs at once (default 32)")
    args = parser.parse_args(argv)
    results: dict[int, list[dict[str, float]]] = {1: [], args.runs: []}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="statecraft-group-") as tmp:
        contender = bc.Statecraft(Path(tmp) / "group.db", "FULL")
        for _ in range(20):
            contender.run_one()  # warm: B-trees past their first pages, caches filled
        with BatchClock() as clock:
            for i in range(args.rounds):
                for runs in (1, args.runs) if i % 2 == 0 else (args.runs, 1):
                    results[runs].append(measure(contender, clock, runs))
        contender.close()
        fs = f"({bc._filesystem(Path(tmp))})"
    print(f"20-step counter, synchronous=FULL, {args.dir or 'temp dir'} {fs}; {args.rounds} alternations; medians (range)")
    keys = [
        ("steps/s", "steps_per_s", "{:,.0f}"),
        ("CPU µs/step (process)", "cpu_us_per_step", "{:,.0f}"),
        ("GIL ceiling, steps/s", "gil_ceiling_steps_per_s", "{:,.0f}"),
        ("units per batch", "units_per_batch", "{:.1f}"),
        ("in batches: leader CPU µs/step", "in_batch_cpu_us_per_step", "{:,.0f}"),
        ("in batches: wall µs/step", "in_batch_wall_us_per_step", "{:,.0f}"),
    ]
    print(f"{'':34s} {'1 run at a time':>24s} {f'{args.runs} runs at once':>24s}")
    for label, key, fmt in keys:
        cells = []
        for runs in (1, args.runs):
            values = [r[key] for r in results[runs]]
            cells.append(f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})")
        print(f"{label:34s} {cells[0]:>24s} {cells[1]:>24s}")
    ratio = [b["steps_per_s"] / a["steps_per_s"] for a, b in zip(results[1], results[args.runs])]
    print(f"{args.runs} runs / 1 run, per alternation: median {statistics.median(ratio):.2f} "
          f"(range {min(ratio):.2f}–{max(ratio):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
