"""Running branch calls concurrently inside one step: cap, per-branch timeout, retry, completion.

The engine runs a step's agent once per attempt, outside any transaction; a
pattern that needs several sub-calls (fan-out, supervisor specialists,
debate advocates) makes them here, inside that agent, and records each call
through ``ctx.record_call``, so every attempt of every branch becomes its own
audit event written in the step's transaction (``agent.called``, outcome
``success`` / ``failure`` / ``timeout`` / ``cancelled``, latency, attempt,
input and output by hash). A closing ``fanout.completed`` event records the
policy, why the fan-out stopped and every branch's final status, so the
aggregate can be reconstructed from the log alone.

Concurrency model, and its hazard
---------------------------------
Each attempt of each branch is a :class:`statecraft.execution.TimedCall`,
the same timeout/abandon implementation as a step's own attempt: a plain
callable runs on a **daemon** thread, a coroutine function (``async def``)
as a task on the process's one event loop
(``statecraft.execution.event_loop``). At most ``max_concurrency`` attempts
run at once; an attempt that ends starts the next queued one itself, and
the coordinating thread (the step's) only wakes for ends, timeouts, retry
backoffs and the deadline. Wall time is therefore about the slowest branch,
not the sum (bench/bench_fanout.py measures it).

Python cannot kill a thread. A branch that exceeds ``branch_timeout`` (or is
still running when a quorum or deadline ends the fan-out) is **abandoned**:
its result is ignored, its context's ``cancelled`` event is set, it stops
counting towards ``max_concurrency`` (the next attempt starts), and its
thread runs on in the background until the callable returns. So:

- an abandoned branch still consumes CPU, memory, connections and API quota,
  and more than ``max_concurrency`` threads may briefly exist;
- its side effects still happen: branches must be free of side effects, or
  make them idempotent (``bctx.idempotency_key``);
- long-running branches should poll ``bctx.cancelled`` (or sleep with
  ``bctx.cancelled.wait(seconds)``) to stop early.

An async branch is *cancelled* when abandoned (``CancelledError`` at its
next ``await``), so async branches do not run on in the background.

Daemon threads (rather than a ``concurrent.futures.ThreadPoolExecutor``,
whose threads the interpreter joins at exit, and which cannot replace a stuck
thread) keep one hung branch from hanging the process, e.g. the CLI, after
the step has committed. They are reused (``statecraft.execution.DaemonThreads``):
a branch's thread, once its call ends, takes a later branch's call instead of
a new thread starting (~0.1 ms each, in series on the step's thread).
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python

from ..agents.base import RecordedCall, StepContext, Usage
from ..execution import TimedCall, is_async_callable
from ..policy import RetryPolicy
from ..tracing import span

__all__ = [
    "All",
    "Completion",
    "Deadline",
    "FanOutResult",
    "Quorum",
    "BranchCall",
    "BranchContext",
    "BranchReport",
    "run_parallel",
]

BranchStatus = Literal["success", "failure", "timeout", "cancelled", "not_started"]


# -- completion policies ------------------------------------------------------------


@dataclass(frozen=True)
class All:
    """Wait until every branch has finished (succeeded, or failed after its retries).

    Failed and timed-out branches are flagged in the aggregate; the fan-out is
    *satisfied* (not fatal) unless fewer than ``min_success`` succeeded, or
    ``strict`` and any failed (a strict fan-out stops at the first final failure).

    Attributes:
        min_success: successes needed for the fan-out to count as satisfied.
        strict: every branch must succeed.
    """

    min_success: int = 0
    strict: bool = False

    def describe(self) -> str:
        """Short text recorded in the audit (``all``, ``all:strict``, ``all:min=2``)."""
        if self.strict:
            return "all:strict"
        return f"all:min={self.min_success}" if self.min_success else "all"


@dataclass(frozen=True)
class Quorum:
    """Finish as soon as ``n`` branches have succeeded; abandon the rest (flagged ``cancelled``).

    Unsatisfied (and stopped early) as soon as ``n`` successes became impossible.
    """

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("Quorum(n) needs n >= 1")

    def describe(self) -> str:
        """``quorum:N``."""
        return f"quorum:{self.n}"


@dataclass(frozen=True)
class Deadline:
    """Wait for every branch, but no longer than ``after``; then go on with partial results.

    Branches still running at the deadline are abandoned and flagged
    ``timeout``; branches never started are flagged ``not_started``.
    Satisfied when at least ``min_success`` succeeded.
    """

    after: timedelta
    min_success: int = 0

    def __post_init__(self) -> None:
        if self.after <= timedelta(0):
            raise ValueError("Deadline(after) must be positive")

    def describe(self) -> str:
        """``deadline:MSms`` (plus ``:min=N``)."""
        text = f"deadline:{_ms(self.after)}ms"
        return f"{text}:min={self.min_success}" if self.min_success else text


Completion = All | Quorum | Deadline


# -- results ---------------------------------------------------------------------------


class BranchReport(BaseModel):
    """One branch's final result in an aggregate (kept in the state; timings live in the audit).

    Attributes:
        status: ``success``; ``failure`` (raised, or output broke its
            contract, after retries); ``timeout`` (exceeded its timeout or
            the deadline); ``cancelled`` (abandoned because the policy
            settled); ``not_started``.
        output: the branch's JSON output when ``success``.
        error: one line when not ``success``.
        attempts: attempts started (0 when ``not_started``).
    """

    model_config = ConfigDict(frozen=True)

    status: BranchStatus
    output: Any = None
    error: str | None = None
    attempts: int = 0


class FanOutResult(BaseModel):
    """The aggregate of a fan-out: every branch's report, flagged failures included.

    Declare a state field ``FanOutResult | None`` to hold it.

    Attributes:
        policy: the completion policy (``all``, ``quorum:3``, ``deadline:400ms``).
        satisfied: whether the policy's success condition held.
        stopped: why the fan-out ended: ``all_finished``, ``quorum_reached``,
            ``quorum_unreachable``, ``deadline`` or ``first_failure``.
        branches: branch name -> report, in declaration order. States stored
            before the rename (key ``workers``) still load.
    """

    model_config = ConfigDict(frozen=True)

    policy: str
    satisfied: bool
    stopped: str
    # "workers": how states written before the vocabulary change (issue #10) spelled it.
    branches: dict[str, BranchReport] = Field(validation_alias=AliasChoices("branches", "workers"))

    @property
    def outputs(self) -> dict[str, Any]:
        """Outputs of the branches that succeeded."""
        return {k: r.output for k, r in self.branches.items() if r.status == "success"}

    @property
    def flagged(self) -> dict[str, BranchReport]:
        """Reports of the branches that did not succeed."""
        return {k: r for k, r in self.branches.items() if r.status != "success"}


# -- branch side -------------------------------------------------------------------------


class BranchContext:
    """What one branch attempt may know and do. Safe to use from the branch's thread.

    Attributes:
        branch: the branch's name (its key in the fan-out).
        attempt: 1 for the first attempt, 2 for the first retry, …
        run_id: the run.
        step: the step running the fan-out.
        cancelled: set when the attempt is abandoned (timeout, quorum,
            deadline); long branches should poll it or ``cancelled.wait(s)``.
    """

    def __init__(self, step_ctx: StepContext, branch: str, attempt: int, task_lock: threading.Lock) -> None:
        self._step_ctx = step_ctx
        self._task_lock = task_lock
        self.branch = branch
        self.attempt = attempt
        self.run_id = step_ctx.run_id
        self.step = step_ctx.step
        self.cancelled = threading.Event()
        self.usage = Usage()

    @property
    def task(self) -> Any:
        """The run's original input (intent propagation), loaded once per step."""
        with self._task_lock:
            return self._step_ctx.task

    def now(self) -> datetime:
        """The engine's clock (UTC, aware)."""
        return self._step_ctx.now()

    def record_usage(self, usage: Usage) -> None:
        """Add tokens/cost of this attempt; audited on the attempt's ``agent.called`` event."""
        self.usage = self.usage + usage

    def idempotency_key(self, name: str) -> str:
        """A key for side effect ``name`` of this branch, stable across retries and resumes.

        Same shape as ``StepContext.idempotency_key`` (64 hex), scoped to the branch.
        """
        return self._step_ctx.idempotency_key(f"{self.branch}\x00{name}")


