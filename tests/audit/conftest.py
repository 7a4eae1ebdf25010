"""Fixtures for the audit tests: real ledgers on disk, and an insider to tamper with them.

A ledger is built the way the engine writes one: each event is appended with
``chain.append_event`` in its own write transaction, together with the
matching change to the ``run`` row, so that an untouched ledger verifies with
``check_runs``. Convention (statecraft/audit/verify.py): every event with a
``run_id`` records the run's status, step and state hash *after* the event.

The default ledger (``ledger`` fixture) has 3 runs of 3 steps, interleaved
round-robin after the genesis event, 16 events in all::

    seq  1        ledger.genesis
    seq  2, 3, 4  run.started      run-0, run-1, run-2   (run_seq 1)
    seq  5, 6, 7  step.completed   run-0, run-1, run-2   (run_seq 2)
    seq  8 .. 13  step.completed                          (run_seq 3, 4)
    seq 14,15,16  run.completed run-0, run.failed run-1, run.completed run-2 (run_seq 5)

Every event carries a payload; the state after each event, and each step's
input and output, are stored as blobs (``state_body``, ``blob_body``).
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, update

from statecraft._time import format_utc
from statecraft.audit.chain import ALL_COLUMNS, append_event, compute_entry_hash
from statecraft.store.blobs import put_blob
from statecraft.store.db import Database
from statecraft.store.tables import AuditEventRow, RunRow

GUARD_TRIGGERS = (
    "audit_event_no_update",
    "audit_event_no_delete",
    "audit_event_no_replace",
    "audit_event_payload_redaction_only",
)
_T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
_MACHINE_DIGEST = hashlib.sha256(b"machine:review:1").hexdigest()


def state_hash(run_id: str, run_seq: int) -> str:
    """A deterministic stand-in for the hash of a run's state after ``run_seq``."""
    return hashlib.sha256(state_body(run_id, run_seq)).hexdigest()


def state_body(run_id: str, run_seq: int) -> bytes:
    """The stored body (blob) of that state."""
    return f'{{"state":"{run_id}:{run_seq}"}}'.encode()


def blob_body(kind: str, run_id: str, run_seq: int) -> bytes:
    """The stored body of a step's input (``kind`` "in") or output ("out")."""
    return f'{{"{kind}":"{run_id}:{run_seq}","who":"naïve ✓"}}'.encode()


@dataclass
class Ledger:
    """A ledger built on disk, and what it should verify to."""

    path: Path
    ledger_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    """Every event as appended, index ``seq - 1`` (genesis included)."""
    runs: dict[str, tuple[str, str | None, str, int]] = field(default_factory=dict)
    """``run_id -> (status, step, state_sha256, run_seq)`` after the last event."""

    @property
    def head(self) -> int:
        return len(self.rows)

    def row(self, seq: int) -> dict[str, Any]:
        return self.rows[seq - 1]

    def open(self) -> Database:
        return Database(self.path, create=False, synchronous="NORMAL")


def _event_fields(
    run_id: str, run_seq: int, event_type: str, from_status: str, to_status: str,
    from_step: str | None, to_step: str | None, at: datetime,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "event_type": event_type,
        "run_id": run_id,
        "run_seq": run_seq,
        "machine_name": "review",
        "machine_version": "1",
        "machine_digest": _MACHINE_DIGEST,
        "from_status": from_status,
        "to_status": to_status,
        "from_step": from_step,
        "to_step": to_step,
        "occurred_at": format_utc(at),
        "state_sha256": state_hash(run_id, run_seq),
    }
    if event_type == "run.started":
        # Escaping stress in a hashed column: quotes, backslash, controls, non-ASCII, emoji.
        fields.update(
            actor_type="human", actor_id="user:ops-1", reason='ticket 42: "naïve" \\ \t\x01 ✓ 🚀'
        )
    elif event_type == "step.completed":
        fields.update(
            actor_type="agent",
            actor_id="agent:drafter",
            agent_name="drafter",
            agent_version="3",
            prompt_version="p7",
            model_provider="anthropic",
            model_id="claude-test",
            tokens_in=1200 + run_seq,
            tokens_out=300,
            cost_micros=4_500,
            latency_ms=850,
            attempt=1,
            outcome="success",
            input_sha256=hashlib.sha256(blob_body("in", run_id, run_seq)).hexdigest(),
            output_sha256=hashlib.sha256(blob_body("out", run_id, run_seq)).hexdigest(),
        )
    else:
        fields.update(
            actor_type="system",
            actor_id="statecraft",
            outcome="failure" if to_status == "FAILED" else "success",
            error_code="budget_exceeded" if to_status == "FAILED" else None,
            reason="budget of 10000 micro-USD exceeded" if to_status == "FAILED" else "finished",
        )
    return fields


