"""`statecraft serve` as a real command: refusals in one line, and the README's sample run served and approved."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import REPO, Cli
from tests.web.support import basic

STATECRAFT = [sys.executable, "-m", "statecraft"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(*args: str, cwd: Path) -> Iterator[str]:
    """Run `statecraft serve ARGS` on a free loopback port until the block ends (then SIGINT it)."""
    port = free_port()
    proc = subprocess.Popen([*STATECRAFT, "serve", "--port", str(port), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/login", timeout=1)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"serve did not start: {proc.stdout.read() if proc.stdout else ''}") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("serve did not stop on SIGINT within 15 s") from None
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""


def test_statecraft_help_does_not_import_the_web_framework() -> None:
    code = (
        "import sys\nfrom statecraft.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'uvicorn', 'jinja2'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "serve" in done.stdout
    assert done.stdout.strip().endswith("[]")


def test_serve_without_a_way_to_authenticate_is_a_usage_error(cli: Cli) -> None:
    result = cli("serve")
    assert result.exit_code == 2
    assert "approvals need an authenticated identity" in result.output


def test_serve_refuses_a_missing_database_and_a_writable_users_file_in_one_line(cli: Cli, tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("")
    users.chmod(0o600)
    missing = cli("serve", "--users", str(users))
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [f"error: no database at {cli.db} (start a run first, or pass "
                                                    "--db / STATECRAFT_DB)"]
    users.chmod(0o666)
    loose = cli("serve", "--users", str(users))
    assert loose.exit_code == 1 and "writable by group or others" in loose.output
    assert "Traceback" not in loose.output


def test_serve_works_on_the_readme_sample_run(tmp_path: Path) -> None:
    """The README's main job, served: inbox, run page, approval by an authenticated user, DONE, ledger OK."""
    env = {**os.environ, "STATECRAFT_DB": str(tmp_path / "statecraft.db")}
    started = subprocess.run(
        [*STATECRAFT, "start", str(REPO / "machines/contract_review.py"), "--input",
         str(REPO / "machines/samples/sample_msa.md"), "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert started.returncode == 0, started.stderr
    run = json.loads(started.stdout)
    assert run["status"] == "WAITING_FOR_APPROVAL"
    added = subprocess.run(
        [sys.executable, "-m", "statecraft.web.users", "add", "users.txt", "alice", "--principal",
         "alice@example.com", "--password-stdin"], cwd=tmp_path, input="alice-pw\n", capture_output=True, text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    with serving("--users", "users.txt", "--db", env["STATECRAFT_DB"], cwd=tmp_path) as base:
        auth = basic("alice", "alice-pw")
        inbox = httpx.get(base + "/api/inbox", headers=auth, timeout=10).json()
        (item,) = inbox["items"]
        assert item["run_id"] == run["run_id"]
        assert item["proposal_digest"] == run["pending"]["proposal_digest"]
        page = httpx.get(base + f"/runs/{run['run_id']}", headers=auth, timeout=10)
        assert page.status_code == 200 and "Master Services Agreement" in page.text
        approved = httpx.post(
            base + f"/api/runs/{run['run_id']}/approve", timeout=30,
            headers={**auth, "X-Statecraft-Client": "test"},
            json={"digest": item["proposal_digest"], "comment": "arbitration clause accepted"},
        )
        assert approved.status_code == 200, approved.text
        assert approved.json()["run"]["status"] == "DONE"
        assert "OK up to seq" in httpx.get(base + "/ledger", headers=auth, timeout=30).text
    shown = subprocess.run([*STATECRAFT, "audit", "log", "--run", run["run_id"], "--event", "approval.granted",
                            "--json"], env=env, capture_output=True, text=True, timeout=60)
    (granted,) = [json.loads(line) for line in shown.stdout.splitlines()]
    assert (granted["actor_type"], granted["actor_id"], granted["reason"]) == (
        "human", "alice@example.com", "arbitration clause accepted")
    verified = subprocess.run([*STATECRAFT, "audit", "verify"], env=env, capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0 and verified.stdout.startswith("OK up to seq")
