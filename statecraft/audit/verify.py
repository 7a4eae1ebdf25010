"""Verifying the audit ledger: recompute the chain, check every rule, fold the runs.

What a successful verify proves, and what it does not (AUDIT.md, "The hash
chain"): **without an anchor, verify proves that the ledger is internally
consistent up to seq N** (``VerifyReport.last_seq``). Every row from the
genesis event to seq N is present, in order, unedited, chained to its
predecessor, in one ledger, with each run's events contiguous. It cannot see a
truncated tail (rows after N removed), nor a full rewrite by someone who
recomputed every hash; both need an anchor exported outside the database.

Checks, in seq order, one streaming pass (the first failing check wins):

1. ``seq`` is contiguous from 1.
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

Then, with ``check_runs``, the runs are folded. Convention: every event that
carries a ``run_id`` records the run's status, step and state hash *after*
the event in ``to_status``, ``to_step`` and ``state_sha256``; so each run's
last event must equal its ``run`` row (``status``, ``step``,
``state_sha256``), and ``run.run_seq`` must equal that event's ``run_seq``
(DESIGN.md invariant 2). Every run row must have events and vice versa.

Speed: rows are streamed from a plain DB-API cursor in ``fetchmany`` batches
(no ORM rows, no per-row dicts), with the hashed columns selected in sorted
order so the canonical envelope is built by concatenation (see
:func:`_entry_hash_sorted`, proved equal to ``chain.compute_entry_hash`` in
tests/audit/test_canonical.py). bench/bench_verify.py measures it.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from json.encoder import encode_basestring
from typing import Any, Final, NamedTuple

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Connection, text

from ..store.db import Database
from .chain import (
    DOMAIN,
    GENESIS_PREV_HASH,
    HASH_ALG,
    HASHED_COLUMNS,
    LEDGER_SCHEMA_VERSION,
    compute_entry_hash,
)

__all__ = ["RunFold", "VerifyReport", "fold_runs", "verify_ledger"]

KNOWN_HASH_ALGS: Final = frozenset({HASH_ALG})
KNOWN_SCHEMA_VERSIONS: Final = frozenset({LEDGER_SCHEMA_VERSION})

_SORTED_HASHED: Final[tuple[str, ...]] = tuple(sorted(HASHED_COLUMNS))
_N_HASHED: Final = len(_SORTED_HASHED)
# Hashed columns first (sorted, as JCS orders an object's keys; all are ASCII
# so code-point order equals RFC 8785's UTF-16 order), then the two that are not.
_SCAN_COLUMNS: Final[tuple[str, ...]] = _SORTED_HASHED + ("entry_hash", "payload_json")
_SCAN_SQL: Final = f"SELECT {', '.join(_SCAN_COLUMNS)} FROM audit_event ORDER BY seq"
_SCAN_AFTER_SQL: Final = (
    f"SELECT {', '.join(_SCAN_COLUMNS)} FROM audit_event WHERE seq > ? ORDER BY seq"
)
_KEY_PREFIXES: Final[tuple[str, ...]] = tuple(f'"{c}":' for c in _SORTED_HASHED)
_BATCH: Final = 2000
_MAX_SAFE_INT: Final = 2**53 - 1


def _col(name: str) -> int:
    return _SCAN_COLUMNS.index(name)


_I_SEQ = _col("seq")
_I_LEDGER = _col("ledger_id")
_I_PREV = _col("prev_hash")
_I_ALG = _col("hash_alg")
_I_SCHEMA = _col("schema_version")
_I_EVENT_ID = _col("event_id")
_I_EVENT_TYPE = _col("event_type")
_I_RUN_ID = _col("run_id")
_I_RUN_SEQ = _col("run_seq")
_I_TO_STATUS = _col("to_status")
_I_TO_STEP = _col("to_step")
_I_STATE = _col("state_sha256")
_I_CAUSED_BY = _col("caused_by_event_id")
_I_PAYLOAD_SHA = _col("payload_sha256")
_I_ENTRY = _col("entry_hash")
_I_PAYLOAD = _col("payload_json")


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
    """

    model_config = ConfigDict(frozen=True)

    ok: bool
    events_checked: int
    last_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None
    ledger_id: str | None = None
    redacted_seqs: tuple[int, ...] = ()


