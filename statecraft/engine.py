"""The engine: advances runs against a database, one audited transaction per transition.

How a step executes (DESIGN.md):

1. take the run's lease (conditional UPDATE; an expired lease may be taken over);
2. read the checkpoint, build the agent's view (declared ``reads``) and context
   (the run's original task, clock, idempotency keys);
3. call the agent outside any database transaction;
4. judge the outcome against the machine (declared edge, owned fields, schema);
5. in ONE transaction: update the run row, store the checkpoint, append the
   hash-chained audit event — the UPDATE is conditional on the lease and on
   the run's position (``run_seq``), so a step whose run changed meanwhile
   (cancelled, taken over) commits nothing;
6. repeat until a gate, a terminal status, or the lease is lost.

Operator actions (approve, reject, cancel, retry) are single transactions
that read, check (``lifecycle.check_transition``) and write under the write
lock; an illegal request raises ``IllegalTransition`` and writes nothing.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, text

from ._time import format_utc, utc_now
from .agents.base import RecordedCall, StepContext, Usage
from .audit.chain import append_event, canonical_json
from .errors import (
    ApprovalMismatch,
    LeaseHeld,
    MachineLoadError,
    MachineMismatch,
    RunError,
    RunNotFound,
    StatecraftError,
)
from .lifecycle import RunStatus, Trigger, check_transition
from .loader import canonical_ref, load_machine
from .machine import AppliedOutcome, IllegalOutcome, Machine
from .outcomes import Fail, Finish, Goto, RequestApproval
from .store.blobs import blob_json, get_blob, put_blob, sha256_hex
from .store.db import Database, Synchronous
from .views import AuditEvent, PendingApproval, RunInfo

__all__ = ["Engine", "StepReport", "proposal_digest"]

_RUN_COLUMNS = (
    "run_id, machine_name, machine_version, machine_digest, machine_ref, status, step, "
    "state_sha256, task_sha256, run_seq, steps_taken, created_at, updated_at, started_by, "
    "parent_run_id, last_event_id, pending_resume_at, pending_request_event_id, "
    "pending_proposal_digest, pending_reason, error_code, reason, tokens_in, tokens_out, "
    "cost_micros, lease_owner, lease_expires_at"
)
_SELECT_RUN = text(f"SELECT {_RUN_COLUMNS} FROM run WHERE run_id = :run_id")


@dataclass(frozen=True)
class StepReport:
    """What ``on_event`` callbacks receive after each committed transition.

    Attributes:
        run_id: the run.
        event_type: e.g. ``step.completed``, ``approval.requested``.
        from_step, to_step: the step before and after.
        status: the run status after the transition.
        latency_ms: the agent call's wall time (0 for operator actions).
        reason: the recorded reason, if any.
    """

    run_id: str
    event_type: str
    from_step: str | None
    to_step: str | None
    status: RunStatus
    latency_ms: int
    reason: str | None


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Engine:
    """Advances runs of machines against one statecraft database.

    A context manager; thread-safe for use from several threads (each unit of
    work opens its own connection). Several engines, in several processes,
    may share a database: leases keep one engine per run at a time.

    Args:
        db: database path or SQLAlchemy URL; ``None`` means ``$STATECRAFT_DB``
            or ``./statecraft.db``.
        synchronous: ``FULL`` (default, survives power loss) or ``NORMAL``.
        machines: machines this engine can advance without loading them by
            reference (services register theirs; the CLI loads by path).
        clock: returns the current aware UTC time; inject for deterministic tests.
        new_id: returns a fresh run id.
        owner: this engine's lease owner id (default ``host:pid:random``).
        lease: how long a lease lasts without renewal.

    Raises:
        NotAStatecraftDatabase, StoreError: the database cannot be used.
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | Database | None = None,
        *,
        synchronous: Synchronous = "FULL",
        machines: Iterable[Machine[Any]] = (),
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        owner: str | None = None,
        lease: timedelta = timedelta(seconds=60),
    ) -> None:
        self.db = db if isinstance(db, Database) else Database(db, synchronous=synchronous)
        self._clock = clock
        self._new_id = new_id
        self.owner = owner or _default_owner()
        self.lease = lease
        self._machines: dict[str, Machine[Any]] = {}
        for m in machines:
            self.register(m)

    # -- lifecycle of the engine ------------------------------------------------

    def close(self) -> None:
        """Close the database; later calls raise ``StoreError``."""
        self.db.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(self, machine: Machine[Any]) -> None:
        """Make ``machine`` available to advance runs recorded with its digest."""
        self._machines[machine.digest] = machine

    def _now(self) -> str:
        return format_utc(self._clock())

    # -- creating and starting runs ---------------------------------------------

    def create(
        self,
        machine: Machine[Any],
        input: Any = None,
        *,
        by: str = "service",
        actor_type: str = "service",
        ref: str | None = None,
        parent_run_id: str | None = None,
    ) -> RunInfo:
        """Create an IDLE run (audited as ``run.created``). Commits one transaction.

        Args:
            machine: the machine to run.
            input: the run's task: a mapping (validated as the initial state),
                a string (text task; the machine's ``initial`` builds the state),
                or a pydantic model of the machine's state.
            by: actor id of who creates the run.
            actor_type: ``human``, ``service``, ``agent`` or ``system``.
            ref: how to load the machine again (``path.py:attr``); recorded so
                that another process (the CLI, a worker) can continue the run.
            parent_run_id: the delegating run, for sub-runs.

        Raises:
            pydantic.ValidationError: the input does not fit the state model.
        """
        return self._create(machine, input, by, actor_type, ref, parent_run_id, start=False)

    def start(
        self,
        machine: Machine[Any],
        input: Any = None,
        *,
        by: str = "service",
        actor_type: str = "service",
        ref: str | None = None,
        parent_run_id: str | None = None,
        advance: bool = True,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """Create a run and start it (``run.created`` + ``run.started``, one transaction).

        With ``advance=True`` (default) the run is then advanced inline until
        it is DONE, FAILED or WAITING_FOR_APPROVAL.

        Returns:
            The run as it stands afterwards.

        Raises:
            pydantic.ValidationError: the input does not fit the state model.
        """
        info = self._create(machine, input, by, actor_type, ref, parent_run_id, start=True)
        if advance:
            info = self.advance(info.run_id, on_event=on_event)
        return info

    def _create(
        self,
        machine: Machine[Any],
        input: Any,
        by: str,
        actor_type: str,
        ref: str | None,
        parent_run_id: str | None,
        *,
        start: bool,
    ) -> RunInfo:
        self.register(machine)
        if isinstance(input, BaseModel):
            state = machine.state_model.model_validate(input.model_dump())
            task: Any = input.model_dump(mode="json")
        else:
            task = dict(input) if isinstance(input, Mapping) else input
            state = machine.initial_state(task)
        run_id = self._new_id()
        now = self._now()
        task_body = blob_json(task)
        state_body = blob_json(state.model_dump(mode="json"))
        with self.db.write() as conn:
            task_sha = put_blob(conn, task_body, created_at=now)
            state_sha = put_blob(conn, state_body, created_at=now)
            conn.execute(
                text(
                    "INSERT INTO run (run_id, machine_name, machine_version, machine_digest, "
                    "machine_ref, status, step, state_sha256, task_sha256, run_seq, steps_taken, "
                    "created_at, updated_at, started_by, parent_run_id, tokens_in, tokens_out, "
                    "cost_micros) VALUES (:run_id, :mn, :mv, :md, :ref, 'IDLE', :step, :ss, :ts, "
                    "0, 0, :now, :now, :by, :parent, 0, 0, 0)"
                ),
                {
                    "run_id": run_id,
                    "mn": machine.name,
                    "mv": machine.version,
                    "md": machine.digest,
                    "ref": canonical_ref(ref) if ref else None,
                    "step": machine.start,
                    "ss": state_sha,
                    "ts": task_sha,
                    "now": now,
                    "by": by,
                    "parent": parent_run_id,
                },
            )
            run = self._load_row(conn, run_id)
            self._transition(
                conn,
                run,
                event_type="run.created",
                to_status=RunStatus.IDLE,
                to_step=machine.start,
                actor_type=actor_type,
                actor_id=by,
                now=now,
                extra={"input_sha256": task_sha, "decision": "create"},
            )
            if start:
                run = self._load_row(conn, run_id)
                self._operator_transition(
                    conn, run, Trigger.START, "run.started", by, actor_type, now
                )
            return self._info(conn, run_id)

    def start_created(
        self,
        run_id: str,
        *,
        by: str = "service",
        actor_type: str = "service",
        advance: bool = True,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """Start an IDLE run (``run.started``), then advance it unless ``advance=False``.

        Raises:
            RunNotFound, IllegalTransition: unknown run, or not IDLE.
        """
        now = self._now()
        with self.db.write() as conn:
            run = self._load_row(conn, run_id)
            self._operator_transition(conn, run, Trigger.START, "run.started", by, actor_type, now)
        return self.advance(run_id, on_event=on_event) if advance else self.get(run_id)

    # -- operator actions ---------------------------------------------------------

    def approve(
        self,
        run_id: str,
        *,
        by: str,
        comment: str | None = None,
        digest: str | None = None,
        advance: bool = True,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """Approve the proposal a run waits on (``approval.granted``), then continue it.

        The event names the approver (actor ``human``), references the
        ``approval.requested`` event (``caused_by_event_id``) and records the
        digest approved (NIST SP 800-53 AU-10, non-repudiation).

        Args:
            run_id: the waiting run.
            by: the approver's stable id.
            comment: recorded as the decision's reason.
            digest: if given, must equal the pending proposal's digest.
            advance: continue the run inline after approving.

        Raises:
            RunNotFound: no such run.
            IllegalTransition: the run is not WAITING_FOR_APPROVAL.
            ApprovalMismatch: ``digest`` is not the pending proposal's.
        """
        _require_actor(by, run_id)
        now = self._now()
        with self.db.write() as conn:
            run = self._load_row(conn, run_id)
            check_transition(run["status"], Trigger.APPROVE, run_id=run_id)
            pending = str(run["pending_proposal_digest"])
            if digest is not None and digest != pending:
                raise ApprovalMismatch(run_id, digest, pending)
            self._transition(
                conn,
                run,
                event_type="approval.granted",
                to_status=RunStatus.RUNNING,
                to_step=run["pending_resume_at"],
                actor_type="human",
                actor_id=by,
                now=now,
                extra={
                    "decision": "approve",
                    "outcome": "success",
                    "reason": comment,
                    "caused_by_event_id": run["pending_request_event_id"],
                },
                payload={"proposal_digest": pending, "comment": comment},
                clear_pending=True,
            )
        return self.advance(run_id, on_event=on_event) if advance else self.get(run_id)

    def reject(self, run_id: str, *, by: str, reason: str) -> RunInfo:
        """Reject the pending proposal (``approval.denied``); the run goes FAILED.

        Raises:
            RunNotFound, IllegalTransition: unknown run, or not waiting.
            RunError: empty ``reason`` (every decision records one).
        """
        _require_actor(by, run_id)
        _require_reason(reason)
        now = self._now()
        with self.db.write() as conn:
            run = self._load_row(conn, run_id)
            check_transition(run["status"], Trigger.REJECT, run_id=run_id)
            self._transition(
                conn,
                run,
                event_type="approval.denied",
                to_status=RunStatus.FAILED,
                to_step=run["step"],
                actor_type="human",
                actor_id=by,
                now=now,
                extra={
                    "decision": "reject",
                    "outcome": "failure",
                    "reason": reason,
                    "error_code": "rejected",
                    "caused_by_event_id": run["pending_request_event_id"],
                },
                payload={"proposal_digest": run["pending_proposal_digest"]},
                clear_pending=True,
            )
            return self._info(conn, run_id)

    def cancel(self, run_id: str, *, by: str, reason: str) -> RunInfo:
        """Cancel a run that is IDLE, RUNNING or WAITING_FOR_APPROVAL; it goes FAILED.

        A step executing elsewhere at that moment commits nothing (its
        conditional UPDATE finds the run moved on).

        Raises:
            RunNotFound, IllegalTransition: unknown run, or FAILED/DONE already.
            RunError: empty ``reason``.
        """
        _require_actor(by, run_id)
        _require_reason(reason)
        now = self._now()
        with self.db.write() as conn:
            run = self._load_row(conn, run_id)
            check_transition(run["status"], Trigger.CANCEL, run_id=run_id)
            self._transition(
                conn,
                run,
                event_type="run.cancelled",
                to_status=RunStatus.FAILED,
                to_step=run["step"],
                actor_type="human",
                actor_id=by,
                now=now,
                extra={
                    "decision": "cancel",
                    "outcome": "cancelled",
                    "reason": reason,
                    "error_code": "cancelled",
                },
                clear_pending=True,
                release_lease=True,
            )
            return self._info(conn, run_id)

    def retry(
        self,
        run_id: str,
        *,
        by: str,
        reason: str | None = None,
        advance: bool = True,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """Resume a FAILED run from its last checkpoint (``run.retried``), re-running the failed step.

        A run rejected at a gate re-runs the step that asked for approval, so
        it asks again: a retry never bypasses a gate.

        Raises:
            RunNotFound, IllegalTransition: unknown run, or not FAILED.
        """
        _require_actor(by, run_id)
        now = self._now()
        with self.db.write() as conn:
            run = self._load_row(conn, run_id)
            self._operator_transition(
                conn, run, Trigger.RETRY, "run.retried", by, "human", now, reason=reason
            )
        return self.advance(run_id, on_event=on_event) if advance else self.get(run_id)

    # -- reading ------------------------------------------------------------------

    def get(self, run_id: str) -> RunInfo:
        """The run's current snapshot. Read-only.

        Raises:
            RunNotFound: no such run.
        """
        with self.db.read() as conn:
            return self._info(conn, run_id)

    def list(
        self,
        *,
        status: RunStatus | str | None = None,
        machine: str | None = None,
        limit: int = 100,
    ) -> list[RunInfo]:
        """Runs, newest first, optionally filtered by status and machine name. Read-only."""
        clauses, params = [], {"limit": int(limit)}
        if status is not None:
            clauses.append("status = :status")
            params["status"] = str(RunStatus(status))  # type: ignore[assignment]
        if machine is not None:
            clauses.append("machine_name = :machine")
            params["machine"] = machine  # type: ignore[assignment]
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.read() as conn:
            ids = conn.execute(
                text(f"SELECT run_id FROM run {where} ORDER BY created_at DESC, rowid DESC LIMIT :limit"),
                params,
            ).scalars()
            return [self._info(conn, rid) for rid in list(ids)]

    def events(self, run_id: str | None = None) -> list[AuditEvent]:
        """Audit events in ``seq`` order, of one run or of the whole ledger. Read-only."""
        sql = "SELECT * FROM audit_event"
        params: dict[str, Any] = {}
        if run_id is not None:
            sql += " WHERE run_id = :run_id"
            params["run_id"] = run_id
        with self.db.read() as conn:
            rows = conn.execute(text(sql + " ORDER BY seq"), params).mappings().all()
        return [AuditEvent.model_validate(dict(r)) for r in rows]

    def task(self, run_id: str) -> Any:
        """The run's original input (str or dict). Read-only.

        Raises:
            RunNotFound: no such run.
        """
        with self.db.read() as conn:
            run = self._load_row(conn, run_id)
            body = get_blob(conn, run["task_sha256"])
        return None if body is None else json.loads(body)

    # -- advancing ----------------------------------------------------------------

    def machine_for(self, run_id: str) -> Machine[Any]:
        """The machine definition a run needs, registered or loaded from its recorded ref.

        Raises:
            RunNotFound: no such run.
            MachineLoadError: not registered and its reference cannot be loaded.
            MachineMismatch: the loaded definition's digest is not the run's.
        """
        with self.db.read() as conn:
            run = self._load_row(conn, run_id)
        return self._machine(run)

    def _machine(self, run: Mapping[str, Any]) -> Machine[Any]:
        digest = run["machine_digest"]
        machine = self._machines.get(digest)
        if machine is not None:
            return machine
        ref = run["machine_ref"]
        if not ref:
            raise MachineLoadError(
                f"{run['machine_name']} v{run['machine_version']}",
                "not registered with this engine and no reference was recorded at start",
            )
        loaded = load_machine(ref)
        if loaded.digest != digest:
            raise MachineMismatch(run["run_id"], digest, loaded.digest)
        self.register(loaded)
        return loaded

    def advance(
        self,
        run_id: str,
        *,
        max_transitions: int | None = None,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """Execute steps of a RUNNING run until a gate, a terminal status, or the lease is lost.

        Takes the run's lease first (conditional UPDATE) and releases it when
        it stops. A run that is not RUNNING is returned unchanged.

        Args:
            run_id: the run.
            max_transitions: stop after this many committed steps (for workers
                that interleave runs); ``None`` means until the run stops.
            on_event: called after each committed transition.

        Returns:
            The run as it stands when advancing stopped.

        Raises:
            RunNotFound: no such run.
            LeaseHeld: another engine holds a live lease on the run.
            MachineLoadError, MachineMismatch: the definition cannot be had.
        """
        with self.db.read() as conn:
            run = self._load_row(conn, run_id)
        if run["status"] != RunStatus.RUNNING:
            return self.get(run_id)
        machine = self._machine(run)
        if not self._acquire_lease(run_id):
            return self.get(run_id)
        try:
            done = 0
            while max_transitions is None or done < max_transitions:
                with self.db.read() as conn:
                    run = self._load_row(conn, run_id)
                    state_body = get_blob(conn, run["state_sha256"])
                if run["status"] != RunStatus.RUNNING or run["lease_owner"] != self.owner:
                    break
                report = self._execute_step(machine, run, state_body)
                if report is None:
                    break
                done += 1
                if on_event is not None:
                    on_event(report)
                if report.status != RunStatus.RUNNING:
                    break
        finally:
            self._release_lease(run_id)
        return self.get(run_id)

    def _acquire_lease(self, run_id: str) -> bool:
        now_dt = self._clock()
        now = format_utc(now_dt)
        expires = format_utc(now_dt + self.lease)
        with self.db.write() as conn:
            run = self._load_row(conn, run_id)
            if run["status"] != RunStatus.RUNNING:
                return False
            holder, until = run["lease_owner"], run["lease_expires_at"]
            if holder is not None and holder != self.owner and until is not None and until > now:
                raise LeaseHeld(run_id, holder, until)
            conn.execute(
                text(
                    "UPDATE run SET lease_owner = :me, lease_expires_at = :exp "
                    "WHERE run_id = :run_id AND run_seq = :seq"
                ),
                {"me": self.owner, "exp": expires, "run_id": run_id, "seq": run["run_seq"]},
            )
            if holder is not None and holder != self.owner:
                # Taking over a dead engine's run is itself a fact reviewers need.
                self._transition(
                    conn,
                    {**run, "lease_owner": self.owner, "lease_expires_at": expires},
                    event_type="lease.taken_over",
                    to_status=RunStatus(run["status"]),
                    to_step=run["step"],
                    actor_type="system",
                    actor_id=self.owner,
                    now=now,
                    extra={"reason": f"lease of {holder} expired at {until}"},
                    keep_lease=True,
                )
        return True

    def _release_lease(self, run_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(
                text(
                    "UPDATE run SET lease_owner = NULL, lease_expires_at = NULL "
                    "WHERE run_id = :run_id AND lease_owner = :me"
                ),
                {"run_id": run_id, "me": self.owner},
            )

    def _execute_step(
        self, machine: Machine[Any], run: Mapping[str, Any], state_body: bytes | None
    ) -> StepReport | None:
        step_name = run["step"]
        run_id = run["run_id"]
        if run["steps_taken"] >= machine.max_steps:
            return self._fail(
                run,
                "budget_exceeded",
                f"max_steps budget of {machine.max_steps} steps exhausted before step {step_name!r}",
            )
        if state_body is None:
            return self._fail(run, "checkpoint_missing", f"state blob {run['state_sha256']} is missing")
        state = machine.state_model.model_validate(json.loads(state_body))
        step = machine.steps[step_name]
        view = machine.view(step_name, state)
        ctx = StepContext(
            run_id=run_id,
            machine=machine.name,
            machine_version=machine.version,
            step=step_name,
            attempt=1,
            started_by=run["started_by"],
            load_task=lambda: self.task(run_id),
            clock=self._clock,
            parent_run_id=run["parent_run_id"],
            run_seq=run["run_seq"],
        )
        started = time.perf_counter()
        try:
            outcome: object = step.agent(view, ctx)
        except StatecraftError:
            raise
        except Exception as exc:  # the agent's failure is the run's, never the engine's
            outcome = Fail(f"{type(exc).__name__}: {exc}"[:500], error_code="agent_error")
        latency_ms = int((time.perf_counter() - started) * 1000)
        judged = machine.apply(step_name, state, outcome)
        return self._commit_step(
            machine, run, step, view, judged, ctx.usage, latency_ms, ctx.attempt, ctx.calls
        )

    def _fail(self, run: Mapping[str, Any], code: str, reason: str) -> StepReport | None:
        now = self._now()
        with self.db.write() as conn:
            current = self._load_row(conn, run["run_id"])
            if not self._still_ours(current, run):
                return None
            self._transition(
                conn,
                current,
                event_type="run.failed",
                to_status=RunStatus.FAILED,
                to_step=current["step"],
                actor_type="system",
                actor_id="statecraft",
                now=now,
                extra={"outcome": "failure", "error_code": code, "reason": reason},
                release_lease=True,
            )
        return StepReport(run["run_id"], "run.failed", run["step"], run["step"], RunStatus.FAILED, 0, reason)

    def _still_ours(self, current: Mapping[str, Any], seen: Mapping[str, Any]) -> bool:
        return (
            current["run_seq"] == seen["run_seq"]
            and current["lease_owner"] == self.owner
            and current["status"] == RunStatus.RUNNING
        )

    def _commit_step(
        self,
        machine: Machine[Any],
        run: Mapping[str, Any],
        step: Any,
        view: BaseModel,
        judged: AppliedOutcome[Any] | IllegalOutcome,
        usage: Usage,
        latency_ms: int,
        attempt: int,
        calls: Sequence[RecordedCall] = (),
    ) -> StepReport | None:
        now = self._now()
        from_step = run["step"]
        agent_fields: dict[str, Any] = {
            "agent_name": step.agent_name,
            "agent_version": step.agent_version,
            "prompt_version": usage.prompt_version or step.prompt_version,
            "model_provider": usage.model_provider,
            "model_id": usage.model_id,
            "tokens_in": usage.tokens_in,
            "tokens_out": usage.tokens_out,
            "cost_micros": usage.cost_micros,
            "latency_ms": latency_ms,
            "attempt": attempt,
        }
        view_body = blob_json(view.model_dump(mode="json"))
        with self.db.write() as conn:
            current = self._load_row(conn, run["run_id"])
            if not self._still_ours(current, run):
                return None  # cancelled or taken over while the agent ran: commit nothing
            agent_fields["input_sha256"] = put_blob(conn, view_body, created_at=now)
            for call in calls:
                current = self._record_call(conn, current, call, now)
            usage_delta = (usage.tokens_in, usage.tokens_out, usage.cost_micros)
            if isinstance(judged, IllegalOutcome):
                event_type, to_status, to_step = "run.failed", RunStatus.FAILED, from_step
                fields = {
                    **agent_fields,
                    "outcome": "failure",
                    "decision": "illegal_outcome",
                    "error_code": judged.error_code,
                    "reason": judged.reason,
                }
                self._transition(
                    conn, current, event_type=event_type, to_status=to_status, to_step=to_step,
                    actor_type="system", actor_id="statecraft", now=now, extra=fields,
                    release_lease=True, usage=usage_delta,
                )
                return StepReport(run["run_id"], event_type, from_step, to_step, to_status, latency_ms, judged.reason)
            outcome = judged.outcome
            state_body = blob_json(judged.state.model_dump(mode="json"))
            output_sha = put_blob(
                conn, blob_json(_outcome_json(outcome)), created_at=now
            )
            state_sha = put_blob(conn, state_body, created_at=now)
            fields = {**agent_fields, "output_sha256": output_sha}
            payload: Any = None
            pending: dict[str, Any] | None = None
            release = False
            if isinstance(outcome, Goto):
                event_type, to_status, to_step = "step.completed", RunStatus.RUNNING, outcome.step
                fields.update(decision=f"goto:{outcome.step}", outcome="success", reason=outcome.reason)
                trigger = Trigger.STEP
            elif isinstance(outcome, Finish):
                event_type, to_status, to_step = "run.completed", RunStatus.DONE, from_step
                fields.update(decision="finish", outcome="success", reason=outcome.reason)
                trigger, release = Trigger.FINISH, True
            elif isinstance(outcome, RequestApproval):
                event_type, to_status, to_step = "approval.requested", RunStatus.WAITING_FOR_APPROVAL, from_step
                digest = proposal_digest(run["run_id"], state_sha, from_step, outcome.resume_at, outcome.reason)
                fields.update(decision=f"request_approval:{outcome.resume_at}", outcome="pending", reason=outcome.reason)
                payload = {"resume_at": outcome.resume_at, "proposal_digest": digest, "summary": outcome.summary}
                pending = {"resume_at": outcome.resume_at, "digest": digest, "reason": outcome.reason}
                trigger, release = Trigger.REQUEST_APPROVAL, True
            else:
                assert isinstance(outcome, Fail)
                event_type, to_status, to_step = "run.failed", RunStatus.FAILED, from_step
                fields.update(decision="fail", outcome="failure", reason=outcome.reason, error_code=outcome.error_code)
                trigger, release = Trigger.FAIL, True
            check_transition(current["status"], trigger, run_id=run["run_id"])
            self._transition(
                conn, current, event_type=event_type, to_status=to_status, to_step=to_step,
                actor_type="agent", actor_id=step.agent_name, now=now, extra=fields,
                payload=payload, state_sha256=state_sha, pending=pending,
                release_lease=release, count_step=True, usage=usage_delta,
            )
        return StepReport(run["run_id"], event_type, from_step, to_step, to_status, latency_ms, fields.get("reason"))

    def _record_call(
        self, conn: Connection, run: dict[str, Any], call: RecordedCall, now: str
    ) -> dict[str, Any]:
        """Append a sub-call's event; the run's status, step and state are unchanged."""
        fields: dict[str, Any] = {
            "agent_name": call.name,
            "agent_version": call.version,
            "decision": call.decision,
            "outcome": call.outcome,
            "reason": call.reason,
            "error_code": call.error_code,
            "latency_ms": call.latency_ms,
            "attempt": call.attempt,
            "model_provider": call.usage.model_provider,
            "model_id": call.usage.model_id,
            "prompt_version": call.usage.prompt_version,
            "tokens_in": call.usage.tokens_in,
            "tokens_out": call.usage.tokens_out,
            "cost_micros": call.usage.cost_micros,
        }
        if call.input is not None:
            fields["input_sha256"] = put_blob(conn, blob_json(_jsonable(call.input)), created_at=now)
        if call.output is not None:
            fields["output_sha256"] = put_blob(conn, blob_json(_jsonable(call.output)), created_at=now)
        event = self._transition(
            conn, run, event_type=call.event_type, to_status=RunStatus(run["status"]),
            to_step=run["step"], actor_type="agent", actor_id=call.name, now=now,
            extra=fields, payload=call.payload, keep_lease=True,
            usage=(call.usage.tokens_in, call.usage.tokens_out, call.usage.cost_micros),
        )
        return self._load_row(conn, run["run_id"]) if event else run

    # -- the one place a run row changes ---------------------------------------------

    def _operator_transition(
        self,
        conn: Connection,
        run: Mapping[str, Any],
        trigger: Trigger,
        event_type: str,
        by: str,
        actor_type: str,
        now: str,
        *,
        reason: str | None = None,
    ) -> None:
        to_status = check_transition(run["status"], trigger, run_id=run["run_id"])
        self._transition(
            conn, run, event_type=event_type, to_status=to_status, to_step=run["step"],
            actor_type=actor_type, actor_id=by, now=now,
            extra={"decision": str(trigger), "outcome": "success", "reason": reason},
            clear_error=True,
        )

    def _transition(
        self,
        conn: Connection,
        run: Mapping[str, Any],
        *,
        event_type: str,
        to_status: RunStatus,
        to_step: str | None,
        actor_type: str,
        actor_id: str,
        now: str,
        extra: Mapping[str, Any] | None = None,
        payload: Any = None,
        state_sha256: str | None = None,
        pending: Mapping[str, Any] | None = None,
        clear_pending: bool = False,
        clear_error: bool = False,
        release_lease: bool = False,
        keep_lease: bool = False,
        count_step: bool = False,
        usage: tuple[int, int, int] = (0, 0, 0),
    ) -> dict[str, Any]:
        """Update the run row and append its audit event: one transition, one event.

        Every event of a run records the run's status, step and state hash
        *after* it (``to_status``, ``to_step``, ``state_sha256``), so folding a
        run's events reproduces its row (DESIGN.md invariant 2).
        """
        run_seq = run["run_seq"] + 1
        state_sha = state_sha256 or run["state_sha256"]
        fields: dict[str, Any] = {
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
            **(extra or {}),
        }
        event = append_event(conn, ledger_id=self.db.ledger_id, fields=fields, payload=payload)
        terminal_or_gate = to_status != RunStatus.RUNNING
        values: dict[str, Any] = {
            "run_id": run["run_id"],
            "expected_seq": run["run_seq"],
            "status": str(to_status),
            "step": to_step,
            "state_sha256": state_sha,
            "run_seq": run_seq,
            "steps_taken": run["steps_taken"] + (1 if count_step else 0),
            "updated_at": now,
            "last_event_id": event["event_id"],
            "tokens_in": run["tokens_in"] + usage[0],
            "tokens_out": run["tokens_out"] + usage[1],
            "cost_micros": run["cost_micros"] + usage[2],
            "lease_owner": None if (release_lease or terminal_or_gate) and not keep_lease else run["lease_owner"],
            "lease_expires_at": None if (release_lease or terminal_or_gate) and not keep_lease else run["lease_expires_at"],
        }
        if pending is not None:
            values.update(
                pending_resume_at=pending["resume_at"],
                pending_request_event_id=event["event_id"],
                pending_proposal_digest=pending["digest"],
                pending_reason=pending["reason"],
            )
        elif clear_pending:
            values.update(
                pending_resume_at=None, pending_request_event_id=None,
                pending_proposal_digest=None, pending_reason=None,
            )
        else:
            values.update(
                pending_resume_at=run["pending_resume_at"],
                pending_request_event_id=run["pending_request_event_id"],
                pending_proposal_digest=run["pending_proposal_digest"],
                pending_reason=run["pending_reason"],
            )
        if to_status == RunStatus.FAILED:
            values.update(error_code=fields.get("error_code"), reason=fields.get("reason"))
        elif clear_error or to_status == RunStatus.RUNNING and run["status"] != RunStatus.RUNNING:
            values.update(error_code=None, reason=None)
        else:
            values.update(error_code=run["error_code"], reason=run["reason"])
        result = conn.execute(_UPDATE_RUN, values)
        if result.rowcount != 1:
            # Under BEGIN IMMEDIATE nobody can move the run between our read and
            # this write; reaching here means a bug, so refuse loudly.
            raise RunError(f"run {run['run_id']} changed during its own transaction", run_id=run["run_id"])
        conn.execute(
            _INSERT_CHECKPOINT,
            {
                "run_id": run["run_id"],
                "run_seq": run_seq,
                "status": str(to_status),
                "step": to_step,
                "state_sha256": state_sha,
                "created_at": now,
            },
        )
        return event

    # -- row access ---------------------------------------------------------------

    def _load_row(self, conn: Connection, run_id: str) -> dict[str, Any]:
        row = conn.execute(_SELECT_RUN, {"run_id": run_id}).mappings().first()
        if row is None:
            raise RunNotFound(run_id)
        return dict(row)

    def _info(self, conn: Connection, run_id: str) -> RunInfo:
        run = self._load_row(conn, run_id)
        body = get_blob(conn, run["state_sha256"])
        pending = None
        if run["status"] == RunStatus.WAITING_FOR_APPROVAL and run["pending_proposal_digest"]:
            pending = PendingApproval(
                requested_event_id=run["pending_request_event_id"],
                step=run["step"],
                resume_at=run["pending_resume_at"],
                reason=run["pending_reason"],
                proposal_digest=run["pending_proposal_digest"],
            )
        return RunInfo(
            run_id=run["run_id"],
            machine=run["machine_name"],
            version=run["machine_version"],
            machine_digest=run["machine_digest"],
            machine_ref=run["machine_ref"],
            status=RunStatus(run["status"]),
            step=run["step"],
            state={} if body is None else json.loads(body),
            state_sha256=run["state_sha256"],
            run_seq=run["run_seq"],
            steps_taken=run["steps_taken"],
            created_at=run["created_at"],
            updated_at=run["updated_at"],
            started_by=run["started_by"],
            parent_run_id=run["parent_run_id"],
            pending=pending,
            error_code=run["error_code"],
            reason=run["reason"],
            tokens_in=run["tokens_in"],
            tokens_out=run["tokens_out"],
            cost_micros=run["cost_micros"],
            lease_owner=run["lease_owner"],
            lease_expires_at=run["lease_expires_at"],
        )


_UPDATE_RUN = text(
    "UPDATE run SET status = :status, step = :step, state_sha256 = :state_sha256, "
    "run_seq = :run_seq, steps_taken = :steps_taken, updated_at = :updated_at, "
    "last_event_id = :last_event_id, pending_resume_at = :pending_resume_at, "
    "pending_request_event_id = :pending_request_event_id, "
    "pending_proposal_digest = :pending_proposal_digest, pending_reason = :pending_reason, "
    "error_code = :error_code, reason = :reason, tokens_in = :tokens_in, "
    "tokens_out = :tokens_out, cost_micros = :cost_micros, lease_owner = :lease_owner, "
    "lease_expires_at = :lease_expires_at "
    "WHERE run_id = :run_id AND run_seq = :expected_seq"
)
_INSERT_CHECKPOINT = text(
    "INSERT INTO checkpoint (run_id, run_seq, status, step, state_sha256, created_at) "
    "VALUES (:run_id, :run_seq, :status, :step, :state_sha256, :created_at)"
)


def proposal_digest(
    run_id: str, state_sha256: str, step: str, resume_at: str, reason: str | None
) -> str:
    """SHA-256 binding an approval to exactly what was proposed.

    Covers the run, the state at the gate, the step that asked, where the run
    resumes and the stated reason; any change gives a new digest, so
    ``approve --digest`` refuses a proposal the approver did not see.
    """
    body = canonical_json(
        {
            "run_id": run_id,
            "state_sha256": state_sha256,
            "step": step,
            "resume_at": resume_at,
            "reason": reason,
        }
    )
    return sha256_hex(b"statecraft.proposal.v1\x00" + body)


def _outcome_json(outcome: Goto | Finish | RequestApproval | Fail) -> dict[str, Any]:
    kind = type(outcome).__name__
    data: dict[str, Any] = {"outcome": kind}
    if isinstance(outcome, Goto):
        data["step"] = outcome.step
    if isinstance(outcome, RequestApproval):
        data.update(resume_at=outcome.resume_at, summary=outcome.summary)
    if isinstance(outcome, Fail):
        data["error_code"] = outcome.error_code
    data["reason"] = outcome.reason
    update = getattr(outcome, "update", None)
    if update:
        data["update"] = _jsonable(update)
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _require_actor(by: str, run_id: str) -> None:
    if not isinstance(by, str) or not by.strip():
        raise RunError(f"run {run_id}: a decision needs a named actor (--by ID)", run_id=run_id)


def _require_reason(reason: str) -> None:
    if not isinstance(reason, str) or not reason.strip():
        raise RunError("a reason is required (every decision records one: EU AI Act Art. 86)")

