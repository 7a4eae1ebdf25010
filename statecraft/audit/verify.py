"""Verifying the audit ledger: recompute the chain, check every rule, fold the runs.

What a successful verify proves, and what it does not (AUDIT.md, "The hash
chain"): **without an anchor, verify proves that the ledger is internally
consistent up to seq N** (``VerifyReport.last_seq``). Every row from the
genesis event to seq N is present, in order, unedited, chained to its
predecessor, from this one ledger, with each run's events contiguous. It
cannot see a truncated tail (rows after N removed), nor a full rewrite by
someone who recomputed every hash; both need an anchor exported outside the
database.

Checks, in seq order, in one streaming pass (the first failing check wins):

1. ``seq`` is contiguous from 1 (no gap, no repeat).
2. ``ledger_id`` equals ``statecraft_meta``'s ``ledger_id`` (stops splicing).
3. ``hash_alg`` and ``schema_version`` are ones this code knows.
4. Genesis: seq 1 has ``prev_hash == "0" * 64`` and ``event_type ==
   "ledger.genesis"``; no later row is a genesis.
5. ``prev_hash`` equals the previous row's ``entry_hash``.
6. The recomputed ``entry_hash`` equals the stored one.
7. ``payload_sha256 == SHA-256(payload_json as UTF-8)`` when a payload is
   present. A NULL ``payload_json`` with a ``payload_sha256`` is a lawful
   redaction only if a *later* ``payload.redacted`` event has
   ``caused_by_event_id`` equal to the event's ``event_id``.
8. Each run's ``run_seq`` is contiguous from 1; ``run_seq`` needs ``run_id``.
9. ``event_id`` is unique.

Then, with ``check_blobs`` (default), every stored blob's body must hash to
its key, and a body removed (NULL) must be covered by a verified
``payload.redacted`` event of an event that references it; with
``check_blob_refs``, every blob an event references must be stored. With
``anchors`` (statecraft/audit/anchor.py), each anchor must match the row at
its seq (a truncated tail or a rewrite shows there), and the newest must not
be older than one already seen.

Then, with ``check_runs``, the runs are folded. Convention: every event that
carries a ``run_id`` records the run's status, step and state hash *after*
the event in ``to_status``, ``to_step`` and ``state_sha256``; so each run's
last event must equal its ``run`` row (``status``, ``step``,
``state_sha256``), and ``run.run_seq`` must equal that event's ``run_seq``
(DESIGN.md invariant 2). Every run row must have events and vice versa.
Every other column of the run row that a reviewer is shown (``statecraft
status``, ``audit show``) is checked against the events too, since the run
row itself is not hashed (:data:`FOLDED_COLUMNS`): the machine, who started
it and when (its first event), when it last changed (its last event), its
error (the last event's, while FAILED), its usage totals (the sum of its
events'), and, while it waits, the pending proposal (its last
``approval.requested`` event: reason, digest, ``resume_at``).

Speed (bench/bench_verify.py): rows stream from a plain DB-API cursor in
``fetchmany`` batches, without ORM rows or per-row dicts. On SQLite the JCS
envelope is rendered by SQLite itself (``json_object`` over the hashed
columns in sorted order), which is only trusted where it provably equals
``chain.canonical_json``:

- once per process, a probe holding every Unicode scalar value, the safe
  integer bounds and NULL must render exactly as ``canonical_json`` renders
  it (string escaping is per character, so this covers every string);
- a row is rendered by SQLite only if its values are TEXT, NULL or integers
  within ±(2**53 - 1): columns without TEXT affinity are tested for REAL and
  out-of-range integers in the query; a BLOB makes ``json_object`` fail, and
  the scan falls back to Python for the rest;
- any row whose SQLite rendering does not hash to the stored ``entry_hash``
  is re-hashed in Python (:func:`_entry_hash_sorted`, proved equal to
  ``chain.compute_entry_hash`` in tests/audit/test_canonical.py) before it
  is declared edited.

So the verdict is always exactly that of ``chain.compute_entry_hash`` (barring
a SHA-256 collision).

Hashing every stored blob costs about as much as the walk; on a SQLite file
it runs in a thread beside the walk, on a second connection proven to read
the walk's snapshot (:class:`BlobScanBeside`, ~1.3x on two cores), and
tests/audit/test_verify_beside.py checks both ways give one verdict.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any, Final, NamedTuple

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from ..errors import LedgerError
from ..signing import Keyring
from ..store import audit_reads as reads
from ..store.db import Database, sqlite_path
from .anchor import Anchor, newest_anchor_seen
from .chain import (
    DOMAIN,
    GENESIS_PREV_HASH,
    HASH_ALG,
    LEDGER_SCHEMA_VERSION,
    SORTED_HASHED_COLUMNS,
    canonical_json,
    entry_hash_of_sorted,
)
from .signatures import check_signatures

__all__ = [
    "FOLDED_COLUMNS",
    "WALK_COLUMNS",
    "BlobFacts",
    "BlobScanBeside",
    "ChainBreak",
    "ChainWalk",
    "RunFold",
    "VerifyReport",
    "blob_facts",
    "fold_runs",
    "verify_ledger",
]

KNOWN_HASH_ALGS: Final = frozenset({HASH_ALG})
KNOWN_SCHEMA_VERSIONS: Final = frozenset({LEDGER_SCHEMA_VERSION})

_MAX_SAFE_INT: Final = 2**53 - 1
_BATCH: Final = 2000

# JCS orders an object's keys by UTF-16 code units; the column names are
# ASCII, so plain sorting gives the same order.
_SORTED_HASHED: Final[tuple[str, ...]] = SORTED_HASHED_COLUMNS

# Every scan returns these first, in this order (feed unpacks them), then
# either the hashed values (Python hashing) or an "unsafe" flag and the
# envelope (SQLite rendering).
WALK_COLUMNS: Final[tuple[str, ...]] = (  # fed to ChainWalk.feed first, in this order
    "seq", "ledger_id", "prev_hash", "hash_alg", "schema_version", "event_id",
    "event_type", "run_id", "run_seq", "to_status", "to_step", "state_sha256",
    "caused_by_event_id", "payload_sha256", "entry_hash", "payload_json",
)  # fmt: skip

_PYTHON_SCAN: Final = reads.scan_sql(WALK_COLUMNS + _SORTED_HASHED)
_PYTHON_SCAN_AFTER: Final = reads.scan_sql(WALK_COLUMNS + _SORTED_HASHED, after=True)
_ROW_VALUES: Final = reads.row_values_sql(_SORTED_HASHED)
_ENVELOPE_SQL: Final = reads.envelope_sql(_SORTED_HASHED)


class VerifyReport(BaseModel):
    """The verdict of :func:`verify_ledger`. Read-only.

    Attributes:
        ok: every check passed.
        events_checked: rows read and checked, including the first bad one.
        last_seq: the last seq of the verified prefix: seqs 1..``last_seq``
            are internally consistent (0 if not even the genesis verified).
            When only a ``run`` row disagrees with an intact ledger, this is
            the ledger head.
        first_bad_seq: the first seq that fails (for a run mismatch, the
            run's last event; ``None`` if ok, or if a run row has no events).
        reason: one line naming the seq and the rule broken, ``None`` if ok.
        ledger_id: the ledger verified (from ``statecraft_meta``).
        redacted_seqs: seqs whose payload was lawfully redacted (payload
            removed, authorised by a later ``payload.redacted`` event).
        redactions: ``(redacted seq, seq of the payload.redacted event
            authorising it)`` for every verified redaction (payload or
            blobs removed), in order.
        anchored_seq: the seq of the newest anchor that matched; rows
            1..``anchored_seq`` are exactly those that existed when it was
            taken. ``None`` without anchors (or when none matched).
        anchor_time: when that anchor was taken (UTC).
        warnings: what is wrong with the database's guard rails without
            being evidence of tampering (e.g. a guard trigger is missing:
            whoever can write the file dropped it; the chain says whether
            rows were changed).
        signatures_checked: with a keyring, the signed approvals verified
            against it (statecraft/audit/signatures.py); else ``None``.
    """

    model_config = ConfigDict(frozen=True)

    ok: bool
    events_checked: int
    last_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None
    ledger_id: str | None = None
    redacted_seqs: tuple[int, ...] = ()
    redactions: tuple[tuple[int, int], ...] = ()
    anchored_seq: int | None = None
    anchor_time: str | None = None
    warnings: tuple[str, ...] = ()
    signatures_checked: int | None = None


class RunFold(NamedTuple):
    """A run as its audit events say it is after its last event."""

    status: str | None
    step: str | None
    state_sha256: str | None
    run_seq: int


class ChainBreak(Exception):
    """The first broken rule: raised inside the walk, turned into a report (also by verify-export).

    Attributes:
        seq: the first bad seq (``None``: not one row's problem).
        reason: one line naming the seq and the rule.
        broken_link: the row's ``prev_hash`` does not match (verify then says what it points at).
    """

    def __init__(self, seq: int | None, reason: str, *, broken_link: bool = False) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason
        self.broken_link = broken_link


# -- entry hashes in Python ---------------------------------------------------------


def _entry_hash_sorted(values: Sequence[Any]) -> str:
    """The Python re-hash of a row (values of ``sorted(HASHED_COLUMNS)``); see ``chain.entry_hash_of_sorted``."""
    return entry_hash_of_sorted(values)


# -- entry hashes rendered by SQLite ------------------------------------------------


@functools.cache
def _sqlite_renders_jcs() -> bool:
    """Whether this process's SQLite ``json_object`` renders exactly like ``canonical_json``.

    Probes every Unicode scalar value (escaping is per character, so this
    covers every string), the safe integer bounds, zero and NULL, once.
    """
    every_char = "".join(map(chr, chain(range(0xD800), range(0xE000, 0x110000))))
    values = {"k": every_char, "m": -_MAX_SAFE_INT, "n": None, "p": _MAX_SAFE_INT, "z": 0}
    try:
        rendered = reads.sqlite_json_object(list(values.values()))
    except sqlite3.Error:  # built without JSON functions
        return False
    return isinstance(rendered, str) and rendered.encode("utf-8") == canonical_json(values)


def _sqlite_scan_sql(raw: sqlite3.Connection) -> str | None:
    """The SQLite-rendering scan for this table's declared types, or ``None`` if unusable."""
    if not _sqlite_renders_jcs():
        return None
    return reads.sqlite_scan(raw, WALK_COLUMNS, _SORTED_HASHED, _MAX_SAFE_INT)


# -- the walk -------------------------------------------------------------------------


def _no_row_values(seq: int) -> Sequence[Any]:
    raise RuntimeError(f"seq {seq}: rows rendered by SQLite need a row_values reader")


class ChainWalk:
    """State of one streaming pass over the ledger, fed in batches (verify, and verify-export on a bundle).

    Args:
        ledger_id: ``statecraft_meta``'s ledger id.
        duplicate_event_ids: event ids that occur more than once.
        row_values: reads a row's hashed values (sorted order) by seq; needed
            to feed rows rendered by SQLite, for those whose rendering is not
            trusted or does not match.
    """

    def __init__(
        self,
        ledger_id: str | None,
        duplicate_event_ids: set[str],
        row_values: Callable[[int], Sequence[Any]] = _no_row_values,
    ) -> None:
        self.ledger_id = ledger_id
        self.duplicate_event_ids = duplicate_event_ids
        self.row_values = row_values
        self.seen_duplicates: dict[str, int] = {}
        self.last_seq = 0
        self.last_hash: str | None = None
        self.checked = 0
        # run_id -> (to_status, to_step, state_sha256, run_seq, seq) after its last event
        self.runs: dict[str, tuple[Any, Any, Any, int, int]] = {}
        # event_id -> seq of payloads removed and not (yet) authorised
        self.pending_redactions: dict[str, int] = {}
        # (seq whose payload was removed, seq of the payload.redacted event authorising it)
        self.redacted: list[tuple[int, int]] = []
        # (caused_by_event_id, seq) of every payload.redacted event verified
        self.redaction_events: list[tuple[Any, int]] = []

    def feed(self, rows: Sequence[Sequence[Any]], *, rendered: bool) -> None:
        """Check one batch of rows in seq order.

        Args:
            rows: ``WALK_COLUMNS`` columns, then either the hashed values in
                sorted order (``rendered=False``) or the unsafe flag and the
                SQLite-rendered envelope (``rendered=True``).

        Raises:
            ChainBreak: the first row that breaks a rule.
            sqlite3.Error: a row cannot be read for re-hashing.
        """
        ledger_id = self.ledger_id
        runs = self.runs
        pending = self.pending_redactions
        duplicates = self.duplicate_event_ids
        last_seq = self.last_seq
        last_hash = self.last_hash
        checked = self.checked
        sha256 = hashlib.sha256
        try:
            for row in rows:
                (
                    seq, row_ledger_id, prev_hash, hash_alg, schema_version, event_id,
                    event_type, run_id, run_seq, to_status, to_step, state_sha256,
                    caused_by, payload_sha, entry_hash, payload, *rest,
                ) = row  # fmt: skip
                checked += 1
                if seq != last_seq + 1:
                    if isinstance(seq, int) and seq <= last_seq:  # seq is no longer a key
                        raise ChainBreak(seq, f"seq {seq}: a second row with this seq")
                    raise ChainBreak(
                        last_seq + 1,
                        f"seq {last_seq + 1} missing (expected contiguous seq; "
                        f"next row has seq {seq!r})",
                    )
                if row_ledger_id != ledger_id:
                    raise ChainBreak(
                        seq,
                        f"seq {seq}: ledger_id differs (row spliced from another ledger): "
                        f"{row_ledger_id!r}, statecraft_meta has {ledger_id!r}",
                    )
                if hash_alg not in KNOWN_HASH_ALGS:
                    raise ChainBreak(seq, f"seq {seq}: unknown hash_alg {hash_alg!r}")
                if schema_version not in KNOWN_SCHEMA_VERSIONS:
                    raise ChainBreak(seq, f"seq {seq}: unknown schema_version {schema_version!r}")
                if seq == 1:
                    if prev_hash != GENESIS_PREV_HASH:
                        raise ChainBreak(1, "seq 1: genesis prev_hash is not 64 zeros")
                    if event_type != "ledger.genesis":
                        raise ChainBreak(
                            1, f"seq 1: genesis event_type is {event_type!r}, not 'ledger.genesis'"
                        )
                else:
                    if prev_hash != last_hash:
                        raise ChainBreak(
                            seq,
                            f"seq {seq}: prev_hash does not match seq {last_seq}'s entry_hash",
                            broken_link=True,
                        )
                    if event_type == "ledger.genesis":
                        raise ChainBreak(seq, f"seq {seq}: a second ledger.genesis event")
                # rendered: rest == [unsafe, envelope]; else rest is the hashed values.
                if not (
                    rendered
                    and not rest[0]
                    and sha256(DOMAIN + rest[1].encode("utf-8")).hexdigest() == entry_hash
                ):
                    try:
                        computed = _entry_hash_sorted(self.row_values(seq) if rendered else rest)
                    except (TypeError, ValueError) as exc:
                        raise ChainBreak(
                            seq, f"seq {seq}: a value cannot be hashed (row edited): {exc}"
                        ) from None
                    if computed != entry_hash:
                        raise ChainBreak(seq, f"seq {seq}: entry_hash mismatch (row edited)")
                if payload is not None:
                    if (
                        payload_sha is None
                        or payload.__class__ is not str
                        or sha256(payload.encode("utf-8")).hexdigest() != payload_sha
                    ):
                        raise ChainBreak(seq, f"seq {seq}: payload does not match payload_sha256")
                elif payload_sha is not None:
                    pending[event_id] = seq
                if run_id is not None:
                    before = runs.get(run_id)
                    expected = 1 if before is None else before[3] + 1
                    if run_seq != expected:
                        raise ChainBreak(
                            seq,
                            f"seq {seq}: run_seq {run_seq} of run {run_id}, expected {expected}",
                        )
                    runs[run_id] = (to_status, to_step, state_sha256, run_seq, seq)
                elif run_seq is not None:
                    raise ChainBreak(seq, f"seq {seq}: run_seq {run_seq} without a run_id")
                if duplicates and event_id in duplicates:
                    first = self.seen_duplicates.setdefault(event_id, seq)
                    if first != seq:
                        raise ChainBreak(
                            seq, f"seq {seq}: event_id {event_id} already used by seq {first}"
                        )
                if event_type == "payload.redacted":
                    self.redaction_events.append((caused_by, seq))
                    target = pending.pop(caused_by, None)
                    if target is not None:
                        self.redacted.append((target, seq))
                last_seq = seq
                last_hash = entry_hash
        finally:
            self.last_seq = last_seq
            self.last_hash = last_hash
            self.checked = checked

    def unauthorised_redaction(
        self, before_seq: int | None, authorised_later: Callable[[str, int], bool] | None = None
    ) -> ChainBreak | None:
        """The first payload removal that no ``payload.redacted`` event authorises.

        Args:
            before_seq: the seq where the walk broke (``None``: it did not).
            authorised_later: when it broke, whether a ``payload.redacted``
                event after the break names this event (``event_id``, its
                seq): such a removal is not the first break — the walk only
                stopped before reaching its authorisation — so the break
                itself is reported.
        """
        for event_id, seq in sorted(self.pending_redactions.items(), key=lambda kv: kv[1]):
            if before_seq is not None and seq >= before_seq:
                return None
            if before_seq is not None and authorised_later is not None and authorised_later(event_id, seq):
                continue
            return ChainBreak(seq, f"seq {seq}: payload removed without a payload.redacted event")
        return None


def _stream_sqlite(conn: Connection, walk: ChainWalk) -> None:
    """Feed every row to ``walk`` from a plain sqlite3 cursor.

    Raises:
        ChainBreak: from the walk, or a row the driver cannot read.
    """
    raw = reads.sqlite_raw(conn)
    lookup = raw.cursor()

    def row_values(seq: int) -> Sequence[Any]:
        found = lookup.execute(_ROW_VALUES, (seq,)).fetchone()
        if found is None:  # impossible: the row was just streamed, in this snapshot
            raise LedgerError(f"seq {seq} vanished during verify")
        return tuple(found)

    walk.row_values = row_values
    cursor = raw.cursor()
    try:
        try:
            scan = _sqlite_scan_sql(raw)
            rendered = scan is not None
            cursor.execute(scan or _PYTHON_SCAN)
            while rows := cursor.fetchmany(_BATCH):
                walk.feed(rows, rendered=rendered)
            return
        except sqlite3.Error:
            # A BLOB in a hashed column stops json_object; a TEXT value that is
            # not UTF-8 fails the whole fetchmany. Either way, go on from the
            # verified prefix one row at a time in Python, to name the row.
            pass
        cursor.execute(_PYTHON_SCAN_AFTER, {"s": walk.last_seq})
        while True:
            try:
                row = cursor.fetchone()
            except sqlite3.Error as exc:
                bad = reads.min_seq_after(conn, walk.last_seq)
                raise ChainBreak(bad, f"seq {bad}: row cannot be read (row edited): {exc}") from None
            if row is None:
                return
            walk.feed([row], rendered=False)
    finally:
        cursor.close()
        lookup.close()


def _stream_other(conn: Connection, walk: ChainWalk) -> None:
    """Feed every row to ``walk`` through SQLAlchemy (non-SQLite databases)."""
    for rows in reads.stream(conn, _PYTHON_SCAN):
        walk.feed(rows, rendered=False)


def _authorised_later(conn: Connection) -> Callable[[str, int], bool]:
    return lambda event_id, seq: reads.authorised_later(conn, event_id, seq)


def _diagnose_prev_hash(conn: Connection, failure: ChainBreak) -> ChainBreak:
    """Add what the bad ``prev_hash`` points at (a fork, a reorder, nothing) to the reason."""
    assert failure.seq is not None
    prev_hash = reads.prev_hash_at(conn, failure.seq)
    if prev_hash is None:
        return failure
    parent = reads.seq_with_entry_hash(conn, prev_hash)
    if parent is None:
        note = "no row has that entry_hash"
    else:
        sibling = reads.sibling_of(conn, prev_hash, failure.seq)
        if sibling is not None:
            note = f"fork: seq {sibling} and seq {failure.seq} both follow seq {parent}"
        elif parent >= failure.seq:
            note = f"it is seq {parent}'s entry_hash: rows reordered"
        else:
            note = f"it is seq {parent}'s entry_hash"
    return ChainBreak(failure.seq, f"{failure.reason} ({note})")


# -- runs -------------------------------------------------------------------------------


FOLDED_COLUMNS: Final[tuple[str, ...]] = (
    "machine_name", "machine_version", "machine_digest", "parent_run_id", "started_by", "created_at",
    "updated_at", "error_code", "reason", "tokens_in", "tokens_out", "cost_micros",
)
"""Run-row columns shown to reviewers that verify folds from the ledger, besides status/step/state/run_seq."""

def fold_runs(conn: Connection) -> dict[str, RunFold]:
    """Fold the audit events of every run into the run's current status.

    By convention every event with a ``run_id`` records the run's status, step
    and state hash *after* the event, so the fold is the run's event with the
    highest ``run_seq``. Read-only; does not verify the chain (use
    :func:`verify_ledger` for that).

    Args:
        conn: an open connection.

    Returns:
        ``{run_id: RunFold(status, step, state_sha256, run_seq)}``; a
        ``RunFold`` is a tuple, so it compares equal to a plain 4-tuple.
    """
    return {r[0]: RunFold(r[1], r[2], r[3], r[4]) for r in reads.fold_last_events(conn)}


def _describe(fields: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{f}={v}" for f, v in zip(fields, values))


def _check_runs(
    conn: Connection, runs: dict[str, tuple[Any, Any, Any, int, int]]
) -> ChainBreak | None:
    """Compare each run row with the fold of its events; the earliest problem wins."""
    failure = _check_run_position(conn, runs)
    if failure is not None:
        return failure
    return _earliest(_check_run_details(conn, runs), _check_pending(conn))


def _check_run_details(conn: Connection, runs: dict[str, tuple[Any, Any, Any, int, int]]) -> ChainBreak | None:
    """The run row's reviewer-facing columns (:data:`FOLDED_COLUMNS`) against its events."""
    folded = reads.fold_details(conn)
    problems: list[tuple[int, str]] = []
    for row in reads.run_details(conn, FOLDED_COLUMNS):
        run_id, values = row[0], tuple(row[1:])
        expected = folded.get(run_id)
        if expected is None or values == expected:
            continue
        differ = [i for i in range(len(FOLDED_COLUMNS)) if values[i] != expected[i]]
        fields = [FOLDED_COLUMNS[i] for i in differ]
        last = runs[run_id][4] if run_id in runs else 0
        problems.append((
            last,
            f"run {run_id}: run row says {_describe(fields, [values[i] for i in differ])}, "
            f"ledger says {_describe(fields, [expected[i] for i in differ])} (seq {last})",
        ))
    return ChainBreak(*min(problems)) if problems else None


def _check_pending(conn: Connection) -> ChainBreak | None:
    """A waiting run's pending proposal (what an approver is shown) against its ``approval.requested`` event."""
    import json

    problems: list[tuple[int, str]] = []
    for run_id, reason, digest, resume_at, seq, asked_reason, payload in reads.pending_proposals(conn):
        if payload is None:
            continue  # lawfully redacted: only the hashed reason is left to compare
        asked = json.loads(payload)
        expected = (asked_reason, asked.get("proposal_digest"), asked.get("resume_at"))
        if (reason, digest, resume_at) != expected:
            problems.append((
                seq,
                f"run {run_id}: the pending proposal in the run row (reason, digest, resume_at) differs "
                f"from the approval.requested event at seq {seq}",
            ))
    if problems:
        return ChainBreak(*min(problems))
    return None


def _check_run_position(
    conn: Connection, runs: dict[str, tuple[Any, Any, Any, int, int]]
) -> ChainBreak | None:
    """Status, step, state hash and run_seq of each run row against the walk's fold."""
    run_rows = reads.run_positions(conn)
    names = ("status", "step", "state_sha256", "run_seq")
    problems: list[tuple[int, str]] = []
    for run_id, (status, step, state, run_seq, last) in runs.items():
        row = run_rows.pop(run_id, None)
        if row is None:
            problems.append(
                (last, f"run {run_id}: ledger has events (last seq {last}) but no run row")
            )
            continue
        folded = (status, step, state, run_seq)
        if row != folded:
            differ = [i for i in range(4) if row[i] != folded[i]]
            fields = [names[i] for i in differ]
            problems.append(
                (
                    last,
                    f"run {run_id}: run row says {_describe(fields, [row[i] for i in differ])}, "
                    f"ledger says {_describe(fields, [folded[i] for i in differ])} (seq {last})",
                )
            )
    if problems:
        return ChainBreak(*min(problems))
    if run_rows:
        return ChainBreak(None, f"run {min(run_rows)}: run row has no events in the ledger")
    return None


# -- blobs ------------------------------------------------------------------------------



def _redaction_targets(conn: Connection, walk: ChainWalk) -> tuple[list[tuple[int, int]], set[str]]:
    """``(target seq, redaction seq)`` of every verified ``payload.redacted`` event, and the blobs they cover.

    A redaction event authorises removing the payload and the blobs
    (``input_sha256``, ``output_sha256``, ``state_sha256``) of an *earlier*
    event, named by ``caused_by_event_id`` (one unique-index lookup each).
    """
    pairs: list[tuple[int, int]] = []
    blobs: set[str] = set()
    for event_id, by_seq in walk.redaction_events:
        target = reads.event_refs(conn, event_id)
        if target is not None and target[0] < by_seq:
            pairs.append((int(target[0]), by_seq))
            blobs.update(h for h in target[1:] if h)
    return sorted(pairs), blobs


class BlobFacts(NamedTuple):
    """What the ``blob`` table itself says, before any event is consulted (:func:`blob_facts`).

    Attributes:
        edited: key -> why its stored body is wrong (it does not hash to the key).
        removed: keys whose body is NULL (lawful only if a redaction covers them).
        missing_ref: the first event naming a blob that is not stored,
            ``(seq, input_sha256, output_sha256, state_sha256)``; ``None``
            when none is, or when references were not checked.
    """

    edited: dict[str, str]
    removed: frozenset[str]
    missing_ref: tuple[Any, ...] | None


def blob_facts(
    batches: Iterable[Sequence[Any]], missing_ref: Callable[[], Sequence[Any] | None] | None
) -> BlobFacts:
    """Hash every stored body against its key; then, if given, ask ``missing_ref`` for a missing reference.

    Args:
        batches: batches of ``(sha256, body)`` rows (:data:`reads.BLOB_ROWS_SQL`).
        missing_ref: runs :data:`reads.MISSING_BLOB_REF_SQL`; ``None`` skips it.
    """
    edited: dict[str, str] = {}
    removed: set[str] = set()
    sha256 = hashlib.sha256
    for rows in batches:
        for key, body in rows:
            if body is None:
                removed.add(key)
            elif sha256(body if body.__class__ is bytes else _as_bytes(body)).hexdigest() != key:
                edited[key] = "body does not match its sha256 (blob edited)"
    missing = None if missing_ref is None else missing_ref()
    return BlobFacts(edited, frozenset(removed), None if missing is None else tuple(missing))


def _check_blobs(conn: Connection, walk: ChainWalk, authorised: set[str], facts: BlobFacts) -> ChainBreak | None:
    """The blob failure to report, if any: ``facts`` (from the walk's snapshot) against the verified redactions.

    A blob is content-addressed (its key is the SHA-256 of its body), so an
    edited body shows without any chain; a NULL body is lawful only if it is
    in ``authorised`` (see :func:`_redaction_targets`). A blob an event
    references must also be stored (a deleted blob row), when
    ``facts.missing_ref`` was asked for: one index probe per reference
    (about half the chain walk again on bench/bench_ledger.py). Reported at
    the first event that references the blob.
    """
    problems = dict(facts.edited)
    problems.update((key, "body removed without a payload.redacted event") for key in facts.removed - authorised)
    failure = None
    if problems:
        first = min(problems)
        failure = ChainBreak(None, f"blob {first}: {problems[first]}; no event references it")
        for rows in reads.ref_rows(conn):
            hit = next(((r[0], h) for r in rows for h in r[1:] if h in problems), None)
            if hit is not None:
                failure = ChainBreak(hit[0], f"seq {hit[0]}: blob {hit[1]} {problems[hit[1]]}")
                break
    if facts.missing_ref is not None:
        seq, *hashes = facts.missing_ref
        names = ("input_sha256", "output_sha256", "state_sha256")
        column = next(
            n for n, h in zip(names, hashes)
            if h is not None
            and not reads.blob_exists(conn, h)
        )
        failure = _earliest(
            failure,
            ChainBreak(seq, f"seq {seq}: {column} names a blob that is not stored (blob row deleted)"),
        )
    if failure is not None and failure.seq is not None and failure.seq > walk.last_seq:
        return None  # beyond the verified prefix: the chain failure is reported instead
    return failure


class BlobScanBeside:
    """:func:`blob_facts` on a second SQLite connection, in a thread beside the chain walk, at the walk's snapshot.

    Hashing every blob is about as much work as the chain walk itself
    (bench/bench_verify.py); SQLite releases the GIL while it reads, so on
    two cores the two overlap (issue #11). Both must read **one snapshot**,
    or a commit between them could pair an old chain with new blobs (a
    redaction's NULL body without its event: a false alarm). The proof, by
    ``PRAGMA data_version`` (which changes on a connection exactly when
    another connection's commit becomes visible to it,
    https://sqlite.org/pragma.html#pragma_data_version):

    1. :meth:`__init__` reads this connection's ``data_version`` (v0);
    2. the caller begins the walk's snapshot (its first read);
    3. :meth:`pinned` begins this connection's snapshot and reads v1.

    If v0 == v1, nothing was committed between steps 1 and 3, so the walk's
    snapshot, taken in between, is this one. Otherwise the caller closes
    this and hashes the blobs on its own connection, after the walk.

    Raises (from :meth:`facts`): whatever the scan raised (``sqlite3.Error``).
    """

    def __init__(self, db: Database) -> None:
        self._pooled = db.sa_engine.raw_connection()
        raw = self._pooled.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        self._raw = raw
        self._thread: threading.Thread | None = None
        self._facts: BlobFacts | None = None
        self._error: BaseException | None = None
        self._before = reads.data_version(raw)

    @staticmethod
    def wanted(db: Database) -> bool:
        """Whether scanning beside pays here: a SQLite file (not ``:memory:``), and more than one CPU."""
        path = sqlite_path(db.url)
        return bool(path) and path != ":memory:" and "mode=memory" not in db.url and (os.cpu_count() or 1) > 1

    def pinned(self) -> bool:
        """Begin this connection's snapshot; whether it is the one the caller began since :meth:`__init__`."""
        reads.begin_snapshot(self._raw)
        return reads.data_version(self._raw) == self._before

    def start(self, refs: bool) -> None:
        """Start the scan (and, with ``refs``, the missing-reference query) in a daemon thread."""
        self._thread = threading.Thread(target=self._scan, args=(refs,), name="statecraft-verify-blobs", daemon=True)
        self._thread.start()

    def _scan(self, refs: bool) -> None:
        try:
            self._facts = blob_facts(
                reads.raw_stream(self._raw, reads.BLOB_ROWS_SQL),
                (lambda: reads.raw_first(self._raw, reads.MISSING_BLOB_REF_SQL)) if refs else None,
            )
        except BaseException as exc:  # handed to the caller by facts()
            self._error = exc

    def facts(self) -> BlobFacts:
        """Wait for the scan; its facts.

        Raises:
            Whatever the scan raised.
        """
        assert self._thread is not None, "start() first"
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._facts is not None
        return self._facts

    def close(self) -> None:
        """Stop a scan still running (``interrupt``), end the snapshot and return the connection to the pool."""
        if self._thread is not None and self._thread.is_alive():
            self._raw.interrupt()
            self._thread.join()
        try:
            reads.end_snapshot(self._raw)
        finally:
            self._pooled.close()


def _as_bytes(body: Any) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


# -- anchors ----------------------------------------------------------------------------


def _check_anchors(
    conn: Connection, ledger_id: str | None, anchors: Sequence[Anchor], walk: ChainWalk
) -> tuple[ChainBreak | None, Anchor | None]:
    """Check anchors against the ledger; return the first failure and the newest anchor matched."""
    ordered = sorted(anchors, key=lambda a: a.seq)
    for a in ordered:
        if a.ledger_id != ledger_id:
            return ChainBreak(
                None,
                f"{a.describe()} is for ledger {a.ledger_id}, but this database holds ledger "
                f"{ledger_id} (a wrong anchor, or the database was replaced)",
            ), None
    for a, b in zip(ordered, ordered[1:]):
        if a.seq == b.seq and a.entry_hash != b.entry_hash:
            return ChainBreak(
                a.seq,
                f"seq {a.seq}: {a.describe()} and {b.describe()} disagree on its entry_hash "
                "(at most one of them is genuine)",
            ), None
    newest = ordered[-1]
    head = reads.ledger_head_seq(conn)
    # Newer anchors the database knows of: its memory, and verified ledger.anchored events.
    newer: list[str] = []
    seen = newest_anchor_seen(conn)
    if seen is not None and seen.ledger_id == ledger_id and seen.seq > newest.seq:
        newer.append(f"the newest anchor this database has seen (seq {seen.seq}, {seen.time})")
    recorded = reads.last_anchored_before(conn, walk.last_seq)
    if recorded is not None and recorded[0] > newest.seq:
        newer.append(f"the anchor taken at seq {recorded[0]} ({recorded[1]}, a ledger.anchored event)")
    # The rows first: an anchor from outside that the ledger contradicts is a
    # rewrite, whatever newer anchor the database can show (an insider who
    # rewrote history can take a new anchor of it; the two then conflict).
    matched: Anchor | None = None
    for a in ordered:
        proven = f"; rows 1..{matched.seq} match {matched.describe()}" if matched else ""
        conflict = (
            f"; it conflicts with {' and '.join(newer)}: at most one of them is genuine — trust the "
            "anchor kept in write-once storage" if newer else ""
        )
        if a.seq > head:
            return ChainBreak(
                head + 1,
                f"seq {head + 1} missing: the ledger ends at seq {head}, but {a.describe()} "
                f"vouches for seq {a.seq} (tail truncated){proven}{conflict}",
            ), matched
        row_hash = reads.entry_hash_at(conn, a.seq)
        if row_hash != a.entry_hash:
            return ChainBreak(
                a.seq,
                f"seq {a.seq}: entry_hash differs from {a.describe()}: the ledger was "
                f"rewritten at or before seq {a.seq}{proven}{conflict}",
            ), matched
        matched = a
    if newer:
        # Every anchor given matches, but a newer one exists: rows after the
        # given anchor could have been rewritten since; only the newest proves them.
        return ChainBreak(
            None,
            f"{newest.describe()} is older than {newer[0]}; verify against the newest anchor "
            "from write-once storage",
        ), None
    return None, matched


def _check_remembered(conn: Connection, ledger_id: str | None) -> ChainBreak | None:
    """Without anchors given: the row at the remembered anchor's seq must still carry its hash.

    The memory is inside the database, so it proves nothing when it
    matches (``anchored_seq`` stays ``None``); when it does not, the tail
    was cut or rewritten by someone who did not also rewrite the memory.
    """
    seen = newest_anchor_seen(conn)
    if seen is None or seen.ledger_id != ledger_id:
        return None
    row_hash = reads.entry_hash_at(conn, seen.seq)
    if row_hash == seen.entry_hash:
        return None
    if row_hash is None:
        head = reads.ledger_head_seq(conn)
        if head < seen.seq:
            return ChainBreak(
                head + 1,
                f"seq {head + 1} missing: the ledger ends at seq {head}, but the newest anchor this "
                f"database remembers (seq {seen.seq}, {seen.time}) vouches for seq {seen.seq} (tail truncated)",
            )
    return ChainBreak(
        seen.seq,
        f"seq {seen.seq}: entry_hash differs from the newest anchor this database remembers "
        f"({seen.time}): the ledger was rewritten at or before seq {seen.seq}",
    )


# -- the entry point ---------------------------------------------------------------------


def verify_ledger(
    db: Database,
    *,
    check_runs: bool = True,
    check_blobs: bool = True,
    check_blob_refs: bool = True,
    anchors: Sequence[Anchor] = (),
    keyring: Keyring | None = None,
) -> VerifyReport:
    """Verify the audit ledger of ``db``: the hash chain, its rules, blobs, runs and anchors.

    What this proves: **without an anchor, the ledger is internally consistent
    up to seq N** (``last_seq``): rows 1..N exist, in order, unedited, chained,
    from this ledger, with runs contiguous. It cannot detect a truncated tail
    or a rewrite that recomputed every hash after some point (AUDIT.md: both
    need an anchor). **With anchors**, each must match the row at its seq;
    then rows 1..S (S = ``anchored_seq``, the newest anchor) are exactly the
    rows that existed when that anchor was taken, and only rows after S are
    merely internally consistent. An anchor whose seq is beyond the ledger's
    head reveals a truncated tail; one whose ``entry_hash`` differs reveals a
    rewrite at or before its seq. Without anchors given, the newest anchor
    the database remembers is checked the same way (it lives in the
    database, so it catches only an insider who forgot it, and a match
    proves nothing). The newest anchor given must not be older
    than an anchor already seen (``statecraft_meta`` ``anchor.newest``, or
    a verified ``ledger.anchored`` event): an insider who rewrote the tail
    would otherwise present an anchor from before the rewrite. The module
    docstring lists every other check.

    Read-only: one read transaction, so the chain, ``statecraft_meta``, the
    ``blob`` and ``run`` tables are one consistent snapshot (SQLite WAL). On
    a SQLite file and more than one CPU, the blobs are hashed on a second
    connection in a thread beside the walk, only once it is proven to read
    that same snapshot (:class:`BlobScanBeside`); otherwise after the walk.
    Streams rows; memory grows with the number of runs, not of events. To
    remember the anchors verified, call
    :func:`statecraft.audit.anchor.remember_anchor` afterwards.

    Args:
        db: the database to verify.
        check_runs: also fold each run's events and compare with its ``run``
            row (skipped when the chain itself fails).
        check_blobs: also check every stored blob's body against its
            SHA-256, and that a body removed (NULL) was redacted by a
            verified ``payload.redacted`` event (of an event that references
            it). SOC 2 PI1.5: inputs and outputs retrievable and intact.
        check_blob_refs: also check that every blob an event references
            (``input_sha256``, ``output_sha256``, ``state_sha256``) is
            stored, which catches a deleted blob row (one index probe per
            reference; ``audit verify --no-blob-refs`` skips it).
        anchors: anchors read from outside the database (see
            :mod:`statecraft.audit.anchor`), any order.
        keyring: also check every approval's signature against it
            (statecraft/audit/signatures.py); ``signatures_checked`` then
            counts the signed approvals verified.

    Returns:
        A :class:`VerifyReport`; ``ok`` is False, with ``first_bad_seq`` and
        a one-line ``reason``, when any check fails. Tampering is reported,
        not raised.

    Raises:
        StoreError: the database is closed.
        LedgerError: the ledger cannot be queried at all (e.g. a column or
            table was dropped); a database error, converted here.
    """
    beside: BlobScanBeside | None = None
    with db.read() as conn:
        try:
            if check_blobs and reads.is_sqlite(conn) and BlobScanBeside.wanted(db):
                beside = BlobScanBeside(db)
            ledger_id = reads.meta_ledger_id(conn)  # the first read: this snapshot begins
            if beside is not None:
                if beside.pinned():
                    beside.start(check_blob_refs)
                else:  # a commit came in between: hash the blobs here, after the walk
                    beside.close()
                    beside = None
            duplicates = reads.duplicate_event_ids(conn)
            walk = ChainWalk(ledger_id, duplicates)
            failure: ChainBreak | None = None
            try:
                if reads.is_sqlite(conn):
                    _stream_sqlite(conn, walk)
                else:
                    _stream_other(conn, walk)
            except ChainBreak as exc:
                if exc.seq is None:
                    exc = ChainBreak(walk.last_seq + 1, exc.reason)
                failure = _diagnose_prev_hash(conn, exc) if exc.broken_link else exc
            if failure is None and walk.checked == 0:
                failure = ChainBreak(1, "seq 1 missing (the ledger has no genesis event)")
            redaction = walk.unauthorised_redaction(
                failure.seq if failure is not None else None, _authorised_later(conn)
            )
            if redaction is not None:
                failure = redaction
            redactions, authorised_blobs = _redaction_targets(conn, walk)
            if check_blobs:
                if beside is not None:
                    facts = beside.facts()
                else:
                    facts = blob_facts(
                        reads.blob_rows(conn),
                        (lambda: reads.first_missing_blob_ref(conn)) if check_blob_refs else None,
                    )
                failure = _earliest(failure, _check_blobs(conn, walk, authorised_blobs, facts))
            anchored: Anchor | None = None
            if anchors:
                anchor_failure, anchored = _check_anchors(conn, ledger_id, anchors, walk)
                failure = _earliest(failure, anchor_failure)
            else:
                failure = _earliest(failure, _check_remembered(conn, ledger_id))
            signatures = None if keyring is None else check_signatures(conn, keyring)
            if signatures is not None and signatures.first_bad_seq is not None:
                failure = _earliest(failure, ChainBreak(signatures.first_bad_seq, str(signatures.reason)))
            run_failure = None
            if failure is None and check_runs:
                run_failure = _check_runs(conn, walk.runs)
            warnings = _guard_warnings(conn)
        except (sqlite3.Error, DBAPIError) as exc:
            raise LedgerError(f"cannot read the audit ledger: {exc}") from exc
        finally:
            if beside is not None:
                beside.close()
    bad = None if failure is None else failure.seq
    last = walk.last_seq if bad is None else min(walk.last_seq, bad - 1)
    if anchored is not None and anchored.seq > last:
        anchored = None
    common: dict[str, Any] = {
        "events_checked": walk.checked,
        "ledger_id": ledger_id,
        "anchored_seq": None if anchored is None else anchored.seq,
        "anchor_time": None if anchored is None else anchored.time,
        "warnings": warnings,
        "signatures_checked": None if signatures is None else signatures.signed,
    }
    # Authorising events were all verified by the walk (it stops at a broken
    # link); list the redactions of the verified prefix.
    common["redacted_seqs"] = tuple(sorted(p[0] for p in walk.redacted if p[0] <= last))
    common["redactions"] = tuple(p for p in redactions if p[0] <= last)
    if failure is not None:
        return VerifyReport(ok=False, last_seq=last, first_bad_seq=bad, reason=failure.reason, **common)
    if run_failure is not None:
        return VerifyReport(
            ok=False, last_seq=walk.last_seq, first_bad_seq=run_failure.seq, reason=run_failure.reason,
            **common,
        )
    return VerifyReport(ok=True, last_seq=walk.last_seq, **common)


def _guard_warnings(conn: Connection) -> tuple[str, ...]:
    """One warning per guard trigger missing from the ledger (SQLite; store/db.py creates them)."""
    from ..store.db import GUARD_TRIGGERS

    if not reads.is_sqlite(conn):
        return ()  # PostgreSQL's guards are created with the schema; their report is SQLite's for now
    present = reads.trigger_names(conn)
    return tuple(
        f"guard trigger {name} is missing: the database no longer refuses "
        f"{what} on audit_event (someone with write access dropped it; the chain check above "
        "says whether rows were changed)"
        for name, what in GUARD_TRIGGERS.items()
        if name not in present
    )


def _earliest(a: ChainBreak | None, b: ChainBreak | None) -> ChainBreak | None:
    """The failure at the lower seq; one without a seq (not about a row) loses to one with."""
    if a is None or b is None:
        return a or b
    return a if (a.seq is None, a.seq or 0) <= (b.seq is None, b.seq or 0) else b
