"""Fan-out wall time: about the slowest branch, not the sum (docs/patterns.md, "Parallel fan-out").

Target (issue #4): 8 branches that each sleep 100 ms finish in under 150 ms
with ``max_concurrency=8``, and in about 200 ms with ``max_concurrency=4``.

Two measurements, each repeated:

1. ``run_parallel`` alone (the fan-out's coordinator and threads, no database);
2. a one-step ``fan_out`` machine through a real ``Engine`` on a SQLite file
   in a temporary directory: the step's ``latency_ms`` as audited (the agent
   call) and the wall time of ``engine.start`` (create, run, commit the nine
   sub-call events and the step, in WAL mode with ``synchronous=FULL``).

Figures are printed, never asserted (timing depends on the machine).

Usage::

    python bench/bench_fanout.py              # 20 repetitions
    python bench/bench_fanout.py --repeat 50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statecraft import Engine, Machine
from statecraft.agents.base import StepContext
from statecraft.patterns import (
    BranchCall,
    BranchContext,
    FanOutResult,
    fan_out,
    run_parallel,
)

BRANCHES = 8
SLEEP_S = 0.100


def sleeper(inp: Any, bctx: BranchContext) -> int:
    time.sleep(SLEEP_S)
    return 1


class Bench(BaseModel):
    results: FanOutResult | None = None


def _ctx() -> StepContext:
    return StepContext(run_id="bench", machine="bench", machine_version="1", step="fan", attempt=1,
                       started_by="bench", load_task=lambda: None, clock=lambda: datetime.now(UTC))


def _line(label: str, samples_ms: list[float]) -> str:
    s = sorted(samples_ms)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]
    return (f"  {label:<34} min {s[0]:6.1f}  median {statistics.median(s):6.1f}  "
            f"p95 {p95:6.1f}  max {s[-1]:6.1f} ms  (n={len(s)})")


def bench_coordinator(cap: int, repeat: int) -> list[float]:
    calls = [BranchCall(f"w{i}", sleeper) for i in range(BRANCHES)]
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = run_parallel(_ctx(), calls, max_concurrency=cap)
        out.append((time.perf_counter() - started) * 1000)
        assert result.satisfied
    return out


def bench_engine(cap: int, repeat: int, db: Path) -> tuple[list[float], list[float]]:
    step = fan_out("fan", branches={f"w{i}": sleeper for i in range(BRANCHES)}, into="results",
                   max_concurrency=cap)
    machine = Machine(f"bench_fanout_cap{cap}", "1", Bench, steps=[step])
    step_ms, wall_ms = [], []
    with Engine(db) as engine:
        for _ in range(repeat):
            started = time.perf_counter()
            run = engine.start(machine, {})
            wall_ms.append((time.perf_counter() - started) * 1000)
            final = [e for e in engine.events(run.run_id) if e.event_type == "run.completed"][-1]
            step_ms.append(float(final.latency_ms or 0))
    return step_ms, wall_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20, help="repetitions per configuration")
    args = parser.parse_args()
    print(f"fan-out of {BRANCHES} branches x {SLEEP_S * 1000:.0f} ms sleep; python {sys.version.split()[0]}")
    print("run_parallel alone (no database):")
    for cap in (8, 4, 2, 1):
        print(_line(f"max_concurrency={cap}", bench_coordinator(cap, args.repeat)))
    with tempfile.TemporaryDirectory() as tmp:
        print("one fan_out step through Engine (SQLite file, WAL, synchronous=FULL):")
        for cap in (8, 4):
            step_ms, wall_ms = bench_engine(cap, args.repeat, Path(tmp) / "bench.db")
            print(_line(f"cap={cap}: step latency_ms (audited)", step_ms))
            print(_line(f"cap={cap}: engine.start wall", wall_ms))
    print("targets: cap 8 < 150 ms; cap 4 about 200 ms (sum of sleeps would be 800 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
