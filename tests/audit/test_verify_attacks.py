"""``verify_ledger`` against the attacks of AUDIT.md that need no anchor.

Each attack is applied to the database file with the stdlib ``sqlite3``
module, the way an insider with write access would (dropping the append-only
triggers first where needed), then the file is reopened and verified. The
default ledger is described in tests/audit/conftest.py: 16 events, runs
``run-0`` (seqs 2, 5, 8, 11, 14), ``run-1`` (3, 6, ..., 15) and ``run-2``
(4, 7, ..., 16), every event with a payload.

Every test runs twice: with SQLite rendering the JCS envelopes (the fast
path) and with Python hashing every row, so both paths reach one verdict.

The other AUDIT.md attacks: those needing an anchor (truncated tail,
edit-and-rehash, an older anchor after a newer one) in test_anchor.py;
blobs and redaction in test_redact.py; exported bundles in test_export.py;
kill -9 during appends and concurrent writers in test_ledger_crash.py.
"""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from statecraft.audit import verify as verify_module
from statecraft.audit.chain import DOMAIN
from statecraft.audit.verify import VerifyReport, fold_runs, verify_ledger
from statecraft.store.db import Database
from tests.audit.conftest import append_redaction


@pytest.fixture(autouse=True, params=["sqlite-renders", "python-hashes"])
def hashing_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python-hashes":
        monkeypatch.setattr(verify_module, "_sqlite_renders_jcs", lambda: False)
    return str(request.param)


def verify(ledger, *, check_runs: bool = True) -> VerifyReport:
    """Reopen the (tampered) file as a statecraft database and verify it."""
    db = ledger.open()
    try:
        return verify_ledger(db, check_runs=check_runs)
    finally:
        db.close()


def assert_detected(
    report: VerifyReport, first_bad_seq: int | None, reason: str, *, chain_intact: bool = False
) -> None:
    assert report.ok is False, report
    assert report.first_bad_seq == first_bad_seq, report
    assert report.reason is not None and reason in report.reason, report
    if chain_intact:  # only a run row disagrees: the chain verified to its head
        assert report.last_seq == report.events_checked, report
    else:
        assert first_bad_seq is not None and report.last_seq == first_bad_seq - 1, report


# -- the intact ledger and the guard rails ------------------------------------------


def test_an_intact_ledger_verifies_up_to_its_head(ledger) -> None:
    report = verify(ledger)

    assert report.ok is True
    assert report.last_seq == ledger.head == 16
    assert report.events_checked == 16
    assert report.first_bad_seq is None and report.reason is None
    assert report.ledger_id == ledger.ledger_id
    assert report.redacted_seqs == ()


def test_a_fresh_database_holding_only_the_genesis_event_verifies(tmp_path) -> None:
    with Database(tmp_path / "fresh.db") as db:
        report = verify_ledger(db)

    assert report.ok is True
    assert report.last_seq == 1


def test_fold_runs_reproduces_each_runs_status_step_state_hash_and_run_seq(open_ledger, ledger) -> None:
    with open_ledger.read() as conn:
        folded = fold_runs(conn)

    assert folded == ledger.runs
    assert folded["run-1"].status == "FAILED"


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_event SET actor_id = 'user:mallory' WHERE seq = 5",
        "UPDATE audit_event SET entry_hash = 'x' WHERE seq = 5",
        "UPDATE audit_event SET payload_json = '{}' WHERE seq = 5",
        "DELETE FROM audit_event WHERE seq = 5",
        "DELETE FROM audit_event",
    ],
)
def test_the_database_refuses_update_and_delete_on_the_ledger(insider, sql) -> None:
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        insider.execute(sql)


