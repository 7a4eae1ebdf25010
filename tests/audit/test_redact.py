"""Lawful redaction (``statecraft audit redact``) and the blob attacks verify must catch.

A redaction removes an event's payload and blob bodies and appends a
``payload.redacted`` event; verify then says "redacted (authorised by seq
N)". Removing a payload or a blob body any other way, editing a blob, or
deleting a blob row fails verify at the first event that references it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from statecraft.audit.redact import redact_event
from statecraft.audit.verify import verify_ledger
from statecraft.errors import LedgerError
from tests.audit.conftest import blob_body, state_body

TOY = str(Path(__file__).resolve().parents[1] / "support" / "toy.py")


def verify(ledger, **kwargs):
    db = ledger.open()
    try:
        return verify_ledger(db, **kwargs)
    finally:
        db.close()


def redact(ledger, event, **kwargs):
    db = ledger.open()
    try:
        return redact_event(db, event, by=kwargs.pop("by", "user:dpo"), reason=kwargs.pop("reason", "ER-17"), **kwargs)
    finally:
        db.close()


def sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


# -- redaction through the API ------------------------------------------------------------------


def test_redacting_an_event_removes_its_payload_and_blobs_and_verify_says_who_authorised_it(ledger, insider) -> None:
    done = redact(ledger, ledger.row(5)["event_id"], reason="GDPR Art. 17 request ER-17")

    row = insider.row(5)
    redaction = insider.row(done.redaction_seq)
    conn = insider.connect()
    bodies = dict(conn.execute("SELECT sha256, body FROM blob").fetchall())
    conn.close()
    report = verify(ledger)

    assert done.seq == 5 and done.redaction_seq == ledger.head + 1 and done.payload_removed
    assert done.blobs_removed == {
        "input_sha256": sha(blob_body("in", "run-0", 2)),
        "output_sha256": sha(blob_body("out", "run-0", 2)),
    }
    assert row["payload_json"] is None and row["payload_sha256"] is not None  # the hash stays
    assert bodies[done.blobs_removed["input_sha256"]] is None
    assert bodies[done.blobs_removed["output_sha256"]] is None
    assert bodies[sha(state_body("run-0", 2))] is not None  # state kept unless asked
    assert redaction["event_type"] == "payload.redacted"
    assert (redaction["actor_type"], redaction["actor_id"]) == ("human", "user:dpo")
    assert redaction["reason"] == "GDPR Art. 17 request ER-17"
    assert redaction["caused_by_event_id"] == ledger.row(5)["event_id"]
    assert redaction["run_id"] is None  # a ledger event: it moves no run
    assert json.loads(redaction["payload_json"])["redacted_seq"] == 5
    assert report.ok, report
    assert report.redacted_seqs == (5,)
    assert report.redactions == ((5, done.redaction_seq),)


def test_an_event_can_be_named_by_its_seq_and_parts_chosen(ledger) -> None:
    done = redact(ledger, "8", parts=["state"])

    assert done.seq == 8 and not done.payload_removed
    assert done.blobs_removed == {"state_sha256": sha(state_body("run-0", 3))}
    report = verify(ledger)
    assert report.ok, report
    assert report.redactions == ((8, done.redaction_seq),) and report.redacted_seqs == ()


@pytest.mark.parametrize(
    ("event", "kwargs", "message"),
    [
        ("no-such-event", {}, "no audit event 'no-such-event'"),
        ("1", {}, "ledger.genesis event"),
        ("5", {"reason": "  "}, "needs a reason"),
        ("5", {"by": ""}, "needs the id of who authorises it"),
        ("5", {"parts": ["everything"]}, "unknown part"),
    ],
)
def test_a_redaction_that_cannot_be_lawful_is_refused_and_writes_nothing(ledger, event, kwargs, message) -> None:
    with pytest.raises(LedgerError, match=message):
        redact(ledger, event, **kwargs)

    assert verify(ledger).last_seq == ledger.head


def test_redacting_twice_is_refused_as_nothing_left(ledger) -> None:
    redact(ledger, "5")

    with pytest.raises(LedgerError, match="nothing to redact"):
        redact(ledger, "5")


def test_a_redaction_event_itself_cannot_be_redacted(ledger) -> None:
    done = redact(ledger, "5")

    with pytest.raises(LedgerError, match="payload.redacted event"):
        redact(ledger, str(done.redaction_seq))


def test_the_state_of_an_unfinished_run_is_not_redacted(engine, tmp_path) -> None:
    from statecraft import load_machine

    info = engine.start(load_machine(TOY), "one two three four five", by="user:carol")  # waits at the gate
    created = engine.events(info.run_id)[0]

    with pytest.raises(LedgerError, match="current state or task of run"):
        redact_event(engine.db, created.event_id, by="user:dpo", reason="ER-1", parts=["input"])


# -- redaction through the CLI ------------------------------------------------------------------


def test_the_cli_redacts_and_verify_and_show_report_it(cli, tmp_path) -> None:
    doc = tmp_path / "d.txt"
    doc.write_text("private words here")
    run = cli.json("start", TOY, "--input", str(doc))
    events = [json.loads(line) for line in cli("audit", "log", "--run", run["run_id"], "--json").stdout.splitlines()]
    step = next(e for e in events if e["event_type"] == "step.completed")

    result = cli("audit", "redact", step["event_id"], "--by", "user:dpo", "--reason", "ER-2025-17")
    verified = cli("audit", "verify")
    shown = cli("audit", "show", run["run_id"])

    assert result.exit_code == 0, result.output
    assert f"redacted seq {step['seq']}" in result.stdout and "authorised by seq" in result.stdout
    assert verified.exit_code == 0, verified.output
    redaction_seq = int(result.stdout.rsplit("authorised by seq ", 1)[1].split()[0])
    assert f"seq {step['seq']}: redacted (authorised by seq {redaction_seq})" in verified.stdout
    assert "(redacted)" in shown.stdout and "ER-2025-17" in shown.stdout


def test_the_cli_refuses_a_redaction_without_reason_as_a_usage_error(cli, tmp_path) -> None:
    doc = tmp_path / "d.txt"
    doc.write_text("x")
    cli.json("start", TOY, "--input", str(doc))

    result = cli("audit", "redact", "2", "--by", "user:dpo")

    assert result.exit_code == 2


# -- blob attacks --------------------------------------------------------------------------


def test_removing_a_blob_body_without_a_redaction_event_is_detected_at_its_first_reference(ledger, insider) -> None:
    insider.execute("UPDATE blob SET body = NULL WHERE sha256 = ?", (sha(blob_body("out", "run-1", 3)),))

    report = verify(ledger)

    assert report.ok is False and report.first_bad_seq == 9  # run-1's run_seq 3
    assert "body removed without a payload.redacted event" in (report.reason or "")


def test_editing_a_blob_body_is_detected_at_its_first_reference(ledger, insider) -> None:
    target = sha(state_body("run-2", 2))
    insider.execute("UPDATE blob SET body = ? WHERE sha256 = ?", (b'{"state":"forged"}', target))

    report = verify(ledger)

    assert report.ok is False and report.first_bad_seq == 7
    assert f"blob {target} body does not match its sha256 (blob edited)" in (report.reason or "")


def test_deleting_a_blob_row_is_detected_at_its_first_reference_by_the_default_verify(ledger, insider) -> None:
    insider.execute("DELETE FROM blob WHERE sha256 = ?", (sha(blob_body("in", "run-0", 4)),))

    report = verify(ledger)

    assert verify(ledger, check_blob_refs=False).ok  # only the reference check can see a row gone
    assert report.ok is False and report.first_bad_seq == 11
    assert "input_sha256 names a blob that is not stored" in (report.reason or "")


def test_a_redaction_of_another_event_does_not_authorise_removing_this_blob(ledger, insider) -> None:
    redact(ledger, "5")
    insider.execute("UPDATE blob SET body = NULL WHERE sha256 = ?", (sha(blob_body("out", "run-1", 3)),))

    report = verify(ledger)

    assert report.ok is False and report.first_bad_seq == 9


def test_a_payload_cleared_by_an_insider_after_a_lawful_redaction_of_another_is_still_detected(
    ledger, insider
) -> None:
    redact(ledger, "5")
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET payload_json = NULL WHERE seq = 6")

    report = verify(ledger)

    assert report.ok is False and report.first_bad_seq == 6
    assert report.redacted_seqs == (5,)


def test_the_redaction_trigger_still_refuses_a_payload_edit_after_a_redaction(ledger, insider) -> None:
    redact(ledger, "5")

    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        insider.execute("UPDATE audit_event SET payload_json = '{}' WHERE seq = 5")
