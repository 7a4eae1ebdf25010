"""Lawful redaction: remove an event's payload and blob bodies, and say so in the ledger.

Personal data in an event's detail (``payload_json``) or in the inputs and
outputs it references (blobs) may have to be erased long after the event,
while the record that the event happened must stay (EU AI Act Art. 12, 19;
NIST SP 800-53 AU-9). The chain allows exactly that: ``entry_hash`` covers
``payload_sha256`` and the blob hashes, never the bodies, so removing a body
leaves every hash intact.

:func:`redact_event` does it in one write transaction:

1. append a ``payload.redacted`` event: actor ``human`` (who authorised it,
   AU-10), ``reason`` (why), ``caused_by_event_id`` = the redacted event's
   ``event_id``, and a payload listing what was removed (hashes only);
2. set the event's ``payload_json`` to NULL (the database trigger
   ``audit_event_payload_redaction_only`` permits this one change, and only
   once such an event exists);
3. set the chosen blobs' ``body`` to NULL (their ``sha256`` stays).

``verify_ledger`` then reports the event as redacted (authorised by the
``payload.redacted`` event's seq) instead of tampered; a payload or blob body
missing without such an event fails verify.

The ``payload.redacted`` event is a ledger event, not a run event: it has no
``run_id`` (its target, via ``caused_by_event_id``, has). A redaction changes
neither a run's status nor its step (DESIGN.md: a transition is such a
change), may come years after the run, and must not move the position of a
run an engine is advancing (``run_seq`` fences its commits).

Blobs are shared by content: clearing one clears it for every event that
references the same bytes, which is what erasure means. A blob that is the
current state or the task of a run that is not finished (IDLE, RUNNING,
WAITING_FOR_APPROVAL) is refused: the engine still needs it (cancel the run
first). A FAILED run whose current state is redacted can no longer be
retried (the engine fails it with ``checkpoint_missing``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection

from .._time import format_utc, utc_now
from ..errors import LedgerError
from ..identity import normalize_actor, process_identity
from ..store import audit_reads as reads
from ..store.db import Database
from ..store.ledger import clear_blob_body
from ..store.ledger import clear_payload as clear_payload_of
from .chain import append_event

__all__ = ["PARTS", "Redaction", "redact_event"]

PARTS: Final[tuple[str, ...]] = ("payload", "input", "output", "state")
"""What can be redacted: the payload, and the blobs named by ``input_sha256``,
``output_sha256`` and ``state_sha256``."""

DEFAULT_PARTS: Final[tuple[str, ...]] = ("payload", "input", "output")

_EVENT_COLUMNS: Final = (
    "seq", "event_id", "event_type", "run_id", "payload_json", "payload_sha256",
    "input_sha256", "output_sha256", "state_sha256",
)


@dataclass(frozen=True)
class Redaction:
    """What :func:`redact_event` did.

    Attributes:
        seq, event_id: the redacted event.
        redaction_seq, redaction_event_id: the ``payload.redacted`` event appended.
        payload_removed: whether ``payload_json`` was cleared.
        blobs_removed: ``{column: sha256}`` of the blob bodies cleared.
    """

    seq: int
    event_id: str
    redaction_seq: int
    redaction_event_id: str
    payload_removed: bool
    blobs_removed: dict[str, str]


def redact_event(
    db: Database,
    event: str | int,
    *,
    by: str,
    reason: str,
    parts: Iterable[str] = DEFAULT_PARTS,
    occurred_at: str | None = None,
) -> Redaction:
    """Remove an event's payload and/or blob bodies, authorised by a new ``payload.redacted`` event.

    Commits one write transaction (the event first, then the removals, so
    the append-only triggers accept them).

    Args:
        db: the database.
        event: the event's ``event_id``, or its ``seq`` (an int, or a string
            of digits).
        by: stable id of the person authorising the redaction (AU-10).
        reason: why (e.g. the erasure request's reference); recorded in the
            ledger (EU AI Act Art. 86: every decision records a reason).
        parts: any of ``payload``, ``input``, ``output``, ``state``.
        occurred_at: the event time (default now, UTC).

    Returns:
        What was removed.

    Raises:
        LedgerError: no such event; the event is a ``payload.redacted`` or
            ``ledger.genesis`` event; an unknown part; nothing left to
            remove; a blob is still needed by an unfinished run; empty
            ``by`` or ``reason``.
        InvalidActorId: ``by`` cannot be normalised (statecraft/identity.py);
            the event records the normalised id and this process's identity.
    """
    wanted = tuple(dict.fromkeys(parts))
    unknown = [p for p in wanted if p not in PARTS]
    if unknown or not wanted:
        raise LedgerError(f"unknown part(s) {unknown or '(none)'}: choose from {', '.join(PARTS)}")
    if not isinstance(by, str) or not by.strip():
        raise LedgerError("a redaction needs the id of who authorises it (--by)")
    by = normalize_actor(by)  # the one normaliser of every human-facing request (identity.py)
    if not isinstance(reason, str) or not reason.strip():
        raise LedgerError("a redaction needs a reason (--reason), e.g. the erasure request's reference")
    now = occurred_at or format_utc(utc_now())
    with db.write() as conn:
        target = _load(conn, event)
        if target["event_type"] in ("payload.redacted", "ledger.genesis"):
            raise LedgerError(
                f"seq {target['seq']} is a {target['event_type']} event: it holds no personal data "
                "and cannot be redacted"
            )
        clear_payload = "payload" in wanted and target["payload_json"] is not None
        blobs: dict[str, str] = {}
        for part in ("input", "output", "state"):
            digest = target[f"{part}_sha256"]
            if part in wanted and digest is not None and _has_body(conn, digest):
                _check_not_in_use(conn, digest, part, target["seq"])
                blobs[f"{part}_sha256"] = digest
        if not clear_payload and not blobs:
            raise LedgerError(
                f"seq {target['seq']}: nothing to redact ({', '.join(wanted)} already removed or absent)"
            )
        row = append_event(
            conn,
            ledger_id=db.ledger_id,
            fields={
                "event_type": "payload.redacted",
                "actor_type": "human",
                "actor_id": by,
                "occurred_at": now,
                "decision": "redact",
                "outcome": "success",
                "reason": reason.strip(),
                "caused_by_event_id": target["event_id"],
            },
            payload={
                "redacted_seq": target["seq"],
                "redacted_run_id": target["run_id"],
                "payload_removed": clear_payload,
                "blobs_removed": blobs,
                "identity": process_identity().describe(),
            },
        )
        if clear_payload:
            clear_payload_of(conn, int(target["seq"]))
        for digest in blobs.values():
            clear_blob_body(conn, digest)
    return Redaction(
        seq=int(target["seq"]),
        event_id=str(target["event_id"]),
        redaction_seq=int(row["seq"]),
        redaction_event_id=str(row["event_id"]),
        payload_removed=clear_payload,
        blobs_removed=blobs,
    )


def _load(conn: Connection, event: str | int) -> dict[str, Any]:
    found = reads.event_by_key(conn, _EVENT_COLUMNS, event)
    if found is None:
        raise LedgerError(f"no audit event {event!r} (give its event_id or seq)")
    return found


def _has_body(conn: Connection, digest: str) -> bool:
    found = reads.blob_body(conn, digest)
    return found is not None and found[0] is not None


def _check_not_in_use(conn: Connection, digest: str, part: str, seq: int) -> None:
    live = reads.live_run_using_blob(conn, digest)
    if live is not None:
        raise LedgerError(
            f"seq {seq}: the {part} blob is the current state or task of run {live[0]} "
            f"({live[1]}), which still needs it; cancel the run first, or leave out --part {part}"
        )