BranchFn = Callable[[Any, BranchContext], Any]


@dataclass(frozen=True)
class BranchCall:
    """One unit of parallel work: a callable, its input, and how it is audited.

    Attributes:
        key: unique name of the call in the aggregate (the branch name).
        fn: ``(input, bctx) -> output``; output JSON-compatible or a pydantic model.
            Each attempt receives its own deep copy of ``input``, so what a
            call does to it is never seen elsewhere.
        input: passed to ``fn``; recorded (by hash) as the call's input, as it
            was before the first attempt.
        agent_name: audited ``agent_name``/actor (default ``key``).
        agent_version: audited ``agent_version``.
        output_model: if given, the output must validate against it (a
            structured-output contract); otherwise the attempt fails.
        payload: extra small audit detail for each attempt (strings/integers).
    """

    key: str
    fn: BranchFn
    input: Any = None
    agent_name: str | None = None
    agent_version: str | None = None
    output_model: type[BaseModel] | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)


# -- the coordinator ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Attempt:
    call: BranchCall
    attempt: int
    bctx: BranchContext
    ready_at: float
    run: TimedCall  # new -> running -> done | abandoned; new -> dropped
    handled: bool = False
    input_json: Any = None


def run_parallel(
    ctx: StepContext,
    calls: Sequence[BranchCall],
    *,
    max_concurrency: int = 4,
    branch_timeout: timedelta | None = None,
    retry: RetryPolicy | None = None,
    completion: Completion | None = None,
    label: str | None = None,
) -> FanOutResult:
    """Run ``calls`` concurrently and aggregate them; record every attempt in the audit log.

    Blocks the calling (step) thread until the completion policy settles.
    Records, through ``ctx.record_call``, one ``agent.called`` event per
    attempt (in the order attempts end) and one ``fanout.completed`` event.

    Each attempt is a :class:`statecraft.execution.TimedCall` (the step's own
    timeout/abandon implementation). At most ``max_concurrency`` run at
    once; an attempt that ends starts the next queued one itself, without
    waiting for the coordinator. An abandoned attempt no longer counts
    towards the cap (module docstring: the hazard).

    Args:
        ctx: the step's context.
        calls: the work; keys must be unique.
        max_concurrency: at most this many attempts run at once (>= 1).
        branch_timeout: per-attempt timeout, measured from the attempt's
            start; ``None`` means none.
        retry: per-branch retry policy (default: no retries). Timeouts and
            raised exceptions are retried; ``non_retryable`` names (and
            ``TimeoutError`` for timeouts) are not.
        completion: ``All()`` (default), ``Quorum(n)`` or ``Deadline(after)``.
        label: ``agent_name`` of the ``fanout.completed`` event (default: the step).

    Returns:
        The aggregate; never raises for a branch's failure.

    Raises:
        ValueError: duplicate keys or ``max_concurrency`` < 1.
    """
    if max_concurrency < 1:
        raise ValueError("max_concurrency must be >= 1")
    keys = [c.key for c in calls]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate branch keys in {keys}")
    retry = retry or RetryPolicy.none()
    completion = completion or All()
    timeout_s = None if branch_timeout is None else branch_timeout.total_seconds()
    task_lock = threading.Lock()
    lock = threading.Lock()  # guards `queued` and `running`
    queued: collections.deque[_Attempt] = collections.deque()  # ready, waiting for room under the cap
    running = 0
    wake: queue.SimpleQueue[None] = queue.SimpleQueue()
    clock = time.monotonic
    start = clock()
    overall = start + completion.after.total_seconds() if isinstance(completion, Deadline) else None

    reports: dict[str, BranchReport] = {}
    latest: dict[str, _Attempt] = {}
    backoff: list[_Attempt] = []  # retries waiting for their delay, not yet queued
    stopped = "all_finished"

    def start_ready() -> None:
        """Start queued attempts while there is room under the cap. Holding ``lock``."""
        nonlocal running
        while running < max_concurrency and queued:
            att = queued.popleft()
            if att.run.state == "new":
                running += 1
                att.run.start()

    def freed() -> None:
        """An attempt stopped counting towards the cap (ended or abandoned)."""
        nonlocal running
        with lock:
            running -= 1
            start_ready()

    def ended(_: TimedCall) -> None:  # on the branch's thread (or the event loop)
        freed()
        wake.put(None)

    def body(call: BranchCall, attempt: int, bctx: BranchContext) -> Callable[[], Any]:
        """The attempt's callable: a coroutine function for an async branch, so it is awaited and cancellable."""
        name = call.agent_name or call.key
        attributes = {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name,
            "statecraft.run_id": ctx.run_id, "statecraft.step": ctx.step,
            "statecraft.branch": call.key, "statecraft.attempt": attempt,
        }
        fn = call.fn
        # Each attempt gets its own copy: nothing a branch does to its input
        # reaches the step's view, another branch, or a later attempt.
        if is_async_callable(fn):
            async def run_async() -> Any:
                with span(f"invoke_agent {name}", attributes):
                    return await fn(copy.deepcopy(call.input), bctx)
            return run_async

        def run_sync() -> Any:
            with span(f"invoke_agent {name}", attributes):
                return fn(copy.deepcopy(call.input), bctx)
        return run_sync

    inputs: dict[str, Any] = {}

    def new_attempt(call: BranchCall, attempt: int, ready_at: float) -> _Attempt:
        bctx = BranchContext(ctx, call.key, attempt, task_lock)
        # Made on the step's thread: the call runs in a copy of its context
        # (the step's attempt span is the branch span's parent).
        run = TimedCall(
            body(call, attempt, bctx), timeout_s=timeout_s, on_abandon=bctx.cancelled.set, on_end=ended,
            name=f"statecraft-{ctx.step}-branch",
        )
        att = _Attempt(call, attempt, bctx, ready_at, run)
        # Audit what the branch was given, before it could change it.
        if call.key not in inputs:
            inputs[call.key] = _json_or_repr(call.input)
        att.input_json = inputs[call.key]
        latest[call.key] = att
        return att

    def enqueue(atts: Sequence[_Attempt]) -> None:
        with lock:
            queued.extend(atts)
            start_ready()

    def record(att: _Attempt, outcome: str, *, output: Any = None, error: str | None = None,
               code: str | None = None, latency_ms: int) -> None:
        ctx.record_call(
            RecordedCall(
                event_type="agent.called",
                name=att.call.agent_name or att.call.key,
                version=att.call.agent_version,
                outcome=outcome,
                decision=att.call.key,
                reason=error,
                error_code=code,
                latency_ms=latency_ms,
                attempt=att.attempt,
                usage=att.bctx.usage,
                input=att.input_json,
                output=output,
                payload={"branch": att.call.key, "step": ctx.step, **att.call.payload},
            )
        )

    def settle_failure(att: _Attempt, status: BranchStatus, error: str, retryable: bool) -> None:
        reports[att.call.key] = BranchReport(status=status, error=error, attempts=att.attempt)
        if retryable and att.attempt < retry.max_attempts:
            delay = retry.delay(att.attempt).total_seconds()
            backoff.append(new_attempt(att.call, att.attempt + 1, clock() + delay))

    def finish(att: _Attempt) -> None:
        att.handled = True
        latency_ms = int((att.run.ended - att.run.started) * 1000)
        if att.run.error is None:
            try:
                output = _normalise(att.run.value, att.call.output_model)
            except (ValidationError, ValueError, TypeError) as bad:
                error = f"output broke its contract: {_one_line(bad)}"
                record(att, "failure", error=error, code="invalid_output", latency_ms=latency_ms)
                settle_failure(att, "failure", error, retry.is_retryable(bad))
                return
            record(att, "success", output=output, latency_ms=latency_ms)
            reports[att.call.key] = BranchReport(status="success", output=output, attempts=att.attempt)
            return
        error = f"{type(att.run.error).__name__}: {_one_line(att.run.error)}"
        record(att, "failure", error=error, code="branch_error", latency_ms=latency_ms)
        settle_failure(att, "failure", error, retry.is_retryable(att.run.error))

    def abandoned(att: _Attempt, status: BranchStatus, why: str, code: str, *, may_retry: bool) -> None:
        """Record an attempt just abandoned (its ``cancelled`` event set, a coroutine cancelled)."""
        att.handled = True
        freed()
        latency_ms = int((att.run.ended - att.run.started) * 1000)
        record(att, "timeout" if status == "timeout" else "cancelled", error=why, code=code, latency_ms=latency_ms)
        retryable = may_retry and "TimeoutError" not in retry.non_retryable
        settle_failure(att, status, why, retryable)

    def undecided(key: str) -> bool:
        att = latest.get(key)
        return att is None or not att.handled

    def settled() -> str | None:
        n_ok = sum(1 for r in reports.values() if r.status == "success")
        final_fail = [k for k in keys if k in reports and reports[k].status != "success" and not undecided(k)]
        if isinstance(completion, Quorum):
            if n_ok >= completion.n:
                return "quorum_reached"
            if len(keys) - len(final_fail) < completion.n:
                return "quorum_unreachable"
        if isinstance(completion, All) and completion.strict and final_fail:
            return "first_failure"
        if overall is not None and clock() >= overall:
            return "deadline"
        return None

    enqueue([new_attempt(call, 1, start) for call in calls])

    while True:
        # Handle every attempt that ended, then ask the policy.
        for att in list(latest.values()):
            if att.run.state == "done" and not att.handled:
                finish(att)
        why = settled()
        if why is not None:
            stopped = why
            break
        now = clock()
        ready = [a for a in backoff if a.ready_at <= now]
        for att in ready:
            backoff.remove(att)
        if ready:
            enqueue(ready)
        # Not yet handled: to start, running, or ended since the pass above (its wake is queued).
        active = [a for a in latest.values() if not a.handled]
        if not active and not backoff:
            break
        expired = False
        for att in active:
            # abandon() is False when the attempt ended just now: handled on the next pass.
            if att.run.overdue(now) and att.run.abandon():
                abandoned(att, "timeout", f"timed out after {_ms(branch_timeout)} ms", "timeout", may_retry=True)
                expired = True
        if expired:
            continue
        wakes = [a.run.deadline for a in active if a.run.state == "running" and a.run.deadline is not None]
        wakes += [a.ready_at for a in backoff]
        if overall is not None:
            wakes.append(overall)
        wait_s = None if not wakes else max(0.0, min(wakes) - clock())
        try:
            wake.get(timeout=wait_s)
        except queue.Empty:
            pass

    # The policy has settled: whatever waits never starts, whatever still runs is abandoned.
    with lock:
        for att in queued:
            att.run.drop()
        queued.clear()
    for att in list(latest.values()):
        if att.handled:
            continue
        att.run.drop()  # a retry still in its backoff
        if att.run.state == "dropped":
            if att.call.key not in reports:
                reports[att.call.key] = BranchReport(
                    status="not_started", error=f"not started: {stopped.replace('_', ' ')}"
                )
        elif att.run.abandon():
            if stopped == "deadline":
                abandoned(att, "timeout", "still running at the fan-out deadline", "deadline", may_retry=False)
            else:
                abandoned(att, "cancelled", f"abandoned: {stopped.replace('_', ' ')}", stopped, may_retry=False)
        elif att.run.state == "done":
            finish(att)
    backoff.clear()

    n_ok = sum(1 for r in reports.values() if r.status == "success")
    if isinstance(completion, Quorum):
        satisfied = n_ok >= completion.n
    elif isinstance(completion, All) and completion.strict:
        satisfied = n_ok == len(keys)
    else:
        satisfied = n_ok >= completion.min_success
    ordered = {k: reports.get(k, BranchReport(status="not_started")) for k in keys}
    wall_ms = int((clock() - start) * 1000)
    result = FanOutResult(policy=completion.describe(), satisfied=satisfied, stopped=stopped, branches=ordered)
    ctx.record_call(
        RecordedCall(
            event_type="fanout.completed",
            name=label or ctx.step,
            outcome="success" if satisfied else "failure",
            decision=result.policy,
            reason=None if satisfied else f"completion policy {result.policy} not satisfied ({n_ok} succeeded)",
            error_code=None if satisfied else "fan_out_unsatisfied",
            latency_ms=wall_ms,
            payload={
                "policy": result.policy,
                "stopped": stopped,
                "satisfied": satisfied,
                "successes": n_ok,
                "max_concurrency": max_concurrency,
                "branch_timeout_ms": None if branch_timeout is None else _ms(branch_timeout),
                "max_attempts": retry.max_attempts,
                "branches": {k: {"status": r.status, "attempts": r.attempts} for k, r in ordered.items()},
            },
        )
    )
    return result


