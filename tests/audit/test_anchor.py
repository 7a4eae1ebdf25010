"""Anchors: the format, taking one, and the attacks only an anchor can catch (AUDIT.md).

Without an anchor, verify proves "internally consistent up to seq N"; these
tests show both halves of that sentence: the truncated tail and the
edit-and-rehash pass plain verify, and fail against an anchor taken before
the attack. Attacks are applied to the file with the stdlib ``sqlite3``, as
an insider would (dropping the append-only triggers first).
"""

from __future__ import annotations

import pytest

from statecraft.audit.anchor import (
    ANCHOR_MAGIC,
    Anchor,
    newest_anchor_seen,
    parse_anchor,
    read_anchor,
    remember_anchor,
    take_anchor,
)
from statecraft.audit.verify import verify_ledger
from statecraft.errors import LedgerError
from tests.audit.conftest import append_redaction


def anchor_now(ledger, tmp_path, name: str = "a.anchor") -> Anchor:
    """Take an anchor of ``ledger`` and keep it in a file, as an operator would."""
    db = ledger.open()
    try:
        anchor = take_anchor(db, by="user:ops-1", actor_type="human")
    finally:
        db.close()
    path = tmp_path / name
    path.write_text(anchor.text(), encoding="utf-8")
    return read_anchor(path)


def verify(ledger, *anchors: Anchor, check_runs: bool = True):
    db = ledger.open()
    try:
        return verify_ledger(db, anchors=anchors, check_runs=check_runs)
    finally:
        db.close()


# -- the format ----------------------------------------------------------------------------


def test_an_anchor_is_six_documented_lines_and_parses_back() -> None:
    anchor = Anchor("7d0c5e8e-ledger", 42, "ab" * 32, "2025-03-01T09:00:00.000000Z")
    lines = anchor.text().splitlines()

    assert lines[:5] == [
        ANCHOR_MAGIC,
        "ledger_id 7d0c5e8e-ledger",
        "seq 42",
        f"entry_hash {'ab' * 32}",
        "time 2025-03-01T09:00:00.000000Z",
    ]
    assert lines[5].startswith("sha256 ") and len(lines[5]) == 7 + 64
    assert anchor.text().endswith("\n")
    assert parse_anchor(anchor.text()) == anchor


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("statecraft-anchor v1", "statecraft-anchor v9"), "not a statecraft anchor"),
        (lambda t: t.replace("seq 42", "seq 43"), "sha256 line does not match"),
        (lambda t: t.replace("seq 42\n", ""), "6 lines"),
        (lambda t: "\n".join(t.splitlines()[:5]) + "\n", "6 lines"),
        (lambda t: t.replace("ledger_id", "ledger"), "expected a line 'ledger_id"),
    ],
)
def test_a_damaged_anchor_file_is_refused_with_the_reason(edit, message) -> None:
    text = Anchor("7d0c5e8e-ledger", 42, "ab" * 32, "2025-03-01T09:00:00.000000Z").text()

    with pytest.raises(LedgerError, match=message):
        parse_anchor(edit(text), source="x.anchor")


def test_taking_an_anchor_records_a_ledger_anchored_event_and_remembers_it(ledger) -> None:
    db = ledger.open()
    try:
        anchor = take_anchor(db, by="user:ops-1", actor_type="human")
        with db.read() as conn:
            row = conn.exec_driver_sql(
                "SELECT seq, event_type, actor_id, entry_hash FROM audit_event ORDER BY seq DESC LIMIT 1"
            ).one()
            seen = newest_anchor_seen(conn)
    finally:
        db.close()

    assert tuple(row) == (ledger.head + 1, "ledger.anchored", "user:ops-1", anchor.entry_hash)
    assert anchor.seq == ledger.head + 1 and anchor.ledger_id == ledger.ledger_id
    assert seen == anchor


# -- verdicts with an anchor -------------------------------------------------------------------


def test_an_intact_ledger_verifies_against_its_anchor(ledger, tmp_path) -> None:
    anchor = anchor_now(ledger, tmp_path)

    report = verify(ledger, anchor)

    assert report.ok, report
    assert report.anchored_seq == anchor.seq == report.last_seq
    assert report.anchor_time == anchor.time