class RunFold(NamedTuple):
    """A run as its audit events say it is after its last event."""

    status: str | None
    step: str | None
    state_sha256: str | None
    run_seq: int


class _Failure(Exception):
    """The first broken rule: raised inside the walk, turned into a report."""

    def __init__(self, seq: int | None, reason: str, *, broken_link: bool = False) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason
        self.broken_link = broken_link


class _NotPlain(Exception):
    """A value outside the fast path's domain (not str / None / safe int)."""


def _encode_int(value: Any) -> str:
    if value.__class__ is int and -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
        return str(value)
    raise _NotPlain


def _entry_hash_sorted(values: Sequence[Any]) -> str:
    """``chain.compute_entry_hash`` of a row given as hashed-column values in sorted order.

    For rows holding only ``str``, ``None`` and integers within ±(2**53 - 1)
    (everything SQLite returns for an untampered row) the JCS envelope is
    built by concatenating pre-encoded keys with values encoded exactly as
    ``json.dumps(ensure_ascii=False)`` encodes them (the same C string
    encoder; ``str(int)``); about three times faster than building a dict and
    serialising it. Anything else is delegated to ``compute_entry_hash``.

    Args:
        values: the values of ``sorted(HASHED_COLUMNS)``, in that order.

    Returns:
        64 lower-case hex characters.

    Raises:
        TypeError: a float or another value not allowed in hashed data.
        ValueError: an integer beyond ±(2**53 - 1), or an invalid string
            (``rfc8785.CanonicalizationError`` is a ``ValueError``).
    """
    try:
        parts = [
            prefix
            + (
                "null"
                if value is None
                else encode_basestring(value)
                if value.__class__ is str
                else _encode_int(value)
            )
            for prefix, value in zip(_KEY_PREFIXES, values)
        ]
    except _NotPlain:
        return compute_entry_hash(dict(zip(_SORTED_HASHED, values)))
    body = "{" + ",".join(parts) + "}"
    return hashlib.sha256(DOMAIN + body.encode("utf-8")).hexdigest()


