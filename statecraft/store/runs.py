"""The ``run`` table: each run's current position, its lease, and the queries that find work.

Every statement about run rows lives here (the store owns all SQL, issue #10);
callers pass a :class:`~statecraft.store.txn.Tx` (an open transaction) and get
rows as ``{column: value}`` in :data:`RUN_COLUMNS`. Where SQL dialects
differ (SQLite's ``IS`` against PostgreSQL's ``IS NOT DISTINCT FROM``, row
locking when claiming work), the choice is made here, once.

The row is a cache of the ledger, not evidence: every change to it is made
together with the audit event that describes it (statecraft/transition.py),
except the lease columns, which only say which engine may commit next and
are checked on every commit (the fence).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, TypedDict, cast

from .txn import Tx

__all__ = [
    "RUN_COLUMNS",
    "RunRecord",
    "RunUpdate",
    "claim_free_runs",
    "due_approvals",
    "gate_approvers",
    "gate_request",
    "insert_run",
    "list_run_ids",
    "load_run",
    "release_all_leases",
    "release_lease",
    "renew_leases",
    "runnable_candidates",
    "running_since",
    "take_lease",
    "update_run",
]

RUN_COLUMNS: Final[tuple[str, ...]] = (
    "run_id", "machine_name", "machine_version", "machine_digest", "machine_ref", "status", "step",
    "state_sha256", "task_sha256", "run_seq", "steps_taken", "created_at", "updated_at", "started_by",
    "parent_run_id", "last_event_id", "pending_resume_at", "pending_request_event_id",
    "pending_proposal_digest", "pending_reason", "error_code", "reason", "tokens_in", "tokens_out",
    "cost_micros", "lease_owner", "lease_expires_at", "attempts", "wake_at", "visits_json",
    "budget_json", "takeovers", "pending_kind", "pending_deadline_at", "pending_on_timeout",
)
"""Every column of ``run`` that transitions read, in one order."""


class RunRecord(TypedDict):
    """One ``run`` row as the store hands it out: every column of :data:`RUN_COLUMNS`, typed.

    A ``TypedDict``, so a misspelled column (``run["stauts"]``) is a type
    error (``mypy --strict``, run in CI) and reading a row costs no more than
    a dict. Times are stored UTC strings (``_time.format_utc``); money is
    integer micro-USD; ``*_json`` columns hold canonical JSON text.
    """

    run_id: str
    machine_name: str
    machine_version: str
    machine_digest: str
    machine_ref: str | None
    status: str
    step: str | None
    state_sha256: str
    task_sha256: str
    run_seq: int
    steps_taken: int
    created_at: str
    updated_at: str
    started_by: str
    parent_run_id: str | None
    last_event_id: str | None
    pending_resume_at: str | None
    pending_request_event_id: str | None
    pending_proposal_digest: str | None
    pending_reason: str | None
    error_code: str | None
    reason: str | None
    tokens_in: int
    tokens_out: int
    cost_micros: int
    lease_owner: str | None
    lease_expires_at: str | None
    attempts: int
    wake_at: str | None
    visits_json: str | None
    budget_json: str | None
    takeovers: int
    pending_kind: str | None
    pending_deadline_at: str | None
    pending_on_timeout: str | None


class RunUpdate(TypedDict):
    """What :func:`update_run` writes: the row after a transition, and how to guard the write.

    ``expected_seq`` is the position the writer read (the UPDATE applies only
    there); ``release`` clears the lease; ``fence_owner`` (with ``fenced``)
    is the lease owner the commit requires. Lease columns are never written
    from a cached row (renewals happen outside transitions).
    """

    run_id: str
    expected_seq: int
    fence_owner: str | None
    release: bool
    status: str
    step: str | None
    state_sha256: str
    run_seq: int
    steps_taken: int
    updated_at: str
    last_event_id: str
    tokens_in: int
    tokens_out: int
    cost_micros: int
    attempts: int
    wake_at: str | None
    takeovers: int
    visits_json: str | None
    budget_json: str | None
    pending_resume_at: str | None
    pending_request_event_id: str | None
    pending_proposal_digest: str | None
    pending_reason: str | None
    pending_kind: str | None
    pending_deadline_at: str | None
    pending_on_timeout: str | None
    error_code: str | None
    reason: str | None

_SELECT: Final = f"SELECT {', '.join(RUN_COLUMNS)} FROM run WHERE run_id = :run_id"

_UPDATE: Final = (
    "UPDATE run SET status = :status, step = :step, state_sha256 = :state_sha256, "
    "run_seq = :run_seq, steps_taken = :steps_taken, updated_at = :updated_at, "
    "last_event_id = :last_event_id, pending_resume_at = :pending_resume_at, "
    "pending_request_event_id = :pending_request_event_id, "
    "pending_proposal_digest = :pending_proposal_digest, pending_reason = :pending_reason, "
    "error_code = :error_code, reason = :reason, tokens_in = :tokens_in, "
    "tokens_out = :tokens_out, cost_micros = :cost_micros, "
    # Lease columns are only ever cleared here; renewals happen outside
    # transitions, so writing back a cached expiry would undo one.
    "lease_owner = CASE WHEN :release THEN NULL ELSE lease_owner END, "
    "lease_expires_at = CASE WHEN :release THEN NULL ELSE lease_expires_at END, "
    "attempts = :attempts, wake_at = :wake_at, visits_json = :visits_json, "
    "budget_json = :budget_json, takeovers = :takeovers, pending_kind = :pending_kind, "
    "pending_deadline_at = :pending_deadline_at, pending_on_timeout = :pending_on_timeout "
    "WHERE run_id = :run_id AND run_seq = :expected_seq"
)
_FENCED: Final = _UPDATE + " AND lease_owner = :fence_owner"

_INSERT: Final = (
    "INSERT INTO run (run_id, machine_name, machine_version, machine_digest, "
    "machine_ref, status, step, state_sha256, task_sha256, run_seq, steps_taken, "
    "created_at, updated_at, started_by, parent_run_id, tokens_in, tokens_out, "
    "cost_micros) VALUES (:run_id, :machine_name, :machine_version, :machine_digest, :machine_ref, "
    "'IDLE', :step, :state_sha256, :task_sha256, 0, 0, :now, :now, :started_by, :parent_run_id, 0, 0, 0)"
)

# When the run last entered RUNNING (start, approval, retry): a deadline's origin.
_RUNNING_SINCE: Final = (
    "SELECT occurred_at FROM audit_event WHERE run_id = :run_id AND to_status = 'RUNNING' "
    "AND (from_status IS NULL OR from_status != 'RUNNING') ORDER BY run_seq DESC LIMIT 1"
)


def load_run(tx: Tx, run_id: str) -> RunRecord | None:
    """The run row (every column of :data:`RUN_COLUMNS`), or ``None``."""
    row = tx.one(_SELECT, {"run_id": run_id})
    return None if row is None else cast(RunRecord, dict(zip(RUN_COLUMNS, row)))


def insert_run(
    tx: Tx, *, run_id: str, machine_name: str, machine_version: str, machine_digest: str,
    machine_ref: str | None, step: str, state_sha256: str, task_sha256: str, now: str,
    started_by: str, parent_run_id: str | None,
) -> None:
    """Insert a new IDLE run at position 0 (its ``run.created`` event follows in the same transaction)."""
    tx.run(_INSERT, {
        "run_id": run_id, "machine_name": machine_name, "machine_version": machine_version,
        "machine_digest": machine_digest, "machine_ref": machine_ref, "step": step,
        "state_sha256": state_sha256, "task_sha256": task_sha256, "now": now,
        "started_by": started_by, "parent_run_id": parent_run_id,
    })


def update_run(tx: Tx, values: RunUpdate, *, fenced: bool) -> bool:
    """Write a transition's new run row, if the run is still where the writer saw it.

    ``values``: every column ``_UPDATE`` sets, plus the guards (:class:`RunUpdate`).

    Returns:
        Whether the row was updated (``False``: the run moved; nothing written).
    """
    return tx.run(_FENCED if fenced else _UPDATE, values) == 1


def take_lease(
    tx: Tx, run_id: str, *, owner: str, expires_at: str, run_seq: int, holder: str | None
) -> bool:
    """Give the lease to ``owner`` if it is still held by ``holder`` (``None``: free) at ``run_seq``."""
    same = "lease_owner IS :holder" if tx.sqlite else "lease_owner IS NOT DISTINCT FROM :holder"
    return tx.run(
        f"UPDATE run SET lease_owner = :me, lease_expires_at = :exp WHERE run_id = :run_id "
        f"AND run_seq = :seq AND {same}",
        {"me": owner, "exp": expires_at, "run_id": run_id, "seq": run_seq, "holder": holder},
    ) == 1


def release_lease(tx: Tx, run_id: str, owner: str) -> None:
    """Clear the run's lease if ``owner`` holds it."""
    tx.run(
        "UPDATE run SET lease_owner = NULL, lease_expires_at = NULL WHERE run_id = :run_id AND lease_owner = :me",
        {"run_id": run_id, "me": owner},
    )


