"""One attempt of one step: calling the agent under its timeout, and ``ctx.once`` side effects.

The engine calls an agent outside any database transaction. Without a
timeout the call runs inline on the engine's thread (no cost on the hot
path). With a timeout (the step's, or what is left of the run's deadline) it
runs on a daemon thread that the engine stops waiting for when the timeout
passes or its lease is lost: the attempt is then *abandoned*. Python cannot
kill a thread, so an abandoned agent may still be running; from then on its
context refuses to start new side effects (``ctx.once`` raises
:class:`AttemptAbandoned`), and whatever it returns or reports is dropped.

``async def`` agents (and agents whose ``__call__`` is a coroutine
function) run on one event loop that the process shares, on a daemon thread
of its own (:func:`event_loop`): the engine's thread submits the coroutine and
waits for it. A timeout or a lost lease then *cancels* the coroutine for real
(``CancelledError`` is raised inside it at its next ``await``), instead of
leaving it running as a thread would; ``ctx.once`` still refuses new side
effects from that moment. Fan-out branches that are coroutine functions run
on the same loop (statecraft/patterns/parallel.py), and so do async Claude
clients, whose connections are bound to the loop that opened them.

Side effects (``ctx.once(name, fn)``): ``fn(key)`` runs only if no result is
recorded under its idempotency key; its result is committed in its own short
transaction as soon as ``fn`` returns, and every later attempt, retry or
resumed run of the same step visit gets the recorded result without calling
``fn``. The window in which ``fn`` can run twice is between ``fn`` returning
and that commit (a crash there); the second call carries the same key, so a
service that deduplicates by key (like Stripe's ``Idempotency-Key``) applies
the effect once. docs/reliability.md explains the choice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .agents.base import RecordedCall, StepContext, Usage
from .errors import StatecraftError
from .store.blobs import sha256_hex
from .store.db import Database
from .store.effects import read_effect, record_effect
from .store.txn import read_tx, write_tx
from .tracing import copy_context, span

T = TypeVar("T")

__all__ = [
    "Attempt",
    "AttemptAbandoned",
    "EffectLog",
    "attempt_async",
    "event_loop",
    "is_agent_failure",
    "is_async_callable",
    "run_attempt",
    "submit",
]

# How often a waiting engine looks at its lease while a timed agent runs.
_POLL_S = 0.05


class AttemptAbandoned(Exception):
    """Raised inside an abandoned agent (timed out, lease lost) that tries to start a side effect."""

    non_retryable = True


@dataclass
class Attempt:
    """What one attempt produced.

    Attributes:
        outcome: what the agent returned (when it returned).
        error: what it raised (when it raised).
        timed_out: the attempt was abandoned at its timeout.
        lost: the attempt was abandoned because the lease was lost.
        latency_ms: wall time until the agent returned or was abandoned.
        usage: usage reported during the attempt (a snapshot if abandoned).
        calls: sub-calls recorded during the attempt (a snapshot if abandoned).
    """

    outcome: object = None
    error: BaseException | None = None
    timed_out: bool = False
    lost: bool = False
    latency_ms: int = 0
    usage: Usage = field(default_factory=Usage)
    calls: list[RecordedCall] = field(default_factory=list)


def is_agent_failure(exc: BaseException) -> bool:
    """Whether an exception from an agent fails its attempt (else it propagates to the caller).

    Everything an agent raises fails the attempt, except statecraft's own
    errors about misuse or the store (``StoreError``, ``DefinitionError``,
    ``IllegalTransition`` of a sub-run, …), which say the caller's setup is
    wrong. Agent errors that declare ``non_retryable`` (the
    ``statecraft.agents.errors.AgentError`` family) are attempt failures.
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return False
    if isinstance(exc, StatecraftError):
        return hasattr(exc, "non_retryable")
    return isinstance(exc, Exception)