def test_rows_appended_after_the_anchor_are_only_internally_consistent(ledger, tmp_path) -> None:
    anchor = anchor_now(ledger, tmp_path)
    later = append_redaction(ledger, 5)  # any later event

    report = verify(ledger, anchor)

    assert report.ok, report
    assert report.anchored_seq == anchor.seq < later == report.last_seq


def test_a_truncated_tail_passes_without_an_anchor_and_fails_with_one(ledger, insider, tmp_path) -> None:
    anchor = anchor_now(ledger, tmp_path)  # seq 17
    insider.drop_guards()
    insider.execute("DELETE FROM audit_event WHERE seq >= 14")  # each run loses its last event
    insider.refold_runs()
    insider.execute("DELETE FROM statecraft_meta WHERE key = 'anchor.newest'")  # and the memory of it

    plain = verify(ledger)
    anchored = verify(ledger, anchor)

    assert plain.ok and plain.last_seq == 13  # "internally consistent up to seq 13"
    assert anchored.ok is False
    assert anchored.first_bad_seq == 14 and anchored.last_seq == 13
    assert "seq 14 missing: the ledger ends at seq 13" in (anchored.reason or "")
    assert f"vouches for seq {anchor.seq} (tail truncated)" in (anchored.reason or "")


def test_editing_and_rehashing_everything_after_passes_without_an_anchor_and_fails_with_one(
    ledger, insider, tmp_path
) -> None:
    old = anchor_now(ledger, tmp_path, "old.anchor")  # seq 17
    anchor = anchor_now(ledger, tmp_path)  # seq 18
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET reason = 'nothing to see' WHERE seq = 15")
    insider.rehash_from(15)
    insider.refold_runs()  # the run row shows the reason too; a careful insider edits it as well
    insider.execute("DELETE FROM statecraft_meta WHERE key = 'anchor.newest'")

    plain = verify(ledger)
    anchored = verify(ledger, old, anchor)

    assert plain.ok, plain
    assert anchored.ok is False
    assert anchored.first_bad_seq == old.seq == 17
    assert "seq 17: entry_hash differs from anchor" in (anchored.reason or "")
    assert "rewritten at or before seq 17" in (anchored.reason or "")


def test_a_rewrite_between_two_anchors_names_the_prefix_the_older_one_still_vouches_for(
    ledger, insider, tmp_path
) -> None:
    first = anchor_now(ledger, tmp_path, "first.anchor")  # seq 17
    append_redaction(ledger, 5)  # seq 18, any later event
    second = anchor_now(ledger, tmp_path, "second.anchor")  # seq 19
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET actor_id = 'user:mallory' WHERE seq = 18")
    insider.rehash_from(18)

    report = verify(ledger, first, second)

    assert report.ok is False and report.first_bad_seq == 19
    assert f"rows 1..17 match anchor {first.source}" in (report.reason or "")


def _cut(insider) -> None:
    insider.execute("DELETE FROM audit_event WHERE seq >= 17")


def _rewrite(insider) -> None:
    insider.execute("UPDATE audit_event SET reason = 'nothing to see' WHERE seq = 17")
    insider.rehash_from(17)


@pytest.mark.parametrize(
    ("attack", "seq", "reason"),
    [
        (_cut, 17, "seq 17 missing: the ledger ends at seq 16, but the newest anchor"),
        (_rewrite, 17, "entry_hash differs from the newest anchor this database remembers"),
    ],
)
def test_plain_verify_checks_the_anchor_the_database_remembers(ledger, insider, tmp_path, attack, seq, reason) -> None:
    # A careless insider forgets the memory; a careful one erases it (above).
    anchor_now(ledger, tmp_path)  # seq 17
    insider.drop_guards()
    attack(insider)

    report = verify(ledger, check_runs=False)

    assert report.ok is False and report.first_bad_seq == seq, report
    assert reason in (report.reason or "")
    assert report.anchored_seq is None


