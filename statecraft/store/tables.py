"""The SQLModel tables. Private: callers get frozen views (``RunInfo``, ``AuditEvent``).

Column names are a public contract for reviewers' SQL (docs/audit.md): rename
nothing without a recorded migration. Stored times are UTC ISO-8601 strings of
fixed width (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) so they sort as text; money is
integer micro-USD; durations are integer milliseconds.
"""

from __future__ import annotations

from typing import Optional

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, UniqueConstraint, text
from sqlmodel import Field, SQLModel

__all__ = [
    "AuditEventRow",
    "BlobRow",
    "CHECKPOINT_VIEW",
    "CONTROL_TABLES",
    "CircuitBreakerRow",
    "MetaRow",
    "PromptDigestRow",
    "RateLimitBucketRow",
    "RunRow",
    "MigrationRow",
    "SessionEntryRow",
    "SideEffectRow",
]



# Usage totals and seqs can outgrow 32 bits on PostgreSQL (a run's cost in
# micro-USD passes 2**31 at $2,147). SQLite's INTEGER is 64-bit already, and
# its DDL text stays "INTEGER", so schemas created before this are unchanged.
_BIG = BigInteger().with_variant(Integer(), "sqlite")


class MigrationRow(SQLModel, table=True):
    """One schema migration applied to this database (statecraft/store/migrations.py)."""

    __tablename__ = "statecraft_migration"

    name: str = Field(primary_key=True)
    applied_at: str


class MetaRow(SQLModel, table=True):
    """Key/value facts about this database (schema version, ledger id)."""

    __tablename__ = "statecraft_meta"

    key: str = Field(primary_key=True)
    value: str


class RunRow(SQLModel, table=True):
    """One run: its lifecycle status, current step and checkpoint reference.

    ``step`` is the step the run executes next while RUNNING; the step that
    asked for approval while WAITING_FOR_APPROVAL (``pending_resume_at`` is
    where approval leads); the step that failed or finished otherwise.
    """

    __tablename__ = "run"
    __table_args__ = (
        Index("ix_run_status_updated", "status", "updated_at"),
        Index("ix_run_machine_created", "machine_name", "created_at"),
    )

    run_id: str = Field(primary_key=True)
    machine_name: str
    machine_version: str
    machine_digest: str
    machine_ref: Optional[str] = None
    status: str
    step: Optional[str] = None
    state_sha256: str
    task_sha256: str
    run_seq: int = 0
    steps_taken: int = 0
    created_at: str
    updated_at: str
    started_by: str
    parent_run_id: Optional[str] = None
    last_event_id: Optional[str] = None
    pending_resume_at: Optional[str] = None
    pending_request_event_id: Optional[str] = None
    pending_proposal_digest: Optional[str] = None
    pending_reason: Optional[str] = None
    error_code: Optional[str] = None
    reason: Optional[str] = None
    tokens_in: int = Field(default=0, sa_type=_BIG)
    tokens_out: int = Field(default=0, sa_type=_BIG)
    cost_micros: int = Field(default=0, sa_type=_BIG)
    lease_owner: Optional[str] = None
    lease_expires_at: Optional[str] = None
    # Reliability bookkeeping (docs/reliability.md); none of it is folded
    # from the ledger, every change to it is described by an audit event.
    # server_default: rows inserted by code that lists its columns get 0 too.
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # failed attempts at this step
    wake_at: Optional[str] = None  # next attempt not before (retry backoff)
    visits_json: Optional[str] = None  # {step: successful completions}
    budget_json: Optional[str] = None  # limits raised by approval (else the machine's)
    takeovers: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # since the last step (crash loops)
    pending_kind: Optional[str] = None  # "budget:<name>", "error" or NULL (agent / rule gate)
    pending_deadline_at: Optional[str] = None  # approval deadline of the pending gate
    pending_on_timeout: Optional[str] = None  # "fail" or "approve"


CHECKPOINT_VIEW = """CREATE VIEW checkpoint AS
    SELECT run_id, run_seq, to_status AS status, to_step AS step, state_sha256,
           occurred_at AS created_at
    FROM audit_event WHERE run_id IS NOT NULL"""
"""The committed state after each transition of each run; a resumed run continues from the last.

A view over ``audit_event``, not a table: every run event already records
the run's status, step and state hash *after* it, so a checkpoint is
committed atomically with its event by construction, and a step writes one
row (and its index pages) less. Rows: one per run event, keyed
``(run_id, run_seq)`` like the ledger's ``UNIQUE(run_id, run_seq)``.
"""


class BlobRow(SQLModel, table=True):
    """Content-addressed bodies (inputs, outputs, states), stored once by SHA-256.

    ``body`` is NULL after a lawful redaction; ``sha256`` stays, so audit events
    that reference it still verify.
    """

    __tablename__ = "blob"
    # SQLite: the key is the row (no rowid table beside a key index): ~130 bytes
    # less per blob, one B-tree less per insert (migration 0004, issue #11).
    __table_args__ = {"sqlite_with_rowid": False}

    sha256: str = Field(primary_key=True)
    body: Optional[bytes] = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    size: int
    media_type: str = "application/json"
    created_at: str


class SideEffectRow(SQLModel, table=True):
    """Results of ``ctx.once`` side effects, keyed by idempotency key."""

    __tablename__ = "side_effect"

    idempotency_key: str = Field(primary_key=True)
    run_id: str = Field(index=True)
    step: str
    name: str
    result_json: str
    created_at: str