def run_attempt(
    agent: Callable[[Any, StepContext], object],
    view: Any,
    ctx: StepContext,
    *,
    timeout_s: float | None,
    lost: threading.Event,
    abandon: Callable[[], None],
) -> Attempt:
    """Call ``agent(view, ctx)`` once, inline or under a timeout.

    Args:
        agent: the step's agent.
        view: the agent's state view.
        ctx: the attempt's context.
        timeout_s: seconds the attempt may take; ``None`` runs it inline.
        lost: set when the engine's lease on the run is lost.
        abandon: called when the attempt is abandoned (stops new side effects).

    Returns:
        The attempt's result; never raises for the agent's own failure.

    Raises:
        StatecraftError, KeyboardInterrupt, SystemExit: as raised by the agent,
            when not an attempt failure (:func:`is_agent_failure`).
    """
    started = time.perf_counter()
    if is_async_callable(agent):
        return _run_async_attempt(agent, view, ctx, timeout_s=timeout_s, lost=lost, abandon=abandon)
    if timeout_s is None:
        try:
            outcome = agent(view, ctx)
        except BaseException as exc:
            if not is_agent_failure(exc):
                raise
            return Attempt(error=exc, latency_ms=_ms_since(started), usage=ctx.usage, calls=ctx.calls)
        return Attempt(outcome=outcome, latency_ms=_ms_since(started), usage=ctx.usage, calls=ctx.calls)

    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["outcome"] = agent(view, ctx)
        except BaseException as exc:  # carried to the engine's thread
            box["error"] = exc
        finally:
            done.set()

    # In a copy of this thread's context, so the agent's own spans (an SDK's
    # LLM span included) nest under its attempt instead of starting a new trace.
    worker = threading.Thread(
        target=copy_context().run, args=(target,), name=f"statecraft-agent-{ctx.step}", daemon=True
    )
    worker.start()
    until = started + timeout_s
    while not done.wait(max(0.0, min(until - time.perf_counter(), _POLL_S))):
        if lost.is_set() or time.perf_counter() >= until:
            abandon()
            # Snapshots: the abandoned thread may keep reporting into ctx.
            return Attempt(
                timed_out=not lost.is_set(),
                lost=lost.is_set(),
                latency_ms=_ms_since(started),
                usage=ctx.usage,
                calls=list(ctx.calls),
            )
    latency = _ms_since(started)
    if "error" in box:
        raised: BaseException = box["error"]
        if not is_agent_failure(raised):
            raise raised
        return Attempt(error=raised, latency_ms=latency, usage=ctx.usage, calls=ctx.calls)
    return Attempt(outcome=box.get("outcome"), latency_ms=latency, usage=ctx.usage, calls=ctx.calls)


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` gives a coroutine: an ``async def`` function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_PID = 0
_LOOP_GUARD = threading.Lock()


def event_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for async agents, running on its own daemon thread.

    Started on first use. One loop, so that coroutines of one run (a step's
    agent and its async fan-out branches) and long-lived async clients (an
    ``AsyncAnthropic`` client's connection pool is bound to the loop that
    opened it) meet on the same loop. A daemon thread: a coroutine that
    never finishes cannot keep the process alive. Restarted in a forked child.
    """
    global _LOOP
    loop = _LOOP
    if loop is not None and loop.is_running() and _LOOP_PID == os.getpid():
        return loop
    with _LOOP_GUARD:
        if _LOOP is None or not _LOOP.is_running() or _LOOP_PID != os.getpid():
            _start_loop()
        assert _LOOP is not None
        return _LOOP


def _start_loop() -> None:
    global _LOOP, _LOOP_PID
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    threading.Thread(target=run, name="statecraft-event-loop", daemon=True).start()
    ready.wait()
    _LOOP, _LOOP_PID = loop, os.getpid()


async def attempt_async(
    agent: Callable[..., Awaitable[object]],
    view: Any,
    ctx: StepContext,
    *,
    timeout_s: float | None,
    lost: threading.Event,
    abandon: Callable[[], None],
) -> Attempt:
    """One attempt of a coroutine agent, awaited on the running loop; cancelled at its timeout.

    The one timeout/abandon implementation for coroutines: the synchronous
    engine runs it on :func:`event_loop`, :class:`statecraft.aio.AsyncEngine`
    on the service's own loop. Every ``_POLL_S`` it also looks at ``lost``
    (the engine's lease is gone): then, as at the timeout, it calls
    ``abandon`` (no new ``ctx.once`` effects) and cancels the coroutine.

    Returns:
        The attempt's result; never raises for the agent's own failure.

    Raises:
        StatecraftError, KeyboardInterrupt, SystemExit, asyncio.CancelledError:
            as raised by the agent, when not an attempt failure.
    """
    started = time.perf_counter()
    task = asyncio.ensure_future(agent(view, ctx))
    until = None if timeout_s is None else started + timeout_s
    while True:
        wait = _POLL_S if until is None else max(0.0, min(until - time.perf_counter(), _POLL_S))
        try:
            done, _ = await asyncio.wait({task}, timeout=wait)
        except asyncio.CancelledError:
            # The driver itself was cancelled (a service shutting down): the agent goes too.
            abandon()
            task.cancel()
            raise
        if done:
            break
        if lost.is_set() or (until is not None and time.perf_counter() >= until):
            abandon()
            task.cancel()  # a real cancellation: CancelledError at the agent's next await
            return Attempt(
                timed_out=not lost.is_set(),
                lost=lost.is_set(),
                latency_ms=_ms_since(started),
                usage=ctx.usage,
                calls=list(ctx.calls),
            )
    try:
        outcome = task.result()
    except BaseException as exc:
        if not is_agent_failure(exc):
            raise
        return Attempt(error=exc, latency_ms=_ms_since(started), usage=ctx.usage, calls=ctx.calls)
    return Attempt(outcome=outcome, latency_ms=_ms_since(started), usage=ctx.usage, calls=ctx.calls)


def _run_async_attempt(
    agent: Callable[..., Any],
    view: Any,
    ctx: StepContext,
    *,
    timeout_s: float | None,
    lost: threading.Event,
    abandon: Callable[[], None],
) -> Attempt:
    """:func:`run_attempt` for a coroutine agent: :func:`attempt_async` on :func:`event_loop`."""
    coro = attempt_async(agent, view, ctx, timeout_s=timeout_s, lost=lost, abandon=abandon)
    return submit(coro).result()


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run ``coro`` on :func:`event_loop` in a copy of the calling thread's context; its future.

    ``asyncio.run_coroutine_threadsafe`` alone would run it in the loop
    thread's context, so a span open here (the step's attempt) would not be
    its parent. Cancelling the returned future cancels the coroutine.
    """
    context = copy_context()

    async def in_context() -> T:
        return await asyncio.get_running_loop().create_task(coro, context=context)

    return asyncio.run_coroutine_threadsafe(in_context(), event_loop())


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)




class EffectLog:
    """The ``ctx.once`` hook of one attempt, and the effects it used (for the step's audit event).

    Args:
        db: the database holding the ``side_effect`` table.
        run_id, step: the attempt's run and step.
        now: returns the current time as a stored string.
    """

    def __init__(self, db: Database, run_id: str, step: str, now: Callable[[], str]) -> None:
        self._db = db
        self._run_id = run_id
        self._step = step
        self._now = now
        self.abandoned = False
        self.used: list[dict[str, Any]] = []

    def abandon(self) -> None:
        """Refuse new side effects from now on (the attempt was abandoned)."""
        self.abandoned = True

    def __call__(self, name: str, key: str, fn: Callable[[str], Any]) -> Any:
        """Return the result recorded under ``key``, or run ``fn(key)`` and record it.

        Raises:
            AttemptAbandoned: no result is recorded and the attempt was abandoned.
            TypeError: ``fn`` returned something JSON cannot hold (its effect
                has happened; a retry calls ``fn`` again with the same key).
            Exception: whatever ``fn`` raises (nothing is recorded).
        """
        with read_tx(self._db) as tx:
            recorded = read_effect(tx, key)
        if recorded is not None:
            return self._use(name, key, recorded, replayed=True)
        if self.abandoned:
            raise AttemptAbandoned(f"side effect {name!r} not started: the attempt was abandoned")
        with span(f"execute_tool {name}", {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
            "statecraft.run_id": self._run_id, "statecraft.step": self._step,
            "statecraft.idempotency_key": key,
        }):
            result = fn(key)
        try:
            body = json.dumps(result, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"ctx.once({name!r}): the result must be JSON-serialisable: {exc}") from exc
        # Its own transaction, right away: the shorter the gap between the
        # effect and its record, the rarer a second call (docs/reliability.md).
        with write_tx(self._db) as tx:
            # A concurrent attempt (an abandoned one, or a stalled engine) may
            # have recorded first: everyone returns the first record.
            stored = record_effect(
                tx, key=key, run_id=self._run_id, step=self._step, name=name, result_json=body,
                created_at=self._now(),
            )
        return self._use(name, key, stored, replayed=False)

    def _use(self, name: str, key: str, body: str, *, replayed: bool) -> Any:
        self.used.append(
            {
                "name": name,
                "idempotency_key": key,
                "result_sha256": sha256_hex(body.encode("utf-8")),
                "replayed": replayed,
            }
        )
        return json.loads(body)
