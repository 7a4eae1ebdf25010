"""The CLI through real click invocations (and one real subprocess) against real SQLite files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import Cli

TOY = str(Path(__file__).parent / "support" / "toy.py")


def _start(cli: Cli, tmp_path: Path, text: str) -> dict:
    doc = tmp_path / "doc.txt"
    doc.write_text(text)
    return cli.json("start", TOY, "--input", str(doc))


def test_start_runs_inline_and_prints_json(cli: Cli, tmp_path: Path) -> None:
    run = _start(cli, tmp_path, "two words")
    assert run["status"] == "DONE"
    assert run["machine"] == "toy" and run["version"] == "1" and run["step"] == "publish"
    assert run["run_id"]


def test_start_reads_stdin_and_json_objects(cli: Cli) -> None:
    result = cli("start", TOY, "--input", "-", "--json", input='{"threshold": 100, "title": "t"}')
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["state"]["threshold"] == 100


def test_start_shows_progress_on_stderr_and_the_run_on_stdout(cli: Cli, tmp_path: Path) -> None:
    doc = tmp_path / "d.txt"
    doc.write_text("one two three four five")
    result = cli("start", TOY, "--input", str(doc))
    assert result.exit_code == 0
    assert result.stdout.strip().endswith("WAITING_FOR_APPROVAL")
    assert "step.completed" in result.stderr and "statecraft approve" in result.stderr


def test_the_approval_flow_through_the_cli(cli: Cli, tmp_path: Path) -> None:
    run = _start(cli, tmp_path, "one two three four five")
    assert run["status"] == "WAITING_FOR_APPROVAL"
    status = cli.json("status", run["run_id"])
    digest = status["pending"]["proposal_digest"]
    assert status["pending"]["resume_at"] == "publish"
    assert status["state"]["words"] == 5
    wrong = cli("approve", run["run_id"], "--by", "alice", "--digest", "f" * 64)
    assert wrong.exit_code == 1 and "proposal digest is" in wrong.stderr
    done = cli.json("approve", run["run_id"], "--by", "alice", "--digest", digest, "--comment", "ok")
    assert done["status"] == "DONE"
    events = [json.loads(line) for line in cli("audit", "log", "--run", run["run_id"], "--json").stdout.splitlines()]
    granted = [e for e in events if e["event_type"] == "approval.granted"][0]
    assert granted["actor_id"] == "alice" and granted["reason"] == "ok"
    verify = cli("audit", "verify")
    assert verify.exit_code == 0 and verify.stdout.startswith("OK up to seq")


def test_reject_cancel_and_retry(cli: Cli, tmp_path: Path) -> None:
    run = _start(cli, tmp_path, "one two three four five")
    rejected = cli.json("reject", run["run_id"], "--by", "bob", "--reason", "too long")
    assert rejected["status"] == "FAILED" and rejected["error_code"] == "rejected"
    retried = cli.json("retry", run["run_id"], "--by", "ops")
    assert retried["status"] == "WAITING_FOR_APPROVAL"
    cancelled = cli.json("cancel", run["run_id"], "--by", "ops", "--reason", "not needed")
    assert cancelled["status"] == "FAILED" and cancelled["error_code"] == "cancelled"


def test_list_filters_newest_first(cli: Cli, tmp_path: Path) -> None:
    a = _start(cli, tmp_path, "x")
    b = _start(cli, tmp_path, "one two three four five")
    runs = cli.json("list")
    assert [r["run_id"] for r in runs] == [b["run_id"], a["run_id"]]
    waiting = cli.json("list", "--status", "WAITING_FOR_APPROVAL")
    assert [r["run_id"] for r in waiting] == [b["run_id"]]


def _one_line_error(result: object, code: int = 1) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in result.stderr  # type: ignore[attr-defined]
    return lines[0]


def test_errors_are_one_line_with_a_nonzero_exit_and_change_nothing(cli: Cli, tmp_path: Path) -> None:
    run = _start(cli, tmp_path, "x")
    before = cli("audit", "log", "--json").stdout
    assert "no run with id 'nope'" in _one_line_error(cli("status", "nope"))
    assert "cannot approve a run that is DONE" in _one_line_error(cli("approve", run["run_id"], "--by", "a", "--no-digest"))
    assert "input file" in _one_line_error(cli("start", TOY, "--input", str(tmp_path / "missing.txt")), 2)
    bad = tmp_path / "bad_machine.py"
    bad.write_text("this is not python(")
    assert "syntax error" in _one_line_error(cli("start", str(bad)))
    invalid = tmp_path / "invalid_machine.py"
    invalid.write_text(
        "from pydantic import BaseModel\nfrom statecraft import Machine, Step\n"
        "class S(BaseModel):\n    x: int = 0\n"
        "machine = Machine('bad', '1', S, [Step('a', print, next=['b'])])\n"
    )
    assert "next step 'b' does not exist" in _one_line_error(cli("start", str(invalid)))
    assert cli("audit", "log", "--json").stdout == before


def test_a_database_that_is_not_statecraft_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite" * 1000)
    assert "not a usable statecraft database" in _one_line_error(Cli(junk)("list"))
    assert "no database at" in _one_line_error(Cli(tmp_path / "absent.db")("list"))
    assert "in-memory SQLite database cannot hold" in _one_line_error(Cli(Path(":memory:"))("start", TOY))
    mysql = Cli(Path("x"))
    mysql.db = "mysql://root@127.0.0.1/test"  # type: ignore[assignment]  # a URL, as --db takes it
    assert "not a database statecraft runs on" in _one_line_error(mysql("start", TOY))


def test_graph_prints_mermaid(cli: Cli) -> None:
    result = cli.runner.invoke(__import__("statecraft.cli", fromlist=["main"]).main, ["graph", TOY])
    assert result.exit_code == 0 and "stateDiagram-v2" in result.stdout and "gate --> publish" in result.stdout
    life = cli.runner.invoke(__import__("statecraft.cli", fromlist=["main"]).main, ["graph", "--lifecycle"])
    assert "WAITING_FOR_APPROVAL --> RUNNING: approve" in life.stdout


def test_the_installed_console_script_runs_in_a_real_subprocess(tmp_path: Path) -> None:
    doc = tmp_path / "d.txt"
    doc.write_text("x y")
    env_db = tmp_path / "sub.db"
    proc = subprocess.run(
        [sys.executable, "-m", "statecraft", "start", TOY, "--input", str(doc), "--json", "--db", str(env_db)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "DONE"
    verify = subprocess.run(
        [sys.executable, "-m", "statecraft", "audit", "verify", "--db", str(env_db)],
        capture_output=True, text=True, timeout=120,
    )
    assert verify.returncode == 0 and "OK up to seq" in verify.stdout


def test_durability_comes_from_the_environment_and_bad_values_are_one_line(
    cli: Cli, tmp_path: Path, monkeypatch: object
) -> None:
    from statecraft.store.db import Database

    seen: list[str] = []
    real_init = Database.__init__

    def spy(self: Database, *args: object, **kwargs: object) -> None:
        seen.append(str(kwargs.get("synchronous")))
        real_init(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Database, "__init__", spy)  # type: ignore[attr-defined]
    monkeypatch.setenv("STATECRAFT_SYNCHRONOUS", "normal")  # type: ignore[attr-defined]
    assert _start(cli, tmp_path, "x")["status"] == "DONE"
    assert seen == ["NORMAL"]
    monkeypatch.setenv("STATECRAFT_SYNCHRONOUS", "sometimes")  # type: ignore[attr-defined]
    assert "STATECRAFT_SYNCHRONOUS" in _one_line_error(cli("list"), 2)