class AuditEventRow(SQLModel, table=True):
    """One append-only, hash-chained audit event (AUDIT.md, "The table")."""

    __tablename__ = "audit_event"
    __table_args__ = (
        UniqueConstraint("run_id", "run_seq", name="uq_audit_run_seq"),
        UniqueConstraint("event_id", name="uq_audit_event_id"),
        # No UNIQUE(prev_hash) / UNIQUE(entry_hash) since migration 0004: the
        # audit_event_no_replace guard makes every insert take the next seq and
        # chain onto the entry_hash at seq - 1, so a fork still fails, without
        # two random-keyed B-trees per event (issue #11; docs/audit.md).
        Index("ix_audit_actor_time", "actor_id", "occurred_at"),
        Index("ix_audit_time", "occurred_at"),
        Index("ix_audit_type_time", "event_type", "occurred_at"),
        # Partial: an event without a model is never looked up by model.
        Index(
            "ix_audit_model_time", "model_id", "occurred_at",
            sqlite_where=text("model_id IS NOT NULL"), postgresql_where=text("model_id IS NOT NULL"),
        ),
    )

    seq: int = Field(primary_key=True, sa_type=_BIG, sa_column_kwargs={"autoincrement": False})
    ledger_id: str
    prev_hash: str
    entry_hash: str
    hash_alg: str
    schema_version: int
    event_id: str
    run_id: Optional[str] = None
    run_seq: Optional[int] = None
    parent_run_id: Optional[str] = None
    machine_name: Optional[str] = None
    machine_version: Optional[str] = None
    machine_digest: Optional[str] = None
    event_type: str
    from_status: Optional[str] = None
    to_status: Optional[str] = None
    from_step: Optional[str] = None
    to_step: Optional[str] = None
    occurred_at: str
    recorded_at: str
    actor_type: str
    actor_id: str
    agent_name: Optional[str] = None
    agent_version: Optional[str] = None
    prompt_version: Optional[str] = None
    decision: Optional[str] = None
    outcome: Optional[str] = None
    reason: Optional[str] = None
    error_code: Optional[str] = None
    model_provider: Optional[str] = None
    model_id: Optional[str] = None
    tokens_in: Optional[int] = Field(default=None, sa_type=_BIG)
    tokens_out: Optional[int] = Field(default=None, sa_type=_BIG)
    cost_micros: Optional[int] = Field(default=None, sa_type=_BIG)
    latency_ms: Optional[int] = None
    attempt: Optional[int] = None
    input_sha256: Optional[str] = None
    output_sha256: Optional[str] = None
    state_sha256: Optional[str] = None
    caused_by_event_id: Optional[str] = None
    payload_json: Optional[str] = None
    payload_sha256: Optional[str] = None


# -- controls in front of a model (statecraft/agents/limits.py, breaker.py, session.py) ----------
# Bookkeeping shared by every run and process on the database, not evidence:
# what they decide is audited in ``audit_event`` (docs/agents.md).


class RateLimitBucketRow(SQLModel, table=True):
    """One token bucket of a rate limit (statecraft/agents/limits.py), shared across processes.

    Levels are integer milli-units (1 request = 1000) and may be negative:
    a caller that reserves more than is left is told how long to wait, and
    the debt is what later callers wait for. ``updated_us``: when the levels
    were last refilled, microseconds since the Unix epoch.
    """

    __tablename__ = "rate_limit_bucket"

    key: str = Field(primary_key=True)
    request_level_milli: int = Field(default=0, sa_type=_BIG)
    token_level_milli: int = Field(default=0, sa_type=_BIG)
    updated_us: int = Field(sa_type=_BIG)


class CircuitBreakerRow(SQLModel, table=True):
    """One circuit breaker's state (statecraft/agents/breaker.py); changes are ledger events."""

    __tablename__ = "circuit_breaker"

    name: str = Field(primary_key=True)
    state: str  # closed | open | half_open
    failures: int = 0  # consecutive counted failures
    opened_at: Optional[str] = None
    probe_until: Optional[str] = None  # half_open: the probe call's lease
    last_error_code: Optional[str] = None
    updated_at: str


class PromptDigestRow(SQLModel, table=True):
    """Each prompt digest seen under an agent's prompt version: edits without a version bump show."""

    __tablename__ = "prompt_digest"

    agent_name: str = Field(primary_key=True)
    prompt_version: str = Field(primary_key=True)
    prompt_digest: str = Field(primary_key=True)
    first_seen_at: str
    first_run_id: Optional[str] = None


class SessionEntryRow(SQLModel, table=True):
    """One entry of a conversation kept across turns and runs (statecraft/agents/session.py).

    ``kind`` ``exchange``: a user message and the model's answer; ``summary``:
    stands for every entry up to ``covers_through`` (``summary_text`` NULL
    when they were dropped without a summary). ``entry_key`` is the writing
    step visit's idempotency key, so a retried step replaces its exchange
    instead of adding a second one.
    """

    __tablename__ = "session_entry"
    __table_args__ = (UniqueConstraint("entry_key", name="uq_session_entry_key"),)

    session_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    kind: str
    user_text: Optional[str] = None
    assistant_text: Optional[str] = None
    summary_text: Optional[str] = None
    covers_through: Optional[int] = None
    tokens: int = 0  # estimated tokens of the entry's text
    entry_key: str
    run_id: Optional[str] = None
    step: Optional[str] = None
    created_at: str


CONTROL_TABLES = (RateLimitBucketRow, CircuitBreakerRow, PromptDigestRow, SessionEntryRow)
"""Tables of the controls in front of a model; created with the schema (migration ``0003_model_controls``)."""