def _normalise(value: Any, model: type[BaseModel] | None) -> Any:
    if model is not None:
        value = model.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)
    try:
        return to_jsonable_python(value)
    except Exception as exc:  # pydantic_core.PydanticSerializationError is not a ValueError
        raise TypeError(f"output is not JSON-compatible: {exc}") from exc


def _json_or_repr(value: Any) -> Any:
    if value is None:
        return None
    try:
        return to_jsonable_python(value)
    except Exception:
        return repr(value)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ms(delta: timedelta | None) -> int:
    return 0 if delta is None else int(delta.total_seconds() * 1000)


def config_digest(config: Any) -> str:
    """Twelve hex characters identifying a pattern's configuration.

    Used as the ``agent_version`` of pattern steps, so that the machine digest
    changes whenever a pattern's branches, policy or bounds change. Callables
    are identified by :func:`callable_name` (never by address), so the digest
    is the same in every process.
    """
    body = json.dumps(_describe(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:12]


def callable_name(fn: Any) -> str:
    """A callable's stable name: its ``agent_name`` attribute, else ``module.qualname``.

    Machines loaded by path get synthetic module names (``statecraft_machine_…``);
    those are dropped so the name is the same whichever path loaded the file.
    """
    explicit = getattr(fn, "agent_name", None)
    if isinstance(explicit, str):
        return explicit
    module = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    if module.startswith("statecraft_machine_"):
        module = ""
    return f"{module}.{qual}" if module else qual


def _describe(value: Any) -> Any:
    if isinstance(value, type) and issubclass(value, BaseModel):
        return value.__qualname__
    if callable(value) and not isinstance(value, (All, Quorum, Deadline, RetryPolicy)):
        version = getattr(value, "agent_version", None)
        return f"{callable_name(value)}@{version}" if isinstance(version, str) else callable_name(value)
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, (frozenset, set)):
        return sorted(str(v) for v in value)
    if isinstance(value, timedelta):
        return f"{_ms(value)}ms"
    if isinstance(value, (All, Quorum, Deadline)):
        return value.describe()
    if isinstance(value, RetryPolicy):
        return {
            "max_attempts": value.max_attempts,
            "initial_ms": _ms(value.initial_interval),
            "backoff": str(value.backoff_coefficient),
            "max_ms": _ms(value.max_interval),
            "non_retryable": sorted(value.non_retryable),
        }
    if hasattr(value, "describe") and callable(value.describe):
        return _describe(value.describe())
    return value
