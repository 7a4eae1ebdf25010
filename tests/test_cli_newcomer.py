"""A CLI that never surprises (issue #9): run id prefixes, exit codes, Ctrl-C, one-line errors, list, output.

Real click invocations against real SQLite files; real subprocesses where a
signal, a terminal (a pty) or an operating-system limit is part of the test.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from statecraft import Engine
from statecraft.loader import load_machine
from tests.conftest import Cli

SUPPORT = Path(__file__).parent / "support"
TOY = str(SUPPORT / "toy.py")
SLOW = str(SUPPORT / "slow.py")
EXE = [sys.executable, "-m", "statecraft"]


def one_line_error(result: object, code: int) -> str:
    """The single ``error: …`` line of a failed command, after checking its exit code."""
    assert result.exit_code == code, (result.stdout, result.stderr)  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def start(cli: Cli, text: str, *extra: str) -> dict:
    result = cli("start", TOY, "--input", "-", "--json", *extra, input=text)
    return json.loads(result.stdout)


# -- run ids ---------------------------------------------------------------------------


def _runs_with_ids(db: Path, ids: list[str]) -> None:
    queue = iter(ids)
    with Engine(db, new_id=lambda: next(queue)) as engine:
        machine = load_machine(TOY)
        for _ in ids:
            engine.start(machine, "one two three four five", by="clerk", ref=TOY)


def test_every_command_takes_a_unique_prefix_and_refuses_an_ambiguous_one(cli: Cli) -> None:
    _runs_with_ids(cli.db, ["abcd1111-0000-4000-8000-000000000001", "abcd2222-0000-4000-8000-000000000002"])
    assert cli.json("status", "abcd1")["run_id"] == "abcd1111-0000-4000-8000-000000000001"
    assert cli.json("status", "ABCD2")["run_id"] == "abcd2222-0000-4000-8000-000000000002"
    ambiguous = one_line_error(cli("status", "abcd"), 1)
    assert "ambiguous" in ambiguous
    assert "abcd1111-0000-4000-8000-000000000001" in ambiguous and "abcd2222-0000-4000-8000-000000000002" in ambiguous
    assert "no run with id 'abc'" in one_line_error(cli("status", "abc"), 1)  # too short to be a prefix
    assert "no run with id 'ffff'" in one_line_error(cli("status", "ffff"), 1)
    digest = cli.json("status", "abcd1")["pending"]["proposal_digest"]
    assert cli.json("approve", "abcd1", "--by", "alice", "--digest", digest)["status"] == "DONE"
    assert cli.json("reject", "abcd2", "--by", "bob", "--reason", "no")["status"] == "FAILED"
    assert cli.json("retry", "abcd2", "--by", "ops")["status"] == "WAITING_FOR_APPROVAL"
    assert cli.json("cancel", "abcd2", "--by", "ops", "--reason", "dup")["status"] == "FAILED"
    shown = cli.json("audit", "show", "abcd1")
    assert shown["run"]["run_id"] == "abcd1111-0000-4000-8000-000000000001"
    logged = cli("audit", "log", "--run", "abcd2", "--json").stdout.splitlines()
    assert logged and {json.loads(line)["run_id"] for line in logged} == {"abcd2222-0000-4000-8000-000000000002"}
    assert "ambiguous" in one_line_error(cli("audit", "log", "--run", "abcd"), 1)


def test_tables_print_ids_that_can_be_pasted_back(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    start(cli, "one two three four five")
    for columns in ("40", "80", "200"):
        monkeypatch.setenv("COLUMNS", columns)
        shown = cli("list").stdout.splitlines()[2].split()[0]
        assert cli.json("status", shown)["status"] == "WAITING_FOR_APPROVAL", columns


# -- exit codes ------------------------------------------------------------------------


def test_exit_codes_say_how_the_run_ended(cli: Cli) -> None:
    done = cli("start", TOY, "--input", "-", input="two words")
    assert done.exit_code == 0 and done.stdout.strip().endswith("DONE")
    waiting = cli("start", TOY, "--input", "-", input="one two three four five")
    assert waiting.exit_code == 0 and waiting.stdout.strip().endswith("WAITING_FOR_APPROVAL")
    failed = cli("start", TOY, "--input", "-", input="explode")
    assert failed.exit_code == 3, failed.stderr
    assert failed.stdout.strip().endswith("FAILED")
    assert failed.stderr.strip().splitlines()[-1].startswith("error: run ") and "FAILED: agent_error" in failed.stderr
    as_json = cli("start", TOY, "--input", "-", "--json", input="explode")
    assert as_json.exit_code == 3 and json.loads(as_json.stdout)["status"] == "FAILED"
    run_id = json.loads(as_json.stdout)["run_id"]
    assert cli("retry", run_id, "--by", "ops").exit_code == 3  # fails again: the input still explodes
    # Reject and cancel end FAILED because that is what was asked: exit 0.
    waiting_id = cli.json("list", "--status", "WAITING_FOR_APPROVAL")[0]["run_id"]
    assert cli("reject", waiting_id, "--by", "bob", "--reason", "no").exit_code == 0
    # Refused requests exit 1, usage errors 2.
    assert cli("approve", waiting_id, "--by", "a", "--no-digest").exit_code == 1
    assert cli("approve", waiting_id, "--by", "a").exit_code == 2


def test_refusals_name_what_an_operator_can_do(cli: Cli) -> None:
    run = start(cli, "one two three four five")
    line = one_line_error(cli("retry", run["run_id"], "--by", "ops"), 1)
    assert "what an operator can do now: approve, cancel, reject" in line
    for internal in ("fail", "finish", "step", "request_approval", "expire"):
        assert not re.search(rf"\b{internal}\b", line.split("(", 1)[1]), line


# -- usage errors and bad input --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bogus"], "No such command 'bogus'"),
        (["status"], "Missing argument 'RUN_ID'"),
        (["list", "--status", "SOMETIMES"], "--status"),
        (["list", "--limit", "0"], "--limit"),
        (["start", TOY, "--bogus"], "--bogus"),
        (["audit", "log", "--after", "-1"], "--after"),
        (["list", "--since", "2026-01-01T00:00"], "no UTC offset"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(cli: Cli, args: list[str], says: str) -> None:
    start(cli, "x")
    line = one_line_error(cli(*args), 2)
    assert says in line and "Usage:" not in line


def test_start_without_input_is_one_line(cli: Cli) -> None:
    machine = Path(__file__).parents[1] / "machines" / "contract_review.py"
    line = one_line_error(cli("start", str(machine)), 1)
    assert "--input" in line


def test_non_utf8_and_lone_surrogates_on_stdin_are_one_line_and_write_nothing(cli: Cli) -> None:
    start(cli, "x")
    before = cli("audit", "log", "--json").stdout
    runner = CliRunner()
    from statecraft.cli import main

    bad = runner.invoke(main, ["start", TOY, "--input", "-", "--db", str(cli.db)], input=b"\xff\xfe caf\xe9")
    assert "not UTF-8" in one_line_error(bad, 1)
    lone = cli("start", TOY, "--input", "-", input='{"title": "\\ud800"}')
    assert "lone surrogate" in one_line_error(lone, 1)
    assert cli("audit", "log", "--json").stdout == before


def test_process_substitution_and_dev_stdin_are_inputs(tmp_path: Path) -> None:
    db = tmp_path / "pipe.db"
    proc = subprocess.run(
        ["bash", "-c", f'{" ".join(EXE)} start {TOY} --input <(printf "a b") --json --db {db}'],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"]["words"] == 2


def test_a_missing_postgres_driver_is_one_line(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    line = one_line_error(cli.runner.invoke(
        __import__("statecraft.cli", fromlist=["main"]).main,
        ["list", "--db", "postgresql://postgres@127.0.0.1:5432/test"],
    ), 1)
    assert "statecraft[postgres]" in line


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Path]:
    """A statecraft database file the kernel refuses to write, even for root (``chattr +i``)."""
    db = tmp_path / "frozen.db"
    Cli(db)("start", TOY, "--input", "-", input="x")
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available here: cannot make a file read-only for every user")
    try:
        yield db
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)


def test_a_read_only_database_is_one_line(immutable: Path) -> None:
    proc = subprocess.run([*EXE, "start", TOY, "--input", "-", "--db", str(immutable)], input="x",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "read-only" in proc.stderr, proc.stderr


def _file_size_limit(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_is_one_line_and_the_ledger_still_verifies(tmp_path: Path) -> None:
    db = tmp_path / "full.db"
    Cli(db)("start", TOY, "--input", "-", input="x")
    text = " ".join(["word"] * 200_000)  # a task blob far larger than the limit allows
    proc = subprocess.run([*EXE, "start", TOY, "--input", "-", "--db", str(db)], input=text, capture_output=True,
                          text=True, timeout=120, preexec_fn=lambda: _file_size_limit(db.stat().st_size + 8192))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: the database refused") and "Traceback" not in proc.stderr, proc.stderr
    assert Cli(db)("audit", "verify").exit_code == 0


# -- Ctrl-C and progress ---------------------------------------------------------------


def test_ctrl_c_during_start_names_the_run_and_resume_finishes_it(tmp_path: Path) -> None:
    db, marker = tmp_path / "slow.db", tmp_path / "started"
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"seconds": 60, "marker": str(marker)}))
    # SIGINT as a terminal's Ctrl-C sends it (default disposition, even under a shell that ignores it).
    proc = subprocess.Popen(
        [*EXE, "start", SLOW, "--input", str(task), "--db", str(db)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the step never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    match = re.fullmatch(r"error: interrupted: run (\S+) keeps its last checkpoint; "
                         r"continue it with: statecraft resume (\S+)\n", err)
    assert match and match.group(1) == match.group(2), err
    resumed = subprocess.run([*EXE, "resume", match.group(1), "--db", str(db), "--json"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["status"] == "DONE"


def _run_in_a_terminal(args: list[str], timeout: float = 60) -> str:
    """Run ``args`` with stdout and stderr on a pseudo-terminal; everything it wrote."""
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


def test_a_long_step_shows_a_spinner_with_elapsed_time_on_a_terminal_only(tmp_path: Path) -> None:
    db = tmp_path / "slow.db"
    task = tmp_path / "task.json"
    task.write_text(json.dumps({"seconds": 1.8, "marker": str(tmp_path / "m1")}))
    on_terminal = _run_in_a_terminal([*EXE, "start", SLOW, "--input", str(task), "--db", str(db)])
    assert re.search(r"step wait running for 1\.\d s", on_terminal), on_terminal
    task.write_text(json.dumps({"seconds": 1.8, "marker": str(tmp_path / "m2")}))
    piped = subprocess.run([*EXE, "start", SLOW, "--input", str(task), "--db", str(db)],
                           capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "running for" not in piped.stderr and "\x1b" not in piped.stderr


# -- list ------------------------------------------------------------------------------


def test_list_pages_without_a_silent_cut(cli: Cli) -> None:
    made = [start(cli, "one two three four five")["run_id"] for _ in range(5)]
    newest_first = list(reversed(made))
    seen, after = [], None
    while True:
        args = ["list", "--limit", "2", "--json"] + (["--after", after] if after else [])
        result = cli(*args)
        page = [r["run_id"] for r in json.loads(result.stdout)]
        seen += page
        hint = re.search(r"more runs: next page with --after (\S+)", result.stderr)
        if hint is None:
            break
        assert hint.group(1) == page[-1]
        after = hint.group(1)[:8]  # a prefix of the id is enough
    assert seen == newest_first
    table = cli("list", "--limit", "3")
    assert "more runs: next page with --after" in table.stderr
    assert len(cli.json("list")) == 5  # --json without --limit: everything


def test_list_filters_by_status_any_case_time_window_and_machine(cli: Cli) -> None:
    waiting = start(cli, "one two three four five")["run_id"]
    done = start(cli, "x")["run_id"]
    assert [r["run_id"] for r in cli.json("list", "--status", "waiting_for_approval")] == [waiting]
    assert [r["run_id"] for r in cli.json("list", "--status", "Done")] == [done]
    assert cli.json("list", "--since", "2999-01-01T00:00:00Z") == []
    assert len(cli.json("list", "--until", "2999-01-01T00:00:00+02:00")) == 2
    assert len(cli.json("list", "--machine", "toy")) == 2 and cli.json("list", "--machine", "other") == []


def test_list_csv_defuses_formulas(cli: Cli) -> None:
    start(cli, "one two three four five", "--by", "@clerk")
    rows = list(csv.DictReader(io.StringIO(cli("list", "--csv").stdout)))
    assert len(rows) == 1 and rows[0]["started_by"] == "'@clerk" and rows[0]["status"] == "WAITING_FOR_APPROVAL"
    assert one_line_error(cli("list", "--csv", "--json"), 2)


# -- output ----------------------------------------------------------------------------


def test_output_honours_columns_without_trailing_padding(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    run = start(cli, "one two three four five " * 30)
    for width in (80, 100, 160):
        monkeypatch.setenv("COLUMNS", str(width))
        for args in (["list"], ["status", run["run_id"]], ["audit", "log"]):
            lines = cli(*args).stdout.splitlines()
            assert lines, args
            assert all(len(line) <= width for line in lines), (width, args, max(map(len, lines)))
            assert all(line == line.rstrip() for line in lines), (width, args)
        listing = cli("list").stdout
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", listing), listing  # times whole at 80 columns
    monkeypatch.setenv("COLUMNS", "80")
    assert "…" in cli("list").stdout  # the long reason is cut, visibly


def test_the_cli_offers_exactly_the_redactable_parts() -> None:
    """cli/audit.py spells the parts out (importing audit.redact would load SQLAlchemy for --help)."""
    from statecraft.audit import redact
    from statecraft.cli.audit import audit_redact

    part = next(p for p in audit_redact.params if p.name == "parts")
    assert tuple(part.type.choices) == redact.PARTS  # type: ignore[attr-defined]
    assert f"default: {', '.join(redact.DEFAULT_PARTS)}" in (part.help or "")


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    with Engine(db) as engine:
        machine = load_machine(TOY)
        for _ in range(150):
            engine.start(machine, "one two three four five six seven", by="clerk", ref=TOY)
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {' '.join(EXE)} audit log --json --db {db} | head -n 1 >/dev/null"],
        capture_output=True, text=True, timeout=120,
    )
    # click's convention for a closed pipe: stop writing, say nothing, exit 1.
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr
