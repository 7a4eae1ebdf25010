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

Both are one implementation, :class:`TimedCall`: a step's attempt and every
attempt of a fan-out branch start, time out and are abandoned by the same
code; a step waits for its one call (:meth:`TimedCall.wait`, or
:meth:`TimedCall.wait_async` in an ``AsyncEngine``), a fan-out's coordinator
watches many (their ``deadline`` and :meth:`TimedCall.overdue`).

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
import contextvars
import inspect
import json
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

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
    "CallState",
    "DaemonThreads",
    "TimedCall",
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


CallState = Literal["new", "running", "done", "abandoned", "dropped"]


class TimedCall:
    """One call the engine may stop waiting for: the one timeout/abandon rule of steps and fan-out branches.

    A step's attempt (:func:`run_attempt`, :func:`attempt_async`) and every
    attempt of a fan-out branch (statecraft/patterns/parallel.py) is a
    ``TimedCall``; only *how the caller waits* differs (one call blocking or
    awaiting, or a coordinator watching many). Once started (:meth:`start`),
    ``fn(*args)`` runs

    - on a **daemon thread** when ``fn`` is a plain callable (Python cannot kill
      a thread, so an abandoned one may run on; daemon, so it cannot keep
      the process alive); a thread whose call ended is reused for the next
      call (:class:`DaemonThreads`), or
    - as a **task on an event loop** when ``fn`` is a coroutine function: the
      process's :func:`event_loop`, or ``loop`` when given (an
      ``AsyncEngine`` on its service's loop). Abandoning it *cancels* it
      (``CancelledError`` at its next ``await``).

    Either way it runs in a copy of the context of the thread that made the
    ``TimedCall``, so spans opened there (the step's attempt) are its parents.

    States: ``new`` → ``running`` → ``done`` | ``abandoned``; ``new`` →
    ``dropped`` (never started). :meth:`abandon` and the call's own end race
    under one lock, so exactly one wins: an abandoned call's result is
    dropped and ``on_end`` is not called; a call that ended first cannot be
    abandoned.

    Args:
        fn: the callable; called as ``fn(*args)``.
        args: its arguments.
        timeout_s: seconds from :meth:`start` until the call is overdue;
            ``None``: never.
        on_abandon: called once when the call is abandoned (e.g.
            ``EffectLog.abandon``: no new ``ctx.once`` effects, or setting a
            branch's ``cancelled`` event).
        on_end: called with the call when it ends on its own (on the call's
            thread or loop), not when abandoned.
        name: the thread's name (plain callables).
        loop: the event loop for a coroutine function (default :func:`event_loop`).

    Attributes:
        state: as above.
        started, ended: ``time.monotonic()`` seconds (0.0 until then).
        deadline: ``started + timeout_s``, or ``None``.
        value, error: what ``fn`` returned or raised (once ``done``).
        finished: set when the call ended on its own or was abandoned.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        *,
        timeout_s: float | None = None,
        on_abandon: Callable[[], None] | None = None,
        on_end: Callable[[TimedCall], None] | None = None,
        name: str = "statecraft-call",
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._fn = fn
        self._args = args
        self._timeout_s = timeout_s
        self._on_abandon = on_abandon
        self._on_end = on_end
        self._name = name
        self._loop = loop
        self._context = copy_context()
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[Any] | asyncio.Future[Any] | None = None
        self.state: CallState = "new"
        self.started = 0.0
        self.ended = 0.0
        self.deadline: float | None = None
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = threading.Event()

    def start(self) -> None:
        """Start the call (it runs as the class docstring says); ``on_end`` is never called from here.

        Raises:
            RuntimeError: the call was already started or dropped.
        """
        with self._lock:
            if self.state != "new":
                raise RuntimeError(f"a {self.state} call cannot be started")
            self.state = "running"
            self.started = time.monotonic()
            if self._timeout_s is not None:
                self.deadline = self.started + self._timeout_s
            if is_async_callable(self._fn):
                self._future = self._start_task()
                return
        _THREADS.run(self._run_in_context, self._name)

    def _start_task(self) -> concurrent.futures.Future[Any] | asyncio.Future[Any]:
        async def body() -> None:
            # The coroutine is made here, so a coroutine function that raises
            # on call ends the call like any other error; and the end is
            # reported from the loop, never from inside start().
            try:
                value = await self._fn(*self._args)
            except asyncio.CancelledError as exc:
                self._ended(None, exc)
                raise
            except BaseException as exc:  # carried to whoever waits for the call
                self._ended(None, exc)
            else:
                self._ended(value, None)

        if self._loop is None:
            return submit(body(), self._context)
        return self._loop.create_task(body(), context=self._context)

    def _run_in_context(self) -> None:
        self._context.run(self._run_inline)

    def _run_inline(self) -> None:
        try:
            value = self._fn(*self._args)
        except BaseException as exc:  # carried to whoever waits for the call
            self._ended(None, exc)
        else:
            self._ended(value, None)

    def _ended(self, value: Any, error: BaseException | None) -> None:
        with self._lock:
            if self.state != "running":
                return  # abandoned: what it returned or raised is dropped
            self.state, self.value, self.error = "done", value, error
            self.ended = time.monotonic()
        self.finished.set()
        if self._on_end is not None:
            self._on_end(self)

    def abandon(self) -> bool:
        """Stop waiting for a running call: ``on_abandon``, cancel a coroutine; its result will be dropped.

        Returns:
            True if the call was running and is now abandoned; False if it
            had already ended (or never started): then nothing changes.
        """
        with self._lock:
            if self.state != "running":
                return False
            self.state = "abandoned"
            self.ended = time.monotonic()
        if self._on_abandon is not None:
            self._on_abandon()
        if self._future is not None:
            self._future.cancel()  # a real cancellation: CancelledError at the next await
        self.finished.set()
        return True

    def drop(self) -> bool:
        """Make sure a call that has not started never starts. True if it was ``new``."""
        with self._lock:
            if self.state != "new":
                return False
            self.state = "dropped"
            return True

    def overdue(self, now: float) -> bool:
        """Whether a running call has passed its deadline at ``now`` (``time.monotonic()`` seconds)."""
        return self.state == "running" and self.deadline is not None and now >= self.deadline

    def why_stop(self, lost: threading.Event) -> Literal["timeout", "lost"] | None:
        """Why a caller waiting for this one call should abandon it now: its lease is lost, or its deadline passed."""
        if lost.is_set():
            return "lost"
        if self.overdue(time.monotonic()):
            return "timeout"
        return None

    def next_check_s(self) -> float:
        """Seconds a waiting caller may sleep before looking again (lease poll, or the deadline if sooner)."""
        if self.deadline is None:
            return _POLL_S
        return max(0.0, min(self.deadline - time.monotonic(), _POLL_S))

    def wait(self, lost: threading.Event) -> Literal["timeout", "lost"] | None:
        """Block until the call ends, or abandon it at its deadline or when ``lost`` is set.

        Returns:
            ``None`` when the call ended on its own; else why it was abandoned.
        """
        while not self.finished.wait(self.next_check_s()):
            why = self.why_stop(lost)
            if why is not None and self.abandon():
                return why
        return None if self.state == "done" else "lost"

    async def wait_async(self, lost: threading.Event) -> Literal["timeout", "lost"] | None:
        """:meth:`wait` for a coroutine call on the running loop (``loop=`` that loop).

        Raises:
            asyncio.CancelledError: the waiter itself was cancelled (a service
                shutting down): the call is abandoned too.
        """
        assert isinstance(self._future, asyncio.Future), "wait_async needs a call started on the running loop"
        while not self.finished.is_set():
            try:
                await asyncio.wait({self._future}, timeout=self.next_check_s())
            except asyncio.CancelledError:
                self.abandon()
                raise
            why = self.why_stop(lost)
            if why is not None and self.abandon():
                return why
        return None if self.state == "done" else "lost"


def run_attempt(
    agent: Callable[[Any, StepContext], object],
    view: Any,
    ctx: StepContext,
    *,
    timeout_s: float | None,
    lost: threading.Event,
    abandon: Callable[[], None],
) -> Attempt:
    """Call ``agent(view, ctx)`` once: inline, or as a :class:`TimedCall` under a timeout.

    A plain agent without a timeout runs inline on the engine's thread (no
    cost on the hot path); with one, or when the agent is a coroutine
    function (awaited on :func:`event_loop`), it is a :class:`TimedCall` the
    engine abandons at its timeout or when its lease is lost.

    Args:
        agent: the step's agent.
        view: the agent's state view.
        ctx: the attempt's context.
        timeout_s: seconds the attempt may take; ``None``: no timeout.
        lost: set when the engine's lease on the run is lost.
        abandon: called when the attempt is abandoned (stops new side effects).

    Returns:
        The attempt's result; never raises for the agent's own failure.

    Raises:
        StatecraftError, KeyboardInterrupt, SystemExit: as raised by the agent,
            when not an attempt failure (:func:`is_agent_failure`).
    """
    if timeout_s is None and not is_async_callable(agent):
        started = time.monotonic()
        try:
            outcome, error = agent(view, ctx), None
        except BaseException as exc:
            outcome, error = None, exc
        return _ended_attempt(outcome, error, _ms_since(started), ctx)
    call = TimedCall(agent, (view, ctx), timeout_s=timeout_s, on_abandon=abandon, name=f"statecraft-agent-{ctx.step}")
    call.start()
    return _attempt_of(call, call.wait(lost), ctx)


async def attempt_async(
    agent: Callable[..., Awaitable[object]],
    view: Any,
    ctx: StepContext,
    *,
    timeout_s: float | None,
    lost: threading.Event,
    abandon: Callable[[], None],
) -> Attempt:
    """One attempt of a coroutine agent awaited on the running loop (``AsyncEngine``); a :class:`TimedCall`.

    Same rule as :func:`run_attempt`: abandoned (and cancelled) at its
    timeout or when ``lost`` is set; ``abandon`` stops new ``ctx.once`` effects.

    Returns:
        The attempt's result; never raises for the agent's own failure.

    Raises:
        StatecraftError, KeyboardInterrupt, SystemExit, asyncio.CancelledError:
            as raised by the agent, when not an attempt failure, or when
            this coroutine itself is cancelled.
    """
    call = TimedCall(
        agent, (view, ctx), timeout_s=timeout_s, on_abandon=abandon, loop=asyncio.get_running_loop()
    )
    call.start()
    return _attempt_of(call, await call.wait_async(lost), ctx)


def _attempt_of(call: TimedCall, stopped: Literal["timeout", "lost"] | None, ctx: StepContext) -> Attempt:
    """The :class:`Attempt` of a step's ended or abandoned call."""
    latency = int((call.ended - call.started) * 1000)
    if stopped is not None:
        # Snapshots: an abandoned thread may keep reporting into ctx.
        return Attempt(
            timed_out=stopped == "timeout", lost=stopped == "lost", latency_ms=latency,
            usage=ctx.usage, calls=list(ctx.calls),
        )
    return _ended_attempt(call.value, call.error, latency, ctx)