class _Walk:
    """State of one streaming pass over the ledger, fed in batches."""

    def __init__(self, ledger_id: str | None, duplicate_event_ids: set[str]) -> None:
        self.ledger_id = ledger_id
        self.duplicate_event_ids = duplicate_event_ids
        self.seen_duplicates: dict[str, int] = {}
        self.last_seq = 0
        self.last_hash: str | None = None
        self.checked = 0
        # run_id -> (to_status, to_step, state_sha256, run_seq, seq) after its last event
        self.runs: dict[str, tuple[Any, Any, Any, int, int]] = {}
        # event_id -> seq of payloads removed but not (yet) authorised
        self.pending_redactions: dict[str, int] = {}
        self.redacted: list[int] = []

    def feed(self, rows: Sequence[Sequence[Any]]) -> None:
        """Check one batch of rows in seq order.

        Raises:
            _Failure: the first row that breaks a rule.
        """
        ledger_id = self.ledger_id
        runs = self.runs
        pending = self.pending_redactions
        duplicates = self.duplicate_event_ids
        last_seq = self.last_seq
        last_hash = self.last_hash
        checked = self.checked
        entry_hash_of = _entry_hash_sorted
        sha256 = hashlib.sha256
        n_hashed = _N_HASHED
        try:
            for row in rows:
                seq = row[_I_SEQ]
                checked += 1
                if seq != last_seq + 1:
                    raise _Failure(
                        last_seq + 1,
                        f"seq {last_seq + 1} missing (expected contiguous seq; next row has seq {seq})",
                    )
                if row[_I_LEDGER] != ledger_id:
                    raise _Failure(
                        seq,
                        f"seq {seq}: ledger_id differs (row spliced from another ledger): "
                        f"{row[_I_LEDGER]!r}, statecraft_meta has {ledger_id!r}",
                    )
                if row[_I_ALG] not in KNOWN_HASH_ALGS:
                    raise _Failure(seq, f"seq {seq}: unknown hash_alg {row[_I_ALG]!r}")
                if row[_I_SCHEMA] not in KNOWN_SCHEMA_VERSIONS:
                    raise _Failure(seq, f"seq {seq}: unknown schema_version {row[_I_SCHEMA]!r}")
                event_type = row[_I_EVENT_TYPE]
                if seq == 1:
                    if row[_I_PREV] != GENESIS_PREV_HASH:
                        raise _Failure(1, "seq 1: genesis prev_hash is not 64 zeros")
                    if event_type != "ledger.genesis":
                        raise _Failure(
                            1, f"seq 1: genesis event_type is {event_type!r}, not 'ledger.genesis'"
                        )
                else:
                    if row[_I_PREV] != last_hash:
                        raise _Failure(
                            seq,
                            f"seq {seq}: prev_hash does not match seq {last_seq}'s entry_hash",
                            broken_link=True,
                        )
                    if event_type == "ledger.genesis":
                        raise _Failure(seq, f"seq {seq}: a second ledger.genesis event")
                entry_hash = row[_I_ENTRY]
                try:
                    computed = entry_hash_of(row[:n_hashed])
                except (TypeError, ValueError) as exc:
                    raise _Failure(
                        seq, f"seq {seq}: a value cannot be hashed (row edited): {exc}"
                    ) from None
                if computed != entry_hash:
                    raise _Failure(seq, f"seq {seq}: entry_hash mismatch (row edited)")
                payload = row[_I_PAYLOAD]
                payload_sha = row[_I_PAYLOAD_SHA]
                if payload is not None:
                    if (
                        payload_sha is None
                        or payload.__class__ is not str
                        or sha256(payload.encode("utf-8")).hexdigest() != payload_sha
                    ):
                        raise _Failure(seq, f"seq {seq}: payload does not match payload_sha256")
                elif payload_sha is not None:
                    pending[row[_I_EVENT_ID]] = seq
                run_id = row[_I_RUN_ID]
                run_seq = row[_I_RUN_SEQ]
                if run_id is not None:
                    before = runs.get(run_id)
                    expected = 1 if before is None else before[3] + 1
                    if run_seq != expected:
                        raise _Failure(
                            seq, f"seq {seq}: run_seq {run_seq} of run {run_id}, expected {expected}"
                        )
                    runs[run_id] = (row[_I_TO_STATUS], row[_I_TO_STEP], row[_I_STATE], run_seq, seq)
                elif run_seq is not None:
                    raise _Failure(seq, f"seq {seq}: run_seq {run_seq} without a run_id")
                if duplicates:
                    event_id = row[_I_EVENT_ID]
                    if event_id in duplicates:
                        first = self.seen_duplicates.setdefault(event_id, seq)
                        if first != seq:
                            raise _Failure(
                                seq, f"seq {seq}: event_id {event_id} already used by seq {first}"
                            )
                if pending and event_type == "payload.redacted":
                    target = pending.pop(row[_I_CAUSED_BY], None)
                    if target is not None:
                        self.redacted.append(target)
                last_seq = seq
                last_hash = entry_hash
        finally:
            self.last_seq = last_seq
            self.last_hash = last_hash
            self.checked = checked

    def unauthorised_redaction(self, before_seq: int | None) -> _Failure | None:
        """The first payload removal no verified ``payload.redacted`` event authorises."""
        if not self.pending_redactions:
            return None
        seq = min(self.pending_redactions.values())
        if before_seq is not None and seq >= before_seq:
            return None
        return _Failure(seq, f"seq {seq}: payload removed without a payload.redacted event")


def _diagnose_prev_hash(conn: Connection, failure: _Failure) -> _Failure:
    """Add what the bad ``prev_hash`` points at (a fork, a reorder, nothing) to the reason."""
    prev_hash = conn.execute(
        text("SELECT prev_hash FROM audit_event WHERE seq = :s"), {"s": failure.seq}
    ).scalar()
    if prev_hash is None:
        return failure
    parent = conn.execute(
        text("SELECT seq FROM audit_event WHERE entry_hash = :h ORDER BY seq LIMIT 1"),
        {"h": prev_hash},
    ).scalar()
    if parent is None:
        note = "no row has that entry_hash"
    else:
        siblings = conn.execute(
            text(
                "SELECT seq FROM audit_event WHERE prev_hash = :h AND seq <> :s ORDER BY seq LIMIT 1"
            ),
            {"h": prev_hash, "s": failure.seq},
        ).scalar()
        if siblings is not None:
            note = f"fork: seq {siblings} and seq {failure.seq} both follow seq {parent}"
        elif parent >= failure.seq:
            note = f"it is seq {parent}'s entry_hash: rows reordered"
        else:
            note = f"it is seq {parent}'s entry_hash"
    return _Failure(failure.seq, f"{failure.reason} ({note})")


def _stream(conn: Connection, walk: _Walk) -> None:
    """Feed every row to ``walk`` in seq order.

    Raises:
        _Failure: from the walk, or a row the driver cannot read.
    """
    if conn.dialect.name == "sqlite":
        # A plain DB-API cursor: Core rows cost more than the hashing.
        cursor = conn.connection.cursor()
        try:
            try:
                cursor.execute(_SCAN_SQL)
                while rows := cursor.fetchmany(_BATCH):
                    walk.feed(rows)
            except sqlite3.Error:
                # A TEXT value that is not UTF-8 fails the whole fetchmany;
                # re-read one row at a time from the verified prefix to name it.
                cursor.execute(_SCAN_AFTER_SQL, (walk.last_seq,))
                while True:
                    try:
                        row = cursor.fetchone()
                    except sqlite3.Error as exc:
                        bad = conn.execute(
                            text("SELECT MIN(seq) FROM audit_event WHERE seq > :s"),
                            {"s": walk.last_seq},
                        ).scalar()
                        raise _Failure(bad, f"seq {bad}: row cannot be read (row edited): {exc}")
                    if row is None:
                        break
                    walk.feed([row])
        finally:
            cursor.close()
    else:
        result = conn.execution_options(stream_results=True).exec_driver_sql(_SCAN_SQL)
        for rows in result.partitions(_BATCH):
            walk.feed(rows)


def fold_runs(conn: Connection) -> dict[str, RunFold]:
    """Fold the audit events of every run into the run's current status.

    By convention every event with a ``run_id`` records the run's status, step
    and state hash *after* the event, so the fold is the run's event with the
    highest ``run_seq``. Read-only; does not verify the chain (use
    :func:`verify_ledger` for that).

    Args:
        conn: an open connection (any transaction state).

    Returns:
        ``{run_id: RunFold(status, step, state_sha256, run_seq)}``; a
        ``RunFold`` is a tuple, so it compares equal to a plain 4-tuple.
    """
    rows = conn.execute(
        text(
            "SELECT a.run_id, a.to_status, a.to_step, a.state_sha256, a.run_seq "
            "FROM audit_event a JOIN ("
            "  SELECT run_id, MAX(run_seq) AS last_run_seq FROM audit_event"
            "  WHERE run_id IS NOT NULL GROUP BY run_id"
            ") b ON a.run_id = b.run_id AND a.run_seq = b.last_run_seq"
        )
    ).all()
    return {r[0]: RunFold(r[1], r[2], r[3], r[4]) for r in rows}


