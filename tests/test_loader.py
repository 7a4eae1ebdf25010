"""Loading machine files is thread-safe (statecraft/loader.py, issue #8).

The reproduction: ``statecraft worker --concurrency 2`` logged
``MachineLoadError … has no attribute 'Clause'``; 55 of 80 concurrent cold
loads failed, because one thread found a sibling module another thread had
registered in ``sys.modules`` but not finished executing. The sibling here
sleeps before defining its class, so every unsafe interleaving shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from statecraft import Engine, MachineLoadError, load_machine

SIBLING = '''
import time

time.sleep(0.05)  # a slow module body: the window another thread could see it half-built


class Clause:
    kind = "payment"
'''

MACHINE = '''
from pydantic import BaseModel

from statecraft import Finish, Machine, Step
from statecraft.loader import load_sibling

rules = load_sibling(__file__, "_rules")
Clause = rules.Clause


class State(BaseModel):
    kind: str = ""


def classify(state, ctx):
    return Finish(update={"kind": Clause.kind})


machine = Machine("clauses", "1", State, steps=[Step("classify", classify, may_finish=True, writes=["kind"])])
'''


@pytest.fixture
def machine_file(tmp_path: Path) -> Path:
    (tmp_path / "_rules.py").write_text(SIBLING)
    path = tmp_path / "clauses.py"
    path.write_text(MACHINE)
    return path


def test_eighty_concurrent_cold_loads_of_a_machine_with_a_sibling_all_succeed(machine_file: Path) -> None:
    threads, start = 80, threading.Barrier(80)
    failures: list[str] = []
    digests: set[str] = set()

    def load() -> None:
        start.wait()
        try:
            digests.add(load_machine(str(machine_file)).digest)
        except MachineLoadError as exc:
            failures.append(str(exc))

    workers = [threading.Thread(target=load) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert failures == []
    assert len(digests) == 1


def test_a_sibling_that_fails_while_executing_is_not_handed_out_half_built(machine_file: Path) -> None:
    flag = machine_file.with_name("broken")
    flag.write_text("")
    (machine_file.parent / "_rules.py").write_text(
        f"import pathlib\nif pathlib.Path({str(flag)!r}).exists():\n    raise RuntimeError('not ready')\n" + SIBLING
    )
    with pytest.raises(MachineLoadError, match="RuntimeError while importing: not ready"):
        load_machine(str(machine_file))
    flag.unlink()
    assert load_machine(str(machine_file)).steps["classify"].agent is not None


def test_a_worker_with_concurrency_loads_a_cold_machine_on_every_thread_without_errors(
    tmp_path: Path, machine_file: Path
) -> None:
    db = tmp_path / "w.db"
    with Engine(db) as engine:  # four detached runs, recorded with the file's path
        for _ in range(4):
            engine.start(load_machine(str(machine_file)), {}, ref=str(machine_file), advance=False)
    # A fresh process: every worker thread meets the machine file cold.
    worker = subprocess.run(
        [sys.executable, "-m", "statecraft", "worker", "--concurrency", "4", "--until-idle", "--poll", "0.05",
         "--db", str(db)],
        capture_output=True, text=True, timeout=120,
    )
    assert worker.returncode == 0, worker.stderr
    logged = [json.loads(line) for line in worker.stderr.splitlines() if line.startswith("{")]
    assert [e for e in logged if e["event"] == "run.error"] == []
    assert sorted(e["status"] for e in logged if e["event"] == "run.advanced") == ["DONE"] * 4