def release_all_leases(tx: Tx, owner: str) -> int:
    """Clear every lease ``owner`` holds; how many."""
    return tx.run(
        "UPDATE run SET lease_owner = NULL, lease_expires_at = NULL WHERE lease_owner = :me", {"me": owner}
    )


def renew_leases(tx: Tx, owner: str, run_ids: Iterable[str], expires_at: str) -> set[str]:
    """Extend ``owner``'s leases on ``run_ids``; the ids it still holds (the others were taken)."""
    names = {f"r{i}": run_id for i, run_id in enumerate(run_ids)}
    if not names:
        return set()
    marks = ", ".join(f":{k}" for k in names)
    tx.run(
        f"UPDATE run SET lease_expires_at = :exp WHERE lease_owner = :me AND run_id IN ({marks})",
        {"exp": expires_at, "me": owner, **names},
    )
    return {r[0] for r in tx.all(
        f"SELECT run_id FROM run WHERE lease_owner = :me AND run_id IN ({marks})", {"me": owner, **names}
    )}


def runnable_candidates(tx: Tx, now: str, limit: int) -> list[tuple[str, str | None, str | None]]:
    """``(run_id, lease_owner, lease_expires_at)`` of RUNNING runs past any backoff, oldest change first."""
    return [(r[0], r[1], r[2]) for r in tx.all(
        "SELECT run_id, lease_owner, lease_expires_at FROM run WHERE status = 'RUNNING' "
        "AND (wake_at IS NULL OR wake_at <= :now) ORDER BY updated_at LIMIT :limit",
        {"now": now, "limit": limit},
    )]


