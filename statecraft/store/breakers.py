"""SQL of the circuit breakers (statecraft/agents/breaker.py) and of their ledger events.

A breaker's state is one row, read before every call it guards and written
only when it changes (a failure, the first success after failures, a state
change), each time in one short write transaction. A state change appends
its ledger event (``circuit.opened``, ``circuit.half_opened``,
``circuit.closed``) in that same transaction, so the ledger and the row
cannot disagree. Like ``payload.redacted``, these events belong to no run
(``run_id`` NULL): a breaker guards a dependency that every run shares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from ..audit.chain import new_event_row
from .db import Database
from .ledger import insert_event, ledger_head
from .txn import Tx, read_tx, write_tx

__all__ = ["BreakerRecord", "LedgerNote", "read_breaker", "update_breaker"]

T = TypeVar("T")

_COLUMNS: Final = "name, state, failures, opened_at, probe_until, last_error_code, updated_at"
_SELECT: Final = f"SELECT {_COLUMNS} FROM circuit_breaker WHERE name = :name"
_UPSERT: Final = (
    f"INSERT INTO circuit_breaker ({_COLUMNS}) VALUES "
    "(:name, :state, :failures, :opened_at, :probe_until, :last_error_code, :updated_at) "
    "ON CONFLICT (name) DO UPDATE SET state = excluded.state, failures = excluded.failures, "
    "opened_at = excluded.opened_at, probe_until = excluded.probe_until, "
    "last_error_code = excluded.last_error_code, updated_at = excluded.updated_at"
)


@dataclass(frozen=True)
class BreakerRecord:
    """A breaker's stored state.

    Attributes:
        name: the dependency it guards, e.g. ``anthropic:claude-sonnet-4-6``.
        state: ``closed``, ``open`` or ``half_open``.
        failures: consecutive counted failures.
        opened_at: when it last opened (UTC, fixed width), if it did.
        probe_until: while half open, until when the probe call holds its lease.
        last_error_code: the ``error_code`` of the last counted failure.
        updated_at: when the row last changed.
    """

    name: str
    state: str
    failures: int
    opened_at: str | None
    probe_until: str | None
    last_error_code: str | None
    updated_at: str


@dataclass(frozen=True)
class LedgerNote:
    """A ledger event (no run) to append with a state change.

    Attributes:
        event_type: e.g. ``circuit.opened``.
        decision: ``open``, ``half_open`` or ``close``.
        reason: one line: why.
        error_code: the failure that opened it, if any.
        payload: JSON-compatible detail (integers and strings only).
    """

    event_type: str
    decision: str
    reason: str
    error_code: str | None
    payload: Mapping[str, Any]


def read_breaker(db: Database, name: str) -> BreakerRecord | None:
    """The breaker's state, or ``None`` if it never changed from closed. Read-only."""
    with read_tx(db) as tx:
        row = tx.one(_SELECT, {"name": name})
    return None if row is None else BreakerRecord(*row)


def update_breaker(
    db: Database,
    name: str,
    now: str,
    rule: Callable[[BreakerRecord | None], tuple[BreakerRecord | None, LedgerNote | None, T]],
) -> T:
    """Apply ``rule`` to the breaker ``name`` atomically; append its ledger event, if any.

    Commits one write transaction (the row and the event together).

    Args:
        db: the database.
        name: the breaker.
        now: the event time (UTC, fixed width).
        rule: pure: the stored state -> the state to store (``None``: leave
            it), the ledger event to append (``None``: none) and a result.

    Returns:
        The rule's result.
    """
    with write_tx(db) as tx:
        row = tx.one(_SELECT, {"name": name})
        new, note, result = rule(None if row is None else BreakerRecord(*row))
        if new is not None:
            tx.run(_UPSERT, {
                "name": new.name, "state": new.state, "failures": new.failures,
                "opened_at": new.opened_at, "probe_until": new.probe_until,
                "last_error_code": new.last_error_code, "updated_at": new.updated_at,
            })
        if note is not None:
            _append_ledger_event(tx, db.ledger_id, note, now)
    return result


def _append_ledger_event(tx: Tx, ledger_id: str, note: LedgerNote, now: str) -> None:
    row = new_event_row(
        ledger_head(tx),
        ledger_id=ledger_id,
        fields={
            "event_type": note.event_type, "actor_type": "system", "actor_id": "statecraft",
            "occurred_at": now, "decision": note.decision, "reason": note.reason,
            "error_code": note.error_code, "outcome": "success",
        },
        payload=dict(note.payload),
    )
    insert_event(tx, row)
