"""Benchmark: what starting statecraft costs (issue #9), next to the floors it cannot go under.

Every CLI command pays for starting Python and importing what it uses before
it does any work. This script times, in fresh subprocesses, wall clock as the
shell sees it:

- ``python -c "pass"``: the interpreter alone;
- ``python -c "import click"``: the floor of any click CLI (``--help`` can go no lower);
- ``python -c "import sqlalchemy"``: the floor of any command that opens a database;
- ``python -c "import statecraft"``: the package, names loaded on first use;
- ``python -c "import statecraft.engine"``: the library part of ``status``;
- ``statecraft --help`` (target 0.3 s);
- ``statecraft status RUN_ID`` (target 0.5 s) on a real database made first, in a
  temporary folder, by ``statecraft start machines/contract_review.py --input
  machines/samples/sample_msa.md`` (a run waiting at its approval gate).

Each command runs ``--runs`` times (default 10), interleaved (one of each, then
again), after one untimed warm-up round that writes the bytecode caches
(``__pycache__``), as Python does on a user's machine the first time a module
is imported. ``PYTHONDONTWRITEBYTECODE`` is removed from the subprocesses'
environment for that: a sandbox that sets it (this project's does) would
otherwise recompile statecraft's own modules from source on every command,
~0.2 s that no user pays. The table
gives the median, min and max in seconds. The load average before and after is
printed: on a shared machine the figures move with it, so quote several runs.

Usage::

    python bench/bench_startup.py               # 10 rounds
    python bench/bench_startup.py --runs 30 --json

Not a timed test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
MACHINE = ROOT / "machines" / "contract_review.py"
SAMPLE = ROOT / "machines" / "samples" / "sample_msa.md"


@dataclass(frozen=True)
class Case:
    """One command to time: its label, argv, and the issue's target in seconds (``None``: a floor or a part)."""

    label: str
    argv: list[str]
    target_s: float | None = None


def _statecraft() -> str:
    """The ``statecraft`` console script of this interpreter's environment (what a user runs)."""
    beside = Path(sys.executable).parent / "statecraft"
    found = str(beside) if beside.exists() else shutil.which("statecraft")
    if not found:
        sys.exit("error: no statecraft console script next to this python or on PATH (pip install -e .)")
    return found


def _make_run(cli: str, db: Path) -> str:
    """Start one contract-review run through the CLI; its run id."""
    out = subprocess.run(
        [cli, "start", str(MACHINE), "--input", str(SAMPLE), "--db", str(db), "--json"],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        sys.exit(f"error: could not create the benchmark run: {out.stderr.strip()}")
    return str(json.loads(out.stdout)["run_id"])


#: The subprocesses' environment: Python may write its bytecode caches, as it does by default.
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _time(argv: list[str]) -> float:
    """Wall-clock seconds of one fresh subprocess; exits if it fails (a failing command is no figure)."""
    began = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, check=False, env=_ENV)
    elapsed = time.perf_counter() - began
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(argv)} exited {out.returncode}: {out.stderr.decode()[-500:]}")
    return elapsed


def measure(cases: list[Case], runs: int) -> dict[str, list[float]]:
    """Time every case ``runs`` times, interleaved, after one untimed warm-up round.

    Returns:
        label -> wall-clock seconds, one per round.
    """
    for case in cases:
        _time(case.argv)
    times: dict[str, list[float]] = {case.label: [] for case in cases}
    for _ in range(runs):
        for case in cases:
            times[case.label].append(_time(case.argv))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="rounds (each command once per round)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()

    py, cli = sys.executable, _statecraft()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        db = Path(tmp) / "bench.db"
        run_id = _make_run(cli, db)
        cases = [
            Case('python -c "pass"', [py, "-c", "pass"]),
            Case('python -c "import click"', [py, "-c", "import click"]),
            Case('python -c "import sqlalchemy"', [py, "-c", "import sqlalchemy"]),
            Case('python -c "import statecraft"', [py, "-c", "import statecraft"]),
            Case('python -c "import statecraft.engine"', [py, "-c", "import statecraft.engine"]),
            Case("statecraft --help", [cli, "--help"], 0.3),
            Case("statecraft status RUN_ID", [cli, "status", run_id, "--db", str(db)], 0.5),
        ]
        load_before = os.getloadavg()
        times = measure(cases, args.runs)
        load_after = os.getloadavg()

    rows = [
        {
            "command": case.label,
            "median_s": round(statistics.median(times[case.label]), 3),
            "min_s": round(min(times[case.label]), 3),
            "max_s": round(max(times[case.label]), 3),
            "target_s": case.target_s,
        }
        for case in cases
    ]
    if args.json:
        print(json.dumps({"runs": args.runs, "load_before": load_before, "load_after": load_after, "rows": rows}))
        return
    table = Table("command", "median s", "min s", "max s", "target s", "")
    for case in cases:
        seconds = times[case.label]
        median = statistics.median(seconds)
        verdict = "" if case.target_s is None else ("meets" if median < case.target_s else "over")
        table.add_row(
            case.label, f"{median:.3f}", f"{min(seconds):.3f}", f"{max(seconds):.3f}",
            "" if case.target_s is None else f"{case.target_s:.1f}", verdict,
        )
    console = Console(width=110)
    console.print(table)
    console.print(
        f"{args.runs} interleaved rounds after a warm-up; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
