"""SQL of the rate limiter's token buckets (statecraft/agents/limits.py).

One row per limiter key; every reservation is one short write transaction
(``BEGIN IMMEDIATE``: read the levels, let the caller's pure rule decide,
write them back), so processes sharing the database share the bucket
without any other coordination.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, TypeVar

from .db import Database
from .txn import write_tx

__all__ = ["BucketLevels", "update_bucket"]

T = TypeVar("T")

_SELECT: Final = (
    "SELECT request_level_milli, token_level_milli, updated_us FROM rate_limit_bucket WHERE key = :key"
)
_UPSERT: Final = (
    "INSERT INTO rate_limit_bucket (key, request_level_milli, token_level_milli, updated_us) "
    "VALUES (:key, :requests, :tokens, :updated_us) ON CONFLICT (key) DO UPDATE SET "
    "request_level_milli = excluded.request_level_milli, token_level_milli = excluded.token_level_milli, "
    "updated_us = excluded.updated_us"
)


@dataclass(frozen=True)
class BucketLevels:
    """A bucket's stored levels.

    Attributes:
        request_level_milli: requests left, in thousandths (may be negative: a debt).
        token_level_milli: tokens left, in thousandths (may be negative).
        updated_us: when they were last refilled, microseconds since the Unix epoch.
    """

    request_level_milli: int
    token_level_milli: int
    updated_us: int


def update_bucket(
    db: Database, key: str, rule: Callable[[BucketLevels | None], tuple[BucketLevels | None, T]]
) -> T:
    """Apply ``rule`` to the bucket ``key`` atomically. Commits one write transaction.

    Args:
        db: the database.
        key: the limiter key, e.g. ``anthropic:claude-sonnet-4-6``.
        rule: pure: the stored levels (``None``: no row yet) -> the levels
            to store (``None``: leave the row as it is) and a result.

    Returns:
        The rule's result.
    """
    with write_tx(db) as tx:
        row = tx.one(_SELECT, {"key": key})
        levels = None if row is None else BucketLevels(int(row[0]), int(row[1]), int(row[2]))
        new, result = rule(levels)
        if new is not None:
            tx.run(_UPSERT, {
                "key": key, "requests": new.request_level_milli, "tokens": new.token_level_milli,
                "updated_us": new.updated_us,
            })
    return result