def _describe(fields: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{f}={v}" for f, v in zip(fields, values))


def _check_runs(
    conn: Connection, runs: dict[str, tuple[Any, Any, Any, int, int]]
) -> _Failure | None:
    """Compare each run row with the fold of its events; the earliest problem wins."""
    run_rows = {
        r[0]: (r[1], r[2], r[3], r[4])
        for r in conn.execute(
            text("SELECT run_id, status, step, state_sha256, run_seq FROM run")
        ).all()
    }
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
            problems.append(
                (
                    last,
                    f"run {run_id}: run row says "
                    f"{_describe([names[i] for i in differ], [row[i] for i in differ])}, "
                    f"ledger says "
                    f"{_describe([names[i] for i in differ], [folded[i] for i in differ])} "
                    f"(seq {last})",
                )
            )
    if problems:
        return _Failure(*min(problems))
    if run_rows:
        run_id = min(run_rows)
        return _Failure(None, f"run {run_id}: run row has no events in the ledger")
    return None


def verify_ledger(db: Database, *, check_runs: bool = True) -> VerifyReport:
    """Verify the audit ledger of ``db``: the hash chain, its rules, and the runs.

    What this proves: **without an anchor, the ledger is internally consistent
    up to seq N** (``last_seq``): rows 1..N exist, in order, unedited, chained,
    from this ledger, runs contiguous. It cannot detect a truncated tail or a
    rewrite that recomputed every hash after some point (AUDIT.md: both need
    an anchor). The module docstring lists every check.

    Read-only: one read transaction, so the chain, ``statecraft_meta`` and
    the ``run`` table are one consistent snapshot (SQLite WAL). Streams rows;
    memory grows with the number of runs, not events.

    Args:
        db: the database to verify.
        check_runs: also fold each run's events and compare with its ``run``
            row (skipped when the chain itself fails).

    Returns:
        A :class:`VerifyReport`; ``ok`` is False with ``first_bad_seq`` and a
        one-line ``reason`` when any check fails. Tampering is reported, not
        raised.

    Raises:
        StoreError: the database is closed.
        sqlalchemy.exc.DBAPIError: the database cannot be read (e.g. a text
            column holds bytes that are not UTF-8).
    """
    with db.read() as conn:
        ledger_id = conn.execute(
            text("SELECT value FROM statecraft_meta WHERE key = 'ledger_id'")
        ).scalar()
        duplicates = {
            r[0]
            for r in conn.execute(
                text("SELECT event_id FROM audit_event GROUP BY event_id HAVING COUNT(*) > 1")
            )
        }
        walk = _Walk(ledger_id, duplicates)
        failure: _Failure | None = None
        try:
            _stream(conn, walk)
        except _Failure as exc:
            failure = _diagnose_prev_hash(conn, exc) if exc.broken_link else exc
        if failure is None and walk.checked == 0:
            failure = _Failure(1, "seq 1 missing (the ledger has no genesis event)")
        redaction = walk.unauthorised_redaction(failure.seq if failure is not None else None)
        if redaction is not None:
            failure = redaction
        if failure is not None:
            bad = failure.seq if failure.seq is not None else walk.last_seq + 1
            return VerifyReport(
                ok=False,
                events_checked=walk.checked,
                last_seq=min(walk.last_seq, bad - 1),
                first_bad_seq=bad,
                reason=failure.reason,
                ledger_id=ledger_id,
                redacted_seqs=tuple(sorted(s for s in walk.redacted if s < bad)),
            )
        if check_runs:
            run_failure = _check_runs(conn, walk.runs)
            if run_failure is not None:
                return VerifyReport(
                    ok=False,
                    events_checked=walk.checked,
                    last_seq=walk.last_seq,
                    first_bad_seq=run_failure.seq,
                    reason=run_failure.reason,
                    ledger_id=ledger_id,
                    redacted_seqs=tuple(sorted(walk.redacted)),
                )
        return VerifyReport(
            ok=True,
            events_checked=walk.checked,
            last_seq=walk.last_seq,
            ledger_id=ledger_id,
            redacted_seqs=tuple(sorted(walk.redacted)),
        )
