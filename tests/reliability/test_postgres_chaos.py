"""Chaos on PostgreSQL: 8 worker processes advance 500 runs while workers are SIGKILLed and the server restarts.

The run is ``machines/payments.py`` (each run charges two amounts through a
separate "bank" that deduplicates by idempotency key, via ``ctx.once``), on
a fresh schema of the local PostgreSQL server. Eight real ``statecraft
worker`` processes claim runs (``FOR UPDATE SKIP LOCKED``) and advance them;
at seeded moments one is killed with SIGKILL and replaced, and once, midway,
PostgreSQL itself is restarted (``pg_ctlcluster … restart``), cutting every
connection. At the end:

- every run is DONE;
- no step committed twice: every run's ledger is contiguous, folds into its
  row, and charged each amount once (``verify_ledger`` with the run fold,
  and each run's ``paid`` list has one charge per amount);
- every ``ctx.once`` effect happened exactly once: one bank charge per
  (run, amount) key, and the charges the runs recorded are those charges;
- ``statecraft audit verify`` on the PostgreSQL database says OK.

The seed is printed; ``STATECRAFT_CHAOS_SEED`` replays it. Needs the local
server and ``pg_ctlcluster`` (and the rights to use it): skipped, saying
why, where either is missing.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from machines.payments import Bank
from statecraft import Engine, RunStatus
from statecraft.audit.verify import verify_ledger
from statecraft.loader import load_machine
from tests.conftest import postgres_schema, postgres_unavailable

REPO = Path(__file__).resolve().parents[2]
PAYMENTS = str(REPO / "machines" / "payments.py")
RUNS = int(os.environ.get("STATECRAFT_CHAOS_RUNS", "500"))
WORKERS = 8

pytestmark = pytest.mark.slow


def _cluster() -> list[str] | None:
    tool = shutil.which("pg_ctlcluster")
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if tool is None or not versions or os.geteuid() != 0:
        return None
    return [tool, "--skip-systemctl-redirect", versions[-1], "main"]


def _worker(url: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "statecraft", "worker", "--concurrency", "2", "--poll", "0.05",
         "--lease", "3", "--db", url],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("ab"),
    )


def _wait_for_server(url: str, limit_s: float = 60.0) -> None:
    import psycopg

    end = time.monotonic() + limit_s
    while True:
        try:
            with psycopg.connect(url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except Exception:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test_eight_workers_finish_every_run_exactly_once_through_kills_and_a_server_restart(tmp_path: Path) -> None:
    reason = postgres_unavailable()
    if reason is not None:
        pytest.skip(f"PostgreSQL chaos skipped: {reason}")
    cluster = _cluster()
    if cluster is None:
        pytest.skip("PostgreSQL chaos skipped: pg_ctlcluster is not available to this user (root, Debian layout)")
    seed = int(os.environ.get("STATECRAFT_CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
    print(f"\nchaos seed {seed} (replay: STATECRAFT_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    bank_path = tmp_path / "bank.db"
    Bank(bank_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "STATECRAFT_BANK_DELAY_MS": "5", "STATECRAFT_BANK_FLAKY": "0.05"}
    log = tmp_path / "workers.log"
    machine = load_machine(PAYMENTS)
    with postgres_schema() as url:
        with Engine(url, machines=[machine]) as engine:
            amounts = {}
            for i in range(RUNS):
                pair = [100 + i, 10_000 + i]
                run = engine.start(machine, {"bank": str(bank_path), "account": f"acct_{i}", "amounts": pair},
                                   ref=PAYMENTS, advance=False)
                amounts[run.run_id] = pair
        workers = [_worker(url, env, log) for _ in range(WORKERS)]
        kills = restarts = running_at_restart = 0
        deadline = time.monotonic() + 300
        restart_after = time.monotonic() + rng.uniform(4, 8)
        try:
            with Engine(url, machines=[machine]) as watcher:
                while time.monotonic() < deadline:
                    time.sleep(rng.uniform(0.3, 1.2))
                    if restarts == 0 and time.monotonic() >= restart_after:
                        running_at_restart = len(watcher.list(status=RunStatus.RUNNING, limit=RUNS))
                        subprocess.run([*cluster, "restart"], check=True, capture_output=True, timeout=120)
                        _wait_for_server(url)
                        restarts += 1
                        continue
                    victim = rng.randrange(WORKERS)
                    workers[victim].send_signal(signal.SIGKILL)
                    workers[victim].wait(10)
                    workers[victim] = _worker(url, env, log)
                    kills += 1
                    try:
                        left = [r for r in watcher.list(status=RunStatus.RUNNING, limit=RUNS)]
                    except Exception:  # the server restarting under us: look again
                        continue
                    if not left and restarts:
                        break
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(30)
                except subprocess.TimeoutExpired:
                    w.kill()
        # Whatever the last kills left RUNNING, one clean worker finishes.
        subprocess.run(
            [sys.executable, "-m", "statecraft", "worker", "--until-idle", "--concurrency", "4", "--db", url],
            env=env, check=True, capture_output=True, timeout=300,
        )
        with Engine(url, machines=[machine]) as engine:
            runs = engine.list(limit=RUNS + 10)
            assert len(runs) == RUNS
            assert {r.status for r in runs} == {RunStatus.DONE}, seed
            report = verify_ledger(engine.db)
            assert report.ok, (seed, report.reason)
            recorded = {}
            for r in runs:
                assert len(r.state["paid"]) == 2, (seed, r.run_id, r.state)
                recorded[r.run_id] = r.state["paid"]
        charges = Bank(bank_path).charges()
        by_account: dict[str, list[tuple[int, str]]] = {}
        for _key, account, amount, charge_id in charges:
            by_account.setdefault(account, []).append((amount, charge_id))
        assert len(charges) == 2 * RUNS, (seed, len(charges))  # one charge per amount, never two
        for run_id, pair in amounts.items():
            account = f"acct_{pair[0] - 100}"
            made = sorted(by_account[account])
            assert [a for a, _ in made] == sorted(pair), (seed, account, made)
            assert sorted(recorded[run_id]) == sorted(c for _, c in made), (seed, run_id)
        verified = subprocess.run(
            [sys.executable, "-m", "statecraft", "audit", "verify", "--db", url],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout + verified.stderr
    print(f"chaos: {RUNS} runs, {WORKERS} workers, {kills} SIGKILLs, {restarts} server restart(s) "
          f"with {running_at_restart} runs in progress; seed {seed}")
    assert kills >= 3 and restarts == 1 and running_at_restart > 0, (kills, restarts, running_at_restart, seed)