@pytest.mark.parametrize("verb", ["INSERT OR REPLACE", "REPLACE"])
@pytest.mark.parametrize(
    "collision",
    [
        {},  # the same seq
        {"seq": 17},  # a new seq, colliding on event_id, prev_hash, entry_hash and (run_id, run_seq)
    ],
)
def test_insert_or_replace_is_refused_from_a_plain_sqlite3_connection(insider, verb, collision) -> None:
    # REPLACE deletes the row it collides with, and fires DELETE triggers for
    # that only under PRAGMA recursive_triggers, which sqlite3 leaves off
    # (https://sqlite.org/lang_conflict.html): the BEFORE INSERT trigger stops it.
    edited = {**insider.row(5), "actor_id": "user:mallory", **collision}

    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        insider.insert(edited, verb=verb)

    assert insider.row(5)["actor_id"] != "user:mallory"


def test_insert_or_replace_is_refused_on_statecraft_connections_by_recursive_triggers(ledger, insider) -> None:
    # Without the INSERT trigger, statecraft's own connections still refuse:
    # recursive_triggers makes REPLACE's deletion fire the DELETE trigger.
    insider.execute("DROP TRIGGER audit_event_no_replace")
    edited = {**insider.row(5), "actor_id": "user:mallory"}
    db = ledger.open()
    try:
        with db.write() as conn:
            raw = conn.connection.dbapi_connection
            cols = [c for c in edited]
            with pytest.raises(sqlite3.IntegrityError, match="DELETE refused"):
                raw.execute(
                    f"INSERT OR REPLACE INTO audit_event ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    tuple(edited[c] for c in cols),
                )
    finally:
        db.close()


def test_an_insert_or_replace_after_dropping_the_guards_is_still_detected(ledger, insider) -> None:
    insider.drop_guards()
    insider.insert({**insider.row(5), "actor_id": "user:mallory"}, verb="INSERT OR REPLACE")

    assert_detected(verify(ledger), 5, "seq 5: entry_hash mismatch (row edited)")


def test_a_fork_is_refused_by_the_append_guard(ledger, insider) -> None:
    forged = insider.forge(
        insider.row(6), seq=ledger.head + 1, prev_hash=ledger.row(5)["entry_hash"],
        event_id="forged-1", run_id=None, run_seq=None,
    )

    with pytest.raises(sqlite3.IntegrityError, match="prev_hash must be the entry_hash of the event before it"):
        insider.insert(forged)


@pytest.mark.parametrize(
    ("where", "seq_of", "parent_of"),
    [
        ("past the head", lambda head: head + 2, lambda head: head),  # chained onto the head, but a gap
        ("in the middle", lambda head: 6, lambda head: 5),  # seq 6 is taken
        ("below the genesis", lambda head: 0, lambda head: 1),
    ],
)
def test_an_insert_anywhere_but_the_next_seq_is_refused(ledger, insider, where, seq_of, parent_of) -> None:
    # Correctly hashed and chained onto its parent: only its place is wrong.
    head = ledger.head
    forged = insider.forge(
        insider.row(6), seq=seq_of(head), prev_hash=ledger.row(parent_of(head))["entry_hash"],
        event_id=f"forged-{where}", run_id=None, run_seq=None,
    )

    with pytest.raises(sqlite3.IntegrityError, match="must take the next seq"):
        insider.insert(forged)

    assert _head(insider) == head
    assert verify(ledger).ok


def test_the_next_event_chained_correctly_is_the_one_insert_the_guard_lets_through(ledger, insider) -> None:
    # The guard is not a blanket refusal: a correct append passes it (as the
    # engine's own do), so what it refuses above is the place, not the insert.
    head = ledger.head
    forged = insider.forge(
        insider.row(6), seq=head + 1, prev_hash=ledger.row(head)["entry_hash"],
        event_id="appended", run_id=None, run_seq=None,
    )
    insider.insert(forged)

    assert _head(insider) == head + 1 and insider.row(head + 1)["event_id"] == "appended"
    assert verify(ledger).ok


def _head(insider) -> int:
    conn = insider.connect()
    try:
        return int(conn.execute("SELECT MAX(seq) FROM audit_event").fetchone()[0])
    finally:
        conn.close()


# -- AUDIT.md attacks -------------------------------------------------------------------