def due_approvals(tx: Tx, now: str, run_id: str | None = None) -> list[str]:
    """Ids of waiting runs whose approval deadline has passed (only ``run_id``'s, if given)."""
    sql = (
        "SELECT run_id FROM run WHERE status = 'WAITING_FOR_APPROVAL' AND pending_deadline_at IS NOT NULL "
        "AND pending_deadline_at <= :now"
    )
    params: dict[str, Any] = {"now": now}
    if run_id is not None:
        sql += " AND run_id = :run_id"
        params["run_id"] = run_id
    return [r[0] for r in tx.all(sql, params)]


def running_since(tx: Tx, run_id: str) -> str | None:
    """When the run last entered RUNNING (start, approval, retry), from its audit events."""
    row = tx.one(_RUNNING_SINCE, {"run_id": run_id})
    return None if row is None else row[0]


def list_run_ids(
    tx: Tx,
    *,
    status: str | None,
    machine: str | None,
    limit: int,
    since: str | None = None,
    until: str | None = None,
    after: str | None = None,
) -> list[str]:
    """Run ids, newest first (creation time, then insertion order), filtered; at most ``limit``.

    Args:
        status, machine: only runs with this status / machine name.
        since, until: only runs created at or after ``since`` and before
            ``until`` (stored UTC times, ``_time.format_utc``).
        after: a page's last run id: only runs listed after it in this order
            (keyset paging; an id that does not exist gives no rows).
    """
    clauses, params = [], {"limit": int(limit)}
    for clause, key, value in (
        ("status = :status", "status", status),
        ("machine_name = :machine", "machine", machine),
        ("created_at >= :since", "since", since),
        ("created_at < :until", "until", until),
    ):
        if value is not None:
            clauses.append(clause)
            params[key] = value  # type: ignore[assignment]
    # SQLite's rowid is insertion order; PostgreSQL has none, run_id breaks the tie there.
    tie = "rowid" if tx.sqlite else "run_id"
    if after is not None:
        clauses.append(
            f"(created_at, {tie}) < (SELECT created_at, {tie} FROM run WHERE run_id = :after)"
        )
        params["after"] = after  # type: ignore[assignment]
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    return [r[0] for r in tx.all(
        f"SELECT run_id FROM run {where} ORDER BY created_at DESC, {tie} DESC LIMIT :limit", params
    )]


