"""Advancing runs: the step loop under leases, retries, timeouts, budgets and error edges.

``Engine.advance`` / ``Engine.resume`` delegate here. For one run:

1. take the lease (conditional UPDATE under the write lock; an expired
   lease, or one whose owner process is gone, is taken over and audited);
2. read the checkpoint (run row and state blob) once, in the lease's
   transaction, then keep the row and state in memory: every later write is
   fenced on ``run_seq`` and the lease owner, so the cache cannot silently
   go stale (statecraft/transition.py), and a fence that fails stops the loop;
3. before each agent call, check the budgets (statecraft/budget.py);
4. call the agent (statecraft/execution.py) outside any transaction;
5. commit what happened, one transaction per transition:

   =========================  ===========================================
   the attempt …              event (run status afterwards)
   =========================  ===========================================
   returned a legal outcome   ``step.completed``, ``run.completed``,
                              ``approval.requested``, ``run.failed``
   returned an illegal one    ``run.failed`` (never retried)
   failed, attempts remain    ``step.attempt_failed`` (RUNNING, same step)
   failed, none remain        ``step.error_edge`` to ``on_error`` (RUNNING),
                              ``approval.requested`` if the step escalates,
                              else ``run.failed``
   found a budget exhausted   ``run.failed`` or ``approval.requested``
   =========================  ===========================================

6. repeat until a gate, a terminal status, a stop request, or the lease is lost.

Commits use the stdlib driver under the SQLModel schema, on the process's one
writer connection (statecraft/store/txn.py), and skip blobs known to be
stored; bench/bench_transitions.py measures what a durable step costs next to
SQLite's own floor.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel

from ._time import format_utc, parse_utc
from .agents.base import RecordedCall, StepContext
from .budget import Exceeded, Limits, check, limits_for, visits_of
from .errors import ApprovalRefused, IllegalTransition, LeaseHeld, RunNotFound
from .execution import Attempt, EffectLog, run_attempt
from .leases import LeaseKeeper, owner_is_gone
from .lifecycle import RunStatus, Trigger, check_transition
from .machine import IllegalOutcome, Machine, ReadOnlyStateError, Step
from .outcomes import Fail, Finish, Goto, RequestApproval
from .policy import ms
from .proposals import jsonable, outcome_json, proposal_digest
from .store.blobs import blob_json, get_blob, insert_blob, sha256_hex
from .store.ledger import AuditFields
from .store.runs import (
    RunRecord,
    claim_free_runs,
    due_approvals,
    load_run,
    release_all_leases,
    release_lease,
    runnable_candidates,
    running_since,
    take_lease,
)
from .store.txn import Tx, group_write, read_on_writer, read_tx, tx_of, write_tx
from .tracing import SpanHandle, span
from .views import StepReport
from .transition import KEEP, Committed, RunMoved, SubCall, write_sub_calls, write_transition

if TYPE_CHECKING:
    from .outcomes import ApprovalPolicy
    from .store.db import Database
    from .views import RunInfo

__all__ = ["AgentCall", "Backoff", "Host", "StepRunner"]

_KNOWN_BLOBS_MAX: Final = 4096
_VISITS_JSON: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


@dataclass
class _Live:
    """One run being advanced: its machine, and the row and state as last committed."""

    machine: Machine[Any]
    row: RunRecord
    state: BaseModel
    limits: Limits
    running_since: datetime | None
    lost: threading.Event
    task: list[Any] = field(default_factory=list)
    visits_json: Any = KEEP  # the ``visits_json`` that ``visits`` was parsed from
    visits: dict[str, int] = field(default_factory=dict)
    slept_at: int = -1  # the run_seq whose retry backoff was already waited out

    def visit_counts(self) -> dict[str, int]:
        """``{step: completions}`` of the current row, parsed once per change (do not mutate)."""
        raw = self.row["visits_json"]
        if raw is not self.visits_json:
            self.visits, self.visits_json = visits_of(self.row), raw
        return self.visits


_log = logging.getLogger("statecraft.engine")

# Which committed events an operator wants to hear about, at which level;
# every other transition is DEBUG (the ledger has them all).
_LOG_LEVELS: Final = {
    "run.failed": logging.WARNING,
    "lease.taken_over": logging.WARNING,
    "step.attempt_failed": logging.INFO,
    "approval.requested": logging.INFO,
    "run.completed": logging.INFO,
    "step.error_edge": logging.INFO,
}


def _at(row: RunRecord) -> str:
    """The step a RUNNING (or waiting) run is at; every such row has one (``run.step`` is NULL only before a machine's first step is known)."""
    step = row["step"]
    if step is None:
        raise RunMoved(f"run {row['run_id']} has no current step", run_id=row["run_id"])
    return step


def _log_committed(event: Mapping[str, Any]) -> None:
    level = _LOG_LEVELS.get(event["event_type"], logging.DEBUG)
    if not _log.isEnabledFor(level):
        return
    fields = {
        k: event[k] for k in (
            "run_id", "run_seq", "seq", "event_type", "from_step", "to_step", "to_status",
            "error_code", "reason", "latency_ms", "attempt",
        ) if event.get(k) is not None
    }
    _log.log(level, event["event_type"], extra={"fields": fields})


class _KnownBlobs:
    """Hashes of blobs this engine wrote in committed transactions: a bounded LRU, thread-safe.

    A hash forgotten only costs a no-op ``INSERT … ON CONFLICT DO NOTHING``.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: dict[str, None] = {}  # insertion order = recency
        self._lock = threading.Lock()

    def __contains__(self, digest: str) -> bool:
        with self._lock:
            if digest not in self._seen:
                return False
            del self._seen[digest]
            self._seen[digest] = None
            return True

    def add(self, digests: Sequence[str]) -> None:
        with self._lock:
            for digest in digests:
                self._seen.pop(digest, None)
                self._seen[digest] = None
            while len(self._seen) > self._limit:
                del self._seen[next(iter(self._seen))]


@dataclass(frozen=True)
class AgentCall:
    """The agent call the step loop needs next: everything one attempt is made of.

    Returned by :meth:`StepRunner.next_move`; the driver makes the call
    (``run_attempt`` or ``attempt_async``) and hands the result to
    :meth:`StepRunner.conclude`.
    """

    step: Step
    view: BaseModel
    ctx: StepContext
    effects: EffectLog
    timeout_s: float | None
    deadline_cut: bool  # the timeout is what is left of the run's deadline
    attempt: int


@dataclass(frozen=True)
class Backoff:
    """Wait this long (a durable retry backoff), then ask the loop again."""

    seconds: float


@dataclass(frozen=True)
class _Failure:
    """Why an attempt failed, as audited."""

    outcome: str  # failure | timeout
    error_code: str
    error_type: str
    reason: str
    retryable: bool


@dataclass(frozen=True)
class Host:
    """What the step loop needs from the engine that drives it, and nothing more.

    Explicit so that the loop cannot reach into the engine's private state:
    ``Engine`` builds one of these from its own bound methods.

    Attributes:
        db: the database runs and the ledger live in.
        owner: the lease owner id this engine writes (``host:pid:nonce``).
        lease: how long a lease lasts before it must be renewed.
        clock: the engine's clock (aware UTC ``datetime``; injectable in tests).
        machine_of: the machine for a run row (registered or loaded from its
            recorded ref); raises ``MachineLoadError``/``MachineMismatch``.
        info: ``(connection or Tx, run_id) -> RunInfo``; raises ``RunNotFound``.
        task: the run's original input by run id (str or dict).
        report: hands one committed transition to the ``on_event`` hook; never raises.
        gate_policy: the approval policy of the gate a waiting run row is at,
            or ``None``; raises ``ApprovalRefused`` if the proposal was redacted.
    """

    db: Database
    owner: str
    lease: timedelta
    clock: Callable[[], datetime]
    machine_of: Callable[[RunRecord], Machine[Any]]
    info: Callable[[Any, str], RunInfo]
    task: Callable[[str], Any]
    report: Callable[[StepReport], None]
    gate_policy: Callable[[Any, RunRecord], ApprovalPolicy | None]


class StepRunner:
    """The step loop of one :class:`~statecraft.engine.Engine` (composition, not a public API).

    Args:
        host: what the loop uses of its engine: database, clock, owner id,
            lease length, machines, snapshots and the event hook.
        rng: randomness for retry jitter (inject for deterministic tests).
        trust_local_pids: treat leases of dead processes on this host as expired.
        crash_loop_limit: lease takeovers of one step without progress after
            which the run fails with ``crash_loop`` (a step that kills its
            process would otherwise be retried by every worker forever).
    """

    def __init__(
        self,
        host: Host,
        *,
        rng: random.Random | None = None,
        trust_local_pids: bool = True,
        crash_loop_limit: int = 10,
    ) -> None:
        self.host = host
        self.db = host.db
        self.rng = rng or random.Random()
        self.trust_local_pids = trust_local_pids
        self.crash_loop_limit = crash_loop_limit
        self.keeper = LeaseKeeper(host.db, host.owner, host.lease, host.clock)
        self.stopping = threading.Event()
        self._known_blobs = _KnownBlobs(_KNOWN_BLOBS_MAX)
        # One Engine serves many threads under one owner id; the lease alone
        # cannot tell them apart, so runs in progress here are tracked too.
        self._active: set[str] = set()
        self._active_lock = threading.Lock()

    # -- small helpers ------------------------------------------------------------

    def _now(self) -> str:
        return format_utc(self.host.clock())

    def _report(self, run_id: str, event: Mapping[str, Any], latency_ms: int = 0) -> StepReport:
        return StepReport(
            run_id, event["event_type"], event["from_step"], event["to_step"],
            RunStatus(event["to_status"]), latency_ms, event["reason"],
        )

    def _commit(self, write: Callable[[Tx, list[str]], Committed]) -> Committed | None:
        """Run ``write`` in one write transaction; ``None`` if the run moved (nothing written)."""
        blobs: list[str] = []
        try:
            # Possibly batched with other runs' commits (group commit): returns
            # once the transaction holding this one is durable.
            committed = group_write(self.db, lambda tx: write(tx, blobs))
        except RunMoved:
            return None
        if blobs:
            self._known_blobs.add(blobs)  # only once committed: a rollback un-stores them
        return committed

    def _blob(self, tx: Tx, body: bytes, now: str, blobs: list[str], current: str | None = None) -> str:
        """Store ``body`` in ``tx`` unless it is known to be stored; return its hash.

        Known: the run's current state (``current``), or a blob this engine
        wrote in a committed transaction. A redacted body stays redacted
        either way (``ON CONFLICT DO NOTHING`` never restores it).
        """
        digest = sha256_hex(body)
        if digest != current and digest not in self._known_blobs:
            insert_blob(tx, digest, body, created_at=now)
            blobs.append(digest)
        return digest

    @staticmethod
    def load(tx: Tx, run_id: str) -> RunRecord:
        """The run row as a dict. Raises ``RunNotFound``."""
        row = load_run(tx, run_id)
        if row is None:
            raise RunNotFound(run_id)
        return row

    # -- leases -------------------------------------------------------------------

    def acquire(self, run_id: str) -> RunRecord | None:
        """Take the run's lease; the row afterwards, or ``None`` if the run is not RUNNING.

        Commits one transaction; a takeover also appends ``lease.taken_over``.

        Raises:
            RunNotFound: no such run.
            LeaseHeld: another live engine holds the lease.
        """
        taken = self._take(run_id, None)
        return None if taken is None else taken[0]

    def _take(
        self, run_id: str, machine: Machine[Any] | None
    ) -> tuple[RunRecord, bytes | None, str | None] | None:
        """:meth:`acquire`, also reading what advancing the run needs, in the same transaction.

        Returns:
            ``None`` if the run is not RUNNING; else the row afterwards and,
            with ``machine``, the state blob's body (``None`` if missing or
            redacted) and, when a deadline applies, when the run last entered
            RUNNING (without ``machine``: ``None``, ``None``).

        Raises:
            RunNotFound: no such run.
            LeaseHeld: another live engine holds the lease.
        """
        now_dt = self.host.clock()
        now, expires = format_utc(now_dt), format_utc(now_dt + self.host.lease)
        me = self.host.owner
        with write_tx(self.db) as tx:
            run = self.load(tx, run_id)
            if run["status"] != RunStatus.RUNNING:
                return None
            holder, until = run["lease_owner"], run["lease_expires_at"]
            gone = holder not in (None, me) and self.trust_local_pids and owner_is_gone(holder)
            if holder not in (None, me) and until is not None and until > now and not gone:
                raise LeaseHeld(run_id, holder, until)
            # Already ours with over half its term left (a request took it in its
            # own transaction: Engine._lease_to_advance): nothing to write, so
            # this transaction commits without an fsync; the keeper renews it.
            ours = holder == me and until is not None and until > format_utc(now_dt + self.host.lease / 2)
            if not ours:
                # Conditional on what was read, so the lease changes hands only from
                # the holder this decision was about (we also hold the write lock).
                if not take_lease(tx, run_id, owner=me, expires_at=expires, run_seq=run["run_seq"], holder=holder):
                    raise LeaseHeld(run_id, str(holder), str(until))
                run.update({"lease_owner": me, "lease_expires_at": expires})
            if holder not in (None, me):
                why = "its process is gone" if gone else f"it expired at {until}"
                run = write_transition(
                    tx, self.db.ledger_id, run,
                    event_type="lease.taken_over", to_status=RunStatus.RUNNING, to_step=run["step"],
                    actor_type="system", actor_id=me, now=now,
                    extra={"decision": "take_over", "outcome": "success",
                           "reason": f"lease of {holder} taken over: {why}"},
                    payload={"previous_owner": holder, "previous_expires_at": until, "owner_gone": gone},
                    keep_lease=True, takeovers=run["takeovers"] + 1,
                ).run
            if machine is None:
                return run, None, None
            body = get_blob(tx, run["state_sha256"])
            since = None
            if machine.budget.deadline is not None or run["budget_json"]:
                since = running_since(tx, run_id)
        return run, body, since

    def release(self, run_id: str) -> None:
        """Release this engine's lease on the run, if it still holds it. Commits one transaction."""
        with write_tx(self.db) as tx:
            release_lease(tx, run_id, self.host.owner)

    # -- the loop -------------------------------------------------------------------

    def advance(
        self,
        run_id: str,
        *,
        max_transitions: int | None = None,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """See :meth:`statecraft.engine.Engine.advance`. The synchronous driver of the step loop."""
        with self.run_span(run_id):
            live = self.begin(run_id)
            if live is None:
                return self._info(run_id)
            try:
                done = 0
                while (max_transitions is None or done < max_transitions) and not self.stopping.is_set():
                    with self.step_span(live) as step_span:
                        nxt = self.next_move(live)
                        if isinstance(nxt, Backoff):
                            if self.stopping.wait(nxt.seconds):
                                break
                            continue
                        if isinstance(nxt, AgentCall):
                            with self.attempt_span(live, nxt) as attempt_span:
                                result = run_attempt(
                                    nxt.step.agent, nxt.view, nxt.ctx, timeout_s=nxt.timeout_s,
                                    lost=live.lost, abandon=nxt.effects.abandon,
                                )
                                self.note_attempt(attempt_span, result)
                            nxt = self.conclude(live, nxt, result)
                        if not self.committed(live, nxt, on_event, step_span):
                            break
                    done += 1
            finally:
                self.end(live)
            return self._info(run_id)

    # The step loop in pieces, so that a synchronous driver (``advance``, on
    # the caller's thread) and an asynchronous one (statecraft/aio.py, on an
    # event loop, database work in threads) run the same loop: ``begin``,
    # then ``next_move`` until it stops, ``conclude`` after each agent call
    # the driver made, ``committed`` after each transition, ``end``.

    def begin(self, run_id: str) -> _Live | None:
        """Take the run's lease and read its checkpoint; ``None`` if it is not RUNNING (nothing held).

        Commits one transaction (two with a takeover). Blocking (database I/O).

        Raises:
            RunNotFound, LeaseHeld, MachineLoadError, MachineMismatch: as ``Engine.advance``.
        """
        peek = read_on_writer(self.db, lambda tx: load_run(tx, run_id))
        if peek is None:
            raise RunNotFound(run_id)
        if peek["status"] != RunStatus.RUNNING:
            return None
        machine = self.host.machine_of(peek)
        with self._active_lock:
            if run_id in self._active:
                raise LeaseHeld(run_id, f"{self.host.owner} (another thread)", str(peek["lease_expires_at"]))
            self._active.add(run_id)
        live: _Live | None = None
        try:
            acquired = self._take(run_id, machine)
            if acquired is None:
                return None
            row, body, since = acquired
            lost = self.keeper.hold(run_id)
            try:
                live = self._open(machine, row, body, since, lost)
            finally:
                if live is None:
                    self._let_go(run_id, row)
            return live
        finally:
            if live is None:
                with self._active_lock:
                    self._active.discard(run_id)

    def end(self, live: _Live) -> None:
        """Stop renewing the lease and release it if still held. Blocking (one transaction)."""
        run_id = live.row["run_id"]
        try:
            self._let_go(run_id, live.row)
        finally:
            with self._active_lock:
                self._active.discard(run_id)

    def _let_go(self, run_id: str, row: RunRecord) -> None:
        self.keeper.drop(run_id)
        if row.get("lease_owner") == self.host.owner:
            self.release(run_id)

    # -- spans (statecraft/tracing.py): one tree per advance, for both drivers ------------

    def run_span(self, run_id: str) -> AbstractContextManager[SpanHandle]:
        """The ``invoke_workflow`` span around one ``advance`` of ``run_id``."""
        return span("invoke_workflow statecraft", {
            "gen_ai.operation.name": "invoke_workflow", "statecraft.run_id": run_id,
            "statecraft.engine.owner": self.host.owner,
        })

    def step_span(self, live: _Live) -> AbstractContextManager[SpanHandle]:
        """The span of the transition the run makes next, at its current step."""
        row = live.row
        return span(f"step {row['step']}", {
            "statecraft.run_id": row["run_id"], "statecraft.step": row["step"],
            "statecraft.machine": live.machine.name, "statecraft.machine.version": live.machine.version,
        })

    def attempt_span(self, live: _Live, call: AgentCall) -> AbstractContextManager[SpanHandle]:
        """The ``invoke_agent`` span of one attempt (GenAI semantic conventions)."""
        return span(f"invoke_agent {call.step.agent_name}", {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": call.step.agent_name,
            "gen_ai.agent.version": call.step.agent_version, "statecraft.run_id": live.row["run_id"],
            "statecraft.step": call.step.name, "statecraft.attempt": call.attempt,
        })

    @staticmethod
    def note_attempt(attempt_span: SpanHandle, result: Attempt) -> None:
        """Record how an attempt ended, and its usage, on its span."""
        usage = result.usage
        attempt_span.set_many({
            "gen_ai.usage.input_tokens": usage.tokens_in or None,
            "gen_ai.usage.output_tokens": usage.tokens_out or None,
            "statecraft.cost_micros": usage.cost_micros or None,
            "gen_ai.request.model": usage.model_id,
        })
        if result.timed_out or result.lost:
            attempt_span.fail("timeout" if result.timed_out else "lease_lost")
        elif result.error is not None:
            attempt_span.fail(type(result.error).__name__, str(result.error)[:300])

    def next_move(self, live: _Live) -> AgentCall | Backoff | Committed | None:
        """What the run needs next: an agent call, a backoff to wait out, or a system decision (committed).

        ``None``: stop (lease lost, not RUNNING, or a system decision found
        the run moved). Blocking: a system decision commits a transaction.
        """
        row, machine = live.row, live.machine
        if live.lost.is_set() or row["status"] != RunStatus.RUNNING:
            return None
        clock = self.host.clock
        if row["wake_at"] and live.slept_at != row["run_seq"]:
            # Retry backoff, durable in the row so a resumed run honours it.
            live.slept_at = row["run_seq"]
            wait_s = (parse_utc(row["wake_at"]) - clock()).total_seconds()
            return Backoff(wait_s) if wait_s > 0 else self.next_move(live)
        step = machine.steps[_at(row)]
        now_dt = clock()
        exceeded = check(live.limits, row, step.name, now=now_dt, running_since=live.running_since)
        if exceeded is not None:
            return self._over_budget(live, step, exceeded)
        if row["takeovers"] >= self.crash_loop_limit:
            return self._system_fail(
                row, "crash_loop",
                f"step {step.name!r} was taken over {row['takeovers']} times without completing "
                "(its process keeps dying); fix the cause, then retry the run",
            )
        return self._prepare(live, step, now_dt)

    def committed(
        self, live: _Live, committed: Committed | None, on_event: Callable[[StepReport], None] | None,
        step_span: SpanHandle | None = None,
    ) -> bool:
        """Take in a committed transition (``None``: nothing was); whether the loop goes on."""
        if committed is None:
            return False  # the run moved on (cancelled, taken over), or the attempt was abandoned
        if step_span is not None:
            event = committed.event
            step_span.set_many({
                "statecraft.audit.seq": event["seq"], "statecraft.event_type": event["event_type"],
                "statecraft.to_step": event["to_step"], "statecraft.status": event["to_status"],
            })
            if event["event_type"] in ("run.failed", "step.attempt_failed"):
                step_span.fail(event["error_code"] or "failed", event["reason"])
        live.row = committed.run
        if _log.isEnabledFor(logging.INFO):
            _log_committed(committed.event)
        report = self._report(live.row["run_id"], committed.event, committed.event["latency_ms"] or 0)
        self.host.report(report)
        if on_event is not None:
            on_event(report)
        return True

    def _info(self, run_id: str) -> RunInfo:
        """``Engine.get``, read on the writer connection, whose cache holds the pages just written."""
        with read_tx(self.db, on_writer=True) as tx:
            return self.host.info(tx, run_id)

    def _open(
        self, machine: Machine[Any], row: RunRecord, body: bytes | None, since: str | None,
        lost: threading.Event,
    ) -> _Live | None:
        if body is None:
            self._system_fail(row, "checkpoint_missing", f"state blob {row['state_sha256']} is missing or redacted")
            return None
        state = machine.state_model.model_validate_json(body)
        return _Live(
            machine=machine, row=row, state=state,
            limits=limits_for(machine, row["budget_json"]),
            running_since=parse_utc(since) if since else None,
            lost=lost,
        )

    # -- one attempt ----------------------------------------------------------------

    def _prepare(self, live: _Live, step: Step, now_dt: datetime) -> AgentCall:
        """The next attempt at ``step``: its fresh read-only view, context and timeout. No I/O."""
        machine, row = live.machine, live.row
        run_id = row["run_id"]
        attempt = row["attempts"] + 1
        view = machine.view(step.name, live.state)
        effects = EffectLog(self.db, run_id, step.name, self._now)

        def load_task() -> Any:
            if not live.task:
                live.task.append(self.host.task(run_id))
            return live.task[0]

        ctx = StepContext(
            run_id=run_id, machine=machine.name, machine_version=machine.version, step=step.name,
            attempt=attempt, started_by=row["started_by"], load_task=load_task,
            clock=self.host.clock, once=effects, parent_run_id=row["parent_run_id"],
            run_seq=row["run_seq"], visit=live.visit_counts().get(step.name, 0), database=self.db,
        )
        timeout_s = None if step.timeout is None else step.timeout.total_seconds()
        deadline_cut = False
        if live.limits.deadline_ms is not None and live.running_since is not None:
            left = live.limits.deadline_ms / 1000 - (now_dt - live.running_since).total_seconds()
            if timeout_s is None or left < timeout_s:
                timeout_s, deadline_cut = max(left, 0.0), True
        return AgentCall(step, view, ctx, effects, timeout_s, deadline_cut, attempt)

    def conclude(self, live: _Live, call: AgentCall, result: Attempt) -> Committed | None:
        """Judge what one attempt produced and commit it. Blocking (one transaction).

        Returns:
            The committed transition; ``None`` if the attempt was abandoned
            with the lease, or the run moved meanwhile (nothing written).
        """
        machine, step, view, attempt = live.machine, call.step, call.view, call.attempt
        if result.lost:
            return None
        if call.ctx.acting_agent is not None:
            # A canary chose one of its versions: the step's event names that one.
            step = replace(step, agent=call.ctx.acting_agent)
        view_is_state = step.reads is None  # the input is the whole state, stored already
        if result.timed_out and call.deadline_cut:
            elapsed = ms(self.host.clock() - live.running_since) if live.running_since else 0
            exceeded = Exceeded("deadline", live.limits.deadline_ms or 0, elapsed, step.name)
            return self._over_budget(live, step, exceeded, result, view, attempt)
        if isinstance(result.error, ReadOnlyStateError):
            # Writing outside update= is an illegal outcome, not a failed attempt:
            # never retried, no error edge (DESIGN.md invariant 1).
            judged: Any = IllegalOutcome("state_mutation", str(result.error))
        elif result.timed_out or result.error is not None:
            return self._attempt_failed(live, step, view, result, attempt, call.effects.used)
        else:
            mutated = machine.mutated_fields(step.name, view, live.state)
            if mutated:
                judged = IllegalOutcome(
                    "state_mutation",
                    f"step {step.name!r} changed {mutated} of its state view in place; the view "
                    "is a read-only copy and nothing outside update= is committed",
                )
            else:
                judged = machine.apply(step.name, live.state, result.outcome)
        return self._commit_outcome(
            live, step, view if not view_is_state else None, judged, result, attempt, call.effects.used
        )

    def _agent_fields(
        self, tx: Tx, live: _Live, step: Step, view: BaseModel | None, result: Attempt, attempt: int,
        now: str, blobs: list[str],
    ) -> AuditFields:
        usage = result.usage
        if view is None:
            input_sha = live.row["state_sha256"]  # the view is the whole state: already stored
        else:
            input_sha = self._blob(
                tx, blob_json(view.model_dump(mode="json")), now, blobs, live.row["state_sha256"]
            )
        return {
            "agent_name": step.agent_name,
            "agent_version": step.agent_version,
            "prompt_version": usage.prompt_version or step.prompt_version,
            "model_provider": usage.model_provider,
            "model_id": usage.model_id,
            "tokens_in": usage.tokens_in,
            "tokens_out": usage.tokens_out,
            "cost_micros": usage.cost_micros,
            "latency_ms": result.latency_ms,
            "attempt": attempt,
            "input_sha256": input_sha,
        }

    def _calls(self, tx: Tx, run: RunRecord, calls: Sequence[RecordedCall], now: str, blobs: list[str]) -> RunRecord:
        """Append one event per recorded sub-call; the run's status, step and state are unchanged."""
        sub_calls: list[SubCall] = []
        for call in calls:
            fields: AuditFields = {
                "agent_name": call.name, "agent_version": call.version, "decision": call.decision,
                "outcome": call.outcome, "reason": call.reason, "error_code": call.error_code,
                "latency_ms": call.latency_ms, "attempt": call.attempt,
                "model_provider": call.usage.model_provider, "model_id": call.usage.model_id,
                "prompt_version": call.usage.prompt_version, "tokens_in": call.usage.tokens_in,
                "tokens_out": call.usage.tokens_out, "cost_micros": call.usage.cost_micros,
            }
            if call.input is not None:
                fields["input_sha256"] = self._blob(tx, blob_json(jsonable(call.input)), now, blobs)
            if call.output is not None:
                fields["output_sha256"] = self._blob(tx, blob_json(jsonable(call.output)), now, blobs)
            sub_calls.append(SubCall(
                call.event_type, call.name, fields, call.payload,
                (call.usage.tokens_in, call.usage.tokens_out, call.usage.cost_micros),
            ))
        return write_sub_calls(tx, self.db.ledger_id, run, sub_calls, now=now, fence_owner=self.host.owner)

    def _gate(self, live: _Live, step: Step, state_sha: str, resume_at: str, reason: str, *, kind: str | None) -> dict[str, Any]:
        digest = proposal_digest(
            live.row["run_id"], state_sha, step.name, resume_at, reason, after_seq=live.row["run_seq"]
        )
        deadline_at = None
        if step.approval_deadline is not None:
            deadline_at = format_utc(self.host.clock() + step.approval_deadline)
        # Approve-by-default only where the machine says so, and never for a
        # budget or error gate: silence must not raise a limit or bless a failure.
        on_timeout = step.on_approval_timeout if kind is None else "fail"
        return {
            "resume_at": resume_at, "digest": digest, "reason": reason, "kind": kind,
            "deadline_at": deadline_at, "on_timeout": on_timeout if deadline_at else None,
        }

    def _commit_outcome(
        self, live: _Live, step: Step, view: BaseModel | None, judged: Any, result: Attempt,
        attempt: int, effects: list[dict[str, Any]],
    ) -> Committed | None:
        row, me = live.row, self.host.owner
        from_step = row["step"]
        counted: list[Any] = []  # the visits written, so the next step need not parse them back

        def write(tx: Tx, blobs: list[str]) -> Committed:
            now = self._now()
            fields = self._agent_fields(tx, live, step, view, result, attempt, now, blobs)
            current = self._calls(tx, row, result.calls, now, blobs)
            usage = (result.usage.tokens_in, result.usage.tokens_out, result.usage.cost_micros)
            payload: dict[str, Any] | None = {"effects": effects} if effects else None
            if isinstance(judged, IllegalOutcome):
                fields.update({"outcome": "failure", "decision": "illegal_outcome", "error_code": judged.error_code, "reason": judged.reason})
                return write_transition(
                    tx, self.db.ledger_id, current, event_type="run.failed", to_status=RunStatus.FAILED,
                    to_step=from_step, actor_type="system", actor_id="statecraft", now=now, extra=fields,
                    payload=payload, release_lease=True, usage=usage, fence_owner=me,
                )
            outcome = judged.outcome
            fields["output_sha256"] = self._blob(tx, blob_json(outcome_json(outcome)), now, blobs)
            if judged.state is live.state:
                state_sha = row["state_sha256"]
            else:
                state_sha = self._blob(
                    tx, blob_json(judged.state.model_dump(mode="json")), now, blobs, row["state_sha256"]
                )
            pending = None
            visits = KEEP
            if isinstance(outcome, Fail):
                event_type, to_status, to_step, trigger = "run.failed", RunStatus.FAILED, from_step, Trigger.FAIL
                fields.update({"decision": "fail", "outcome": "failure", "reason": outcome.reason, "error_code": outcome.error_code})
            else:
                done = dict(live.visit_counts())
                done[_at(row)] = done.get(_at(row), 0) + 1
                visits = _VISITS_JSON(done)
                counted[:] = [visits, done]
                if isinstance(outcome, Goto):
                    event_type, to_status, to_step, trigger = "step.completed", RunStatus.RUNNING, outcome.step, Trigger.STEP
                    fields.update({"decision": f"goto:{outcome.step}", "outcome": "success", "reason": outcome.reason})
                elif isinstance(outcome, Finish):
                    event_type, to_status, to_step, trigger = "run.completed", RunStatus.DONE, from_step, Trigger.FINISH
                    fields.update({"decision": "finish", "outcome": "success", "reason": outcome.reason})
                else:
                    assert isinstance(outcome, RequestApproval)
                    event_type, to_status, to_step = "approval.requested", RunStatus.WAITING_FOR_APPROVAL, from_step
                    trigger = Trigger.REQUEST_APPROVAL
                    # A gate a rule raised is never approved by silence (on_approval_timeout).
                    kind = "escalation" if outcome.rules else None
                    pending = self._gate(live, step, state_sha, outcome.resume_at, outcome.reason, kind=kind)
                    fields.update({"decision": f"request_approval:{outcome.resume_at}", "outcome": "pending", "reason": outcome.reason})
                    payload = {"resume_at": outcome.resume_at, "proposal_digest": pending["digest"], "summary": outcome.summary}
                    if outcome.policy is not None:
                        # In the payload too, so a reviewer's SQL sees who may approve.
                        payload["policy"] = outcome.policy.describe()
                    if pending["deadline_at"]:
                        payload.update(deadline_at=pending["deadline_at"], on_timeout=pending["on_timeout"])
                    if effects:
                        payload["effects"] = effects
            check_transition(current["status"], trigger, run_id=row["run_id"])
            return write_transition(
                tx, self.db.ledger_id, current, event_type=event_type, to_status=to_status, to_step=to_step,
                actor_type="agent", actor_id=step.agent_name, now=now, extra=fields, payload=payload,
                state_sha256=state_sha, pending=pending, count_step=True, usage=usage, fence_owner=me,
                visits_json=visits,
            )

        committed = self._commit(write)
        if committed is not None and not isinstance(judged, IllegalOutcome):
            live.state = judged.state
            if counted and committed.run["visits_json"] is counted[0]:
                live.visits_json, live.visits = counted
        return committed

    def _failure(self, step: Step, machine: Machine[Any], result: Attempt, attempt: int) -> _Failure:
        policy = step.retry or machine.retry
        if result.timed_out:
            return _Failure(
                "timeout", "timeout", "TimeoutError",
                f"attempt {attempt} of step {step.name!r} timed out after {result.latency_ms} ms",
                "TimeoutError" not in policy.non_retryable,
            )
        exc = result.error
        assert exc is not None
        code = getattr(exc, "error_code", None)
        return _Failure(
            "failure", code if isinstance(code, str) and code else "agent_error", type(exc).__name__,
            f"{type(exc).__name__}: {exc}"[:500], policy.is_retryable(exc),
        )

    def _attempt_failed(
        self, live: _Live, step: Step, view: BaseModel, result: Attempt, attempt: int,
        effects: list[dict[str, Any]],
    ) -> Committed | None:
        machine, row, me = live.machine, live.row, self.host.owner
        policy = step.retry or machine.retry
        failure = self._failure(step, machine, result, attempt)
        view_arg = None if step.reads is None else view
        if failure.retryable and attempt < policy.max_attempts:
            delay = policy.delay(attempt, self.rng)
            asked = getattr(result.error, "retry_after", None)
            if isinstance(asked, timedelta) and asked > delay:
                delay = asked  # the service said when; sooner would only fail again
            now_dt = self.host.clock()
            if live.limits.deadline_ms is not None and live.running_since is not None:
                # No point sleeping past the deadline; the budget check then stops the run.
                end = live.running_since + timedelta(milliseconds=live.limits.deadline_ms)
                delay = max(timedelta(0), min(delay, end - now_dt))
            retry_at = format_utc(now_dt + delay)

            def write_retry(tx: Tx, blobs: list[str]) -> Committed:
                now = self._now()
                fields = self._agent_fields(tx, live, step, view_arg, result, attempt, now, blobs)
                current = self._calls(tx, row, result.calls, now, blobs)
                fields.update({"decision": f"retry:{attempt + 1}", "outcome": failure.outcome, "error_code": failure.error_code, "reason": failure.reason})
                payload: dict[str, Any] = {
                    "error_type": failure.error_type, "delay_ms": ms(delay), "retry_at": retry_at,
                    "max_attempts": policy.max_attempts,
                }
                if effects:
                    payload["effects"] = effects
                return write_transition(
                    tx, self.db.ledger_id, current, event_type="step.attempt_failed",
                    to_status=RunStatus.RUNNING, to_step=row["step"], actor_type="system",
                    actor_id="statecraft", now=now, extra=fields, payload=payload, fence_owner=me,
                    usage=(result.usage.tokens_in, result.usage.tokens_out, result.usage.cost_micros),
                    attempts=attempt, wake_at=retry_at,
                )

            return self._commit(write_retry)

        def write_exhausted(tx: Tx, blobs: list[str]) -> Committed:
            now = self._now()
            fields = self._agent_fields(tx, live, step, view_arg, result, attempt, now, blobs)
            current = self._calls(tx, row, result.calls, now, blobs)
            fields.update({"outcome": failure.outcome, "error_code": failure.error_code, "reason": failure.reason})
            payload: dict[str, Any] = {
                "error_type": failure.error_type, "attempts": attempt, "retryable": failure.retryable,
            }
            if effects:
                payload["effects"] = effects
            usage = (result.usage.tokens_in, result.usage.tokens_out, result.usage.cost_micros)
            common: dict[str, Any] = {
                "actor_type": "system", "actor_id": "statecraft", "now": now, "usage": usage,
                "fence_owner": me,
            }
            edge = machine.error_edge(step.name, live.state) if step.on_error is not None else None
            if isinstance(edge, RequestApproval):
                # The error edge trips an escalation rule: a human decides
                # whether the run may take it (fail closed, issue #8).
                check_transition(current["status"], Trigger.REQUEST_APPROVAL, run_id=row["run_id"])
                reason = f"{edge.reason}; step {step.name!r} failed ({failure.reason}) and would take its error edge"
                pending = self._gate(live, step, row["state_sha256"], edge.resume_at, reason, kind="escalation")
                fields.update({"decision": f"request_approval:{edge.resume_at}", "reason": reason, "output_sha256": self._blob(tx, blob_json(outcome_json(edge)), now, blobs)})
                payload.update(resume_at=edge.resume_at, proposal_digest=pending["digest"], summary=edge.summary,
                               error=failure.reason, rules=list(edge.rules))
                if edge.policy is not None:
                    payload["policy"] = edge.policy.describe()
                if pending["deadline_at"]:
                    payload.update(deadline_at=pending["deadline_at"], on_timeout="fail")
                return write_transition(
                    tx, self.db.ledger_id, current, event_type="approval.requested",
                    to_status=RunStatus.WAITING_FOR_APPROVAL, to_step=step.name, extra=fields,
                    payload=payload, pending=pending, **common,
                )
            if step.on_error is not None:
                # An error edge is a declared transition of the graph, and counts as a step.
                check_transition(current["status"], Trigger.STEP, run_id=row["run_id"])
                fields["decision"] = f"on_error:{step.on_error}"
                return write_transition(
                    tx, self.db.ledger_id, current, event_type="step.error_edge",
                    to_status=RunStatus.RUNNING, to_step=step.on_error, extra=fields,
                    payload=payload, count_step=True, **common,
                )
            if step.escalate_on_error:
                check_transition(current["status"], Trigger.REQUEST_APPROVAL, run_id=row["run_id"])
                reason = (
                    f"step {step.name!r} failed after {attempt} attempt(s): {failure.reason}; "
                    "approve to run it again, reject to fail the run"
                )
                pending = self._gate(live, step, row["state_sha256"], step.name, reason, kind="error")
                fields.update({"decision": f"escalate:{step.name}", "reason": reason})
                payload.update(resume_at=step.name, proposal_digest=pending["digest"], error=failure.reason)
                if pending["deadline_at"]:
                    payload.update(deadline_at=pending["deadline_at"], on_timeout="fail")
                return write_transition(
                    tx, self.db.ledger_id, current, event_type="approval.requested",
                    to_status=RunStatus.WAITING_FOR_APPROVAL, to_step=step.name, extra=fields,
                    payload=payload, pending=pending, **common,
                )
            check_transition(current["status"], Trigger.FAIL, run_id=row["run_id"])
            fields["decision"] = "fail"
            return write_transition(
                tx, self.db.ledger_id, current, event_type="run.failed", to_status=RunStatus.FAILED,
                to_step=step.name, extra=fields, payload=payload, **common,
            )

        return self._commit(write_exhausted)

    # -- system decisions -------------------------------------------------------------

    def _over_budget(
        self, live: _Live, step: Step, exceeded: Exceeded, result: Attempt | None = None,
        view: BaseModel | None = None, attempt: int | None = None,
    ) -> Committed | None:
        row, me = live.row, self.host.owner
        ask = live.limits.on_exceeded == "request_approval"

        def write(tx: Tx, blobs: list[str]) -> Committed:
            now = self._now()
            current = row
            fields: AuditFields = {"error_code": "budget_exceeded", "reason": exceeded.reason}
            usage = (0, 0, 0)
            if result is not None and attempt is not None:
                # The attempt the deadline cut short is part of this event.
                fields.update(self._agent_fields(tx, live, step, None if step.reads is None else view, result, attempt, now, blobs))
                fields.update({"outcome": "timeout", "error_code": "budget_exceeded", "reason": exceeded.reason})
                current = self._calls(tx, row, result.calls, now, blobs)
                usage = (result.usage.tokens_in, result.usage.tokens_out, result.usage.cost_micros)
            payload: dict[str, Any] = exceeded.payload()
            if ask:
                check_transition(current["status"], Trigger.REQUEST_APPROVAL, run_id=row["run_id"])
                reason = f"{exceeded.reason}; approve with a higher {exceeded.budget} to continue"
                pending = self._gate(live, step, row["state_sha256"], step.name, reason, kind=f"budget:{exceeded.budget}")
                fields.setdefault("outcome", "pending")
                fields.update({"decision": f"extend_budget:{exceeded.budget}", "reason": reason})
                payload.update(resume_at=step.name, proposal_digest=pending["digest"])
                if pending["deadline_at"]:
                    payload.update(deadline_at=pending["deadline_at"], on_timeout="fail")
                return write_transition(
                    tx, self.db.ledger_id, current, event_type="approval.requested",
                    to_status=RunStatus.WAITING_FOR_APPROVAL, to_step=step.name, actor_type="system",
                    actor_id="statecraft", now=now, extra=fields, payload=payload, pending=pending,
                    usage=usage, fence_owner=me,
                )
            check_transition(current["status"], Trigger.FAIL, run_id=row["run_id"])
            fields.setdefault("outcome", "failure")
            fields["decision"] = f"budget:{exceeded.budget}"
            return write_transition(
                tx, self.db.ledger_id, current, event_type="run.failed", to_status=RunStatus.FAILED,
                to_step=step.name, actor_type="system", actor_id="statecraft", now=now, extra=fields,
                payload=payload, usage=usage, fence_owner=me,
            )

        return self._commit(write)

    def _system_fail(self, row: RunRecord, code: str, reason: str) -> Committed | None:
        def write(tx: Tx, blobs: list[str]) -> Committed:
            check_transition(row["status"], Trigger.FAIL, run_id=row["run_id"])
            return write_transition(
                tx, self.db.ledger_id, row, event_type="run.failed", to_status=RunStatus.FAILED,
                to_step=row["step"], actor_type="system", actor_id="statecraft", now=self._now(),
                extra={"outcome": "failure", "decision": "fail", "error_code": code, "reason": reason},
                fence_owner=self.host.owner,
            )

        return self._commit(write)

    # -- resume, worker support, approval deadlines ---------------------------------------

    def resume(
        self,
        run_id: str,
        *,
        wait: timedelta | None = None,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """See :meth:`statecraft.engine.Engine.resume`."""
        until = time.monotonic() + (wait.total_seconds() if wait else 0.0)
        while True:
            with read_tx(self.db) as tx:
                info = self.host.info(tx, run_id)
            if info.status != RunStatus.RUNNING:
                hint = {
                    RunStatus.WAITING_FOR_APPROVAL: "it waits for approval: approve or reject it",
                    RunStatus.FAILED: "it failed: `statecraft retry` resumes a failed run",
                    RunStatus.DONE: "it is already DONE",
                    RunStatus.IDLE: "it was never started",
                }[info.status]
                raise IllegalTransition(
                    f"run {run_id}: cannot resume a run that is {info.status.value} ({hint})",
                    run_id=run_id, status=info.status.value, trigger="resume", step=info.step,
                )
            try:
                return self.advance(run_id, on_event=on_event)
            except LeaseHeld as held:
                left = until - time.monotonic()
                if left <= 0:
                    raise
                try:
                    until_free = (parse_utc(held.expires_at) - self.host.clock()).total_seconds()
                except ValueError:  # held by another thread of this engine: no expiry to wait for
                    until_free = 0.2
                time.sleep(max(0.05, min(left, until_free, 1.0)))

    def runnable(self, limit: int) -> list[str]:
        """RUNNING runs no live engine holds and whose retry backoff is over, oldest first. Read-only."""
        now = self._now()
        with read_tx(self.db) as tx:
            rows = runnable_candidates(tx, now, max(limit * 4, limit + 16))
        out = []
        for run_id, owner, until in rows:
            free = owner is None or (until is not None and until <= now)
            if not free and owner != self.host.owner and self.trust_local_pids:
                free = owner_is_gone(owner)
            if free:
                out.append(run_id)
            if len(out) >= limit:
                break
        return out

    def claim(self, limit: int, exclude: Sequence[str] = ()) -> list[str]:
        """Lease up to ``limit`` runnable runs for this engine; their ids (see :meth:`Engine.claim`)."""
        now_dt = self.host.clock()
        now, expires = format_utc(now_dt), format_utc(now_dt + self.host.lease)
        with write_tx(self.db, appends=False) as tx:
            claimed = claim_free_runs(
                tx, owner=self.host.owner, now=now, expires_at=expires, limit=limit, exclude=exclude
            )
        if len(claimed) < limit:
            # Leases that expired, or whose holder died: taken over (and audited) when advanced.
            taken = set(claimed) | set(exclude)
            claimed += [r for r in self.runnable(limit) if r not in taken][: limit - len(claimed)]
        return claimed

    def expire_due(self, run_id: str | None = None) -> list[str]:
        """Apply the on-timeout action of every gate whose approval deadline has passed.

        One transaction per run: ``approval.expired`` (actor ``system``) to
        FAILED (``error_code`` ``approval_expired``), or to RUNNING at the
        gate's ``resume_at`` where the step declared ``on_approval_timeout="approve"``
        (never for budget or error gates, nor gates with an ``ApprovalPolicy``).

        Returns:
            The ids of the runs changed.
        """
        now = self._now()
        with read_tx(self.db) as tx:
            due = due_approvals(tx, now, run_id)
        changed = []
        for rid in due:
            with self.db.read() as conn:
                seen = self.load(tx_of(conn), rid)
                # A gate with an approval policy (four-eyes, a named group) needs
                # named people: silence never passes it. The policy is fixed by
                # the request event, so reading it before the write is safe.
                policy_gate = seen["pending_on_timeout"] == "approve" and self._has_policy(conn, seen)
            with write_tx(self.db) as tx:
                row = self.load(tx, rid)
                deadline = row["pending_deadline_at"]
                if row["status"] != RunStatus.WAITING_FOR_APPROVAL or not deadline or deadline > now:
                    continue  # decided meanwhile
                if row["pending_request_event_id"] != seen["pending_request_event_id"]:
                    continue  # another gate now; the next pass judges it
                approve = (
                    row["pending_on_timeout"] == "approve" and row["pending_kind"] is None and not policy_gate
                )
                fields: AuditFields = {
                    "caused_by_event_id": row["pending_request_event_id"],
                    "reason": f"approval deadline {deadline} passed without a decision",
                }
                if approve:
                    check_transition(row["status"], Trigger.APPROVE, run_id=rid)
                    fields.update({"decision": "approve_by_default", "outcome": "success"})
                    to_status, to_step = RunStatus.RUNNING, row["pending_resume_at"]
                else:
                    check_transition(row["status"], Trigger.EXPIRE, run_id=rid)
                    fields.update({"decision": "expire", "outcome": "timeout", "error_code": "approval_expired"})
                    to_status, to_step = RunStatus.FAILED, row["step"]
                expired = write_transition(
                    tx, self.db.ledger_id, row, event_type="approval.expired", to_status=to_status,
                    to_step=to_step, actor_type="system", actor_id="statecraft", now=now, extra=fields,
                    payload={"deadline_at": deadline, "proposal_digest": row["pending_proposal_digest"],
                             "on_timeout": "approve" if approve else "fail"},
                    clear_pending=True,
                ).event
            self.host.report(self._report(rid, expired))  # committed: tell the listener
            changed.append(rid)
        return changed

    def _has_policy(self, conn: Any, row: RunRecord) -> bool:
        try:
            return self.host.gate_policy(conn, row) is not None
        except ApprovalRefused:  # the proposal was redacted: its policy is unknown, fail closed
            return True

    def release_all(self) -> int:
        """Stop renewing and release every lease this engine's owner id holds; how many were released.

        Commits one transaction. A step still running here then commits
        nothing: its writes are fenced on the lease (``RunMoved``).
        """
        for run_id in list(self.keeper.held()):
            self.keeper.drop(run_id)
        with write_tx(self.db) as tx:
            return release_all_leases(tx, self.host.owner)

    def close(self) -> None:
        """Stop renewing leases."""
        self.keeper.close()
