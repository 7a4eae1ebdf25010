"""Retry policy: declared data, decided by the engine, never looped in agents.

Model: Temporal's ``RetryPolicy`` (``temporalio/common.py``). Durations are
``timedelta`` in the API and integer milliseconds in audit events.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import timedelta

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how far apart, the engine re-runs a failing agent.

    Attributes:
        max_attempts: total attempts including the first (1 = no retries).
        initial_interval: delay before the first retry.
        backoff_coefficient: multiplier applied to the delay after each retry (>= 1).
        max_interval: upper bound for one delay.
        jitter: fraction (0..1) of each delay randomised away, to spread retries.
        non_retryable: exception type names (``type(exc).__name__``) never retried.
    """

    max_attempts: int = 1
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    max_interval: timedelta = timedelta(seconds=60)
    jitter: float = 0.0
    non_retryable: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if self.backoff_coefficient < 1:
            raise ValueError("RetryPolicy.backoff_coefficient must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("RetryPolicy.jitter must be within 0..1")
        object.__setattr__(self, "non_retryable", frozenset(self.non_retryable))

    @classmethod
    def none(cls) -> RetryPolicy:
        """The strict default: one attempt, no retries."""
        return cls(max_attempts=1)

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Delay before attempt ``attempt + 1``, given that ``attempt`` (>= 1) failed."""
        base = self.initial_interval.total_seconds() * self.backoff_coefficient ** (attempt - 1)
        base = min(base, self.max_interval.total_seconds())
        if self.jitter:
            base *= 1 - self.jitter * (rng or random).random()
        return timedelta(seconds=base)

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` may be retried: not listed, and not marked ``non_retryable``."""
        if getattr(exc, "non_retryable", False):
            return False
        return type(exc).__name__ not in self.non_retryable
