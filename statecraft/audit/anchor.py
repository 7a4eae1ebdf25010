"""Anchors: the ledger head written down outside the database.

A hash chain proves that rows 1..N are internally consistent; it cannot see
rows cut off after N, nor a rewrite by someone who recomputed every hash
after an edit (AUDIT.md, "The hash chain"). An **anchor** closes both gaps:
the head ``(ledger_id, seq, entry_hash, time)`` copied to storage the
database's writers cannot change. Because every ``entry_hash`` covers the
previous one (``prev_hash``), an anchor at seq S vouches for rows 1..S: a
ledger that still has a row S with that ``entry_hash`` and verifies up to S
holds exactly the rows that existed when the anchor was taken (barring a
SHA-256 collision). Rows after S are only internally consistent until the
next anchor. Sources: NIST SP 800-53 AU-9(3) (cryptographic protection of
audit information), AU-10 (non-repudiation); EU AI Act Art. 12 (logs that
can be relied on over the system's lifetime).

The anchor file format (``statecraft-anchor v1``) is six lines of UTF-8
text, each ``key value`` separated by one space, ending in a newline::

    statecraft-anchor v1
    ledger_id 7d0c5e8e-2a4b-4a59-9a53-0e6f4f3c1b2a
    seq 1042
    entry_hash 5f1c…(64 lower-case hex)
    time 2025-03-01T09:00:00.000000Z
    sha256 9a8b…(64 lower-case hex)

``time`` is when the anchor was taken (UTC, the ledger's fixed-width format).
``sha256`` is the SHA-256 of the five lines before it (bytes, newlines
included): it catches accidental corruption, not forgery; an anchor is only
as good as the write-once storage it is kept in.

``take_anchor`` appends a ``ledger.anchored`` event and anchors the head
after it, so the ledger itself records when anchors were taken. Anchors seen
(taken here, or verified with ``verify_ledger(anchors=…)`` and remembered
with :func:`remember_anchor`) are remembered in ``statecraft_meta`` under
``anchor.newest``; verify refuses an anchor older than the newest one seen
there or recorded by a ``ledger.anchored`` event. Threat model, stated
plainly: whoever can write the database file can also rewrite that memory,
so it stops mistakes and careless insiders; against a careful one, keep the
anchors in write-once storage (object lock, WORM media, a ticket, an email
to the auditor) and always verify against the newest of them.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from .._time import format_utc, utc_now
from ..errors import LedgerError, StoreError
from ..store.audit_reads import meta_value
from ..store.db import Database
from ..store.ledger import set_meta
from .chain import append_event

__all__ = [
    "ANCHOR_MAGIC",
    "Anchor",
    "newest_anchor_seen",
    "parse_anchor",
    "read_anchor",
    "remember_anchor",
    "take_anchor",
]

ANCHOR_MAGIC: Final = "statecraft-anchor v1"
"""First line of every anchor file (format name and version)."""

META_KEY: Final = "anchor.newest"
"""``statecraft_meta`` key holding the text of the newest anchor this database has seen."""

_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_TIME: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_KEYS: Final = ("ledger_id", "seq", "entry_hash", "time")


@dataclass(frozen=True, order=False)
class Anchor:
    """One anchor: the ledger head ``(ledger_id, seq, entry_hash, time)``.

    Attributes:
        ledger_id: the ledger's identity (``statecraft_meta.ledger_id``).
        seq: the anchored position; the anchor vouches for rows 1..seq.
        entry_hash: ``entry_hash`` of row ``seq`` (64 lower-case hex).
        time: when the anchor was taken (UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``).
        source: where it was read from (a file name), for messages only.
    """

    ledger_id: str
    seq: int
    entry_hash: str
    time: str
    source: str | None = field(default=None, compare=False)

    def text(self) -> str:
        """The anchor in the ``statecraft-anchor v1`` file format (ends with a newline)."""
        body = (
            f"{ANCHOR_MAGIC}\nledger_id {self.ledger_id}\nseq {self.seq}\n"
            f"entry_hash {self.entry_hash}\ntime {self.time}\n"
        )
        return body + f"sha256 {hashlib.sha256(body.encode('utf-8')).hexdigest()}\n"

    def describe(self) -> str:
        """A short name for messages: ``anchor FILE (seq N, TIME)``."""
        name = f"anchor {self.source}" if self.source else "anchor"
        return f"{name} (seq {self.seq}, {self.time})"


def parse_anchor(content: str, *, source: str | None = None) -> Anchor:
    """Parse the ``statecraft-anchor v1`` text format.

    Args:
        content: the file's text.
        source: a name for error messages (the file path).

    Returns:
        The anchor.

    Raises:
        LedgerError: not an anchor, a field malformed or missing, or the
            ``sha256`` line does not match (the file was damaged).
    """
    where = source or "anchor"
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0].strip() != ANCHOR_MAGIC:
        raise LedgerError(f"{where}: not a statecraft anchor (first line must be {ANCHOR_MAGIC!r})")
    if len(lines) != 6:
        raise LedgerError(f"{where}: an anchor has 6 lines, this has {len(lines)}")
    values: dict[str, str] = {}
    for line, key in zip(lines[1:5], _KEYS):
        name, _, value = line.partition(" ")
        if name != key or not value:
            raise LedgerError(f"{where}: expected a line '{key} …', found {line[:40]!r}")
        values[key] = value
    name, _, digest = lines[5].partition(" ")
    if name != "sha256" or not _HEX64.fullmatch(digest):
        raise LedgerError(f"{where}: the last line must be 'sha256 <64 hex>'")
    body = "\n".join(lines[:5]) + "\n"
    if hashlib.sha256(body.encode("utf-8")).hexdigest() != digest:
        raise LedgerError(f"{where}: sha256 line does not match the anchor's text (file damaged or edited)")
    if not values["seq"].isdigit() or int(values["seq"]) < 1:
        raise LedgerError(f"{where}: seq must be a positive integer, not {values['seq']!r}")
    if not _HEX64.fullmatch(values["entry_hash"]):
        raise LedgerError(f"{where}: entry_hash must be 64 lower-case hex characters")
    if not _TIME.fullmatch(values["time"]):
        raise LedgerError(f"{where}: time must be UTC YYYY-MM-DDTHH:MM:SS.ffffffZ")
    return Anchor(values["ledger_id"], int(values["seq"]), values["entry_hash"], values["time"], source)


def read_anchor(path: str | os.PathLike[str]) -> Anchor:
    """Read and parse an anchor file.

    Raises:
        LedgerError: the file cannot be read, or is not a valid anchor.
    """
    try:
        content = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LedgerError(f"{os.fspath(path)}: cannot read anchor: {exc}") from exc
    return parse_anchor(content, source=os.fspath(path))


def take_anchor(db: Database, *, by: str = "statecraft", actor_type: str = "system") -> Anchor:
    """Append a ``ledger.anchored`` event and return the anchor of the head after it.

    Commits one write transaction: the event, and ``anchor.newest`` in
    ``statecraft_meta``. The returned anchor's ``seq`` is the
    ``ledger.anchored`` event itself, so the ledger records every anchor
    taken. Store the anchor's :meth:`Anchor.text` outside the database.

    Args:
        db: the database.
        by: actor id recorded on the event (AU-3: identity).
        actor_type: ``human``, ``service`` or ``system``.

    Raises:
        StoreError: the database is closed or cannot be written.
    """
    now = format_utc(utc_now())
    with db.write() as conn:
        previous = newest_anchor_seen(conn)
        row = append_event(
            conn,
            ledger_id=db.ledger_id,
            fields={
                "event_type": "ledger.anchored",
                "actor_type": actor_type,
                "actor_id": by,
                "occurred_at": now,
                "decision": "anchor",
                "outcome": "success",
                "reason": "ledger head exported as an anchor",
            },
            payload={
                "anchor_format": ANCHOR_MAGIC,
                "previous_anchor_seq": None if previous is None else previous.seq,
            },
        )
        anchor = Anchor(db.ledger_id, int(row["seq"]), str(row["entry_hash"]), now)
        _store_seen(conn, anchor)
    return anchor


def newest_anchor_seen(conn: Connection) -> Anchor | None:
    """The newest anchor remembered in ``statecraft_meta`` (``None`` if none, or unreadable). Read-only."""
    value = meta_value(conn, META_KEY)
    if not value:
        return None
    try:
        return parse_anchor(str(value), source="statecraft_meta")
    except LedgerError:
        return None


def remember_anchor(db: Database, anchor: Anchor) -> bool:
    """Remember ``anchor`` as seen if it is newer than the one remembered. Commits one transaction.

    Call it after ``verify_ledger(db, anchors=[anchor])`` succeeded, so that
    a later verify refuses older anchors.

    Returns:
        True if remembered (or already remembered); False if the database
        cannot be written (a read-only copy), in which case nothing changed.

    Raises:
        LedgerError: the anchor belongs to another ledger.
    """
    if anchor.ledger_id != db.ledger_id:
        raise LedgerError(f"{anchor.describe()} is for ledger {anchor.ledger_id}, not {db.ledger_id}")
    try:
        with db.write() as conn:
            seen = newest_anchor_seen(conn)
            if seen is None or anchor.seq > seen.seq:
                _store_seen(conn, anchor)
    except (OperationalError, DBAPIError, sqlite3.OperationalError, StoreError):
        return False
    return True


def _store_seen(conn: Connection, anchor: Anchor) -> None:
    set_meta(conn, META_KEY, anchor.text())
