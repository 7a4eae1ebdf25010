"""One attempt of one step: calling the agent under its timeout, and ``ctx.once`` side effects.

The engine calls an agent outside any database transaction. Without a
timeout the call runs inline on the engine's thread (no cost on the hot
path). With a timeout (the step's, or what is left of the run's deadline) it
runs on a daemon thread that the engine stops waiting for when the timeout
passes or its lease is lost: the attempt is then *abandoned*. Python cannot
kill a thread, so an abandoned agent may still be running; from then on its
context refuses to start new side effects (``ctx.once`` raises
:class:`AttemptAbandoned`), and whatever it returns or reports is dropped.

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

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .agents.base import RecordedCall, StepContext, Usage
from .errors import StatecraftError
from .store.blobs import sha256_hex
from .store.db import Database
from .store.txn import write_tx

__all__ = ["Attempt", "AttemptAbandoned", "EffectLog", "is_agent_failure", "run_attempt"]

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

    worker = threading.Thread(target=target, name=f"statecraft-agent-{ctx.step}", daemon=True)
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


def _ms_since(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


_SELECT_EFFECT = "SELECT result_json FROM side_effect WHERE idempotency_key = :key"
_INSERT_EFFECT = (
    "INSERT INTO side_effect (idempotency_key, run_id, step, name, result_json, created_at) "
    "VALUES (:key, :run_id, :step, :name, :result_json, :created_at) "
    "ON CONFLICT (idempotency_key) DO NOTHING"
)


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
        with self._db.read() as conn:
            row = conn.exec_driver_sql(
                "SELECT result_json FROM side_effect WHERE idempotency_key = ?", (key,)
            ).first()
        if row is not None:
            return self._use(name, key, row[0], replayed=True)
        if self.abandoned:
            raise AttemptAbandoned(f"side effect {name!r} not started: the attempt was abandoned")
        result = fn(key)
        try:
            body = json.dumps(result, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"ctx.once({name!r}): the result must be JSON-serialisable: {exc}") from exc
        # Its own transaction, right away: the shorter the gap between the
        # effect and its record, the rarer a second call (docs/reliability.md).
        with write_tx(self._db) as tx:
            tx.run(
                _INSERT_EFFECT,
                {
                    "key": key,
                    "run_id": self._run_id,
                    "step": self._step,
                    "name": name,
                    "result_json": body,
                    "created_at": self._now(),
                },
            )
            # A concurrent attempt (an abandoned one, or a stalled engine) may
            # have recorded first: everyone returns the first record.
            stored = tx.one(_SELECT_EFFECT, {"key": key})
        assert stored is not None
        return self._use(name, key, stored[0], replayed=False)

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
