"""Verify hashes the blobs on a second connection beside the chain walk: same verdict, same snapshot.

``BlobScanBeside`` (statecraft/audit/verify.py) may only ever change how
fast verify is. Each test tries to make it change the verdict: a tampering
seen one way and not the other, a lawful redaction committed between the
walk's snapshot and the scan's (a false alarm if the two snapshots were not
one), and a walk that fails while the scan still runs (a thread or
connection left behind).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

import statecraft.audit.verify as verify_module
from statecraft.audit.redact import redact_event
from statecraft.audit.verify import BlobScanBeside, VerifyReport, verify_ledger
from statecraft.errors import LedgerError
from tests.audit.conftest import Insider, Ledger, blob_body, state_body


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@pytest.fixture
def beside_used(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """Records, per verify, whether the scan beside was pinned to the walk's snapshot and used."""
    used: list[bool] = []
    real = BlobScanBeside.pinned

    def pinned(self: BlobScanBeside) -> bool:
        same = real(self)
        used.append(same)
        return same

    monkeypatch.setattr(BlobScanBeside, "pinned", pinned)
    monkeypatch.setattr(BlobScanBeside, "wanted", staticmethod(lambda db: True))  # even on one CPU
    yield used


def _verify(ledger: Ledger, *, beside: bool, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> VerifyReport:
    with monkeypatch.context() as m:
        if not beside:
            m.setattr(BlobScanBeside, "wanted", staticmethod(lambda db: False))
        db = ledger.open()
        try:
            return verify_ledger(db, **kwargs)
        finally:
            db.close()


def _redact_seq_5(ledger: Ledger, insider: Insider) -> None:
    db = ledger.open()
    try:
        redact_event(db, "5", by="user:dpo", reason="ER-17")
    finally:
        db.close()


def _redact_right_after_the_walks_first_read(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make verify's first read (which begins the walk's snapshot) be followed by a lawful redaction, committed elsewhere."""
    real = verify_module.reads.meta_ledger_id

    def first_read_then_redaction(conn: Any) -> str | None:
        ledger_id = real(conn)  # the walk's snapshot begins here
        _redact_seq_5(ledger, Insider(ledger.path))  # another connection commits
        return ledger_id

    monkeypatch.setattr(verify_module.reads, "meta_ledger_id", first_read_then_redaction)


TAMPERINGS: dict[str, Callable[[Ledger, Insider], None]] = {
    "untouched": lambda ledger, insider: None,
    "a blob body edited": lambda ledger, insider: insider.execute(
        "UPDATE blob SET body = ? WHERE sha256 = ?", (b'{"state":"forged"}', _sha(state_body("run-2", 2)))
    ),
    "a blob body removed": lambda ledger, insider: insider.execute(
        "UPDATE blob SET body = NULL WHERE sha256 = ?", (_sha(blob_body("out", "run-1", 3)),)
    ),
    "a blob row deleted": lambda ledger, insider: insider.execute(
        "DELETE FROM blob WHERE sha256 = ?", (_sha(blob_body("in", "run-0", 4)),)
    ),
    "a lawful redaction": _redact_seq_5,
    "an edited row and an edited blob": lambda ledger, insider: (
        insider.execute("DROP TRIGGER audit_event_no_update"),
        insider.execute("UPDATE audit_event SET reason = 'forged' WHERE seq = 12"),
        insider.execute("UPDATE blob SET body = x'00' WHERE sha256 = ?", (_sha(state_body("run-0", 2)),)),
    ),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
@pytest.mark.parametrize("refs", [True, False], ids=["refs", "no-refs"])
def test_the_scan_beside_gives_the_verdict_of_the_scan_after_the_walk(
    ledger: Ledger, insider: Insider, tampering: str, refs: bool,
    beside_used: list[bool], monkeypatch: pytest.MonkeyPatch,
) -> None:
    TAMPERINGS[tampering](ledger, insider)

    after = _verify(ledger, beside=False, monkeypatch=monkeypatch, check_blob_refs=refs)
    beside = _verify(ledger, beside=True, monkeypatch=monkeypatch, check_blob_refs=refs)

    assert beside_used == [True], "the scan beside was not used"
    assert beside == after
    assert after.ok is (tampering in ("untouched", "a lawful redaction") or (tampering == "a blob row deleted" and not refs))


def test_a_redaction_committed_between_the_two_snapshots_is_not_a_false_alarm(
    ledger: Ledger, beside_used: list[bool], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The race the data_version handshake exists for: the walk's snapshot is
    # taken before a lawful redaction commits, and the blob scan's would be
    # taken after it. The scan would then see the redacted (NULL) bodies,
    # and the walk would not see the payload.redacted event that allows them.
    _redact_right_after_the_walks_first_read(ledger, monkeypatch)
    report = _verify(ledger, beside=True, monkeypatch=monkeypatch)

    assert beside_used == [False], "the handshake did not see the commit in between"
    assert report.ok, report.reason
    assert report.redactions == ()  # the walk's snapshot: before the redaction


def test_without_the_handshake_that_race_would_be_reported_as_tampering(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The previous test's teeth: a scan that trusts its own snapshot blindly.
    def blind(self: BlobScanBeside) -> bool:
        verify_module.reads.begin_snapshot(self._raw)
        return True

    monkeypatch.setattr(BlobScanBeside, "wanted", staticmethod(lambda db: True))
    monkeypatch.setattr(BlobScanBeside, "pinned", blind)
    _redact_right_after_the_walks_first_read(ledger, monkeypatch)
    report = _verify(ledger, beside=True, monkeypatch=monkeypatch)

    assert not report.ok and "body removed without a payload.redacted event" in (report.reason or "")


def test_a_walk_that_fails_while_the_scan_runs_leaves_no_thread_or_snapshot_behind(
    ledger: Ledger, beside_used: list[bool], monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = threading.Event()
    release = threading.Event()
    real_facts = verify_module.blob_facts

    def slow_facts(batches: Any, missing_ref: Any) -> Any:
        started.set()
        release.wait(10)
        return real_facts(batches, missing_ref)

    def broken_walk(conn: Any, walk: Any) -> None:
        started.wait(10)
        release.set()
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(verify_module, "blob_facts", slow_facts)
    monkeypatch.setattr(verify_module, "_stream_sqlite", broken_walk)
    with pytest.raises(LedgerError, match="cannot read the audit ledger: disk I/O error"):
        _verify(ledger, beside=True, monkeypatch=monkeypatch)

    assert beside_used == [True]
    assert not [t for t in threading.enumerate() if t.name == "statecraft-verify-blobs"]
    # No read snapshot left open on the file: a checkpoint can reset the whole WAL.
    conn = sqlite3.connect(ledger.path)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    assert busy == 0


@pytest.mark.parametrize(
    ("url", "wanted"),
    [("sqlite:///:memory:", False), ("sqlite:///file:mem1?mode=memory&cache=shared&uri=true", False),
     ("postgresql://postgres@127.0.0.1/test", False), ("sqlite:////tmp/ledger.db", True)],
)
def test_only_a_sqlite_file_is_scanned_beside(url: str, wanted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # A second connection to an in-memory database would be another, empty database.
    monkeypatch.setattr(verify_module.os, "cpu_count", lambda: 2)
    assert BlobScanBeside.wanted(SimpleNamespace(url=url)) is wanted  # type: ignore[arg-type]
    monkeypatch.setattr(verify_module.os, "cpu_count", lambda: 1)
    assert BlobScanBeside.wanted(SimpleNamespace(url=url)) is False  # type: ignore[arg-type]