def build_ledger(path: Path, *, runs: int = 3, steps: int = 3) -> Ledger:
    """Build a ledger of ``runs`` interleaved runs of ``steps`` steps each at ``path``.

    One write transaction per event, holding the event and its run-row change.
    """
    db = Database(path, synchronous="NORMAL")
    try:
        with db.read() as conn:
            events = AuditEventRow.__table__  # type: ignore[attr-defined]
            genesis = dict(
                conn.execute(events.select().where(events.c.seq == 1)).mappings().one()
            )
        ledger = Ledger(path=Path(path), ledger_id=db.ledger_id, rows=[genesis])
        run_ids = [f"run-{i}" for i in range(runs)]
        clock = iter(_T0 + timedelta(seconds=i) for i in range(1_000_000))
        usage: dict[str, list[int]] = {}
        # round 0: start; rounds 1..steps: steps; last round: finish (run-1 fails).
        for round_no in range(steps + 2):
            for i, run_id in enumerate(run_ids):
                run_seq = round_no + 1
                at = next(clock)
                if round_no == 0:
                    f = _event_fields(run_id, 1, "run.started", "IDLE", "RUNNING", None, "step1", at)
                elif round_no <= steps:
                    nxt = f"step{round_no + 1}" if round_no < steps else f"step{steps}"
                    f = _event_fields(
                        run_id, run_seq, "step.completed", "RUNNING", "RUNNING",
                        f"step{round_no}", nxt, at,
                    )
                else:
                    failed = i == 1
                    f = _event_fields(
                        run_id, run_seq, "run.failed" if failed else "run.completed",
                        "RUNNING", "FAILED" if failed else "DONE",
                        f"step{steps}", f"step{steps}", at,
                    )
                payload = {"note": f"{f['event_type']} of {run_id}", "run_seq": run_seq,
                           "text": "naïve \"quote\" \\ tab\t ✓ 🚀"}
                with db.write() as conn:
                    bodies = [state_body(run_id, run_seq)]
                    if f["event_type"] == "step.completed":
                        bodies += [blob_body("in", run_id, run_seq), blob_body("out", run_id, run_seq)]
                    for body in bodies:
                        put_blob(conn, body, created_at=f["occurred_at"])
                    row = append_event(conn, ledger_id=db.ledger_id, fields=f, payload=payload)
                    totals = usage.setdefault(run_id, [0, 0, 0])
                    for k, column in enumerate(("tokens_in", "tokens_out", "cost_micros")):
                        totals[k] += f.get(column) or 0
                    failed_now = f["to_status"] == "FAILED"
                    values = {
                        "status": f["to_status"],
                        "step": f["to_step"],
                        "state_sha256": f["state_sha256"],
                        "run_seq": run_seq,
                        "updated_at": f["occurred_at"],
                        "last_event_id": row["event_id"],
                        # As the engine keeps them: the run row's reviewer-facing columns fold from its events.
                        "tokens_in": totals[0],
                        "tokens_out": totals[1],
                        "cost_micros": totals[2],
                        "error_code": f.get("error_code") if failed_now else None,
                        "reason": f.get("reason") if failed_now else None,
                    }
                    if round_no == 0:
                        conn.execute(
                            insert(RunRow.__table__),  # type: ignore[attr-defined]
                            {
                                "run_id": run_id,
                                "machine_name": "review",
                                "machine_version": "1",
                                "machine_digest": _MACHINE_DIGEST,
                                "task_sha256": hashlib.sha256(run_id.encode()).hexdigest(),
                                "created_at": f["occurred_at"],
                                "started_by": "user:ops-1",
                                **values,
                            },
                        )
                    else:
                        conn.execute(
                            update(RunRow.__table__)  # type: ignore[attr-defined]
                            .where(RunRow.__table__.c.run_id == run_id),  # type: ignore[attr-defined]
                            values,
                        )
                ledger.rows.append(row)
                ledger.runs[run_id] = (f["to_status"], f["to_step"], f["state_sha256"], run_seq)
        return ledger
    finally:
        db.close()