def test_editing_a_hashed_column_is_detected_at_that_seq(ledger, insider) -> None:
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET actor_id = 'user:mallory' WHERE seq = 5")

    assert_detected(verify(ledger), 5, "seq 5: entry_hash mismatch (row edited)")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("tokens_in", 1200.5),  # a float: never allowed in hashed data
        ("attempt", 1e300),  # INTEGER affinity keeps a REAL it cannot convert losslessly
        ("cost_micros", 2**53 + 1),  # beyond JSON's safe integers
        ("reason", b"\x00\xff"),  # a BLOB
        ("run_seq", b"2"),
    ],
)
def test_storing_a_value_hashed_data_cannot_hold_is_detected_at_that_seq(
    ledger, insider, column, value
) -> None:
    insider.drop_guards()
    insider.execute(f"UPDATE audit_event SET {column} = ? WHERE seq = 5", (value,))

    assert_detected(verify(ledger), 5, "seq 5: a value cannot be hashed")


def sqlite_rendered_hash(insider, seq: int) -> str:
    """The hash an insider gets by hashing SQLite's own JSON rendering of a row."""
    conn = insider.connect()
    envelope = conn.execute(
        f"SELECT {verify_module._ENVELOPE_SQL} FROM audit_event WHERE seq = ?", (seq,)
    ).fetchone()[0]
    conn.close()
    return hashlib.sha256(DOMAIN + envelope.encode()).hexdigest()


def test_a_float_hashed_the_way_sqlite_renders_it_is_still_detected(ledger, insider) -> None:
    # The fast path must not trust SQLite's rendering of a REAL ("1200.5"),
    # even when the stored hash was computed from exactly that rendering.
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET tokens_in = 1200.5 WHERE seq = 16")
    insider.execute(
        "UPDATE audit_event SET entry_hash = ? WHERE seq = 16", (sqlite_rendered_hash(insider, 16),)
    )

    assert_detected(verify(ledger), 16, "seq 16: a value cannot be hashed")


def test_a_float_in_a_column_redeclared_without_type_is_still_detected(ledger, insider) -> None:
    # Redeclared without a type, `reason` loses TEXT affinity and can hold a REAL.
    insider.retype_column("reason", "")
    insider.execute("UPDATE audit_event SET reason = 0.5 WHERE seq = 16")
    insider.execute(
        "UPDATE audit_event SET entry_hash = ? WHERE seq = 16", (sqlite_rendered_hash(insider, 16),)
    )

    assert_detected(verify(ledger), 16, "seq 16: a value cannot be hashed")


def test_a_text_value_that_is_not_utf8_is_detected_at_that_seq(ledger, insider) -> None:
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET reason = CAST(x'ff' AS TEXT) WHERE seq = 7")

    report = verify(ledger)

    assert_detected(report, 7, "seq 7: row cannot be read")
    assert report.last_seq == 6


def test_editing_a_payload_is_detected_at_that_seq(ledger, insider) -> None:
    insider.drop_guards()
    insider.execute(
        "UPDATE audit_event SET payload_json = replace(payload_json, 'run-0', 'run-9') WHERE seq = 5"
    )

    assert_detected(verify(ledger), 5, "seq 5: payload does not match payload_sha256")


def test_adding_a_payload_to_an_event_that_had_none_is_detected(ledger, insider) -> None:
    seq = append_redaction(ledger, 5)  # an event without a payload
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET payload_json = '{\"x\":1}' WHERE seq = ?", (seq,))

    assert_detected(verify(ledger), seq, f"seq {seq}: payload does not match payload_sha256")


def test_deleting_a_middle_row_is_detected_at_its_seq(ledger, insider) -> None:
    insider.drop_guards()
    insider.execute("DELETE FROM audit_event WHERE seq = 5")

    report = verify(ledger)

    assert_detected(report, 5, "seq 5 missing (expected contiguous seq")
    assert report.last_seq == 4


