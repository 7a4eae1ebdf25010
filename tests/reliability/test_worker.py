"""The worker: picks up runnable runs, applies recorded approvals and deadlines, stops gracefully."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from typing import Any

from statecraft import Engine, RunStatus, Worker, load_machine
from statecraft.worker import configure_logging
from tests.support.reliability import FakeClock, assert_ledger_ok
from tests.support.toy import machine as toy

REPO = Path(__file__).resolve().parents[2]
CRASHY = str(REPO / "tests" / "support" / "crashy.py")
TOY = str(REPO / "tests" / "support" / "toy.py")


def test_a_worker_advances_detached_runs_and_recorded_approvals(db_path: Path) -> None:
    stream = io.StringIO()
    undo = configure_logging(stream=stream)
    try:
        with Engine(db_path) as engine:
            steps20 = load_machine(f"{CRASHY}:steps20")
            detached = [engine.start(steps20, {}, ref=f"{CRASHY}:steps20", advance=False) for _ in range(5)]
            waiting = engine.start(toy, "one two three four five", ref=TOY)
            assert waiting.status is RunStatus.WAITING_FOR_APPROVAL
            engine.approve(waiting.run_id, by="alice", advance=False)  # approve --no-continue
            stats = Worker(engine, concurrency=3, poll=timedelta(milliseconds=20)).run(until_idle=True)
            assert all(engine.get(r.run_id).status is RunStatus.DONE for r in detached)
            assert engine.get(waiting.run_id).status is RunStatus.DONE
            assert stats.advanced == 6 and stats.errors == 0
            assert_ledger_ok(engine)
    finally:
        undo()
    every = [json.loads(line) for line in stream.getvalue().splitlines()]
    lines = [line for line in every if line["logger"] == "statecraft.worker"]
    assert lines[0]["event"] == "worker.started" and lines[-1]["event"] == "worker.stopped"
    # The engine's own records go to the same JSON stream: each run's completion, with its fields.
    completed = [line for line in every if line["logger"] == "statecraft.engine" and line["event"] == "run.completed"]
    assert {line["run_id"] for line in completed} == {r.run_id for r in detached} | {waiting.run_id}
    advanced = [line for line in lines if line["event"] == "run.advanced"]
    assert len(advanced) == 6
    assert all({"ts", "level", "worker", "run_id", "status", "steps"} <= set(line) for line in advanced)


def test_a_worker_enforces_approval_deadlines(db_path: Path, clock: FakeClock) -> None:
    from tests.reliability.test_approval_deadlines import gated

    m = gated()
    with Engine(db_path, clock=clock, machines=[m]) as engine:
        run = engine.start(m, {})
        clock.advance(timedelta(hours=5))
        stats = Worker(engine, poll=timedelta(milliseconds=10)).run(until_idle=True)
        assert stats.expired == 1
        assert engine.get(run.run_id).error_code == "approval_expired"


def _worker(db: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "statecraft", "worker", "--db", str(db), "--poll", "0.05", *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, **(env or {})},
    )


def _wait_for(predicate: Any, timeout: float = 30) -> None:
    until = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < until, "timed out"
        time.sleep(0.05)


def test_sigterm_lets_the_step_in_progress_finish_then_releases_the_lease(db_path: Path, tmp_path: Path) -> None:
    witness = tmp_path / "witness.txt"
    with Engine(db_path) as engine:
        run = engine.start(load_machine(f"{CRASHY}:sleepy"), {}, ref=f"{CRASHY}:sleepy", advance=False)
    proc = _worker(db_path, env={"STATECRAFT_SLEEPY_S": "1.5", "STATECRAFT_WITNESS": str(witness)})
    try:
        _wait_for(lambda: witness.exists() and witness.read_text().strip())  # inside the step
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert events[:1] == ["worker.started"] and "worker.draining" in events and events[-1] == "worker.stopped"
    with Engine(db_path) as engine:
        done = engine.get(run.run_id)
        assert done.status is RunStatus.DONE and done.lease_owner is None  # finished, not abandoned
        assert_ledger_ok(engine)


def test_a_second_signal_abandons_the_step_and_another_worker_resumes_the_run(db_path: Path, tmp_path: Path) -> None:
    witness = tmp_path / "witness.txt"
    with Engine(db_path) as engine:
        run = engine.start(load_machine(f"{CRASHY}:sleepy"), {}, ref=f"{CRASHY}:sleepy", advance=False)
    proc = _worker(db_path, env={"STATECRAFT_SLEEPY_S": "60", "STATECRAFT_WITNESS": str(witness)})
    try:
        _wait_for(lambda: witness.exists() and witness.read_text().strip())
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert any(json.loads(line)["event"] == "worker.abandoned" for line in err.splitlines() if line.startswith("{"))
    with Engine(db_path) as engine:
        left = engine.get(run.run_id)
        assert left.status is RunStatus.RUNNING and left.lease_owner is None  # free for the next worker
        assert engine.runnable() == [run.run_id]
    second = _worker(db_path, "--until-idle", env={"STATECRAFT_SLEEPY_S": "0", "STATECRAFT_WITNESS": str(witness)})
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    with Engine(db_path) as engine:
        assert engine.get(run.run_id).status is RunStatus.DONE
        assert_ledger_ok(engine)
    assert len(witness.read_text().splitlines()) == 2  # the abandoned call, and the one that committed


def test_an_embedded_worker_and_engine_log_to_the_applications_handlers(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No configure_logging: the records propagate to the host's handlers (here pytest's).
    import logging

    caplog.set_level(logging.INFO, logger="statecraft")
    with Engine(db_path) as engine:
        steps20 = load_machine(f"{CRASHY}:steps20")
        run = engine.start(steps20, {}, ref=f"{CRASHY}:steps20", advance=False)
        Worker(engine, poll=timedelta(milliseconds=20)).run(until_idle=True)
    names = {(r.name, r.getMessage()) for r in caplog.records}
    assert ("statecraft.worker", "run.advanced") in names
    assert ("statecraft.engine", "run.completed") in names
    done = next(r for r in caplog.records if r.getMessage() == "run.completed")
    assert done.fields["run_id"] == run.run_id and done.levelno == logging.INFO  # type: ignore[attr-defined]


def test_two_engines_claiming_at_once_get_disjoint_runs(db_url: str) -> None:
    # On PostgreSQL the claim is FOR UPDATE SKIP LOCKED; on SQLite one writer at a time.
    import threading

    from statecraft import Engine

    steps20 = load_machine(f"{CRASHY}:steps20")
    with Engine(db_url) as setup:
        ids = {setup.start(steps20, {}, ref=f"{CRASHY}:steps20", advance=False).run_id for _ in range(40)}
    results: dict[str, list[str]] = {}
    with Engine(db_url, owner="host-a:1:a") as a, Engine(db_url, owner="host-b:2:b") as b:
        barrier = threading.Barrier(2)

        def claim(engine: Engine, name: str) -> None:
            barrier.wait()
            got: list[str] = []
            while True:
                batch = engine.claim(5)
                if not batch:
                    break
                got += batch
            results[name] = got

        threads = [threading.Thread(target=claim, args=(e, n)) for e, n in ((a, "a"), (b, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert set(results["a"]).isdisjoint(results["b"])
        assert set(results["a"]) | set(results["b"]) == ids
        held = {r.run_id: r.lease_owner for r in a.list(limit=100)}
        assert all(held[r] == "host-a:1:a" for r in results["a"])
        assert all(held[r] == "host-b:2:b" for r in results["b"])
