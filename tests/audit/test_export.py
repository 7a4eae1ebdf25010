"""Export bundles: what a reviewer takes away, checked without the database.

The bundle of run-1 of the default ledger (seqs 3, 6, 9, 12, 15) spans seqs
3..15: run-1's five events with payloads and blobs, and eight context rows
(run-0's and run-2's events in between) without them. Tampering with the
bundle file is applied to its lines, as someone handed the file would.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from statecraft.audit.anchor import take_anchor
from statecraft.audit.chain import compute_entry_hash
from statecraft.audit.export import export_bundle, verify_export
from statecraft.audit.redact import redact_event
from statecraft.errors import LedgerError

TOY = str(Path(__file__).resolve().parents[1] / "support" / "toy.py")


def bundle(ledger, **kwargs) -> list[dict]:
    db = ledger.open()
    try:
        out = io.StringIO()
        export_bundle(db, out, **kwargs)
    finally:
        db.close()
    return [json.loads(line) for line in out.getvalue().splitlines()]


def write(lines: list[dict], path: Path, *, reseal: bool = True) -> Path:
    """Write bundle lines; with ``reseal``, recompute the end line as a forger would."""
    body = [json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n" for obj in lines if obj["kind"] != "end"]
    end = next(obj for obj in lines if obj["kind"] == "end")
    if reseal:
        end = {"kind": "end", "lines": len(body), "sha256": hashlib.sha256("".join(body).encode()).hexdigest()}
    path.write_text("".join(body) + json.dumps(end) + "\n", encoding="utf-8")
    return path


def rows(lines: list[dict]) -> dict[int, dict]:
    return {obj["seq"]: obj for obj in lines if obj["kind"] in ("event", "context")}


def test_a_run_bundle_holds_its_events_blobs_and_the_chain_between_them(ledger, tmp_path) -> None:
    lines = bundle(ledger, runs=["run-1"])
    kinds = [obj["kind"] for obj in lines]
    by_seq = rows(lines)

    assert kinds[0] == "header" and kinds[-1] == "end"
    assert lines[0]["first_seq"] == 3 and lines[0]["last_seq"] == 15
    assert lines[0]["ledger_id"] == ledger.ledger_id and lines[0]["ledger_head"]["seq"] == 16
    assert [s for s, r in by_seq.items() if r["kind"] == "event"] == [3, 6, 9, 12, 15]
    assert list(by_seq) == list(range(3, 16))
    assert all("payload_json" not in r for r in by_seq.values() if r["kind"] == "context")
    assert kinds.count("blob") == 5 + 3 * 2  # a state per event, input and output per step
    report = verify_export(write(lines, tmp_path / "b.jsonl", reseal=False))
    assert report.ok, report
    assert (report.first_seq, report.last_seq, report.events, report.context, report.blobs) == (3, 15, 5, 8, 11)
    assert report.anchored_seq is None


def test_a_time_window_bundle_selects_by_occurred_at(ledger, tmp_path) -> None:
    since, until = ledger.row(5)["occurred_at"], ledger.row(8)["occurred_at"]

    lines = bundle(ledger, since=since, until=until)

    assert [s for s, r in rows(lines).items() if r["kind"] == "event"] == [5, 6, 7]
    assert verify_export(write(lines, tmp_path / "w.jsonl")).ok


def test_a_bundle_checked_against_an_anchor_is_bound_to_the_ledger(ledger, tmp_path) -> None:
    db = ledger.open()
    try:
        anchor = take_anchor(db)
    finally:
        db.close()

    lines = bundle(ledger, runs=["run-1"], anchors=[anchor])
    report = verify_export(write(lines, tmp_path / "a.jsonl", reseal=False), anchors=[anchor])

    assert lines[0]["last_seq"] == anchor.seq == 17
    assert report.ok, report
    assert report.anchored_seq == 17


def test_an_anchor_outside_the_bundle_cannot_vouch_for_it(ledger, tmp_path) -> None:
    db = ledger.open()
    try:
        anchor = take_anchor(db)
    finally:
        db.close()

    report = verify_export(write(bundle(ledger, runs=["run-1"]), tmp_path / "b.jsonl"), anchors=[anchor])

    assert report.ok is False and report.first_bad_seq is None
    assert "outside the bundle's seqs 3..15" in (report.reason or "") and "--through 17" in (report.reason or "")


def test_a_redacted_event_travels_with_its_authorising_event(ledger, tmp_path) -> None:
    db = ledger.open()
    try:
        done = redact_event(db, "6", by="user:dpo", reason="ER-17")
    finally:
        db.close()

    lines = bundle(ledger, runs=["run-1"])
    report = verify_export(write(lines, tmp_path / "r.jsonl"))

    assert rows(lines)[done.redaction_seq]["kind"] == "event"  # pulled in although it has no run_id
    assert rows(lines)[6]["payload_json"] is None
    assert sum(1 for obj in lines if obj.get("redacted")) == 2  # input and output blobs
    assert report.ok, report
    assert report.redactions == ((6, done.redaction_seq),)


# -- tampering with a bundle ----------------------------------------------------------------


def edit_event(lines: list[dict], seq: int, **changes) -> list[dict]:
    return [({**obj, **changes} if obj.get("seq") == seq and obj["kind"] != "blob" else obj) for obj in lines]


@pytest.mark.parametrize(
    ("tamper", "seq", "reason"),
    [
        (lambda ls: edit_event(ls, 9, actor_id="user:mallory"), 9, "entry_hash mismatch"),
        (lambda ls: edit_event(ls, 8, reason="edited context"), 8, "entry_hash mismatch"),
        (lambda ls: edit_event(ls, 12, payload_json='{"x":1}'), 12, "payload does not match"),
        (lambda ls: edit_event(ls, 12, payload_json=None), 12, "payload removed without a payload.redacted"),
        (lambda ls: [o for o in ls if o.get("seq") != 7 or o["kind"] == "blob"], 7, "seq 7 missing"),
        (lambda ls: edit_event(ls, 5, ledger_id="another-ledger"), 5, "ledger_id differs"),
    ],
)
def test_a_tampered_bundle_fails_at_the_first_bad_seq(ledger, tmp_path, tamper, seq, reason) -> None:
    report = verify_export(write(tamper(bundle(ledger, runs=["run-1"])), tmp_path / "t.jsonl"))

    assert report.ok is False, report
    assert report.first_bad_seq == seq and reason in (report.reason or ""), report


def test_a_forged_row_rehashed_by_the_forger_still_breaks_the_next_link(ledger, tmp_path) -> None:
    lines = bundle(ledger, runs=["run-1"])
    forged = {**rows(lines)[9], "reason": "forged"}
    forged["entry_hash"] = compute_entry_hash(forged)
    lines = [forged if obj.get("seq") == 9 and obj["kind"] == "event" else obj for obj in lines]

    report = verify_export(write(lines, tmp_path / "f.jsonl"))

    assert report.ok is False and report.first_bad_seq == 10
    assert "prev_hash does not match seq 9" in (report.reason or "")


def test_an_edited_blob_in_a_bundle_is_detected(ledger, tmp_path) -> None:
    lines = bundle(ledger, runs=["run-1"])
    blob = next(i for i, obj in enumerate(lines) if obj["kind"] == "blob")
    lines[blob] = {**lines[blob], "body": '{"forged": true}'}

    report = verify_export(write(lines, tmp_path / "b.jsonl"))

    assert report.ok is False and "blob edited" in (report.reason or "")


def test_a_truncated_or_damaged_bundle_file_is_detected(ledger, tmp_path) -> None:
    path = write(bundle(ledger, runs=["run-1"]), tmp_path / "b.jsonl")
    text = path.read_text(encoding="utf-8")
    cut = tmp_path / "cut.jsonl"
    cut.write_text(text[: len(text) // 2], encoding="utf-8")
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text(text.replace('"run-1"', '"run-7"', 1), encoding="utf-8")

    assert "cut off" in (verify_export(cut).reason or "")
    assert "end line does not match" in (verify_export(damaged).reason or "")


def test_exporting_nothing_is_refused(ledger) -> None:
    with pytest.raises(LedgerError, match="no audit events match"):
        bundle(ledger, runs=["run-unknown"])


# -- through the CLI ---------------------------------------------------------------------------


def test_export_and_verify_export_through_the_cli(cli, tmp_path) -> None:
    doc = tmp_path / "d.txt"
    doc.write_text("one two three four five")
    run = cli.json("start", TOY, "--input", str(doc))
    cli("approve", run["run_id"], "--by", "user:alice", "--no-digest", "--comment", "fine")
    anchor = tmp_path / "a.anchor"
    assert cli("audit", "anchor", "--out", str(anchor)).exit_code == 0
    out = tmp_path / "run.jsonl"

    exported = cli("audit", "export", "--run", run["run_id"], "--anchor", str(anchor), "--out", str(out))
    again = cli("audit", "export", "--run", run["run_id"], "--out", str(out))
    checked = cli.runner.invoke(
        __import__("statecraft.cli", fromlist=["main"]).main,
        ["audit", "verify-export", str(out), "--anchor", str(anchor)],
    )

    assert exported.exit_code == 0, exported.output
    assert "exported 6 events" in exported.stderr
    assert again.exit_code == 1 and "exists" in again.stderr
    assert checked.exit_code == 0, checked.output
    assert checked.stdout.startswith("OK: seqs 2..8 of ledger ")
    assert "anchored: rows 2..8 are the ledger's own" in checked.stdout
