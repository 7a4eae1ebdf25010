"""``statecraft audit log`` and ``audit show`` against the reviewed invoice ledger, through click.

The ledger (tests/audit/invoices.py) has 30 events: the genesis, six runs
r1..r6 from 2025-03-01T09:00Z, one event-time minute apart, and no others.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from pathlib import Path

import pytest

from statecraft.audit.chain import ALL_COLUMNS
from statecraft.audit.query import EventFilter
from tests.audit.invoices import Reviewed, build_reviewed
from tests.conftest import Cli

TOY = str(Path(__file__).resolve().parents[1] / "support" / "toy.py")


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory: pytest.TempPathFactory) -> Reviewed:
    return build_reviewed(tmp_path_factory.mktemp("reviewed") / "invoices.db")


@pytest.fixture
def rcli(reviewed) -> Cli:
    return Cli(reviewed.path)


def log(rcli: Cli, *args: str) -> list[dict]:
    result = rcli("audit", "log", *args, "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


# -- audit log ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--run", "r2"), lambda e: e["run_id"] == "r2"),
        (("--machine", "invoice"), lambda e: e["machine_name"] == "invoice"),
        (("--actor", "user:alice"), lambda e: e["actor_id"] == "user:alice"),
        (("--event", "approval.*"), lambda e: e["event_type"].startswith("approval.")),
        (("--event", "run.failed", "--event", "approval.denied"),
         lambda e: e["event_type"] in ("run.failed", "approval.denied")),
        (("--step", "post"), lambda e: "post" in (e["from_step"], e["to_step"])),
        (("--status", "FAILED"), lambda e: e["to_status"] == "FAILED"),
        (("--model", "claude-check"), lambda e: e["model_id"] == "claude-check"),
        (("--since", "2025-03-01T09:26:00Z", "--until", "2025-03-01T09:30:00Z"),
         lambda e: "2025-03-01T09:26:00" <= e["occurred_at"] < "2025-03-01T09:30:00"),
        (("--actor", "user:nobody"), lambda e: False),
    ],
)
def test_each_filter_selects_exactly_the_matching_events_in_seq_order(rcli, reviewed, args, expected) -> None:
    everything = log(rcli)
    selected = log(rcli, *args)

    assert len(everything) == 30
    assert selected == [e for e in everything if expected(e)]
    assert [e["seq"] for e in selected] == sorted(e["seq"] for e in selected)


def test_times_with_an_offset_mean_the_same_instant_and_until_is_exclusive(rcli) -> None:
    utc = log(rcli, "--since", "2025-03-01T09:26:00Z", "--until", "2025-03-01T09:29:00Z")
    paris = log(rcli, "--since", "2025-03-01T10:26:00+01:00", "--until", "2025-03-01T10:29:00+01:00")

    assert utc == paris
    assert [e["event_type"] for e in utc] == ["run.created", "run.started"]  # 09:29 itself excluded


def test_pages_follow_each_other_and_stderr_names_the_next_page(rcli) -> None:
    first = rcli("audit", "log", "--limit", "12", "--json")
    after = int(re.search(r"--after (\d+)", first.stderr).group(1))  # type: ignore[union-attr]
    second = log(rcli, "--after", str(after), "--limit", "12")
    rest = log(rcli, "--after", str(second[-1]["seq"]))

    pages = [json.loads(line) for line in first.stdout.splitlines()] + second + rest
    assert after == 12
    assert pages == log(rcli)


def test_csv_has_every_column_and_one_row_per_event(rcli) -> None:
    result = rcli("audit", "log", "--run", "r3", "--csv")

    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert result.exit_code == 0
    assert list(rows[0]) == list(ALL_COLUMNS)
    assert [r["event_type"] for r in rows][-2:] == ["approval.granted", "run.completed"]
    assert rows[-2]["reason"] == ""  # NULL as an empty field


def test_the_table_shows_the_events(rcli) -> None:
    result = rcli("audit", "log", "--actor", "user:bob")

    assert result.exit_code == 0
    assert "approval.denied" in result.stdout and "vendor unknown" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--since", "2025-03-01T09:00"), 2, "has no UTC offset"),
        (("--until", "yesterday"), 2, "not an ISO 8601 time"),
        (("--json", "--csv"), 2, "choose one of --json and --csv"),
        (("--run", "nope"), 1, "no run with id 'nope'"),
    ],
)
def test_log_errors_are_one_line(rcli, args, code, message) -> None:
    assert message in one_line_error(rcli("audit", "log", *args), code)


@pytest.mark.parametrize(
    ("flt", "index"),
    [
        (EventFilter(run_id="r2"), "sqlite_autoindex_audit_event_1"),
        (EventFilter(actor="user:alice"), "ix_audit_actor_time"),
        (EventFilter(event_types=("approval.granted",), since="2025-03-01T00:00:00.000000Z"), "ix_audit_type_time"),
        (EventFilter(model="claude-check", limit=10), "ix_audit_model_time"),
        (EventFilter(since="2025-03-01T09:00:00.000000Z", until="2025-03-01T10:00:00.000000Z"), "ix_audit_time"),
    ],
)
def test_an_indexed_filter_searches_its_index(reviewed, flt, index) -> None:
    sql, params = flt.sql()
    conn = sqlite3.connect(reviewed.path)
    plan = " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    conn.close()

    assert f"USING INDEX {index}" in plan or f"USING COVERING INDEX {index}" in plan, plan


# -- audit show --------------------------------------------------------------------------------


def test_show_tells_a_run_end_to_end_and_flags_a_self_approval(rcli) -> None:
    result = rcli("audit", "show", "r3")
    out = result.stdout

    assert result.exit_code == 0, result.output
    for expected in (
        "invoice v2", "started by", "user:dave", "run.created", "step.completed", "approval.requested",
        "approval.granted", "run.completed", "claude-extract", "prompt p1", "1000 in / 200 out tokens",
        "$0.003000", "amount 9000 over 1000", "SELF-APPROVAL", "no reason recorded", '"amount": 9000',
    ):
        assert expected in out, expected


def test_show_json_has_every_event_the_approvals_and_full_bodies(rcli) -> None:
    data = rcli.json("audit", "show", "r2")

    assert [e["run_seq"] for e in data["events"]] == [1, 2, 3, 4, 5, 6]
    assert data["events"][0]["input"]["json"] == {"amount": 5000}
    assert data["approvals"][0]["decisions"][0]["actor_id"] == "user:alice"
    assert data["approvals"][0]["self_approved_by"] == []
    assert data["totals"]["cost_micros"] == 10_000 and data["run"]["status"] == "DONE"


def test_show_truncates_bodies_unless_full(cli, tmp_path) -> None:
    doc = tmp_path / "long.txt"
    doc.write_text("word " * 100 + "THE-END")
    run = cli.json("start", TOY, "--input", str(doc))

    short = cli("audit", "show", run["run_id"])
    full = cli("audit", "show", run["run_id"], "--full")

    assert "--full shows all" in short.stdout and "THE-END" not in short.stdout
    assert "THE-END" in full.stdout


def test_show_of_an_unknown_run_is_one_line(rcli) -> None:
    assert "no run with id 'nope'" in one_line_error(rcli("audit", "show", "nope"), 1)


# -- audit verify output ------------------------------------------------------------------------


def test_verify_without_a_bad_seq_prints_just_the_reason(ledger, insider) -> None:
    insider.execute(
        "INSERT INTO run (run_id, machine_name, machine_version, machine_digest, status, step, "
        "state_sha256, task_sha256, run_seq, steps_taken, created_at, updated_at, started_by, "
        "tokens_in, tokens_out, cost_micros) "
        "SELECT 'run-ghost', machine_name, machine_version, machine_digest, 'DONE', step, "
        "state_sha256, task_sha256, 5, 0, created_at, updated_at, started_by, 0, 0, 0 "
        "FROM run WHERE run_id = 'run-0'"
    )

    result = Cli(ledger.path)("audit", "verify")

    assert result.exit_code == 1
    assert result.stdout.strip() == "FAILED: run run-ghost: run row has no events in the ledger"


def test_verify_json_reports_redactions_and_anchor(cli, tmp_path) -> None:
    doc = tmp_path / "d.txt"
    doc.write_text("x y")
    cli.json("start", TOY, "--input", str(doc))
    anchor = tmp_path / "a.anchor"
    cli("audit", "anchor", "--out", str(anchor))
    cli("audit", "redact", "4", "--by", "user:dpo", "--reason", "ER-1")

    report = json.loads(cli("audit", "verify", "--anchor", str(anchor), "--json").stdout)

    assert report["ok"] is True and report["anchored_seq"] == 7  # 2 words: no gate, 6 events + anchor
    assert report["redactions"] == [[4, 8]]
