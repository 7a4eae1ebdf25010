"""The one place a run row changes: update the row and append its audit event.

Every transition is one call of :func:`write_transition` inside one write
transaction, and writes exactly one audit event; the sub-call events a step
records before its own (:func:`write_sub_calls`) are the same rows, with one
run row UPDATE for all of them. Every event of a run
records the run's status, step and state hash *after* it (``to_status``,
``to_step``, ``state_sha256``), so folding a run's events reproduces its row
(DESIGN.md invariant 2; ``statecraft.audit.verify.fold_runs``), and the event
is the run's checkpoint: ``checkpoint`` is a view over ``audit_event``
(statecraft/store/tables.py), committed with the event by construction.

The row UPDATE is conditional on the run's position (``run_seq``) and,
for steps an engine executed under a lease, on the lease owner: a writer
whose view of the run is stale (the run was cancelled, or another engine
took it over) changes nothing and gets :class:`RunMoved`, and its whole
transaction rolls back. That is the fence that makes a lease safe even
when its holder stalls past expiry (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Required, TypedDict, Unpack, cast

from .audit.chain import new_event_id, new_event_row
from .errors import RunError
from .lifecycle import RunStatus
from .store.ledger import AuditFields, AuditRecord, insert_event, ledger_head
from .store.runs import RUN_COLUMNS, RunRecord, RunUpdate, update_run
from .store.txn import Tx

__all__ = ["KEEP", "RUN_COLUMNS", "Change", "Committed", "Move", "RunMoved", "SubCall", "write_sub_calls", "write_transition"]




class _Keep:
    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final[Any] = _Keep()
"""Sentinel: leave this column as it is."""


class Change(TypedDict, total=False):
    """What a transition changes besides the run's place: :func:`write_transition`'s optional arguments (documented there)."""

    extra: AuditFields | None
    state_sha256: str | None
    pending: Mapping[str, Any] | None
    clear_pending: bool
    clear_error: bool
    release_lease: bool
    keep_lease: bool
    count_step: bool
    usage: tuple[int, int, int]
    fence_owner: str | None
    attempts: Any
    wake_at: Any
    takeovers: Any
    visits_json: Any
    budget_json: Any


class Move(Change):
    """A transition's event and the run's place after it, plus :class:`Change`: :func:`write_transition`'s keyword arguments."""

    event_type: Required[str]
    to_status: Required[RunStatus]
    to_step: Required[str | None]
    actor_type: Required[str]
    actor_id: Required[str]
    now: Required[str]


class RunMoved(RunError):
    """The run is no longer where the writer saw it (position or lease owner changed); nothing was written."""


@dataclass(frozen=True)
class Committed:
    """What one transition wrote.

    Attributes:
        event: the audit row as inserted.
        run: the run row as it is after the transition (the caller's cache).
    """

    event: AuditRecord
    run: RunRecord


def write_transition(
    tx: Tx,
    ledger_id: str,
    run: RunRecord,
    *,
    payload: Any = None,
    **move: Unpack[Move],
) -> Committed:
    """Update the run row and append its audit event (the checkpoint). Inside ``tx``.

    Args:
        tx: the open write transaction.
        ledger_id: this database's ledger id.
        run: the run row as the caller saw it (all ``run`` columns).
        event_type, to_status, to_step, actor_type, actor_id, now: the event (required).
        extra: further audit columns (``decision``, ``reason``, usage, …).
        payload: JSON event detail (no floats), bound into the chain.
        state_sha256: the new state's hash; default: unchanged.
        pending: entering a gate: ``resume_at``, ``digest``, ``reason`` and
            optionally ``kind``, ``deadline_at``, ``on_timeout``.
        clear_pending: leaving a gate.
        clear_error: forget the run's last error (operator actions).
        release_lease: clear the lease (also implied by any status but RUNNING).
        keep_lease: never clear the lease (sub-call events, takeovers).
        count_step: one more committed step (``steps_taken``).
        usage: ``(tokens_in, tokens_out, cost_micros)`` to add to the run's totals.
        fence_owner: commit only if this engine still holds the lease.
        attempts, wake_at, takeovers: explicit values; by default they are
            kept while the run stays at the same status and step without
            committing a step, and reset (0 / NULL / 0) otherwise.
        visits_json, budget_json: explicit values; kept by default.

    Returns:
        The inserted event and the run row after the transition.

    Raises:
        RunMoved: the run's ``run_seq`` (or lease owner, with ``fence_owner``)
            is not what ``run`` says; nothing was written, and the caller
            must roll the transaction back (``write_tx`` does, as it
            propagates).
    """
    fields, values, after = _plan(run, **move)
    # Fenced UPDATE first: a stale writer learns it before hashing anything.
    _update(tx, values, run, move.get("fence_owner"))
    event = new_event_row(ledger_head(tx), ledger_id=ledger_id, fields=fields, payload=payload)
    insert_event(tx, event)
    return Committed(event, after)


