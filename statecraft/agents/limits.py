"""Rate limiting in front of a model: token buckets per model, shared by every run and process.

Why here and not in the SDK: the provider's limits (requests and tokens
per minute, per organisation and model) are shared by everything that
calls it, while the SDK's retry only reacts *after* a 429. Twelve runs
started at once would each send their first request in the same
millisecond and get most of them refused. So every ``ClaudeAgent`` with a
:class:`RateLimit` asks a limiter for a slot before sending.

Why token buckets with debts (a "virtual scheduling" limiter, GCRA): a
bucket holds up to ``burst`` requests and refills at the rate; a caller
*reserves* its slot and is told how long to wait — the level may go
negative, and the debt is what later callers wait out. One reservation is
one short transaction, with no retry loop and no thundering herd: with
``requests_per_minute=240`` (4 per second, burst 4), twelve callers at once
get waits of 0, 0, 0, 0, 250 ms, 500 ms, … The token bucket works the same
way: the estimated input tokens are reserved before the call, and once the
answer says what was really used (input and output), the difference is
settled.

Why the database: "shared by all runs" must hold across the processes of
a deployment (workers, service replicas), so the buckets live in the
engine's database (table ``rate_limit_bucket``, statecraft/store/limits.py):
every process reserves from the same row, serialised by the write lock.
Without a database (an agent called outside an engine) the buckets live in
the process. Wall-clock microseconds are the time base, since a monotonic
clock is not shared between processes.

A wait longer than ``max_wait`` is not taken: the call fails at once with
``LLMRateLimitWait`` (retryable, ``retry_after`` = the wait asked for), and
the step's retry policy decides. The wait is audited on the call's
``agent.called`` event (``payload.rate_limit.waited_ms``) and is part of
the attempt's time, so a step ``timeout`` bounds it too.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..errors import DefinitionError
from ..policy import ms
from ..store.limits import BucketLevels, update_bucket
from .errors import LLMRateLimitWait

if TYPE_CHECKING:
    from ..store.db import Database

__all__ = ["RateLimit", "Reservation", "reserve", "settle"]

_US_PER_MINUTE = 60_000_000


@dataclass(frozen=True)
class RateLimit:
    """Requests and tokens per minute allowed to one model, for every run and process together.

    Attributes:
        requests_per_minute: requests per minute; ``None``: unbounded.
        tokens_per_minute: input + output tokens per minute; ``None``: unbounded.
        burst: requests that may go at once after a quiet spell; default one
            second's worth (``ceil(requests_per_minute / 60)``), as providers
            enforce per-minute limits over shorter intervals. The token
            bucket holds one minute's worth.
        key: what the limit is shared by; default ``anthropic:<model>``.
            Agents declaring the same key share one bucket (declare one limit per key).
        max_wait: the longest a call waits for its slot; a longer wait fails
            the attempt with ``LLMRateLimitWait`` (retryable) instead.

    Raises:
        DefinitionError: a bound is not a positive integer, or no bound is given.
    """

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    burst: int | None = None
    key: str | None = None
    max_wait: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        for name in ("requests_per_minute", "tokens_per_minute", "burst"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise DefinitionError(f"RateLimit.{name} must be a positive integer or None, got {value!r}")
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise DefinitionError("RateLimit needs requests_per_minute or tokens_per_minute")
        if self.key is not None and (not isinstance(self.key, str) or not self.key.strip()):
            raise DefinitionError("RateLimit.key must be a non-empty string or None")
        if not isinstance(self.max_wait, timedelta) or self.max_wait < timedelta(0):
            raise DefinitionError("RateLimit.max_wait must be a non-negative timedelta")

    @property
    def request_capacity_milli(self) -> int:
        """The request bucket's size, in thousandths of a request."""
        if self.requests_per_minute is None:
            return 0
        burst = self.burst if self.burst is not None else math.ceil(self.requests_per_minute / 60)
        return 1000 * burst

    @property
    def token_capacity_milli(self) -> int:
        """The token bucket's size (one minute's worth), in thousandths of a token."""
        return 0 if self.tokens_per_minute is None else 1000 * self.tokens_per_minute

    def describe(self) -> dict[str, Any]:
        """JSON form (integers and strings) for audit payloads."""
        return {"requests_per_minute": self.requests_per_minute, "tokens_per_minute": self.tokens_per_minute,
                "burst": self.request_capacity_milli // 1000 or None, "max_wait_ms": ms(self.max_wait)}


@dataclass(frozen=True)
class Reservation:
    """A slot reserved for one call.

    Attributes:
        key: the bucket.
        wait_us: how long to wait before sending, microseconds.
        tokens: the input tokens reserved (the estimate), settled after the answer.
    """

    key: str
    wait_us: int
    tokens: int

    @property
    def waited_ms(self) -> int:
        """The wait, whole milliseconds (as audited)."""
        return self.wait_us // 1000


def _refill(limit: RateLimit, levels: BucketLevels | None, now_us: int) -> tuple[int, int]:
    """Both levels (milli-units) at ``now_us``: the stored ones plus what the rates added, capped."""
    if levels is None:
        return limit.request_capacity_milli, limit.token_capacity_milli
    elapsed = max(0, now_us - levels.updated_us)
    requests, tokens = levels.request_level_milli, levels.token_level_milli
    if limit.requests_per_minute is not None:
        # milli-requests per microsecond = rpm * 1000 / 60e6
        requests = min(limit.request_capacity_milli, requests + elapsed * limit.requests_per_minute * 1000 // _US_PER_MINUTE)
    if limit.tokens_per_minute is not None:
        tokens = min(limit.token_capacity_milli, tokens + elapsed * limit.tokens_per_minute * 1000 // _US_PER_MINUTE)
    return requests, tokens


def _wait_us(level_milli: int, per_minute: int | None) -> int:
    """Microseconds until a (negative) level is back at zero at ``per_minute`` units a minute."""
    if per_minute is None or level_milli >= 0:
        return 0
    return -(level_milli * _US_PER_MINUTE // (per_minute * 1000))  # ceiling of a negative division


def reserve(limit: RateLimit, key: str, tokens: int, database: Database | None, now_us: int | None = None) -> Reservation:
    """Reserve a slot for one request of ``tokens`` estimated input tokens.

    Commits one write transaction with a database (else updates the process's
    bucket). The slot is taken whether or not the call is then made: an
    abandoned call's slot is not given back (erring on the provider's side).

    Args:
        limit: the limit.
        key: the bucket.
        tokens: estimated input tokens of the request.
        database: the engine's database (``ctx.database``), or ``None``.
        now_us: the time, microseconds since the epoch (default: now).

    Returns:
        The reservation; sleep ``wait_us`` before sending.

    Raises:
        LLMRateLimitWait: the wait would exceed ``limit.max_wait``; nothing was reserved.
    """
    now = _now_us() if now_us is None else now_us
    max_wait_us = ms(limit.max_wait) * 1000

    def rule(levels: BucketLevels | None) -> tuple[BucketLevels | None, int]:
        requests, token_level = _refill(limit, levels, now)
        if limit.requests_per_minute is not None:
            requests -= 1000
        if limit.tokens_per_minute is not None:
            token_level -= 1000 * tokens
        wait = max(_wait_us(requests, limit.requests_per_minute), _wait_us(token_level, limit.tokens_per_minute))
        if wait > max_wait_us:
            return None, wait  # refused: nothing reserved
        return BucketLevels(requests, token_level, now), wait

    wait = _apply(database, key, rule)
    if wait > max_wait_us:
        raise LLMRateLimitWait(
            f"rate limit {key}: the next slot is {wait // 1000} ms away, more than max_wait "
            f"({ms(limit.max_wait)} ms); not sent",
            limiter_key=key, retry_after=timedelta(microseconds=wait),
        )
    return Reservation(key, wait, tokens)


def settle(limit: RateLimit, reservation: Reservation, used_tokens: int, database: Database | None) -> None:
    """Charge the tokens a call really used (input and output) against what it reserved.

    Commits one write transaction with a database, when the limit counts
    tokens and the difference is not zero.

    Args:
        limit: the limit.
        reservation: the call's reservation.
        used_tokens: input + output tokens the answer reported (0 when nothing was processed).
        database: the engine's database, or ``None``.
    """
    delta = used_tokens - reservation.tokens
    if limit.tokens_per_minute is None or delta == 0:
        return
    now = _now_us()

    def rule(levels: BucketLevels | None) -> tuple[BucketLevels | None, None]:
        requests, tokens = _refill(limit, levels, now)
        return BucketLevels(requests, min(limit.token_capacity_milli, tokens - 1000 * delta), now), None

    _apply(database, reservation.key, rule)


_LOCAL: dict[str, BucketLevels] = {}
_LOCAL_GUARD = threading.Lock()


def _apply(database: Database | None, key: str, rule: Any) -> Any:
    if database is not None:
        return update_bucket(database, key, rule)
    with _LOCAL_GUARD:
        new, result = rule(_LOCAL.get(key))
        if new is not None:
            _LOCAL[key] = new
        return result


def _now_us() -> int:
    return time.time_ns() // 1000
