"""Export bundles say the truth (issue #8).

Reproductions: ``verify-export`` said "anchored: rows … are the ledger's own"
for a bundle whose rows and embedded anchor were both rewritten; demoting a
selected event to a context row (withholding its payload and blobs) went
unnoticed; a bundle whose run shares a blob with a lawfully redacted event of
another run, or a time window of a redacted ledger, failed to verify.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

from statecraft import Engine
from statecraft.audit.anchor import parse_anchor, take_anchor
from statecraft.audit.chain import compute_entry_hash
from statecraft.audit.export import export_bundle, verify_export
from statecraft.audit.redact import redact_event
from tests.support.toy import machine as toy


def _bundle(engine: Engine, **kwargs: Any) -> list[dict[str, Any]]:
    out = io.StringIO()
    export_bundle(engine.db, out, **kwargs)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _write(lines: list[dict[str, Any]], path: Path) -> Path:
    """Write the lines, resealing the end line as a forger would."""
    body = [json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n" for o in lines if o["kind"] != "end"]
    end = {"kind": "end", "lines": len(body), "sha256": hashlib.sha256("".join(body).encode()).hexdigest()}
    path.write_text("".join(body) + json.dumps(end) + "\n", encoding="utf-8")
    return path


def _rows(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in lines if o["kind"] in ("event", "context")]


def _rehash(lines: list[dict[str, Any]], start_seq: int) -> None:
    rows = _rows(lines)
    prev = None
    for row in rows:
        if row["seq"] >= start_seq:
            if prev is not None:
                row["prev_hash"] = prev
            full = dict(row)
            full.setdefault("payload_json", None)
            row["entry_hash"] = compute_entry_hash(full)
        prev = row["entry_hash"]


def test_an_embedded_anchor_only_claims_only_an_outside_anchor_proves(tmp_path: Path) -> None:
    with Engine(tmp_path / "l.db") as engine:
        run = engine.start(toy, "two words")
        genuine = take_anchor(engine.db)
        lines = _bundle(engine, runs=[run.run_id], anchors=[genuine])
    honest = verify_export(_write(lines, tmp_path / "honest.jsonl"))
    assert honest.ok and honest.anchored_seq is None  # nothing from outside: not proven
    assert honest.embedded_anchor_seq == genuine.seq
    assert verify_export(tmp_path / "honest.jsonl", anchors=[genuine]).anchored_seq == genuine.seq

    # A forger rewrites a row, rehashes the rest, and rewrites the embedded anchor to match.
    target = next(r for r in _rows(lines) if r["kind"] == "event" and r["event_type"] == "step.completed")
    target["reason"] = "nothing to see"
    _rehash(lines, target["seq"])
    forged_hash = next(r for r in _rows(lines) if r["seq"] == genuine.seq)["entry_hash"]
    anchor_line = next(o for o in lines if o["kind"] == "anchor")
    anchor_line["text"] = dataclasses.replace(genuine, entry_hash=forged_hash).text()
    assert parse_anchor(anchor_line["text"]).entry_hash == forged_hash

    forged = verify_export(_write(lines, tmp_path / "forged.jsonl"))
    assert forged.ok and forged.anchored_seq is None  # consistent, but proven by nothing
    against_genuine = verify_export(tmp_path / "forged.jsonl", anchors=[genuine])
    assert against_genuine.ok is False and against_genuine.first_bad_seq == genuine.seq


def test_the_cli_says_anchored_only_for_an_outside_anchor(cli: Any, tmp_path: Path) -> None:
    from tests.conftest import REPO

    started = cli("start", str(REPO / "tests" / "support" / "toy.py"), "--input", "-", "--json", input="two words")
    run_id = json.loads(started.stdout)["run_id"]
    anchor_file = tmp_path / "kept.anchor"
    assert cli("audit", "anchor", "--out", str(anchor_file)).exit_code == 0
    out = tmp_path / "b.jsonl"
    assert cli("audit", "export", "--run", run_id, "--anchor", str(anchor_file), "--out", str(out)).exit_code == 0
    from click.testing import CliRunner

    from statecraft.cli import main

    plain = CliRunner().invoke(main, ["audit", "verify-export", str(out)])
    assert plain.exit_code == 0 and "anchored" not in plain.stdout.replace("an anchor inside the bundle", "")
    assert "not proof" in plain.stdout
    proven = CliRunner().invoke(main, ["audit", "verify-export", str(out), "--anchor", str(anchor_file)])
    assert proven.exit_code == 0 and "anchored: rows" in proven.stdout


def test_demoting_a_selected_event_to_a_context_row_is_detected(tmp_path: Path) -> None:
    with Engine(tmp_path / "l.db") as engine:
        run = engine.start(toy, "two words")
        engine.start(toy, "two words")
        lines = _bundle(engine, runs=[run.run_id])
    victim = next(r for r in _rows(lines) if r["kind"] == "event" and r["event_type"] == "step.completed")
    victim["kind"] = "context"
    del victim["payload_json"]
    others = {r[c] for r in _rows(lines) if r is not victim for c in ("input_sha256", "output_sha256", "state_sha256")}
    withheld = {victim[c] for c in ("input_sha256", "output_sha256") if victim[c]} - others
    lines = [o for o in lines if not (o["kind"] == "blob" and o["sha256"] in withheld)]

    report = verify_export(_write(lines, tmp_path / "demoted.jsonl"))

    assert report.ok is False and report.first_bad_seq == victim["seq"]
    assert "selection covers" in (report.reason or "") and "context row" in (report.reason or "")


def test_a_bundle_sharing_blobs_with_a_lawfully_redacted_event_verifies(tmp_path: Path) -> None:
    with Engine(tmp_path / "l.db") as engine:
        first = engine.start(toy, "two words")
        second = engine.start(toy, "two words")  # same input: its steps reference the same blobs
        step = next(e for e in engine.events(first.run_id) if e.event_type == "step.completed")
        redact_event(engine.db, step.event_id, by="dpo@example.com", reason="erasure request ER-1",
                     parts=("payload", "input", "output", "state"))
        lines = _bundle(engine, runs=[second.run_id])
        window = _bundle(engine, since=engine.events(second.run_id)[0].occurred_at)
    report = verify_export(_write(lines, tmp_path / "shared.jsonl"))
    assert report.ok, report
    windowed = verify_export(_write(window, tmp_path / "window.jsonl"))
    assert windowed.ok, windowed