@dataclass(frozen=True)
class SubCall:
    """One sub-call event for :func:`write_sub_calls` (an agent's model call, a fan-out branch's attempt).

    Attributes:
        event_type: e.g. ``agent.called``.
        actor_id: the agent that made the call.
        fields: its audit columns (``agent_name``, ``outcome``, usage, blob hashes, …).
        payload: JSON event detail (no floats), or ``None``.
        usage: ``(tokens_in, tokens_out, cost_micros)`` to add to the run's totals.
    """

    event_type: str
    actor_id: str
    fields: AuditFields
    payload: Any
    usage: tuple[int, int, int]


def write_sub_calls(
    tx: Tx, ledger_id: str, run: RunRecord, calls: Sequence[SubCall], *, now: str, fence_owner: str | None
) -> RunRecord:
    """Append one event per sub-call at the run's status and step, with one run row UPDATE for all. Inside ``tx``.

    The rows are exactly those of one :func:`write_transition` per call
    (``actor_type`` "agent", ``to_status``/``to_step`` unchanged, the lease
    kept, each call's usage added to the run's totals), in order; only the
    run row is written once, at the last call's position, and the ledger's
    head read once: a fan-out of 8 branches commits 1 UPDATE and 1 head
    read instead of 8 of each (issue #11).

    Returns:
        The run row after the calls (``run`` itself when there are none).

    Raises:
        RunMoved: as :func:`write_transition`; nothing was written.
    """
    if not calls:
        return run
    current = run
    planned: list[tuple[AuditFields, Any]] = []
    values: RunUpdate | None = None
    for call in calls:
        fields, values, current = _plan(
            current, event_type=call.event_type, to_status=RunStatus(current["status"]),
            to_step=current["step"], actor_type="agent", actor_id=call.actor_id, now=now,
            extra=call.fields, keep_lease=True, usage=call.usage, fence_owner=fence_owner,
        )
        planned.append((fields, call.payload))
    assert values is not None
    _update(tx, cast(RunUpdate, {**values, "expected_seq": run["run_seq"]}), run, fence_owner)
    head = ledger_head(tx)
    for fields, payload in planned:
        event = new_event_row(head, ledger_id=ledger_id, fields=fields, payload=payload)
        insert_event(tx, event)
        head = (event["seq"], event["entry_hash"])
    return current


def _update(tx: Tx, values: RunUpdate, run: RunRecord, fence_owner: str | None) -> None:
    """The run row UPDATE, fenced on ``run``'s position (and ``fence_owner``).

    Raises:
        RunMoved: the run is not where ``run`` says; nothing was written.
    """
    if not update_run(tx, values, fenced=fence_owner is not None):
        raise RunMoved(
            f"run {run['run_id']} moved on (expected run_seq {run['run_seq']}"
            + (f" under lease {fence_owner}" if fence_owner else "")
            + "); nothing written",
            run_id=run["run_id"],
        )