def _ended_attempt(outcome: object, error: BaseException | None, latency_ms: int, ctx: StepContext) -> Attempt:
    """The :class:`Attempt` of an agent call that returned ``outcome`` or raised ``error``.

    Raises:
        BaseException: ``error`` itself when it is not an attempt failure (:func:`is_agent_failure`).
    """
    if error is not None:
        if not is_agent_failure(error):
            raise error
        return Attempt(error=error, latency_ms=latency_ms, usage=ctx.usage, calls=ctx.calls)
    return Attempt(outcome=outcome, latency_ms=latency_ms, usage=ctx.usage, calls=ctx.calls)


def is_async_callable(fn: object) -> bool:
    """Whether calling ``fn`` gives a coroutine: an ``async def`` function, or an object whose ``__call__`` is one."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


class DaemonThreads:
    """Reusable daemon threads for plain callables that may never return (a :class:`TimedCall`'s agent or branch).

    Starting a thread costs ~0.1 ms (113 µs per ``Thread.start()`` on the
    project's 2-CPU machines), paid in series by a fan-out's step thread
    before its last branch starts (bench/bench_compare.py's fan-out). So
    a thread whose call ended waits (idle) for the next call, for up to
    ``idle_s`` seconds, instead of exiting; :meth:`run` hands a call to an
    idle thread, or starts a new one when none is idle.

    Unlike ``concurrent.futures.ThreadPoolExecutor``: the threads are
    **daemon** (the interpreter does not join them at exit, so a hung agent
    cannot keep the process alive), and there is **no cap** (a call that
    never returns holds only its own thread; the next call gets another).
    At most ``max_idle`` threads wait at once; a thread that ends a call
    beyond that exits. A call that raises ends its thread, as a bare thread
    would. In a forked child the parent's idle threads do not exist: the
    list is reset at fork (``os.register_at_fork``).

    Args:
        idle_s: seconds an idle thread waits for a call before it exits.
        max_idle: at most this many idle threads are kept.
    """

    def __init__(self, idle_s: float = 10.0, max_idle: int = 16) -> None:
        self._idle_s = idle_s
        self._max_idle = max_idle
        self._guard = threading.Lock()
        self._idle: list[queue.SimpleQueue[tuple[Callable[[], object], str]]] = []  # a stack: the warmest first

    def run(self, fn: Callable[[], object], name: str) -> None:
        """Call ``fn()`` on an idle thread, or on a new daemon thread named ``name``; returns at once.

        The thread carries ``name`` while ``fn`` runs (thread dumps, logs).
        """
        with self._guard:
            inbox = self._idle.pop() if self._idle else None
        if inbox is not None:
            inbox.put((fn, name))
            return
        inbox = queue.SimpleQueue()
        inbox.put((fn, name))
        threading.Thread(target=self._serve, args=(inbox,), name=name, daemon=True).start()

    def _serve(self, inbox: queue.SimpleQueue[tuple[Callable[[], object], str]]) -> None:
        me = threading.current_thread()
        fn, me.name = inbox.get()
        while True:
            fn()
            del fn  # drop the call (and what it holds) while idle
            me.name = "statecraft-idle"
            with self._guard:
                if len(self._idle) >= self._max_idle:
                    return
                self._idle.append(inbox)
            try:
                fn, me.name = inbox.get(timeout=self._idle_s)
            except queue.Empty:
                with self._guard:
                    if inbox in self._idle:  # nobody took this thread while it timed out: leave
                        self._idle.remove(inbox)
                        return
                fn, me.name = inbox.get()  # taken at the same moment: its call is on the way

    def _after_fork_in_child(self) -> None:
        self._guard = threading.Lock()
        self._idle = []


_THREADS = DaemonThreads()
os.register_at_fork(after_in_child=_THREADS._after_fork_in_child)


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


def submit(
    coro: Coroutine[Any, Any, T], context: contextvars.Context | None = None
) -> concurrent.futures.Future[T]:
    """Run ``coro`` on :func:`event_loop` in ``context`` (default: a copy of the calling thread's); its future.

    ``asyncio.run_coroutine_threadsafe`` alone would run it in the loop
    thread's context, so a span open here (the step's attempt) would not be
    its parent. Cancelling the returned future cancels the coroutine.
    """
    context = copy_context() if context is None else context

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