def test_deleting_the_genesis_event_is_detected_at_seq_1(ledger, insider) -> None:
    insider.drop_guards()
    insider.execute("DELETE FROM audit_event WHERE seq = 1")

    assert_detected(verify(ledger), 1, "seq 1 missing")


def test_a_second_row_with_an_existing_seq_is_detected(ledger, insider) -> None:
    # Possible only once seq is no longer the primary key. An exact copy, so
    # that whichever of the two SQLite returns first verifies.
    insider.rebuild_without_primary_key()
    insider.insert(insider.row(16))

    assert_detected(verify(ledger), 16, "seq 16: a second row with this seq")


def test_reordering_two_rows_is_detected_at_the_first_of_them(ledger, insider) -> None:
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET seq = -1 WHERE seq = 5")
    insider.execute("UPDATE audit_event SET seq = 5 WHERE seq = 6")
    insider.execute("UPDATE audit_event SET seq = 6 WHERE seq = -1")

    report = verify(ledger)

    assert_detected(report, 5, "seq 5: prev_hash does not match seq 4's entry_hash")
    assert "reordered" in (report.reason or "")


def test_inserting_a_forged_row_in_the_middle_is_detected_where_the_chain_breaks(ledger, insider) -> None:
    # The forged row chains correctly onto seq 5, so it shares a parent with the
    # original seq 6: the UNIQUE(prev_hash) constraint must go first.
    # The append guard refuses a row in the middle (and shifting rows up): dropped first.
    insider.drop_guards()
    insider.shift_up(6)
    insider.insert(
        insider.forge(
            insider.row(5), seq=6, prev_hash=ledger.row(5)["entry_hash"],
            event_id="forged-approval", event_type="approval.granted", actor_type="human",
            actor_id="user:mallory", run_id=None, run_seq=None, payload_json=None,
            payload_sha256=None,
        )
    )

    report = verify(ledger)

    # seq 6 (the forgery) is internally consistent; the displaced original,
    # now seq 7, no longer follows its predecessor.
    assert_detected(report, 7, "seq 7: prev_hash does not match seq 6's entry_hash")
    assert "fork: seq 6 and seq 7 both follow seq 5" in (report.reason or "")


def test_moving_a_row_to_another_run_is_detected_at_that_seq(ledger, insider) -> None:
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET run_id = 'run-other' WHERE seq = 5")

    assert_detected(verify(ledger), 5, "seq 5: entry_hash mismatch (row edited)")


def test_moving_a_row_to_another_run_and_rehashing_is_caught_by_run_seq(ledger, insider) -> None:
    # Rehashing everything after the edit needs an anchor to detect in
    # general; here the hole left in run-0's run_seq still shows.
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET run_id = 'run-other', run_seq = 1 WHERE seq = 5")
    insider.rehash_from(5)

    assert_detected(verify(ledger), 8, "seq 8: run_seq 3 of run run-0, expected 2")


def test_splicing_a_row_from_another_ledger_is_detected_at_that_seq(ledger, insider, other_insider) -> None:
    foreign = other_insider.row(5)
    insider.drop_guards()
    insider.execute("DELETE FROM audit_event WHERE seq = 5")
    insider.insert(foreign)

    assert_detected(verify(ledger), 5, "seq 5: ledger_id differs (row spliced from another ledger)")


def test_a_fork_two_rows_with_one_parent_is_detected_at_the_second_child(ledger, insider) -> None:
    insider.drop_guards()  # the append guard refuses a fork
    insider.insert(
        insider.forge(
            insider.row(6), seq=ledger.head + 1, prev_hash=ledger.row(5)["entry_hash"],
            event_id="forged-fork", run_id=None, run_seq=None,
        )
    )

    report = verify(ledger)

    assert_detected(report, 17, "seq 17: prev_hash does not match seq 16's entry_hash")
    assert "fork: seq 6 and seq 17 both follow seq 5" in (report.reason or "")


