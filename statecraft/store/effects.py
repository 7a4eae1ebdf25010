"""The ``side_effect`` table: results of ``ctx.once`` effects, by idempotency key.

A result is recorded in its own short transaction as soon as the effect's
function returns (statecraft/execution.py explains why), and never changed:
the first record for a key wins, so every later attempt, retry or resumed
run reads the same result.
"""

from __future__ import annotations

from typing import Final

from .txn import Tx

__all__ = ["read_effect", "record_effect"]

_SELECT: Final = "SELECT result_json FROM side_effect WHERE idempotency_key = :key"
_INSERT: Final = (
    "INSERT INTO side_effect (idempotency_key, run_id, step, name, result_json, created_at) "
    "VALUES (:key, :run_id, :step, :name, :result_json, :created_at) "
    "ON CONFLICT (idempotency_key) DO NOTHING"
)


def read_effect(tx: Tx, key: str) -> str | None:
    """The recorded result (JSON text) under ``key``, or ``None``."""
    row = tx.one(_SELECT, {"key": key})
    return None if row is None else str(row[0])


def record_effect(
    tx: Tx, *, key: str, run_id: str, step: str, name: str, result_json: str, created_at: str
) -> str:
    """Record ``result_json`` under ``key`` unless a result is recorded already; the result that stands."""
    tx.run(_INSERT, {
        "key": key, "run_id": run_id, "step": step, "name": name,
        "result_json": result_json, "created_at": created_at,
    })
    stored = read_effect(tx, key)
    assert stored is not None  # inserted, or there before: either way it is there
    return stored
