"""The hash chain: canonical envelopes, entry hashes, and appending one event.

Rule (AUDIT.md, "The hash chain")::

    entry_hash = SHA-256(b"statecraft.audit.v1\\x00" + JCS(envelope))

where the envelope is every column of ``audit_event`` except ``entry_hash``
and ``payload_json`` (the payload is bound through ``payload_sha256``, so it
can be lawfully redacted without breaking the chain), and JCS is RFC 8785
canonical JSON. Hashed data holds strings, integers, booleans and nulls only.

``canonical_json`` produces RFC 8785 output. For the values the ledger holds
(no floats, integers within ±2**53, ASCII keys) RFC 8785 serialisation is
exactly ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``: same key order, same string escapes (only ``"``, ``\\``
and U+0000..U+001F, lower-case hex), same integers. That path is ~20x faster
than the pure-Python ``rfc8785`` package, which verify needs to reach its
throughput target; anything outside that domain goes to ``rfc8785`` itself,
and a Hypothesis test (tests/audit/test_canonical.py) proves both agree.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any, Final, cast

from sqlalchemy import Connection

from ..canonical import MAX_SAFE_INT as _MAX_SAFE_INT
from ..canonical import canonical_json
from ..store.ledger import AUDIT_COLUMNS, AuditFields, AuditRecord, insert_event, ledger_head
from ..store.txn import tx_of

__all__ = [
    "DOMAIN",
    "GENESIS_PREV_HASH",
    "HASHED_COLUMNS",
    "HASH_ALG",
    "LEDGER_SCHEMA_VERSION",
    "append_event",
    "canonical_json",
    "SORTED_HASHED_COLUMNS",
    "compute_entry_hash",
    "entry_hash_of_sorted",
    "new_event_id",
    "new_event_row",
    "payload_digest",
]

HASH_ALG: Final = "sha256+jcs/v1"
LEDGER_SCHEMA_VERSION: Final = 1
DOMAIN: Final = b"statecraft.audit.v1\x00"
GENESIS_PREV_HASH: Final = "0" * 64


def new_event_id() -> str:
    """A new ``event_id``: a UUID version 7 (RFC 9562, section 5.7), as ``str(uuid.UUID)`` spells it.

    48 bits of Unix time in milliseconds, then 74 random bits
    (``os.urandom``; a version-4 UUID has 122): unique and unguessable, but
    ordered by time, so the ``UNIQUE(event_id)`` index is appended to at
    its end instead of written at a random leaf (that index: 1.4-1.9 WAL
    pages per step commit with version 4, 1.1 with version 7, in
    bench/bench_step_anatomy.py; issue #11), and a group commit's events
    share its last leaf. Nothing reads an order into it: ``seq`` is the
    ledger's order, and a clock stepping back only costs locality. Run ids
    stay version 4: operators type their prefixes.
    """
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = raw[6] & 0x0F | 0x70  # version 7
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 9562 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


ALL_COLUMNS: Final[tuple[str, ...]] = AUDIT_COLUMNS
HASHED_COLUMNS: Final[tuple[str, ...]] = tuple(
    c for c in ALL_COLUMNS if c not in ("entry_hash", "payload_json")
)

_KNOWN_COLUMNS: Final = frozenset(AUDIT_COLUMNS)


def compute_entry_hash(row: Mapping[str, Any]) -> str:
    """The entry hash of an audit row (a mapping with at least ``HASHED_COLUMNS``).

    Returns:
        64 lower-case hex characters.
    """
    return entry_hash_of_sorted(list(map(row.get, SORTED_HASHED_COLUMNS)))


def entry_hash_of_sorted(values: Sequence[Any]) -> str:
    """``compute_entry_hash`` of a row given as the values of ``SORTED_HASHED_COLUMNS``, in order.

    The hot path of every append and of verify: for str / None / safe-int
    values, pre-encoded keys are concatenated with values encoded by json's
    own C string encoder, byte for byte what ``canonical_json`` gives for the
    envelope dict (tests/audit/test_canonical.py); anything else takes the
    general ``canonical_json`` path.

    Raises:
        TypeError: a float or another value not allowed in hashed data.
        ValueError: an integer beyond ±(2**53 - 1), or an invalid string.
    """
    try:
        body = "{" + ",".join([
            prefix + (
                "null" if value is None
                else encode_basestring(value) if value.__class__ is str
                else _plain_int(value)
            )
            for prefix, value in zip(_KEY_PREFIXES, values)
        ]) + "}"
    except _NotPlain:
        envelope = dict(zip(SORTED_HASHED_COLUMNS, values))
        return hashlib.sha256(DOMAIN + canonical_json(envelope)).hexdigest()
    return hashlib.sha256(DOMAIN + body.encode("utf-8")).hexdigest()


class _NotPlain(Exception):
    """A value outside str / None / integers within ±(2**53 - 1)."""


def _plain_int(value: Any) -> str:
    if value.__class__ is int and -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
        return str(value)
    raise _NotPlain


# JCS orders keys by UTF-16 code units; the column names are ASCII, so plain
# sorting gives the same order.
SORTED_HASHED_COLUMNS: Final[tuple[str, ...]] = tuple(sorted(HASHED_COLUMNS))
_KEY_PREFIXES: Final[tuple[str, ...]] = tuple(f'"{c}":' for c in SORTED_HASHED_COLUMNS)


def payload_digest(payload: Any) -> tuple[str, str]:
    """Serialise an event payload canonically; return ``(payload_json, payload_sha256)``."""
    body = canonical_json(payload)
    return body.decode("utf-8"), hashlib.sha256(body).hexdigest()


def append_event(
    conn: Connection,
    *,
    ledger_id: str,
    fields: AuditFields,
    payload: Any = None,
) -> AuditRecord:
    """Append one event at the head of the chain, inside the caller's transaction.

    The caller must hold the database's write lock (``BEGIN IMMEDIATE`` on
    SQLite) so that reading the head and inserting are atomic; the append
    guard (store/db.py: the next seq, chained onto the entry_hash at seq - 1)
    makes a racing writer fail rather than fork the chain.

    Args:
        conn: a connection inside an open write transaction.
        ledger_id: this database's ledger id.
        fields: column values (``event_type``, ``actor_type``, ``actor_id``,
            ``occurred_at`` are required; ``recorded_at`` defaults to
            ``occurred_at``).
        payload: optional JSON-compatible event detail (no floats).

    Returns:
        The full row as inserted (including ``seq``, ``entry_hash``, ``event_id``).

    Raises:
        KeyError: a required field is missing, or a field is not an ``audit_event`` column.
        TypeError: a value is not allowed in hashed data.
    """
    tx = tx_of(conn)
    row = new_event_row(ledger_head(tx), ledger_id=ledger_id, fields=fields, payload=payload)
    insert_event(tx, row)
    return row


def new_event_row(
    head: tuple[int, str] | None,
    *,
    ledger_id: str,
    fields: AuditFields,
    payload: Any = None,
) -> AuditRecord:
    """Build and hash the row that follows ``head``; the caller inserts it in the same transaction.

    The one place an audit row is made: :func:`append_event` and the
    engine's driver-level commit path both use it, so they hash alike.

    Args:
        head: ``(seq, entry_hash)`` of the current head, ``None`` for an empty ledger.
        ledger_id, fields, payload: as for :func:`append_event`.

    Returns:
        The full row (every column of ``audit_event``).

    Raises:
        KeyError: a required field is missing, or a field is not an ``audit_event`` column.
        TypeError: a value is not allowed in hashed data.
    """
    if head is None:
        seq, prev_hash = 1, GENESIS_PREV_HASH
    else:
        seq, prev_hash = head[0] + 1, head[1]
    unknown = fields.keys() - _KNOWN_COLUMNS
    if unknown:
        # A misspelled column would otherwise be neither stored nor hashed, silently.
        raise KeyError(f"not audit_event columns: {sorted(unknown)}")
    row: dict[str, Any] = dict.fromkeys(ALL_COLUMNS)
    row.update(fields)
    for required in ("event_type", "actor_type", "actor_id", "occurred_at"):
        if row[required] is None:
            raise KeyError(f"audit event needs {required!r}")
    if row["recorded_at"] is None:
        row["recorded_at"] = row["occurred_at"]
    if row["event_id"] is None:
        row["event_id"] = new_event_id()
    row.update(
        seq=seq,
        ledger_id=ledger_id,
        prev_hash=prev_hash,
        hash_alg=HASH_ALG,
        schema_version=LEDGER_SCHEMA_VERSION,
    )
    if payload is not None:
        row["payload_json"], row["payload_sha256"] = payload_digest(payload)
    row["entry_hash"] = compute_entry_hash(row)
    return cast(AuditRecord, row)