def test_reusing_an_event_id_is_detected_at_the_second_use(ledger, insider) -> None:
    insider.recreate_without("uq_audit_event_id")
    insider.insert(
        insider.forge(
            insider.row(16), seq=17, prev_hash=ledger.row(16)["entry_hash"],
            event_id=ledger.row(5)["event_id"], run_id=None, run_seq=None,
        )
    )

    assert_detected(verify(ledger), 17, "seq 17: event_id")


def test_removing_a_payload_without_a_redaction_event_is_detected_at_that_seq(ledger, insider) -> None:
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET payload_json = NULL WHERE seq = 5")

    report = verify(ledger)

    assert_detected(report, 5, "seq 5: payload removed without a payload.redacted event")
    assert report.last_seq == 4


def test_a_removed_payload_is_reported_before_a_later_break(ledger, insider) -> None:
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET payload_json = NULL WHERE seq = 5")
    insider.execute("UPDATE audit_event SET actor_id = 'user:mallory' WHERE seq = 10")

    assert_detected(verify(ledger), 5, "seq 5: payload removed without a payload.redacted event")


# -- lawful redaction ------------------------------------------------------------------


def test_a_payload_redacted_by_a_later_payload_redacted_event_verifies(ledger, insider) -> None:
    append_redaction(ledger, 5)
    # With the triggers in place: clearing an authorised payload is the one permitted change.
    insider.execute("UPDATE audit_event SET payload_json = NULL WHERE seq = 5")

    report = verify(ledger)

    assert report.ok is True, report
    assert report.redacted_seqs == (5,)
    assert report.last_seq == 17


def test_the_database_refuses_to_clear_a_payload_no_redaction_event_authorises(ledger, insider) -> None:
    append_redaction(ledger, 6)

    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        insider.execute("UPDATE audit_event SET payload_json = NULL WHERE seq = 5")


def test_a_redaction_event_for_another_event_does_not_authorise_a_removal(ledger, insider) -> None:
    append_redaction(ledger, 6)
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET payload_json = NULL WHERE seq = 5")

    assert_detected(verify(ledger), 5, "seq 5: payload removed without a payload.redacted event")


# -- the run table against the ledger ----------------------------------------------------


def test_a_run_row_edited_while_the_ledger_is_intact_is_reported_by_check_runs(ledger, insider) -> None:
    insider.execute("UPDATE run SET status = 'DONE', step = 'step1' WHERE run_id = 'run-1'")

    report = verify(ledger)

    assert_detected(
        report,
        15,
        "run run-1: run row says status=DONE, step=step1, ledger says status=FAILED, step=step3",
        chain_intact=True,
    )
    assert report.last_seq == 16  # the chain itself is whole
    assert verify(ledger, check_runs=False).ok is True


def test_a_run_row_whose_run_seq_lags_the_ledger_is_reported(ledger, insider) -> None:
    insider.execute("UPDATE run SET run_seq = 4 WHERE run_id = 'run-2'")

    assert_detected(
        verify(ledger),
        16,
        "run run-2: run row says run_seq=4, ledger says run_seq=5",
        chain_intact=True,
    )


def test_a_run_row_without_events_is_reported(ledger, insider) -> None:
    insider.execute(
        "INSERT INTO run (run_id, machine_name, machine_version, machine_digest, status, step, "
        "state_sha256, task_sha256, run_seq, steps_taken, created_at, updated_at, started_by, "
        "tokens_in, tokens_out, cost_micros) "
        "SELECT 'run-ghost', machine_name, machine_version, machine_digest, 'DONE', step, "
        "state_sha256, task_sha256, 5, 0, created_at, updated_at, started_by, 0, 0, 0 "
        "FROM run WHERE run_id = 'run-0'"
    )

    assert_detected(
        verify(ledger),
        None,
        "run run-ghost: run row has no events in the ledger",
        chain_intact=True,
    )


