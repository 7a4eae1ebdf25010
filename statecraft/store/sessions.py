"""SQL of conversation sessions (statecraft/agents/session.py).

A session's entries are numbered per session (``seq``), assigned inside a
write transaction (``BEGIN IMMEDIATE``), so two runs of one session never
take the same number. An exchange is keyed by the idempotency key of the
step visit that wrote it: a retried attempt of that visit *replaces* its
exchange (same ``seq``) instead of appending a second one, as ``ctx.once``
keeps one result per key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .db import Database
from .txn import Tx, read_tx, write_tx

__all__ = ["SessionEntry", "load_session", "write_entry"]

_COLUMNS: Final = (
    "session_id, seq, kind, user_text, assistant_text, summary_text, covers_through, tokens, "
    "entry_key, run_id, step, created_at"
)
_LATEST_SUMMARY: Final = (
    f"SELECT {_COLUMNS} FROM session_entry WHERE session_id = :sid AND kind = 'summary' "
    "ORDER BY seq DESC LIMIT 1"
)
_EXCHANGES_AFTER: Final = (
    f"SELECT {_COLUMNS} FROM session_entry WHERE session_id = :sid AND kind = 'exchange' "
    "AND seq > :after ORDER BY seq"
)
_BY_KEY: Final = "SELECT seq FROM session_entry WHERE entry_key = :key"
_NEXT_SEQ: Final = "SELECT COALESCE(MAX(seq), 0) + 1 FROM session_entry WHERE session_id = :sid"
_INSERT: Final = (
    f"INSERT INTO session_entry ({_COLUMNS}) VALUES (:session_id, :seq, :kind, :user_text, "
    ":assistant_text, :summary_text, :covers_through, :tokens, :entry_key, :run_id, :step, :created_at)"
)
_REPLACE: Final = (
    "UPDATE session_entry SET user_text = :user_text, assistant_text = :assistant_text, "
    "summary_text = :summary_text, covers_through = :covers_through, tokens = :tokens, "
    "run_id = :run_id, step = :step, created_at = :created_at WHERE entry_key = :entry_key"
)


@dataclass(frozen=True)
class SessionEntry:
    """One stored entry of a session (table ``session_entry``).

    Attributes:
        session_id: the session.
        seq: position in the session, from 1.
        kind: ``exchange`` or ``summary``.
        user_text: an exchange's user message.
        assistant_text: an exchange's answer.
        summary_text: a summary's text (``None``: older entries were dropped unsummarised).
        covers_through: a summary stands for the entries up to this ``seq``.
        tokens: estimated tokens of the entry's text.
        entry_key: the writing step visit's idempotency key.
        run_id, step: who wrote it.
        created_at: when (UTC, fixed width).
    """

    session_id: str
    seq: int
    kind: str
    user_text: str | None
    assistant_text: str | None
    summary_text: str | None
    covers_through: int | None
    tokens: int
    entry_key: str
    run_id: str | None
    step: str | None
    created_at: str


def _entry(row: tuple[Any, ...]) -> SessionEntry:
    return SessionEntry(*row)


def load_session(db: Database, session_id: str) -> tuple[SessionEntry | None, list[SessionEntry]]:
    """The session's latest summary (if any) and the exchanges after what it covers, in order. Read-only."""
    with read_tx(db) as tx:
        found = tx.one(_LATEST_SUMMARY, {"sid": session_id})
        summary = None if found is None else _entry(found)
        after = 0 if summary is None else int(summary.covers_through or 0)
        exchanges = [_entry(r) for r in tx.all(_EXCHANGES_AFTER, {"sid": session_id, "after": after})]
    return summary, exchanges


def write_entry(
    db: Database,
    *,
    session_id: str,
    kind: str,
    entry_key: str,
    created_at: str,
    user_text: str | None = None,
    assistant_text: str | None = None,
    summary_text: str | None = None,
    covers_through: int | None = None,
    tokens: int = 0,
    run_id: str | None = None,
    step: str | None = None,
) -> int:
    """Store an entry under ``entry_key``: a new ``seq``, or the key's existing one replaced.

    Commits one write transaction.

    Returns:
        The entry's ``seq``.
    """
    values: dict[str, Any] = {
        "session_id": session_id, "kind": kind, "user_text": user_text, "assistant_text": assistant_text,
        "summary_text": summary_text, "covers_through": covers_through, "tokens": tokens,
        "entry_key": entry_key, "run_id": run_id, "step": step, "created_at": created_at,
    }
    with write_tx(db) as tx:
        return _write(tx, values)


def _write(tx: Tx, values: dict[str, Any]) -> int:
    existing = tx.one(_BY_KEY, {"key": values["entry_key"]})
    if existing is not None:
        tx.run(_REPLACE, values)
        return int(existing[0])
    seq = tx.one(_NEXT_SEQ, {"sid": values["session_id"]})
    assert seq is not None
    values["seq"] = int(seq[0])
    tx.run(_INSERT, values)
    return int(values["seq"])
