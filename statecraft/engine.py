"""The engine: advances runs against a database, one audited transaction per transition.

How a step executes (DESIGN.md):

1. take the run's lease (conditional UPDATE; an expired lease may be taken over);
2. read the checkpoint, build the agent's view (declared ``reads``) and context
   (the run's original task, clock, idempotency keys);
3. call the agent outside any database transaction;
4. judge the outcome against the machine (declared edge, owned fields, schema);
5. in ONE transaction: update the run row and append the hash-chained audit
   event, which is also the checkpoint (``checkpoint`` is a view over
   ``audit_event``) — the UPDATE is conditional on the lease and on
   the run's position (``run_seq``), so a step whose run changed meanwhile
   (cancelled, taken over) commits nothing;
6. repeat until a gate, a terminal status, or the lease is lost.

Operator actions (approve, reject, cancel, retry) are single transactions
that read, check (``lifecycle.check_transition``) and write under the write
lock. Everything that can refuse a request is checked before its transaction
writes — the actor id, normalised once (statecraft/identity.py) and vouched
for by the ``authenticate`` hook if any; the run's machine, definition and
code (statecraft/sources.py), where the request continues the run; a gate's
deadline, digest, policy and signature — so a request that raises has
written nothing. A request that continues the run inline commits first:
then a worker that took the run is not an error, and anything else that
stops the advance is ``AdvanceInterrupted``, which says so.

The step loop itself (leases, attempts, retries, timeouts, budgets, error
edges) lives in statecraft/runner.py; every transition goes through
statecraft/transition.py. docs/reliability.md states the guarantees.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import random
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from sqlalchemy import Connection

from ._time import format_utc, parse_utc, utc_now
from .budget import extend as extend_budget
from .errors import (
    AdvanceInterrupted,
    AmbiguousRunId,
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalRefused,
    LeaseHeld,
    MachineLoadError,
    MachineMismatch,
    NotAuthenticated,
    RunError,
    RunNotFound,
    SignatureRefused,
)
from .identity import Identity, normalize_actor, process_identity
from .leases import new_owner_id
from .lifecycle import RunStatus, Trigger, check_transition
from .outcomes import ApprovalPolicy
from .proposals import proposal_digest
from .store.blobs import blob_json, get_blob, put_blob
from .store.db import Database, Synchronous
from .store.ledger import event_rows, first_payload
from .store.runs import (
    RunRecord, gate_approvers, gate_request, insert_run, list_run_ids, load_run, run_ids_with_prefix, take_lease,
)
from .store.txn import Tx, read_tx, tx_of, write_tx
from .transition import KEEP, write_transition
from .views import AuditEvent, PendingApproval, RunInfo, StepReport

if TYPE_CHECKING:
    from .machine import Machine
    from .runner import StepRunner
    from .signing import ApprovalSignature, Keyring

__all__ = ["Engine", "StepReport", "proposal_digest"]

_log = logging.getLogger("statecraft.engine")

MIN_RUN_ID_PREFIX = 4
"""The shortest run id prefix :meth:`Engine.resolve_run_id` looks up (as git's abbreviated ids)."""

@dataclass(frozen=True)
class _Gate:
    policy: ApprovalPolicy | None
    requested_by: str | None
    approved_by: tuple[str, ...]
    rules: tuple[str, ...] = ()

    @property
    def required(self) -> int:
        return 1 if self.policy is None else self.policy.required


def _default_owner() -> str:
    return new_owner_id()


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
        lease: how long a lease lasts without renewal (renewed every third of it
            while the engine works on the run).
        rng: randomness for retry jitter; inject a seeded one for deterministic tests.
        trust_local_pids: treat a lease whose owner is a dead process on this
            host as expired (statecraft/leases.py states the assumption).
        crash_loop_limit: lease takeovers of one step without progress after
            which the run fails with ``crash_loop``.
        authenticate: ``claimed_actor_id -> principal``, called once per
            request that names an actor (``by=``), with the normalised id,
            before anything is written. Return the id of the principal your
            service authenticated for the current request (e.g. from the
            request context); it is recorded beside the claimed id
            (payload ``identity.principal``). Raise, or return ``None``, to
            refuse the request (``NotAuthenticated``). ``None`` (default):
            no hook; only the process's OS account and host are recorded.
        keyring: folder (or :class:`~statecraft.signing.Keyring`) binding
            approvers' public keys to their ids, against which signed
            approvals are checked; ``None`` means ``$STATECRAFT_KEYRING`` if
            set. Read when first needed.
        on_event: called with a :class:`StepReport` after every transition
            this engine commits — operator requests, steps it advances,
            expiries — so a service learns that a run reached a gate or
            finished without polling. Called on the committing thread, after
            the commit; a hook that raises is logged and ignored.

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
        rng: random.Random | None = None,
        trust_local_pids: bool = True,
        crash_loop_limit: int = 10,
        authenticate: Callable[[str], str | None] | None = None,
        keyring: str | os.PathLike[str] | Keyring | None = None,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> None:
        self.db = db if isinstance(db, Database) else Database(db, synchronous=synchronous)
        self._on_event = on_event
        self._local = threading.local()
        self._clock = clock
        self._new_id = new_id
        self.owner = owner or _default_owner()
        self.lease = lease
        self._authenticate = authenticate
        self._keyring_source: str | os.PathLike[str] | Keyring | None = (
            keyring if keyring is not None else os.environ.get("STATECRAFT_KEYRING") or None
        )
        self._machines: dict[str, Machine[Any]] = {}
        # Runs recorded before code digests existed name the definition digest.
        self._by_definition: dict[str, Machine[Any]] = {}
        for m in machines:
            self.register(m)
        self._rng, self._trust_local_pids, self._crash_loop_limit = rng, trust_local_pids, crash_loop_limit
        self._step_runner: StepRunner | None = None
        self._runner_lock = threading.Lock()

    # -- lifecycle of the engine ------------------------------------------------

    def close(self) -> None:
        """Stop renewing leases and close the database; later calls raise ``StoreError``."""
        if self._step_runner is not None:
            self._step_runner.close()
        self.db.close()

    def stop(self) -> None:
        """Ask every ``advance`` of this engine to stop after its current step.

        Thread-safe; used by the worker on SIGTERM/SIGINT. The step in
        progress finishes and commits (or is abandoned at its timeout), then
        the lease is released and ``advance`` returns. Permanent for this engine.
        """
        self.runner.stopping.set()

    def release_leases(self) -> int:
        """Release every lease this engine's owner id holds; the number of runs released.

        For a driver giving up on steps it cannot finish (the worker, at the
        end of its drain timeout): commits one transaction, stops renewing,
        and fences the abandoned steps, so whatever they return later is not
        committed and another worker can take the runs at once instead of
        waiting for the leases to expire.
        """
        return self.runner.release_all()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def runner(self) -> StepRunner:
        """This engine's step loop (statecraft/runner.py), which drivers such as ``AsyncEngine`` share.

        Made on first use: an engine that only reads runs (``statecraft
        status``, ``list``, the web pages) never imports the step loop and what
        it needs (agents, execution on threads and asyncio, machine loading;
        issue #9). Thread-safe.
        """
        if self._step_runner is None:
            with self._runner_lock:
                if self._step_runner is None:
                    from .runner import Host, StepRunner

                    self._step_runner = StepRunner(
                        Host(
                            db=self.db, owner=self.owner, lease=self.lease, clock=self._clock,
                            machine_of=self._machine, info=self._info, task=self.task, report=self.report,
                            gate_policy=lambda conn, run: self._gate(conn, run).policy,
                        ),
                        rng=self._rng, trust_local_pids=self._trust_local_pids,
                        crash_loop_limit=self._crash_loop_limit,
                    )
        return self._step_runner

    def register(self, machine: Machine[Any]) -> None:
        """Make ``machine`` available to advance runs recorded with its digest."""
        self._machines[machine.digest] = machine
        self._by_definition[machine.definition_digest] = machine

    def _now(self) -> str:
        return format_utc(self._clock())

    # -- who is asking -------------------------------------------------------------

    def _who(self, by: object, run_id: str | None) -> tuple[str, Identity]:
        """The normalised actor id, and what is recorded beside it. Writes nothing.

        Raises:
            InvalidActorId: ``by`` cannot be normalised (statecraft/identity.py).
            NotAuthenticated: the ``authenticate`` hook raised or vouched for no one.
        """
        actor = normalize_actor(by, run_id=run_id)
        identity = process_identity()
        if self._authenticate is None:
            return actor, identity
        try:
            principal = self._authenticate(actor)
        except Exception as exc:
            raise NotAuthenticated(actor, f"{type(exc).__name__}: {exc}", run_id=run_id) from exc
        if not principal:
            raise NotAuthenticated(actor, "the authenticate hook vouched for no principal", run_id=run_id)
        return actor, replace(identity, principal=normalize_actor(principal, run_id=run_id))

    def keyring(self) -> Keyring | None:
        """The keyring signed approvals are checked against (``keyring=`` or ``$STATECRAFT_KEYRING``). Read-only.

        A folder is read again on every call: approvals are rare, and a key
        added to (or removed from) the keyring counts at once, without a restart.

        Raises:
            KeyringError: the folder is missing or holds an entry that does not check.
        """
        source = self._keyring_source
        if source is None:
            return None
        from .signing import Keyring

        return source if isinstance(source, Keyring) else Keyring.load(source)

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

        The event's payload records the machine's ``definition_digest``,
        ``code_digest`` and code files (statecraft/sources.py), so a later
        ``MachineMismatch`` can say what changed, and the identity of the
        process (and principal) that asked (statecraft/identity.py).

        Args:
            machine: the machine to run.
            input: the run's task: a mapping (validated as the initial state),
                a string (text task; the machine's ``initial`` builds the state),
                or a pydantic model of the machine's state.
            by: actor id of who creates the run (normalised; stored normalised).
            actor_type: ``human``, ``service``, ``agent`` or ``system``.
            ref: how to load the machine again (``path.py:attr``); recorded so
                that another process (the CLI, a worker) can continue the run.
            parent_run_id: the delegating run, for sub-runs.

        Raises:
            pydantic.ValidationError: the input does not fit the state model.
            InvalidActorId, NotAuthenticated: ``by`` is refused.
        """
        _, info = self._create(machine, input, by, actor_type, ref, parent_run_id, start=False)
        assert info is not None  # not advancing: the run as committed
        return info

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
        it is DONE, FAILED or WAITING_FOR_APPROVAL. If a worker picked the
        committed run up first, the run is returned as it stands (in the
        worker's hands), not ``LeaseHeld``.

        Returns:
            The run as it stands afterwards.

        Raises:
            pydantic.ValidationError: the input does not fit the state model.
            InvalidActorId, NotAuthenticated: ``by`` is refused.
            AdvanceInterrupted: the run was committed, then advancing it
                inline stopped on an error not about the run (its ``run``
                attribute is the committed run).
        """
        run_id, info = self._create(machine, input, by, actor_type, ref, parent_run_id, start=True, lease=advance)
        return self._continue(run_id, on_event) if info is None else info

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
        lease: bool = False,
    ) -> tuple[str, RunInfo | None]:
        """Create (and with ``start``, start) a run in one transaction; its id, and the run as committed.

        With ``lease`` the run is about to be advanced inline: the transaction
        also takes its lease, and no ``RunInfo`` is read (``None``; the
        advance returns one), one state read and row read less per run.
        """
        by, identity = self._who(by, None)
        if isinstance(input, BaseModel):
            state = machine.state_model.model_validate(input.model_dump())
            task: Any = input.model_dump(mode="json")
        else:
            task = dict(input) if isinstance(input, Mapping) else input
            state = machine.initial_state(task)
        self.register(machine)
        run_id = self._new_id()
        now = self._now()
        task_body = blob_json(task)
        state_body = blob_json(state.model_dump(mode="json"))
        machine_ref = None
        if ref:
            from .loader import canonical_ref  # machines load on demand: reading runs needs no loader

            machine_ref = canonical_ref(ref)
        with self._writing() as conn:
            task_sha = put_blob(conn, task_body, created_at=now)
            state_sha = put_blob(conn, state_body, created_at=now)
            insert_run(
                tx_of(conn), run_id=run_id, machine_name=machine.name, machine_version=machine.version,
                machine_digest=machine.digest, machine_ref=machine_ref,
                step=machine.start, state_sha256=state_sha, task_sha256=task_sha, now=now,
                started_by=by, parent_run_id=parent_run_id,
            )
            run = self._transition(
                conn,
                self._load_row(conn, run_id),
                event_type="run.created",
                to_status=RunStatus.IDLE,
                to_step=machine.start,
                actor_type=actor_type,
                actor_id=by,
                now=now,
                extra={"input_sha256": task_sha, "decision": "create"},
                payload={"machine": _machine_json(machine), "identity": identity.describe()},
            )
            if start:
                run = self._operator_transition(
                    conn, run, Trigger.START, "run.started", by, actor_type, now, identity=identity
                )
            if lease:
                self._lease_to_advance(conn, run_id, now, run)
                return run_id, None
            return run_id, self._info(conn, run_id)

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

        The run's machine is obtained first: a run whose definition or code
        changed since it was created is refused before anything is written.

        Raises:
            RunNotFound, IllegalTransition: unknown run, or not IDLE.
            InvalidActorId, NotAuthenticated: ``by`` is refused.
            MachineLoadError, MachineMismatch: the run's machine cannot be had.
            AdvanceInterrupted: see :meth:`start`.
        """
        by, identity = self._who(by, run_id)
        self._machine_checked(run_id, Trigger.START)
        now = self._now()
        with self._writing() as conn:
            run = self._load_row(conn, run_id)
            self._operator_transition(
                conn, run, Trigger.START, "run.started", by, actor_type, now, identity=identity
            )
            if advance:
                self._lease_to_advance(conn, run_id, now)
        return self._continue(run_id, on_event) if advance else self.get(run_id)

    def _machine_checked(self, run_id: str, trigger: Trigger) -> Machine[Any]:
        """The run's machine, after the lifecycle check: refuses before anything is written.

        Loading a machine file executes it, so this happens outside the
        write transaction; the transaction checks the lifecycle again.

        Raises:
            RunNotFound, IllegalTransition: as the request itself would.
            MachineLoadError, MachineMismatch: the machine cannot be had.
        """
        with self.db.read() as conn:
            run = self._load_row(conn, run_id)
        check_transition(run["status"], trigger, run_id=run_id)
        return self._machine(run)

    def _continue(self, run_id: str, on_event: Callable[[StepReport], None] | None) -> RunInfo:
        """Advance a run whose request just committed; never raise as if nothing was written.

        A worker that took the run first is not an error: the committed run
        is in its hands and is returned as it stands. Anything else that
        stops the inline advance is wrapped in ``AdvanceInterrupted``, the
        one error that says something was written.
        """
        try:
            return self.advance(run_id, on_event=on_event)
        except LeaseHeld:
            return self.get(run_id)
        except Exception as exc:
            try:
                current: RunInfo | None = self.get(run_id)
            except Exception:
                current = None
            raise AdvanceInterrupted(run_id, current, exc) from exc

    # -- operator actions ---------------------------------------------------------

    def approve(
        self,
        run_id: str,
        *,
        by: str,
        comment: str | None = None,
        digest: str | None = None,
        extend: Mapping[str, int | timedelta] | None = None,
        signature: ApprovalSignature | None = None,
        advance: bool = True,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """Approve the proposal a run waits on (``approval.granted``), then continue it.

        The event names the approver (actor ``human``, the normalised id),
        references the ``approval.requested`` event (``caused_by_event_id``)
        and records the digest approved, whether the approver named it
        (``digest_checked``), the signature if any, and the identity of the
        process and principal that asked (NIST SP 800-53 AU-10,
        non-repudiation).

        Everything that can refuse the request is checked before anything is
        written: the lifecycle, the gate's deadline, the digest, that the
        run's machine (definition and code) is the one it started with, the
        approval policy, the signature.

        A gate with an :class:`~statecraft.outcomes.ApprovalPolicy` needs
        ``policy.required`` distinct eligible approvers (four-eyes). Each
        approval before the last is its own ``approval.granted`` event whose
        status stays WAITING_FOR_APPROVAL (outcome ``pending``; like a
        sub-call, not a lifecycle transition); the approval that reaches the
        quorum moves the run to RUNNING at the gate's ``resume_at``. The
        approvals counted are those answering the pending request, so a gate
        asked again (after a retry) starts from zero. Commits one transaction.

        Args:
            run_id: the waiting run.
            by: the approver's stable id (normalised: statecraft/identity.py).
            comment: recorded as the decision's reason.
            digest: if given, must equal the pending proposal's digest.
            extend: raised budget limits, ``{name: new limit}`` (``max_steps``,
                ``max_visits``, ``max_tokens``, ``max_cost_micros``; ``deadline``
                as a ``timedelta``); required for a gate that asks for a budget
                extension, and recorded in the event's payload (``budget``).
            signature: the approver's signature of this approval
                (:meth:`statecraft.signing.SigningKey.sign_approval`); required
                by ``ApprovalPolicy(require_signature=True)``.
            advance: continue the run inline once the quorum is reached.

        Returns:
            The run afterwards: WAITING_FOR_APPROVAL while approvals are
            missing (``pending.approved_by`` lists those so far). If a worker
            took the approved run first, the run as it stands.

        Raises:
            RunNotFound: no such run.
            IllegalTransition: the run is not WAITING_FOR_APPROVAL.
            ApprovalExpired: the gate's deadline has passed (its on-timeout
                action decides it; the worker records that).
            ApprovalMismatch: ``digest`` is not the pending proposal's.
            MachineLoadError, MachineMismatch: the run's machine cannot be
                had, or its definition or code changed since the run started.
            ApprovalRefused: the policy forbids ``by`` (self-approval, not in
                the group, excluded, or already approved).
            SignatureRefused: the signature is missing where required, does
                not verify, or the keyring does not bind its key to ``by``.
            InvalidActorId, NotAuthenticated: ``by`` is refused.
            KeyringError: the keyring cannot be read.
            RunError: a budget gate approved without raising its budget, or a
                raised limit that is unknown or not above what is used.
            AdvanceInterrupted: the approval was committed, then advancing
                the run inline stopped on an error not about the run.
        """
        by, identity = self._who(by, run_id)
        now = self._now()
        self._machine_checked(run_id, Trigger.APPROVE)
        with self._writing() as conn:
            run = self._load_row(conn, run_id)
            check_transition(run["status"], Trigger.APPROVE, run_id=run_id)
            _check_deadline(run, now, Trigger.APPROVE)
            pending = str(run["pending_proposal_digest"])
            if digest is not None and digest != pending:
                raise ApprovalMismatch(run_id, digest, pending)
            gate = self._gate(conn, run)
            if gate.policy is not None:
                why = gate.policy.refusal(
                    by,
                    approved_by=gate.approved_by,
                    started_by=run["started_by"],
                    requested_by=gate.requested_by,
                )
                if why is not None:
                    raise ApprovalRefused(run_id, by, why)
            required = gate.policy is not None and gate.policy.require_signature
            self._check_signature(run_id, by, pending, signature, required=required)
            approved_by = [*gate.approved_by, by]
            reached = len(approved_by) >= gate.required
            payload: dict[str, Any] = {
                "proposal_digest": pending,
                "digest_checked": digest is not None,
                "comment": comment,
                "identity": identity.describe(),
            }
            if signature is not None:
                payload["signature"] = signature.describe()
            if gate.policy is not None:
                payload.update(
                    approvals=len(approved_by),
                    required=gate.required,
                    approved_by=approved_by,
                    quorum_reached=reached,
                )
            budget_json: Any = KEEP
            kind = run["pending_kind"] or ""
            asking = kind.split(":", 1)[1] if kind.startswith("budget:") else None
            if reached and (extend or asking):
                budget_json = extend_budget(run, extend or {}, asking=asking)
                payload["budget"] = json.loads(budget_json)
            self._transition(
                conn,
                run,
                event_type="approval.granted",
                to_status=RunStatus.RUNNING if reached else RunStatus.WAITING_FOR_APPROVAL,
                to_step=run["pending_resume_at"] if reached else run["step"],
                actor_type="human",
                actor_id=by,
                now=now,
                extra={
                    "decision": "approve",
                    "outcome": "success" if reached else "pending",
                    "reason": comment,
                    "caused_by_event_id": run["pending_request_event_id"],
                },
                payload=payload,
                clear_pending=reached,
                budget_json=budget_json,
            )
            if not reached:
                return self._info(conn, run_id)
            if advance:
                self._lease_to_advance(conn, run_id, now)
        return self._continue(run_id, on_event) if advance else self.get(run_id)

    def _check_signature(
        self, run_id: str, by: str, digest: str, signature: ApprovalSignature | None, *, required: bool
    ) -> None:
        """Refuse a signature that does not check, or its absence where the gate requires one.

        Raises:
            SignatureRefused: as :meth:`approve` says.
            KeyringError: the keyring cannot be read.
        """
        if signature is None:
            if required:
                raise SignatureRefused(
                    run_id, by, "this gate requires a signed approval (approve --sign-key FILE)"
                )
            return
        from .signing import signature_problem

        problem = signature_problem(signature, run_id=run_id, proposal_digest=digest, approver_id=by)
        if problem is not None:
            raise SignatureRefused(run_id, by, problem)
        keyring = self.keyring()
        if keyring is None:
            if required:
                raise SignatureRefused(
                    run_id, by,
                    "this gate requires a signature checked against a keyring, and this engine has "
                    "none (Engine(keyring=DIR), --keyring DIR or STATECRAFT_KEYRING)",
                )
            return
        problem = keyring.binding_problem(signature, approver_id=by)
        if problem is not None:
            raise SignatureRefused(run_id, by, problem)

    def reject(self, run_id: str, *, by: str, reason: str) -> RunInfo:
        """Reject the pending proposal (``approval.denied``); the run goes FAILED.

        One rejection suffices whatever the quorum (rejecting is the safe
        direction); under an approval policy with a ``group`` only a member
        may reject. Approvals already given to the gate are void.

        Raises:
            RunNotFound, IllegalTransition: unknown run, or not waiting.
            ApprovalExpired: the gate's deadline has passed.
            RunError: empty ``reason`` (every decision records one).
            ApprovalRefused: ``by`` is not in the gate's approver group.
            InvalidActorId, NotAuthenticated: ``by`` is refused.
        """
        by, identity = self._who(by, run_id)
        _require_reason(reason)
        now = self._now()
        with self._writing() as conn:
            run = self._load_row(conn, run_id)
            check_transition(run["status"], Trigger.REJECT, run_id=run_id)
            _check_deadline(run, now, Trigger.REJECT)
            gate = self._gate(conn, run)
            group = None if gate.policy is None else gate.policy.group
            if group is not None and by not in group:
                raise ApprovalRefused(run_id, by, f"{by} is not in the approver group {sorted(group)}")
            self._failed_by(
                conn, run, by, now, event_type="approval.denied", decision="reject",
                outcome="failure", error_code="rejected", reason=reason,
                caused_by_event_id=run["pending_request_event_id"],
                payload={"proposal_digest": run["pending_proposal_digest"], "identity": identity.describe()},
            )
            return self._info(conn, run_id)

    def _failed_by(
        self,
        conn: Connection | Tx,
        run: RunRecord,
        by: str,
        now: str,
        *,
        event_type: str,
        decision: str,
        outcome: str,
        error_code: str,
        reason: str,
        caused_by_event_id: str | None = None,
        payload: Any = None,
        release_lease: bool = False,
    ) -> None:
        """A named human moves the run to FAILED at its current step; any pending gate is void."""
        self._transition(
            conn,
            run,
            event_type=event_type,
            to_status=RunStatus.FAILED,
            to_step=run["step"],
            actor_type="human",
            actor_id=by,
            now=now,
            extra={
                "decision": decision,
                "outcome": outcome,
                "reason": reason,
                "error_code": error_code,
                "caused_by_event_id": caused_by_event_id,
            },
            payload=payload,
            clear_pending=True,
            release_lease=release_lease,
        )

    def _gate(self, conn: Connection | Tx, run: RunRecord) -> _Gate:
        """The pending gate's policy, requester and approvals so far. Read-only.

        The policy is read from the ``approval.requested`` event's output (the
        outcome as judged, stored by hash and bound into the chain through
        ``output_sha256``), so it cannot be changed without breaking verify;
        approvals so far are that request's ``approval.granted`` events.

        Raises:
            ApprovalRefused: the request's output is unreadable (redacted),
                so the policy is unknown: fail closed.
        """
        request_id = run["pending_request_event_id"]
        if not request_id:
            return _Gate(None, None, ())
        tx = tx_of(conn)
        request = gate_request(tx, run["run_id"], request_id)
        if request is None:
            return _Gate(None, None, ())
        policy, rules = None, ()
        if request[1]:
            body = get_blob(conn, request[1])
            if body is None:
                raise ApprovalRefused(
                    run["run_id"], "*",
                    "the gate's proposal was redacted, so its approval policy is unknown; "
                    "reject or cancel the run",
                )
            proposal = json.loads(body)
            described = proposal.get("policy")
            policy = None if described is None else ApprovalPolicy.from_json(described)
            rules = tuple(proposal.get("rules") or ())
        approved_by = gate_approvers(tx, run["run_id"], request_id)
        return _Gate(policy, request[0], approved_by, rules)

    def cancel(self, run_id: str, *, by: str, reason: str) -> RunInfo:
        """Cancel a run that is IDLE, RUNNING or WAITING_FOR_APPROVAL; it goes FAILED.

        A step executing elsewhere at that moment commits nothing (its
        conditional UPDATE finds the run moved on).

        Raises:
            RunNotFound, IllegalTransition: unknown run, or FAILED/DONE already.
            RunError: empty ``reason``.
            InvalidActorId, NotAuthenticated: ``by`` is refused.
        """
        by, identity = self._who(by, run_id)
        _require_reason(reason)
        now = self._now()
        with self._writing() as conn:
            run = self._load_row(conn, run_id)
            check_transition(run["status"], Trigger.CANCEL, run_id=run_id)
            self._failed_by(
                conn, run, by, now, event_type="run.cancelled", decision="cancel",
                outcome="cancelled", error_code="cancelled", reason=reason, release_lease=True,
                payload={"identity": identity.describe()},
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
        it asks again: a retry never bypasses a gate, and the new request has
        a new proposal digest (an approval of the old one cannot pass it).
        The run's machine is obtained first: a run whose definition or code
        changed is refused before anything is written.

        Raises:
            RunNotFound, IllegalTransition: unknown run, or not FAILED.
            MachineLoadError, MachineMismatch: the run's machine cannot be had.
            InvalidActorId, NotAuthenticated: ``by`` is refused.
            AdvanceInterrupted: see :meth:`start`.
        """
        by, identity = self._who(by, run_id)
        self._machine_checked(run_id, Trigger.RETRY)
        now = self._now()
        with self._writing() as conn:
            run = self._load_row(conn, run_id)
            self._operator_transition(
                conn, run, Trigger.RETRY, "run.retried", by, "human", now, reason=reason, identity=identity
            )
            if advance:
                self._lease_to_advance(conn, run_id, now)
        return self._continue(run_id, on_event) if advance else self.get(run_id)

    # -- reading ------------------------------------------------------------------

    def get(self, run_id: str) -> RunInfo:
        """The run's current snapshot. Read-only.

        Raises:
            RunNotFound: no such run.
        """
        with read_tx(self.db) as tx:
            return self._info(tx, run_id)

    def list(
        self,
        *,
        status: RunStatus | str | None = None,
        machine: str | None = None,
        limit: int = 100,
        since: str | datetime | None = None,
        until: str | datetime | None = None,
        after: str | None = None,
    ) -> builtins.list[RunInfo]:
        """Runs, newest first, filtered; at most ``limit`` (a page). Read-only.

        Args:
            status: only runs with this status (case-insensitive name).
            machine: only runs of this machine name.
            limit: at most this many runs (>= 1).
            since, until: only runs created in ``[since, until)``: aware
                datetimes or ISO 8601 strings with an offset.
            after: the last run id of the previous page: the page after it.

        Raises:
            ValueError: an unknown status, a limit below 1, or a time without an offset.
        """
        wanted = None if status is None else str(RunStatus(str(status).upper()))
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        window = {k: None if v is None else format_utc(v if isinstance(v, datetime) else parse_utc(v))
                  for k, v in (("since", since), ("until", until))}
        with self.db.read() as conn:
            ids = list_run_ids(tx_of(conn), status=wanted, machine=machine, limit=limit, after=after, **window)
            return [self._info(conn, rid) for rid in ids]

    def resolve_run_id(self, ref: str) -> str:
        """The full id of the run ``ref`` names: the id itself, or a unique prefix of it (git-style).

        A prefix needs at least ``MIN_RUN_ID_PREFIX`` (4) characters; it is
        matched as given, then lower-cased (ids are lower-case UUIDs). Read-only.

        Raises:
            RunNotFound: no run has that id or prefix.
            AmbiguousRunId: the prefix matches several runs (they are listed).
        """
        ref = ref.strip()
        with read_tx(self.db) as tx:
            if ref and load_run(tx, ref) is not None:
                return ref
            if len(ref) < MIN_RUN_ID_PREFIX:
                raise RunNotFound(ref)
            for prefix in dict.fromkeys((ref, ref.lower())):
                found = run_ids_with_prefix(tx, prefix, limit=11)
                if len(found) == 1:
                    return found[0]
                if found:
                    raise AmbiguousRunId(ref, found)
        raise RunNotFound(ref)

    def events(self, run_id: str | None = None) -> builtins.list[AuditEvent]:
        """Audit events in ``seq`` order, of one run or of the whole ledger. Read-only."""
        with self.db.read() as conn:
            rows = event_rows(tx_of(conn), run_id)
        return [AuditEvent.model_validate(r) for r in rows]

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

    def _machine(self, run: RunRecord) -> Machine[Any]:
        digest = run["machine_digest"]
        # A run recorded before code digests existed names its definition digest.
        machine = self._machines.get(digest) or self._by_definition.get(digest)
        if machine is not None:
            return machine
        ref = run["machine_ref"]
        if not ref:
            raise MachineLoadError(
                f"{run['machine_name']} v{run['machine_version']}",
                "not registered with this engine and no reference was recorded at start",
            )
        from .loader import load_machine  # machines load on demand: reading runs needs no loader

        loaded = load_machine(ref)
        if digest not in (loaded.digest, loaded.definition_digest):
            raise self._mismatch(run, loaded)
        self.register(loaded)
        return loaded

    def _mismatch(self, run: RunRecord, loaded: Machine[Any]) -> MachineMismatch:
        """``MachineMismatch`` saying what changed, from the machine recorded at ``run.created``. Read-only."""
        with self.db.read() as conn:
            body = first_payload(tx_of(conn), run["run_id"])
        try:
            recorded = json.loads(body)["machine"] if body else None
        except (ValueError, KeyError, TypeError):
            recorded = None
        if not isinstance(recorded, dict):  # an older run, or a redacted payload
            return MachineMismatch(run["run_id"], run["machine_digest"], loaded.digest)
        changed = [
            part for part, now in (("definition", loaded.definition_digest), ("code", loaded.code_digest))
            if recorded.get(f"{part}_digest") != now
        ]
        before = {
            str(f.get("path")): f.get("sha256") for f in recorded.get("code_files") or () if isinstance(f, dict)
        }
        after = {f.path: f.sha256 for f in loaded.code_files}
        files = tuple(sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p)))
        return MachineMismatch(
            run["run_id"], run["machine_digest"], loaded.digest,
            changed=" and ".join(changed) or None, files=files if "code" in changed else (),
        )

    def advance(
        self,
        run_id: str,
        *,
        max_transitions: int | None = None,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """Execute steps of a RUNNING run until a gate, a terminal status, or the lease is lost.

        Takes the run's lease first (conditional UPDATE; an expired lease, or
        one whose owner process on this host is gone, is taken over, audited
        as ``lease.taken_over``), renews it while steps run, and releases it
        when it stops. Each step's agent runs outside any transaction under
        the step's timeout, retry policy and the run's budgets; each outcome
        commits in one transaction (statecraft/runner.py). A run that is not
        RUNNING is returned unchanged.

        Args:
            run_id: the run.
            max_transitions: stop after this many committed transitions (for
                workers that interleave runs); ``None`` means until the run stops.
            on_event: called after each committed transition.

        Returns:
            The run as it stands when advancing stopped.

        Raises:
            RunNotFound: no such run.
            LeaseHeld: another engine holds a live lease on the run.
            MachineLoadError, MachineMismatch: the definition cannot be had.
        """
        return self.runner.advance(run_id, max_transitions=max_transitions, on_event=on_event)

    def resume(
        self,
        run_id: str,
        *,
        wait: timedelta | None = None,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """Continue a RUNNING run whose engine died, from its last checkpoint.

        Committed steps are never executed again; the step that was in flight
        when the process died runs again (agents run at least once; side
        effects through ``ctx.once`` keep their idempotency key). A retry
        backoff recorded before the crash is honoured.

        Args:
            run_id: the run.
            wait: how long to wait for a live lease held by another engine to
                expire before giving up (default: do not wait).
            on_event: called after each committed transition.

        Returns:
            The run as it stands when advancing stopped.

        Raises:
            RunNotFound: no such run.
            IllegalTransition: the run is not RUNNING (``trigger`` ``resume``;
                the message says what to do instead).
            LeaseHeld: another engine still holds a live lease after ``wait``.
        """
        return self.runner.resume(run_id, wait=wait, on_event=on_event)

    def runnable(self, limit: int = 100) -> builtins.list[str]:
        """Ids of RUNNING runs that no live engine holds and whose retry backoff is over. Read-only.

        What a worker picks up: runs started with ``advance=False``
        (``start --detach``), approved with ``advance=False``
        (``approve --no-continue``), or orphaned by a dead engine.
        """
        return self.runner.runnable(limit)

    def claim(self, limit: int, *, exclude: Iterable[str] = ()) -> builtins.list[str]:
        """Lease up to ``limit`` runnable runs for this engine to advance; their ids. Commits one transaction.

        What a worker calls: runs nobody holds (started detached, approved
        with ``advance=False``, past any retry backoff) are leased in one
        statement — on PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so workers
        on many hosts claim disjoint runs without waiting for each other —
        then, up to ``limit``, runs whose lease expired or whose holder's
        process is gone (their takeover is audited when they are advanced).
        Advance each id promptly: a claimed run is held until its lease expires.

        Args:
            limit: at most this many ids.
            exclude: run ids not to claim (already in this worker's hands).
        """
        return self.runner.claim(limit, tuple(exclude))

    def expire_approvals(self) -> builtins.list[RunInfo]:
        """Apply the on-timeout action of every gate past its approval deadline.

        Each expiry is one transaction and one ``approval.expired`` event with
        actor ``system``: the run goes FAILED (``error_code``
        ``approval_expired``), or RUNNING at the gate's ``resume_at`` where
        the step declared ``on_approval_timeout="approve"``.

        Returns:
            The runs changed, as they stand afterwards.
        """
        return [self.get(run_id) for run_id in self.runner.expire_due()]

    # -- the one place a run row changes ---------------------------------------------

    def _operator_transition(
        self,
        conn: Connection | Tx,
        run: RunRecord,
        trigger: Trigger,
        event_type: str,
        by: str,
        actor_type: str,
        now: str,
        *,
        reason: str | None = None,
        identity: Identity,
    ) -> RunRecord:
        """An operator's request as one transition; the run row after it (see :meth:`_transition`)."""
        to_status = check_transition(run["status"], trigger, run_id=run["run_id"])
        return self._transition(
            conn, run, event_type=event_type, to_status=to_status, to_step=run["step"],
            actor_type=actor_type, actor_id=by, now=now,
            extra={"decision": str(trigger), "outcome": "success", "reason": reason},
            payload={"identity": identity.describe()}, clear_error=True,
        )

    def _lease_to_advance(self, conn: Connection | Tx, run_id: str, now: str, run: RunRecord | None = None) -> None:
        """Take the run's lease inside a request's transaction when this engine advances the run next.

        Rather than by a transaction of its own when ``advance`` begins: one
        commit (one fsync) less per request that advances inline (issue #11;
        ``Runner._take`` then finds the lease its own and writes nothing).
        Only if the run is RUNNING and the lease free: a worker that got it
        first keeps it, and the request returns the run in its hands.
        ``run``: the row as this transaction left it, if the caller has it.
        """
        if run is None:
            run = self._load_row(conn, run_id)
        if run["status"] == RunStatus.RUNNING and run["lease_owner"] is None:
            take_lease(
                tx_of(conn), run_id, owner=self.owner, expires_at=format_utc(parse_utc(now) + self.lease),
                run_seq=run["run_seq"], holder=None,
            )

    @contextmanager
    def _writing(self) -> Iterator[Tx]:
        """One write transaction of an operator request; its transitions are reported once it commits.

        On the driver-level path (``write_tx``) the step loop commits through:
        SQLAlchemy's connection and result machinery cost more than the
        statements of a small request (bench/bench_compare.py: creating a
        run).
        """
        reports: list[StepReport] = []
        self._local.reports = reports
        try:
            with write_tx(self.db) as tx:
                yield tx
        finally:
            self._local.reports = None
        for report in reports:
            self.report(report)

    def report(self, report: StepReport) -> None:
        """Hand one committed transition to the ``on_event`` hook, if any (never raises into the caller).

        Called after each transition has committed: operator requests, steps
        advanced by this engine (any driver), expiries. A hook that raises is
        logged (``statecraft.engine``) and otherwise ignored: the transition
        is committed, whatever a listener does with the news.
        """
        if self._on_event is None:
            return
        try:
            self._on_event(report)
        except Exception:
            _log.exception("on_event hook failed for %s of run %s", report.event_type, report.run_id)

    def _transition(self, conn: Connection | Tx, run: RunRecord, **kwargs: Any) -> RunRecord:
        """Update the run row and append its audit event: one transition, one event.

        Inside the caller's write transaction; see
        :func:`statecraft.transition.write_transition` for the arguments.
        Every event of a run records the run's status, step and state hash
        *after* it, so folding a run's events reproduces its row (DESIGN.md
        invariant 2).

        Returns:
            The run row after it, as the transaction now holds it.

        Raises:
            RunMoved: the run is not at the position ``run`` says.
        """
        committed = write_transition(tx_of(conn), self.db.ledger_id, run, **kwargs)
        event = committed.event
        pending = getattr(self._local, "reports", None)
        if pending is not None:
            pending.append(StepReport(
                run["run_id"], event["event_type"], event["from_step"], event["to_step"],
                RunStatus(kwargs["to_status"]), event["latency_ms"] or 0, event["reason"],
            ))
        return committed.run

    # -- row access ---------------------------------------------------------------

    def _load_row(self, conn: Connection | Tx, run_id: str) -> RunRecord:
        # On the DB-API connection under the caller's transaction (tx_of):
        # SQLAlchemy's result machinery costs ~60 µs here, the driver ~5.
        row = load_run(tx_of(conn), run_id)
        if row is None:
            raise RunNotFound(run_id)
        return row

    def _info(self, conn: Connection | Tx, run_id: str) -> RunInfo:
        run = self._load_row(conn, run_id)
        body = get_blob(conn, run["state_sha256"])
        pending = None
        request_id = run["pending_request_event_id"]
        if run["status"] == RunStatus.WAITING_FOR_APPROVAL and run["pending_proposal_digest"] and request_id:
            try:
                gate = self._gate(conn, run)
            except ApprovalRefused:  # redacted proposal: show the gate, policy unknown
                gate = _Gate(None, None, ())
            pending = PendingApproval(
                requested_event_id=request_id,
                step=run["step"],
                resume_at=run["pending_resume_at"],
                reason=run["pending_reason"],
                proposal_digest=run["pending_proposal_digest"],
                required=gate.required,
                approved_by=gate.approved_by,
                approver_group=(
                    None if gate.policy is None or gate.policy.group is None
                    else tuple(sorted(gate.policy.group))
                ),
                rules=gate.rules,
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


def _check_deadline(run: RunRecord, now: str, trigger: Trigger) -> None:
    """Refuse a decision on a gate past its deadline (nothing written; the worker expires it)."""
    deadline = run["pending_deadline_at"]
    if deadline and deadline <= now:
        raise ApprovalExpired(run["run_id"], deadline, str(trigger))


def _machine_json(machine: Machine[Any]) -> dict[str, Any]:
    """The ``run.created`` payload's ``machine``: both digest parts and the code files."""
    return {
        "definition_digest": machine.definition_digest,
        "code_digest": machine.code_digest,
        "code_files": [{"path": f.path, "sha256": f.sha256} for f in machine.code_files],
    }


def _require_reason(reason: str) -> None:
    if not isinstance(reason, str) or not reason.strip():
        raise RunError("a reason is required (every decision records one: EU AI Act Art. 86)")