def test_events_of_a_run_without_a_run_row_are_reported(ledger, insider) -> None:
    insider.execute("DELETE FROM run WHERE run_id = 'run-0'")

    assert_detected(
        verify(ledger),
        14,
        "run run-0: ledger has events (last seq 14) but no run row",
        chain_intact=True,
    )


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("state_sha256", "0" * 64, "state_sha256=" + "0" * 64),
        ("started_by", "user:alice", "started_by=user:alice"),
        ("reason", "all fine", "reason=all fine"),
        ("error_code", None, "error_code=None"),
        ("tokens_in", 1, "tokens_in=1"),
        ("cost_micros", 0, "cost_micros=0"),
        ("machine_version", "2", "machine_version=2"),
        ("created_at", "2020-01-01T00:00:00.000000Z", "created_at=2020-01-01T00:00:00.000000Z"),
        ("updated_at", "2030-01-01T00:00:00.000000Z", "updated_at=2030-01-01T00:00:00.000000Z"),
    ],
)
def test_every_run_row_column_a_reviewer_is_shown_is_checked_against_the_ledger(
    ledger, insider, column: str, value: object, shown: str
) -> None:
    # The run row is not hashed; what `status` and `audit show` display from it must fold from the events.
    insider.execute(f"UPDATE run SET {column} = ? WHERE run_id = 'run-1'", (value,))

    report = verify(ledger)

    assert report.ok is False and report.first_bad_seq == 15, report
    assert report.reason is not None and report.reason.startswith("run run-1: run row says ")
    assert shown in report.reason


def test_a_pending_proposal_edited_in_the_run_row_is_detected(tmp_path) -> None:
    # An approver reads the proposal from the run row (`statecraft status`): it must be the requested one.
    from statecraft import Engine
    from tests.support.toy import machine as toy

    with Engine(tmp_path / "p.db") as engine:
        run = engine.start(toy, "one two three four five")
        assert run.pending is not None
    raw = sqlite3.connect(tmp_path / "p.db")
    raw.execute("UPDATE run SET pending_reason = 'a harmless 2-word note' WHERE run_id = ?", (run.run_id,))
    raw.commit()
    raw.close()
    with Engine(tmp_path / "p.db") as engine:
        report = verify_ledger(engine.db)
    assert report.ok is False
    assert "pending proposal" in (report.reason or "") and run.run_id in (report.reason or "")


def test_a_lawful_redaction_before_a_break_is_not_blamed_for_it(ledger, insider) -> None:
    # seq 5 is lawfully redacted (authorised at seq 17); an insider then edits seq 7.
    # The walk stops at 7, before reaching 17: the first real break is 7, not 5.
    append_redaction(ledger, 5)
    insider.execute("UPDATE audit_event SET payload_json = NULL WHERE seq = 5")
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET actor_id = 'user:mallory' WHERE seq = 7")

    assert_detected(verify(ledger), 7, "seq 7: entry_hash mismatch (row edited)")


def test_a_missing_guard_trigger_is_reported(ledger, insider) -> None:
    insider.execute("DROP TRIGGER audit_event_no_delete")

    report = verify(ledger)

    assert report.ok is True  # no row changed: the chain is intact
    assert len(report.warnings) == 1 and "audit_event_no_delete is missing" in report.warnings[0]
    assert "DELETE" in report.warnings[0]


def test_a_genesis_with_another_prev_hash_is_refused_even_when_rehashed(ledger, insider) -> None:
    # The genesis rule itself, not the chain link, must catch this: the whole chain is rehashed.
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET prev_hash = ? WHERE seq = 1", ("1" * 64,))
    conn = insider.connect()
    row = dict(conn.execute("SELECT * FROM audit_event WHERE seq = 1").fetchone())
    conn.close()
    from statecraft.audit.chain import compute_entry_hash

    insider.execute("UPDATE audit_event SET entry_hash = ? WHERE seq = 1", (compute_entry_hash(row),))
    insider.rehash_from(2)

    assert_detected(verify(ledger), 1, "seq 1: genesis prev_hash is not 64 zeros")
