"""The reliability commands through the real click CLI: `approve --extend`, `resume`, `worker`."""

from __future__ import annotations

from pathlib import Path

from statecraft import Engine, RunStatus
from tests.conftest import Cli

REPO = Path(__file__).resolve().parents[2]
GREEDY = REPO / "tests" / "support" / "greedy.py"


def test_a_budget_gate_is_approved_with_a_raised_limit_from_the_cli(cli: Cli, tmp_path: Path) -> None:
    started = cli.json("start", str(GREEDY))
    assert started["status"] == "WAITING_FOR_APPROVAL"
    run_id = started["run_id"]
    refused = cli("approve", run_id, "--by", "finance@example.com", "--no-digest")
    assert refused.exit_code == 1 and "--extend max_steps=" in refused.stderr
    bad = cli("approve", run_id, "--by", "finance@example.com", "--no-digest", "--extend", "max_steps")
    assert bad.exit_code == 2
    done = cli.json("approve", run_id, "--by", "finance@example.com", "--no-digest", "--extend", "max_steps=10")
    assert done["status"] == "DONE" and done["steps_taken"] == 5


def test_resume_refuses_a_run_that_is_not_running_with_a_hint(cli: Cli) -> None:
    started = cli.json("start", str(GREEDY))
    result = cli("resume", started["run_id"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "waits for approval" in result.stderr


def test_resume_continues_a_detached_run_and_worker_needs_a_database(cli: Cli, tmp_path: Path) -> None:
    started = cli.json("start", str(GREEDY), "--detach")
    with Engine(cli.db) as engine:
        assert engine.get(started["run_id"]).status is RunStatus.RUNNING
    resumed = cli.json("resume", started["run_id"])
    assert resumed["status"] == "WAITING_FOR_APPROVAL"
    missing = cli.runner.invoke(
        __import__("statecraft.cli", fromlist=["main"]).main,
        ["worker", "--until-idle", "--db", str(tmp_path / "nope.db")],
    )
    assert missing.exit_code == 1 and "no database" in missing.stderr
