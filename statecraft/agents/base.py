"""The agent protocol, the context an agent receives, and usage accounting.

An agent is any callable ``(state, ctx) -> Outcome``. ``state`` is an
immutable pydantic value holding the fields the step declared it ``reads``
(all fields when it declared none); ``ctx`` is a :class:`StepContext` giving
the run's original task (intent propagation), the clock, idempotency keys and
a place to report usage. Agents never loop on errors themselves and never
touch the database: the engine runs them outside any transaction, under the
step's policy, and commits what they return.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from ..outcomes import Outcome
    from ..store.db import Database

__all__ = ["Agent", "RecordedCall", "StepContext", "Usage"]

T = TypeVar("T")

_MAX_SAFE_INT = 2**53 - 1


class Agent(Protocol):
    """A transition function: ``(state, ctx) -> Outcome``.

    Optional attributes read by the engine and written to the audit log:
    ``agent_name`` (str, default the callable's qualified name),
    ``agent_version`` (str) and ``prompt_version`` (str).
    """

    def __call__(self, state: Any, ctx: StepContext, /) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class Usage:
    """Resources one agent call consumed, as reported by the agent.

    Integers only: the values enter hashed audit data, where floats are
    forbidden (AUDIT.md, "The hash chain").

    Attributes:
        tokens_in: input (prompt) tokens.
        tokens_out: output (completion) tokens.
        cost_micros: cost in micro-USD (1 USD = 1_000_000).
        model_provider: e.g. ``anthropic`` (OpenTelemetry ``gen_ai.system``).
        model_id: e.g. ``claude-sonnet-4-5`` (OpenTelemetry ``gen_ai.request.model``).
        prompt_version: the prompt template's version, if any.
    """

    tokens_in: int = 0
    tokens_out: int = 0
    cost_micros: int = 0
    model_provider: str | None = None
    model_id: str | None = None
    prompt_version: str | None = None

    def __post_init__(self) -> None:
        for name in ("tokens_in", "tokens_out", "cost_micros"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_SAFE_INT:
                raise ValueError(f"Usage.{name} must be a non-negative integer, got {value!r}")

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            tokens_in=self.tokens_in + other.tokens_in,
            tokens_out=self.tokens_out + other.tokens_out,
            cost_micros=self.cost_micros + other.cost_micros,
            model_provider=other.model_provider or self.model_provider,
            model_id=other.model_id or self.model_id,
            prompt_version=other.prompt_version or self.prompt_version,
        )


@dataclass(frozen=True)
class RecordedCall:
    """One sub-call made inside a step, audited as its own event.

    Attributes:
        event_type: ``agent.called``, ``tool.called`` or ``route.decided``, …
        name: the called agent's or tool's stable name (``agent_name`` column).
        outcome: ``success``, ``failure``, ``timeout`` or ``cancelled``.
        decision: what was decided (e.g. the route chosen), if anything.
        reason: why; for failures the error message.
        error_code: stable code for failures.
        latency_ms: wall time of the call, integer milliseconds.
        attempt: attempt number of this call (1 = first).
        usage: tokens and cost the call consumed.
        input: JSON-compatible input, stored as a blob (``input_sha256``).
        output: JSON-compatible output, stored as a blob (``output_sha256``).
        payload: small JSON-compatible detail (no floats), bound into the chain.
        version: the called agent's version (``agent_version`` column).
    """

    event_type: str
    name: str
    outcome: str = "success"
    decision: str | None = None
    reason: str | None = None
    error_code: str | None = None
    latency_ms: int = 0
    attempt: int = 1
    usage: Usage = Usage()
    input: Any = None
    output: Any = None
    payload: Any = None
    version: str | None = None


class StepContext:
    """What an agent may know and do besides reading its state view.

    Built by the engine for one attempt of one step; not shared between
    attempts or threads.

    Attributes:
        run_id: the run's id.
        machine: the machine's name.
        machine_version: the machine's version.
        step: the step being executed.
        attempt: 1 for the first attempt, 2 for the first retry, …
        started_by: the actor id that started the run.
        parent_run_id: the delegating run, for sub-runs; else ``None``.
        visit: how many times this step had completed in this run before this
            execution (0 the first time); part of the idempotency key.
        database: the engine's database, for statecraft's own controls in
            front of a model (rate limits, circuit breakers, the prompt
            registry, sessions: statecraft/agents/limits.py, breaker.py,
            session.py), which share their state across runs and processes
            through it. Agents never write run data through it. ``None``
            outside an engine; the controls then keep their state in the
            process.
        acting_agent: set by an agent that hands the whole step to one of
            several versions of an agent (:class:`statecraft.agents.canary.Canary`):
            the one that acted, whose name and versions the step's audit
            event records instead of the step's declared agent's.
    """

    def __init__(
        self,
        *,
        run_id: str,
        machine: str,
        machine_version: str,
        step: str,
        attempt: int,
        started_by: str,
        load_task: Callable[[], Any],
        clock: Callable[[], datetime],
        once: Callable[[str, str, Callable[[str], Any]], Any] | None = None,
        parent_run_id: str | None = None,
        run_seq: int = 0,
        visit: int = 0,
        database: Database | None = None,
    ) -> None:
        self.run_id = run_id
        self.machine = machine
        self.machine_version = machine_version
        self.step = step
        self.attempt = attempt
        self.started_by = started_by
        self.parent_run_id = parent_run_id
        self._load_task = load_task
        self._task: Any = None
        self._task_loaded = False
        self._clock = clock
        self._once = once
        self._run_seq = run_seq
        self.visit = visit
        self.database = database
        self.acting_agent: Any = None
        self.usage = Usage()
        self.calls: list[RecordedCall] = []

    @property
    def task(self) -> Any:
        """The run's original input (str for text, dict for JSON), loaded once on demand.

        Every step sees it (intent propagation) without it being copied into
        the state or into any audit event: it is stored once, by content hash.
        """
        if not self._task_loaded:
            self._task = self._load_task()
            self._task_loaded = True
        return self._task

    @property
    def abandoned(self) -> bool:
        """Whether the engine has abandoned this attempt (its timeout passed, or the lease was lost).

        An agent still running on its thread after that is not waited for, and
        whatever it does is dropped: a long agent should check this before
        starting anything costly (a Claude agent checks it after waiting for a
        rate-limit slot, so an abandoned attempt sends nothing).
        """
        return bool(getattr(self._once, "abandoned", False))

    def now(self) -> datetime:
        """The engine's clock (UTC, timezone-aware); injectable for deterministic tests."""
        return self._clock()

    def record_usage(self, usage: Usage) -> None:
        """Add ``usage`` to this attempt's total; it is audited with the step's event."""
        self.usage = self.usage + usage

    def record_call(self, call: RecordedCall) -> None:
        """Record one sub-call (a worker agent, a tool, a routing decision) of this step.

        Each recorded call becomes its own audit event (``call.event_type``),
        written in the same transaction as the step's event, just before it.
        A step whose commit is abandoned (lease lost, run cancelled) records
        none of its calls. The call's usage is audited on its own event and
        added to the run's totals (not to the step event, so summing events
        never counts it twice).
        """
        self.calls.append(call)

    def start_call(self, provisional: RecordedCall) -> Callable[[RecordedCall], None]:
        """Record a call about to be made, as it is to be audited if the attempt is abandoned meanwhile.

        For calls that are billed even when nobody waits for their answer
        (an LLM request cut off by the step's timeout): the engine audits
        whatever this attempt recorded at the moment it abandons it, so the
        provisional record (e.g. outcome ``timeout`` with the estimated input
        tokens) is what the ledger keeps for a call still in flight then.

        Args:
            provisional: the record to keep if the call never finishes.

        Returns:
            ``finish(final)``: replaces the provisional record with the final
            one. Call it exactly once, when the call ended either way.
        """
        index = len(self.calls)
        self.calls.append(provisional)

        def finish(final: RecordedCall) -> None:
            self.calls[index] = final

        return finish

    def idempotency_key(self, name: str) -> str:
        """A key for side effect ``name``, stable across retries and resumes of this step.

        Shape: 64 hex characters, SHA-256 of ``run_id``, the step name, its
        visit number (how many times the step had *completed* in this run
        before: failed attempts, retries, crashes, error edges, escalations
        and operator retries keep the number, a completed visit moves it on)
        and ``name``. Pass it to external services that deduplicate by key
        (docs/reliability.md, "Idempotent side effects").
        """
        material = f"{self.run_id}\x00{self.step}\x00{self.visit}\x00{name}".encode()
        return hashlib.sha256(material).hexdigest()

    def once(self, name: str, fn: Callable[[str], T]) -> T:
        """Run ``fn(key)`` at most once to completion for this step of this run.

        The result (JSON-serialisable) is recorded durably (table
        ``side_effect``, its own transaction, as soon as ``fn`` returns); a
        later attempt or a resumed run gets the recorded result instead of
        calling ``fn`` again. Every call returns the result as read back from
        JSON (tuples become lists). If the process dies after ``fn`` returned
        but before the result was committed, ``fn`` runs again with the *same*
        key: the service must deduplicate by it (docs/reliability.md).

        Raises:
            RuntimeError: the engine running this step offers no durable store.
        """
        if self._once is None:
            raise RuntimeError("ctx.once needs an engine with a durable store")
        return self._once(name, self.idempotency_key(name), fn)  # type: ignore[no-any-return]