def _plan(run: RunRecord, **change: Unpack[Move]) -> tuple[AuditFields, RunUpdate, RunRecord]:
    """The event's columns, the run row UPDATE, and the run row after it; nothing written (:func:`write_transition`'s arguments)."""
    event_type, to_status, to_step = change["event_type"], change["to_status"], change["to_step"]
    actor_type, actor_id, now = change["actor_type"], change["actor_id"], change["now"]
    extra = change.get("extra")
    pending = change.get("pending")
    count_step = change.get("count_step", False)
    usage = change.get("usage", (0, 0, 0))
    attempts = change.get("attempts", KEEP)
    wake_at = change.get("wake_at", KEEP)
    takeovers = change.get("takeovers", KEEP)
    visits_json = change.get("visits_json", KEEP)
    budget_json = change.get("budget_json", KEEP)
    run_seq = run["run_seq"] + 1
    state_sha = change.get("state_sha256") or run["state_sha256"]
    event_id = new_event_id()
    fields: AuditFields = {
        "event_id": event_id,
        "run_id": run["run_id"],
        "run_seq": run_seq,
        "parent_run_id": run["parent_run_id"],
        "machine_name": run["machine_name"],
        "machine_version": run["machine_version"],
        "machine_digest": run["machine_digest"],
        "event_type": event_type,
        "from_status": run["status"] if run_seq > 1 else None,
        "to_status": str(to_status),
        "from_step": run["step"] if run_seq > 1 else None,
        "to_step": to_step,
        "occurred_at": now,
        "recorded_at": now,
        "actor_type": actor_type,
        "actor_id": actor_id,
        "state_sha256": state_sha,
    }
    if extra:
        fields.update(extra)
    same_place = to_status == run["status"] and to_step == run["step"] and not count_step
    release = (change.get("release_lease", False) or to_status != RunStatus.RUNNING) and not change.get("keep_lease", False)
    if pending is not None:
        gate: tuple[str | None, ...] = (
            pending["resume_at"], event_id, pending["digest"], pending["reason"],
            pending.get("kind"), pending.get("deadline_at"), pending.get("on_timeout"),
        )
    elif change.get("clear_pending", False):
        gate = (None,) * 7
    else:
        gate = (
            run["pending_resume_at"], run["pending_request_event_id"], run["pending_proposal_digest"],
            run["pending_reason"], run["pending_kind"], run["pending_deadline_at"], run["pending_on_timeout"],
        )
    if to_status == RunStatus.FAILED:
        error_code, reason = fields.get("error_code"), fields.get("reason")
    elif change.get("clear_error", False) or to_status == RunStatus.RUNNING and run["status"] != RunStatus.RUNNING:
        error_code = reason = None
    else:
        error_code, reason = run["error_code"], run["reason"]
    values: RunUpdate = {
        "run_id": run["run_id"],
        "expected_seq": run["run_seq"],
        "fence_owner": change.get("fence_owner"),
        "release": release,
        "status": str(to_status),
        "step": to_step,
        "state_sha256": state_sha,
        "run_seq": run_seq,
        "steps_taken": run["steps_taken"] + (1 if count_step else 0),
        "updated_at": now,
        "last_event_id": event_id,
        "tokens_in": run["tokens_in"] + usage[0],
        "tokens_out": run["tokens_out"] + usage[1],
        "cost_micros": run["cost_micros"] + usage[2],
        "attempts": (run["attempts"] if same_place else 0) if attempts is KEEP else attempts,
        "wake_at": (run["wake_at"] if same_place else None) if wake_at is KEEP else wake_at,
        "takeovers": (run["takeovers"] if same_place else 0) if takeovers is KEEP else takeovers,
        "visits_json": run["visits_json"] if visits_json is KEEP else visits_json,
        "budget_json": run["budget_json"] if budget_json is KEEP else budget_json,
        "pending_resume_at": gate[0],
        "pending_request_event_id": gate[1],
        "pending_proposal_digest": gate[2],
        "pending_reason": gate[3],
        "pending_kind": gate[4],
        "pending_deadline_at": gate[5],
        "pending_on_timeout": gate[6],
        "error_code": error_code,
        "reason": reason,
    }
    merged: dict[str, Any] = {**run, **values}
    for guard in ("expected_seq", "fence_owner", "release"):
        del merged[guard]  # the UPDATE's guards, not columns
    after = cast(RunRecord, merged)
    if release:
        after["lease_owner"] = after["lease_expires_at"] = None
    return fields, values, after


