"""Appending to the audit ledger and reading its head: the statements, not the rules.

The rules of the chain (how a row is built and hashed) are
statecraft/audit/chain.py's; this module only stores and reads rows. An
append reads the head and inserts the next row in the caller's write
transaction, which holds the database's write lock (``BEGIN IMMEDIATE`` on
SQLite), so no other writer can append in between; the append guard (the
``audit_event_no_replace`` trigger on SQLite, ``audit_event_no_fork`` on
PostgreSQL: the next ``seq``, chained onto the ``entry_hash`` before it)
would make a racing writer fail rather than fork the chain (docs/audit.md).
"""

from __future__ import annotations

from typing import Any, Final, TypedDict, cast

from .txn import Tx

__all__ = [
    "AUDIT_COLUMNS",
    "AuditFields",
    "AuditRecord",
    "clear_blob_body",
    "clear_payload",
    "event_rows",
    "first_payload",
    "insert_event",
    "ledger_head",
    "set_meta",
]

AUDIT_COLUMNS: Final[tuple[str, ...]] = (
    "seq", "ledger_id", "prev_hash", "entry_hash", "hash_alg", "schema_version", "event_id", "run_id",
    "run_seq", "parent_run_id", "machine_name", "machine_version", "machine_digest", "event_type",
    "from_status", "to_status", "from_step", "to_step", "occurred_at", "recorded_at", "actor_type",
    "actor_id", "agent_name", "agent_version", "prompt_version", "decision", "outcome", "reason",
    "error_code", "model_provider", "model_id", "tokens_in", "tokens_out", "cost_micros", "latency_ms",
    "attempt", "input_sha256", "output_sha256", "state_sha256", "caused_by_event_id", "payload_json",
    "payload_sha256",
)
"""Every column of ``audit_event``, in table order."""


class AuditFields(TypedDict, total=False):
    """The columns of an audit event its writer supplies (``audit.chain.new_event_row`` adds the rest).

    A ``TypedDict``: a misspelled column in a writer's literal
    (``{"eror_code": …}``) is a type error under ``mypy --strict``, and at
    run time ``new_event_row`` refuses any key that is not a column, so
    nothing is ever silently neither stored nor hashed. docs/audit.md gives
    each column's meaning; times are stored UTC strings, money integer
    micro-USD, latency integer milliseconds.
    """

    event_id: str
    run_id: str | None
    run_seq: int | None
    parent_run_id: str | None
    machine_name: str | None
    machine_version: str | None
    machine_digest: str | None
    event_type: str
    from_status: str | None
    to_status: str | None
    from_step: str | None
    to_step: str | None
    occurred_at: str
    recorded_at: str
    actor_type: str
    actor_id: str
    agent_name: str | None
    agent_version: str | None
    prompt_version: str | None
    decision: str | None
    outcome: str | None
    reason: str | None
    error_code: str | None
    model_provider: str | None
    model_id: str | None
    tokens_in: int | None
    tokens_out: int | None
    cost_micros: int | None
    latency_ms: int | None
    attempt: int | None
    input_sha256: str | None
    output_sha256: str | None
    state_sha256: str | None
    caused_by_event_id: str | None


class AuditRecord(AuditFields, total=True):
    """One whole ``audit_event`` row, as appended and as read back: every column of :data:`AUDIT_COLUMNS`.

    The chain columns (``seq``, ``ledger_id``, ``prev_hash``, ``entry_hash``,
    ``hash_alg``, ``schema_version``) and the payload columns are made by
    ``audit.chain.new_event_row``; the writer's :class:`AuditFields` keys are
    all present too (``None`` where not given).
    """

    seq: int
    ledger_id: str
    prev_hash: str
    entry_hash: str
    hash_alg: str
    schema_version: int
    payload_json: str | None
    payload_sha256: str | None

_HEAD: Final = "SELECT seq, entry_hash FROM audit_event ORDER BY seq DESC LIMIT 1"
_INSERT: Final = (
    f"INSERT INTO audit_event ({', '.join(AUDIT_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in AUDIT_COLUMNS)})"
)


def ledger_head(tx: Tx) -> tuple[int, str] | None:
    """``(seq, entry_hash)`` of the newest row; ``None`` for an empty ledger. Read it under the write lock."""
    row = tx.one(_HEAD)
    return None if row is None else (int(row[0]), str(row[1]))


def insert_event(tx: Tx, row: AuditRecord) -> None:
    """Insert one complete row (every column of :data:`AUDIT_COLUMNS`), built by ``chain.new_event_row``."""
    tx.run(_INSERT, row)


def clear_payload(conn: Any, seq: int) -> None:
    """Lawful redaction: set the event's ``payload_json`` to NULL (a guard trigger admits only this change)."""
    from sqlalchemy import text

    conn.execute(text("UPDATE audit_event SET payload_json = NULL WHERE seq = :s"), {"s": seq})


def clear_blob_body(conn: Any, digest: str) -> None:
    """Lawful redaction: remove a blob's body; its hash stays for the events that name it."""
    from sqlalchemy import text

    conn.execute(text("UPDATE blob SET body = NULL WHERE sha256 = :h"), {"h": digest})


def set_meta(conn: Any, key: str, value: str) -> None:
    """Set ``statecraft_meta[key]`` (insert or replace the value)."""
    from sqlalchemy import text

    conn.execute(
        text("INSERT INTO statecraft_meta (key, value) VALUES (:k, :v) ON CONFLICT (key) DO UPDATE SET value = excluded.value"),
        {"k": key, "v": value},
    )


def event_rows(tx: Tx, run_id: str | None = None) -> list[AuditRecord]:
    """Every audit row, of one run or of the ledger, in ``seq`` order."""
    where, params = ("WHERE run_id = :run_id", {"run_id": run_id}) if run_id is not None else ("", {})
    rows = tx.all(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_event {where} ORDER BY seq", params)
    return [cast(AuditRecord, dict(zip(AUDIT_COLUMNS, r))) for r in rows]


def first_payload(tx: Tx, run_id: str) -> str | None:
    """The ``payload_json`` of the run's first event (``run.created``)."""
    row = tx.one("SELECT payload_json FROM audit_event WHERE run_id = :run_id AND run_seq = 1", {"run_id": run_id})
    return None if row is None else row[0]

