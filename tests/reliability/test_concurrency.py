"""Concurrency: threads and processes hammer one database; leases keep every run to one engine.

Several threads of the test process (one shared ``Engine``, and a second
``Engine`` of its own) and several worker processes advance the same 36 runs
at once; some threads deliberately race on the same run. Afterwards:

- no run was advanced by two engines at once: every agent ran exactly once
  per committed step (a second engine inside a step would have called the
  agent again, even if its commit had been refused), and no step was
  committed twice or lost (each ``trail`` is ``s0 … s19``);
- the ledger verifies and every run row equals the fold of its events;
- nothing raised but ``LeaseHeld`` (no "database is locked"), and the
  workers logged no error.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from statecraft import Engine, LeaseHeld, RunStatus, load_machine
from statecraft.audit.verify import verify_ledger

REPO = Path(__file__).resolve().parents[2]
STEPS20 = f"{REPO / 'tests' / 'support' / 'crashy.py'}:steps20"


@pytest.mark.slow
def test_threads_and_processes_never_advance_one_run_twice(db_path: Path, tmp_path: Path, monkeypatch: Any) -> None:
    witness = tmp_path / "witness.txt"
    monkeypatch.setenv("STATECRAFT_WITNESS", str(witness))
    monkeypatch.setenv("STATECRAFT_STEP_SLEEP_MS", "2")
    seed = int(os.environ.get("STATECRAFT_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nconcurrency test seed: {seed}")
    rng = random.Random(seed)
    machine = load_machine(STEPS20)
    with Engine(db_path) as engine, Engine(db_path, machines=[machine]) as other:
        ids = [engine.start(machine, {}, ref=STEPS20, advance=False).run_id for _ in range(36)]
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "statecraft", "worker", "--concurrency", "3", "--poll", "0.01",
                 "--until-idle", "--verbose", "--db", str(db_path)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )
            for _ in range(3)
        ]
        outcomes: Counter[str] = Counter()
        errors: list[BaseException] = []
        lock = threading.Lock()
        hot = ids[:4]  # runs every thread races on

        def hammer(eng: Engine, order: list[str]) -> None:
            for run_id in order:
                try:
                    info = eng.advance(run_id, max_transitions=rng.choice([None, 3, 7]))
                    with lock:
                        outcomes[info.status.value] += 1
                except LeaseHeld:
                    with lock:
                        outcomes["lease_held"] += 1
                except BaseException as exc:  # anything else is a bug, "database is locked" included
                    with lock:
                        errors.append(exc)

        threads = []
        for i in range(6):
            order = hot * 3 + rng.sample(ids, len(ids))
            threads.append(threading.Thread(target=hammer, args=(engine if i % 2 else other, order)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        logs = []
        for w in workers:
            _, err = w.communicate(timeout=300)
            assert w.returncode == 0, err[-2000:]
            logs += [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert errors == [], f"(seed {seed}) {errors[:3]}"
        for run_id in ids:  # whatever is left (a run put back after max_transitions)
            engine.advance(run_id)
        runs = [engine.get(run_id) for run_id in ids]
        assert all(r.status is RunStatus.DONE for r in runs), f"(seed {seed})"
        assert all(r.state["trail"] == [f"s{i}" for i in range(20)] for r in runs), f"(seed {seed})"
        report = verify_ledger(engine.db)
        assert report.ok, report.reason
        assert all(
            [e.event_type for e in engine.events(r.run_id)].count("step.completed") == 19 for r in runs
        )
    assert [line for line in logs if line["level"] == "error"] == [], f"(seed {seed})"
    calls = Counter(tuple(line.split()[:2]) for line in witness.read_text().splitlines())
    assert len(calls) == 36 * 20
    assert max(calls.values()) == 1, f"(seed {seed}) a step ran twice: {calls.most_common(3)}"
    skipped = sum(1 for line in logs if line["event"] == "run.skipped")
    print(f"concurrency test: thread outcomes {dict(outcomes)}, worker runs advanced "
          f"{sum(1 for line in logs if line['event'] == 'run.advanced')}, skipped (lease held) {skipped}")
