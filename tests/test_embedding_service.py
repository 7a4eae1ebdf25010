"""docs/embedding.md's FastAPI service, as written, under ``uvicorn --workers 4`` beside a worker.

The python block of the "Async services" section is written to ``service.py``
and served by four real uvicorn processes on one SQLite file; refunds are
started concurrently over HTTP (small ones finish inline on the servers'
event loops, large ones stop at the approval gate), approved over HTTP with
``advance=False``, then continued by a real ``statecraft worker`` process.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _service_code() -> str:
    doc = (REPO / "docs" / "embedding.md").read_text()
    section = doc.split("## Async services", 1)[1]
    return re.findall(r"```python\n(.+?)```", section, re.S)[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_documented_fastapi_service_runs_on_four_processes_with_a_worker(tmp_path: Path) -> None:
    import httpx

    (tmp_path / "service.py").write_text(_service_code())
    db = tmp_path / "service.db"
    env = dict(os.environ, STATECRAFT_DB=str(db), PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    # Create the schema once before four processes race to open it.
    subprocess.run([sys.executable, "-c", "import service"], cwd=tmp_path, env=env, check=True, timeout=60)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "service:app", "--workers", "4", "--port", str(port),
         "--host", "127.0.0.1", "--log-level", "warning"],
        cwd=tmp_path, env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{base}/docs", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        amounts = [10_00 if i % 2 else 120_00 for i in range(24)]
        with ThreadPoolExecutor(8) as pool:
            started = list(pool.map(
                lambda a: httpx.post(f"{base}/refunds", params={"amount_cents": a}, timeout=30).json(), amounts
            ))
        waiting = [r for r in started if r["status"] == "WAITING_FOR_APPROVAL"]
        assert len(waiting) == 12 and all(r["status"] == "DONE" for r in started if r not in waiting)
        for r in waiting:
            answer = httpx.post(
                f"{base}/refunds/{r['run_id']}/approve",
                params={"approver": "alice@example.com", "digest": r["digest"]}, timeout=30,
            )
            assert answer.status_code == 200 and answer.json()["status"] == "RUNNING"
        stale = httpx.post(f"{base}/refunds/{waiting[0]['run_id']}/approve",
                           params={"approver": "bob@example.com", "digest": "0" * 64}, timeout=30)
        assert stale.status_code == 409
    finally:
        server.terminate()
        server.wait(30)
    worker = subprocess.run(
        [sys.executable, "-m", "statecraft", "worker", "--until-idle", "--concurrency", "4", "--db", str(db)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert worker.returncode == 0, worker.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "statecraft", "list", "--json", "--db", str(db)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    statuses = re.findall(r'"status": "([A-Z_]+)"', listed.stdout)
    assert statuses.count("DONE") == 24, listed.stdout[:2000]
    verified = subprocess.run(
        [sys.executable, "-m", "statecraft", "audit", "verify", "--db", str(db)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout + verified.stderr