def run_ids_with_prefix(tx: Tx, prefix: str, limit: int) -> list[str]:
    """Ids of runs whose id starts with ``prefix`` (case as given), sorted; at most ``limit``."""
    return [r[0] for r in tx.all(
        "SELECT run_id FROM run WHERE substr(run_id, 1, :n) = :prefix ORDER BY run_id LIMIT :limit",
        {"n": len(prefix), "prefix": prefix, "limit": int(limit)},
    )]


def gate_request(tx: Tx, run_id: str, event_id: str) -> tuple[str, str | None] | None:
    """``(actor_id, output_sha256)`` of the ``approval.requested`` event a gate answers."""
    row = tx.one(
        "SELECT actor_id, output_sha256 FROM audit_event WHERE run_id = :run_id AND event_id = :event_id",
        {"run_id": run_id, "event_id": event_id},
    )
    return None if row is None else (str(row[0]), row[1])


def gate_approvers(tx: Tx, run_id: str, request_event_id: str) -> tuple[str, ...]:
    """Who approved the request so far (``approval.granted`` answering it), in order."""
    return tuple(row[0] for row in tx.all(
        "SELECT actor_id FROM audit_event WHERE run_id = :run_id "
        "AND event_type = 'approval.granted' AND caused_by_event_id = :event_id ORDER BY seq",
        {"run_id": run_id, "event_id": request_event_id},
    ))


def claim_free_runs(
    tx: Tx, *, owner: str, now: str, expires_at: str, limit: int, exclude: Iterable[str] = ()
) -> list[str]:
    """Lease up to ``limit`` RUNNING runs nobody holds, past any backoff, oldest change first; their ids.

    On PostgreSQL the candidates are locked ``FOR UPDATE SKIP LOCKED``, so
    workers on many hosts claim disjoint runs in one statement each, without
    waiting for one another. A run whose lease expired is not claimed here:
    taking it over is audited (``lease.taken_over``) when it is advanced.
    """
    names = {f"x{i}": run_id for i, run_id in enumerate(exclude)}
    skip = f" AND run_id NOT IN ({', '.join(':' + k for k in names)})" if names else ""
    lock = "" if tx.sqlite else " FOR UPDATE SKIP LOCKED"
    candidates = (
        "SELECT run_id FROM run WHERE status = 'RUNNING' AND lease_owner IS NULL "
        f"AND (wake_at IS NULL OR wake_at <= :now){skip} ORDER BY updated_at LIMIT :limit{lock}"
    )
    return [r[0] for r in tx.all(
        f"UPDATE run SET lease_owner = :me, lease_expires_at = :exp WHERE run_id IN ({candidates}) RETURNING run_id",
        {"me": owner, "exp": expires_at, "now": now, "limit": int(limit), **names},
    )]

