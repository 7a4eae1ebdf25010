"""Reliability policies: declared data on a machine or step, enforced by the engine.

- :class:`RetryPolicy`: how often, and how far apart, the engine re-runs a
  failing agent (model: Temporal's ``RetryPolicy``, ``temporalio/common.py``).
- :class:`Budget`: per-run bounds on visits, tokens, cost and wall time, and
  what crossing one does (fail, or ask a human to extend it).

Agents never loop on errors and never count their own spending: they raise
or report usage, and the engine decides (STYLE.md, "Errors"). Durations are
``timedelta`` in the API and integer milliseconds in stored and hashed data
(no floats in the audit chain, AUDIT.md).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

__all__ = ["Budget", "OnExceeded", "RetryPolicy", "ms"]

OnExceeded = Literal["fail", "request_approval"]


def ms(duration: timedelta) -> int:
    """A duration as whole milliseconds (the unit of stored and audited durations)."""
    return int(duration / timedelta(milliseconds=1))


def _names(types: Iterable[str | type[BaseException]]) -> frozenset[str]:
    out = set()
    for t in types:
        if isinstance(t, type) and issubclass(t, BaseException):
            out.add(t.__name__)
        elif isinstance(t, str) and t:
            out.add(t)
        else:
            raise ValueError(f"RetryPolicy.non_retryable entries are exception types or names, not {t!r}")
    return frozenset(out)


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how far apart, the engine re-runs a failing agent.

    An attempt fails when its agent raises or exceeds the step's timeout.
    Returning ``Fail`` is a decision, not an error, and is never retried; nor
    is an illegal outcome (DESIGN.md invariant 1).

    Attributes:
        max_attempts: total attempts including the first (1 = no retries).
        initial_interval: delay before the first retry.
        backoff_coefficient: multiplier applied to the delay after each retry (>= 1).
        max_interval: upper bound for one delay.
        jitter: fraction (0..1) of each delay randomised away, to spread
            retries of many runs hitting one outage ("full jitter" is 1.0).
        non_retryable: exception types, or their names, never retried; a
            class matches its subclasses. An exception may also declare
            itself with a true ``non_retryable`` attribute (e.g.
            ``statecraft.agents.errors.LLMAuthError``).
        retry_on_invalid_output: retry an attempt whose model answered with
            output that does not validate (an error with a true
            ``invalid_output`` attribute, e.g.
            ``statecraft.agents.errors.LLMInvalidOutput``). Off by default:
            the same prompt often draws the same bad answer, and each retry
            is billed. Either way, attempts exhausted take the step's error
            edge (``on_error``) like any other failure.

    Raises:
        ValueError: a bound is out of range.
    """

    max_attempts: int = 1
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    max_interval: timedelta = timedelta(seconds=60)
    jitter: float = 0.0
    non_retryable: frozenset[str] = field(default_factory=frozenset)
    retry_on_invalid_output: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be an integer >= 1")
        if self.backoff_coefficient < 1:
            raise ValueError("RetryPolicy.backoff_coefficient must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter must be within 0..1")
        if self.initial_interval < timedelta(0) or self.max_interval < self.initial_interval:
            raise ValueError("RetryPolicy needs 0 <= initial_interval <= max_interval")
        object.__setattr__(self, "non_retryable", _names(self.non_retryable))

    @classmethod
    def none(cls) -> RetryPolicy:
        """The strict default: one attempt, no retries."""
        return cls(max_attempts=1)

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Delay before attempt ``attempt + 1``, given that ``attempt`` (>= 1) failed.

        ``initial_interval * backoff_coefficient ** (attempt - 1)``, capped at
        ``max_interval``, then reduced by up to ``jitter`` of itself.
        """
        base = self.initial_interval.total_seconds() * self.backoff_coefficient ** (attempt - 1)
        base = min(base, self.max_interval.total_seconds())
        if self.jitter:
            base *= 1 - self.jitter * (rng or random).random()
        return timedelta(seconds=base)

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` may be retried: not marked ``non_retryable``, no listed class in its MRO.

        Invalid model output (``invalid_output`` true on the error) is
        retryable exactly when ``retry_on_invalid_output`` is set, unless a
        listed class name still refuses it.
        """
        listed = any(c.__name__ in self.non_retryable for c in type(exc).__mro__)
        if getattr(exc, "invalid_output", False) is True:
            return self.retry_on_invalid_output and not listed
        if getattr(exc, "non_retryable", False):
            return False
        return not listed

    def describe(self) -> dict[str, Any]:
        """JSON form for the machine digest: integers and strings only (no floats)."""
        return {
            "max_attempts": self.max_attempts,
            "initial_ms": ms(self.initial_interval),
            "backoff": repr(float(self.backoff_coefficient)),
            "max_ms": ms(self.max_interval),
            "jitter": repr(float(self.jitter)),
            "non_retryable": sorted(self.non_retryable),
            # Only when set, so policies without it keep their machines' digests.
            **({"retry_on_invalid_output": True} if self.retry_on_invalid_output else {}),
        }


@dataclass(frozen=True)
class Budget:
    """Per-run bounds beyond ``Machine.max_steps``, and what crossing one does.

    Every limit is checked *before* each agent call (including retries), so a
    run stops before spending more; the call that crosses a limit is the
    last one. Usage is what agents report (``ctx.record_usage``; LLM agents
    report tokens and cost, function agents may report their own), including
    the usage of failed attempts and of sub-calls. ``None`` means unbounded.

    Attributes:
        max_visits: most successful completions of any one step in a run
            (catches A→B→A thrashing sooner than ``max_steps``).
        max_tokens: most input + output tokens in a run.
        max_cost_micros: most cost in a run, integer micro-USD.
        deadline: wall time a run may spend RUNNING in one stretch, measured
            from the moment it last entered RUNNING (start, approval, retry);
            an agent still running then is abandoned (outcome ``timeout``).
        on_exceeded: ``"fail"`` (the run goes FAILED, ``error_code``
            ``budget_exceeded``) or ``"request_approval"`` (it waits for a
            human, who may approve with a higher limit: ``Engine.approve(...,
            extend={...})``). Applies to ``max_steps`` too.

    Raises:
        ValueError: a limit is not a positive integer / duration.
    """

    max_visits: int | None = None
    max_tokens: int | None = None
    max_cost_micros: int | None = None
    deadline: timedelta | None = None
    on_exceeded: OnExceeded = "fail"

    def __post_init__(self) -> None:
        for name in ("max_visits", "max_tokens", "max_cost_micros"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"Budget.{name} must be a positive integer or None, got {value!r}")
        if self.deadline is not None and (
            not isinstance(self.deadline, timedelta) or self.deadline <= timedelta(0)
        ):
            raise ValueError("Budget.deadline must be a positive timedelta or None")
        if self.on_exceeded not in ("fail", "request_approval"):
            raise ValueError("Budget.on_exceeded must be 'fail' or 'request_approval'")

    def describe(self) -> dict[str, Any]:
        """JSON form for the machine digest (integers and strings only)."""
        return {
            "max_visits": self.max_visits,
            "max_tokens": self.max_tokens,
            "max_cost_micros": self.max_cost_micros,
            "deadline_ms": None if self.deadline is None else ms(self.deadline),
            "on_exceeded": self.on_exceeded,
        }