def test_an_older_anchor_after_a_newer_one_is_refused(ledger, tmp_path) -> None:
    old = anchor_now(ledger, tmp_path, "old.anchor")
    new = anchor_now(ledger, tmp_path, "new.anchor")

    report = verify(ledger, old)

    assert report.ok is False and report.first_bad_seq is None
    assert "is older than the newest anchor this database has seen" in (report.reason or "")
    assert f"seq {new.seq}" in (report.reason or "")
    assert verify(ledger, old, new).ok  # several anchors: the newest is checked, the older must match


def test_an_older_anchor_is_refused_even_when_the_remembered_one_was_erased(ledger, insider, tmp_path) -> None:
    old = anchor_now(ledger, tmp_path, "old.anchor")
    new = anchor_now(ledger, tmp_path, "new.anchor")
    insider.execute("DELETE FROM statecraft_meta WHERE key = 'anchor.newest'")

    report = verify(ledger, old)

    assert report.ok is False and report.first_bad_seq is None
    assert f"older than the anchor taken at seq {new.seq}" in (report.reason or "")


def test_an_insider_who_erases_every_trace_of_the_newer_anchor_is_caught_by_that_anchor(
    ledger, insider, tmp_path
) -> None:
    # The honest threat model: the database's memory of anchors is as
    # writable as the ledger. Only the newest anchor, kept outside, catches this.
    old = anchor_now(ledger, tmp_path, "old.anchor")  # seq 17
    new = anchor_now(ledger, tmp_path, "new.anchor")  # seq 18
    insider.drop_guards()
    insider.execute("DELETE FROM audit_event WHERE seq = 18")
    insider.execute("DELETE FROM statecraft_meta WHERE key = 'anchor.newest'")

    assert verify(ledger, old).ok  # the older anchor alone cannot see it
    report = verify(ledger, old, new)
    assert report.ok is False and report.first_bad_seq == 18
    assert "tail truncated" in (report.reason or "")


def test_an_anchor_of_another_ledger_is_refused(ledger, other_ledger, tmp_path) -> None:
    foreign = anchor_now(other_ledger, tmp_path, "foreign.anchor")

    report = verify(ledger, foreign)

    assert report.ok is False and report.first_bad_seq is None
    assert f"is for ledger {other_ledger.ledger_id}" in (report.reason or "")


def test_two_anchors_that_disagree_about_one_seq_are_refused(ledger, tmp_path) -> None:
    anchor = anchor_now(ledger, tmp_path)
    forged = Anchor(anchor.ledger_id, anchor.seq, "0" * 64, anchor.time, "forged.anchor")

    report = verify(ledger, anchor, forged)

    assert report.ok is False and report.first_bad_seq == anchor.seq
    assert "disagree" in (report.reason or "")


def test_remembering_keeps_the_newest_anchor_only(ledger, tmp_path) -> None:
    old = anchor_now(ledger, tmp_path, "old.anchor")
    new = anchor_now(ledger, tmp_path, "new.anchor")
    db = ledger.open()
    try:
        assert remember_anchor(db, old) is True
        with db.read() as conn:
            assert newest_anchor_seen(conn) == new
    finally:
        db.close()


def test_a_rewrite_followed_by_a_new_anchor_is_a_conflict_between_anchors_not_an_older_anchor(
    ledger, insider, tmp_path
) -> None:
    kept = anchor_now(ledger, tmp_path, "kept.anchor")  # seq 17, kept in write-once storage
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET reason = 'nothing to see' WHERE seq = 15")
    insider.rehash_from(15)
    insider.refold_runs()
    insider.execute("DELETE FROM statecraft_meta WHERE key = 'anchor.newest'")
    anchor_now(ledger, tmp_path, "forged.anchor")  # the insider anchors the rewritten history (seq 18)

    report = verify(ledger, kept)

    assert report.ok is False and report.first_bad_seq == 17
    assert "rewritten at or before seq 17" in (report.reason or "")
    assert "conflicts with" in (report.reason or "") and "at most one of them is genuine" in (report.reason or "")
    assert "is older than" not in (report.reason or "")