def append_redaction(ledger, target_seq: int) -> int:
    """Append a lawful ``payload.redacted`` event for ``target_seq``; return its seq."""
    db = ledger.open()
    try:
        with db.write() as conn:
            row = append_event(
                conn,
                ledger_id=db.ledger_id,
                fields={
                    "event_type": "payload.redacted",
                    "actor_type": "human",
                    "actor_id": "user:dpo",
                    "occurred_at": format_utc(datetime(2025, 3, 2, tzinfo=UTC)),
                    "reason": "GDPR Art. 17 erasure request 2025-17",
                    "caused_by_event_id": ledger.row(target_seq)["event_id"],
                },
            )
        return int(row["seq"])
    finally:
        db.close()


class Insider:
    """Someone with write access to the database file, using the stdlib ``sqlite3``.

    Each method is one committed change, made the way a person at a
    ``sqlite3`` prompt would make it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> None:
        with self.connect() as conn:
            conn.execute(sql, params)
        conn.close()

    def drop_guards(self) -> None:
        """Drop the append-only triggers (guard rails, not evidence: AUDIT.md)."""
        conn = self.connect()
        for name in GUARD_TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        conn.close()

    def row(self, seq: int) -> dict[str, Any]:
        conn = self.connect()
        found = conn.execute("SELECT * FROM audit_event WHERE seq = ?", (seq,)).fetchone()
        conn.close()
        assert found is not None, f"no row at seq {seq}"
        return dict(found)

    def insert(self, row: dict[str, Any], *, verb: str = "INSERT") -> None:
        cols = [c for c in ALL_COLUMNS if c in row]
        self.execute(
            f"{verb} INTO audit_event ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
            tuple(row[c] for c in cols),
        )

    def forge(self, template: dict[str, Any], *, seq: int, prev_hash: str, **changes: Any) -> dict[str, Any]:
        """A new row copied from ``template`` with ``changes``, correctly hashed."""
        row = dict(template)
        row.update(changes, seq=seq, prev_hash=prev_hash)
        row["entry_hash"] = compute_entry_hash(row)
        return row

    def shift_up(self, from_seq: int) -> None:
        """Renumber rows ``seq >= from_seq`` to ``seq + 1`` (making a gap at ``from_seq``)."""
        conn = self.connect()
        seqs = [r[0] for r in conn.execute(
            "SELECT seq FROM audit_event WHERE seq >= ? ORDER BY seq DESC", (from_seq,)
        )]
        conn.execute("BEGIN")
        for s in seqs:
            conn.execute("UPDATE audit_event SET seq = ? WHERE seq = ?", (s + 1, s))
        conn.execute("COMMIT")
        conn.close()

    def rehash_from(self, seq: int) -> None:
        """Recompute ``entry_hash`` and ``prev_hash`` of every row from ``seq`` to the head."""
        conn = self.connect()
        prev = conn.execute(
            "SELECT entry_hash FROM audit_event WHERE seq = ?", (seq - 1,)
        ).fetchone()[0]
        rows = [dict(r) for r in conn.execute(
            "SELECT * FROM audit_event WHERE seq >= ? ORDER BY seq", (seq,)
        )]
        conn.execute("BEGIN")
        for r in rows:
            r["prev_hash"] = prev
            r["entry_hash"] = prev = compute_entry_hash(r)
            conn.execute(
                "UPDATE audit_event SET prev_hash = ?, entry_hash = ? WHERE seq = ?",
                (r["prev_hash"], r["entry_hash"], r["seq"]),
            )
        conn.execute("COMMIT")
        conn.close()

    def refold_runs(self) -> None:
        """Set every run row to the fold of its remaining events (what a careful insider does after a cut)."""
        self.execute(
            "UPDATE run SET (status, step, state_sha256, run_seq, updated_at, error_code, reason) = ("
            "  SELECT to_status, to_step, state_sha256, run_seq, occurred_at,"
            "         CASE WHEN to_status = 'FAILED' THEN error_code END,"
            "         CASE WHEN to_status = 'FAILED' THEN reason END"
            "  FROM audit_event e WHERE e.run_id = run.run_id ORDER BY run_seq DESC LIMIT 1)"
        )
        self.execute(
            "UPDATE run SET (tokens_in, tokens_out, cost_micros) = ("
            "  SELECT COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), COALESCE(SUM(cost_micros), 0)"
            "  FROM audit_event e WHERE e.run_id = run.run_id)"
        )

    def recreate_without(self, constraint: str) -> None:
        """Rebuild ``audit_event`` without the named UNIQUE constraint.

        SQLite cannot drop a table constraint, so an insider copies the rows
        into a table declared without it (the documented 12-step ALTER
        recipe); the triggers go with the old table.
        """
        self._rebuild(rf",\s*CONSTRAINT {constraint} UNIQUE \([^)]*\)", "")

    def rebuild_without_primary_key(self) -> None:
        """Rebuild ``audit_event`` with ``seq`` an ordinary column (and no UNIQUE constraints)."""
        self._rebuild(r"(?s),\s*PRIMARY KEY \(seq\).*\)\s*$", "\n)")

    def retype_column(self, column: str, declared_type: str) -> None:
        """Rebuild ``audit_event`` with ``column`` declared as ``declared_type``."""
        self._rebuild(rf"\b{column} VARCHAR\b|\b{column} INTEGER\b", f"{column} {declared_type}")

    def _rebuild(self, pattern: str, replacement: str) -> None:
        conn = self.connect()
        create_sql = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit_event'"
        ).fetchone()[0]
        index_sqls = [r[0] for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_event' "
            "AND sql IS NOT NULL"
        )]
        # Views over the table (e.g. ``checkpoint``) would stop the rename: set them aside.
        views = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'view' AND sql LIKE '%audit_event%'"
        ).fetchall()
        new_sql, n = re.subn(pattern, replacement, create_sql)
        assert n == 1, f"{pattern!r} not found in {create_sql}"
        conn.execute("BEGIN")
        for name, _sql in views:
            conn.execute(f"DROP VIEW {name}")
        conn.execute(new_sql.replace("CREATE TABLE audit_event", "CREATE TABLE audit_event_new", 1))
        conn.execute("INSERT INTO audit_event_new SELECT * FROM audit_event")
        conn.execute("DROP TABLE audit_event")
        conn.execute("ALTER TABLE audit_event_new RENAME TO audit_event")
        for sql in index_sqls:
            conn.execute(sql)
        for _name, sql in views:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.close()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """The default 16-event ledger (see the module docstring), closed, on disk."""
    return build_ledger(tmp_path / "ledger.db")


@pytest.fixture
def other_ledger(tmp_path: Path) -> Ledger:
    """A second, independent ledger of the same shape (another ``ledger_id``)."""
    return build_ledger(tmp_path / "other.db")


@pytest.fixture
def insider(ledger: Ledger) -> Insider:
    """An insider with write access to ``ledger``'s file."""
    return Insider(ledger.path)


@pytest.fixture
def other_insider(other_ledger: Ledger) -> Insider:
    """An insider with write access to ``other_ledger``'s file."""
    return Insider(other_ledger.path)


@pytest.fixture
def open_ledger(ledger: Ledger) -> Iterator[Database]:
    """``ledger`` opened as a statecraft ``Database``; closed afterwards."""
    db = ledger.open()
    yield db
    db.close()
