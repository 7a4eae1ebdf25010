"""Stateful sessions: a conversation with a model that persists across turns and runs.

Why: a support assistant, a tutor or a negotiator answers the *n*-th
message of a conversation knowing the first *n - 1*, which may have
arrived in other runs (one run per incoming message) or on other workers.
So a ``ClaudeAgent`` with a :class:`Session` keeps its exchanges (the user
message it sent, the answer it got) under a session id computed from the
step's state view, in the engine's database (``session_entry``,
statecraft/store/sessions.py), and sends them as the conversation before
each new message.

Why bounded: a conversation grows without end, and so would every call's
input and cost. When the exchanges kept verbatim exceed ``max_exchanges``
(or ``max_tokens``, estimated), all but the last ``keep`` are compacted:
handed to the ``summarize`` hook, whose text replaces them (sent in the
system prompt as ``<conversation_summary>``), or, without a hook, dropped.

Why exchanges are written as ``ctx.once`` results are: an exchange is
stored when the model has answered validly, in its own short transaction,
keyed by the step visit's idempotency key. A retried attempt of the same
visit *replaces* its exchange rather than adding one, and does not see it
as history; a step that never commits (a lost lease) may leave its exchange
in the session, where the visit's retry replaces it.

What is audited: the table is bookkeeping (like ``side_effect``); the
evidence is in the run's ledger. Each stored exchange is a
``session.appended`` event (input: the user message, output: the answer,
payload: session id and ``seq``), each compaction a ``session.summarized``
event (output: the summary; payload: what it covers and how), both written
with the step's own event. The call itself is an ``agent.called`` event
whose ``payload.session`` says which history it was sent with.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._time import format_utc
from ..errors import DefinitionError, StoreError
from ..store.sessions import SessionEntry, load_session, write_entry
from .base import RecordedCall, StepContext

__all__ = ["Exchange", "History", "Session", "Summarize", "open_history", "remember"]


@dataclass(frozen=True)
class Exchange:
    """One exchange of a conversation: what was said to the model, and its answer.

    Attributes:
        seq: its position in the session.
        user: the user message sent.
        assistant: the model's answer (its text, or the structured result as JSON).
    """

    seq: int
    user: str
    assistant: str


Summarize = Callable[[str | None, Sequence[Exchange]], str]
"""``(previous summary or None, exchanges to fold in) -> new summary``."""


@dataclass(frozen=True)
class Session:
    """How a ``ClaudeAgent`` keeps a conversation across turns and runs.

    Attributes:
        key: ``(state_view, ctx) -> session id``, e.g. ``lambda s, ctx: s.customer_id``.
        max_exchanges: most exchanges sent verbatim; more are compacted.
        max_tokens: most estimated tokens of the exchanges sent verbatim
            (``None``: only ``max_exchanges`` bounds them).
        keep: exchanges kept verbatim when compacting (the most recent).
        summarize: folds older exchanges into a summary (it may call a
            model itself); ``None`` drops them.

    Raises:
        DefinitionError: a bound is out of range.
    """

    key: Callable[[Any, StepContext], str]
    max_exchanges: int = 20
    max_tokens: int | None = None
    keep: int = 4
    summarize: Summarize | None = None

    def __post_init__(self) -> None:
        if not callable(self.key):
            raise DefinitionError("Session.key must be callable: (state_view, ctx) -> session id")
        for name in ("max_exchanges", "keep"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise DefinitionError(f"Session.{name} must be a non-negative integer, got {value!r}")
        if self.max_exchanges < 1:
            raise DefinitionError("Session.max_exchanges must be at least 1")
        if self.keep > self.max_exchanges:
            raise DefinitionError("Session.keep must not exceed max_exchanges")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise DefinitionError("Session.max_tokens must be a positive integer or None")
        if self.summarize is not None and not callable(self.summarize):
            raise DefinitionError("Session.summarize must be callable or None")


@dataclass
class History:
    """A session as one call sees it.

    Attributes:
        session_id: the session.
        entry_key: the step visit's key (this call's exchange is stored under it).
        summary: the summary standing for older exchanges, if any.
        exchanges: the exchanges sent verbatim, oldest first.
        summarized: a compaction made for this call (``session.summarized``), if any.
    """

    session_id: str
    entry_key: str
    summary: str | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    summarized: dict[str, Any] | None = None

    def messages(self, user_text: str) -> list[dict[str, Any]]:
        """The conversation to send: each exchange as a user and an assistant message, then ``user_text``."""
        out: list[dict[str, Any]] = []
        for ex in self.exchanges:
            out.append({"role": "user", "content": ex.user})
            out.append({"role": "assistant", "content": ex.assistant})
        out.append({"role": "user", "content": user_text})
        return out

    def system(self, system: str) -> str:
        """The system prompt, with the summary of older exchanges appended when there is one."""
        if self.summary is None:
            return system
        return f"{system}\n\n<conversation_summary>\n{self.summary}\n</conversation_summary>"

    def describe(self) -> dict[str, Any]:
        """For the call's audit payload: which history was sent."""
        return {"session_id": self.session_id, "exchanges_sent": [e.seq for e in self.exchanges],
                "summary": self.summary is not None}


def open_history(
    session: Session, state: Any, ctx: StepContext, *, agent_name: str, agent_version: str | None,
    count: Callable[[str], int],
) -> History:
    """Load the session for this call, compacting it first when it is over its bounds.

    Reads the session; a compaction writes one transaction and records a
    ``session.summarized`` event with ``ctx.record_call``.

    Args:
        session: the declaration.
        state: the step's state view.
        ctx: the step's context (needs ``ctx.database``).
        agent_name, agent_version: the agent, as audited.
        count: estimated tokens of a text.

    Raises:
        StoreError: the context has no database (the agent runs outside an engine).
        DefinitionError: the session key is not a non-empty string.
    """
    database = _database(ctx)
    session_id = session.key(state, ctx)
    if not isinstance(session_id, str) or not session_id:
        raise DefinitionError(f"Session.key returned {session_id!r}; a session id is a non-empty string")
    entry_key = ctx.idempotency_key(f"session:{session_id}")
    summary_entry, entries = load_session(database, session_id)
    exchanges = [_exchange(e) for e in entries if e.entry_key != entry_key]
    history = History(session_id, entry_key, None if summary_entry is None else summary_entry.summary_text, exchanges)
    tokens = sum(count(e.user) + count(e.assistant) for e in exchanges)
    over = len(exchanges) > session.max_exchanges or (session.max_tokens is not None and tokens > session.max_tokens)
    if not over:
        return history
    kept = exchanges[len(exchanges) - session.keep:] if session.keep else []
    folded = exchanges[: len(exchanges) - len(kept)]
    if not folded:
        return history  # over max_tokens with only the exchanges to keep: nothing more to fold
    text = session.summarize(history.summary, folded) if session.summarize is not None else None
    if text is not None and not isinstance(text, str):
        raise DefinitionError(f"Session.summarize returned {type(text).__name__}, not a str")
    covers = folded[-1].seq
    seq = write_entry(
        database, session_id=session_id, kind="summary", entry_key=f"{entry_key}:summary",
        created_at=format_utc(ctx.now()), summary_text=text, covers_through=covers,
        tokens=0 if text is None else count(text), run_id=ctx.run_id, step=ctx.step,
    )
    history.summary, history.exchanges = text, kept
    history.summarized = {
        "session_id": session_id, "seq": seq, "covers_through": covers, "exchanges_folded": [e.seq for e in folded],
        "method": "summarize" if session.summarize is not None else "drop",
        "reason": f"{len(exchanges)} exchanges, ~{tokens} tokens: over the session's bound",
    }
    ctx.record_call(RecordedCall(
        event_type="session.summarized", name=agent_name, version=agent_version,
        decision=history.summarized["method"], reason=history.summarized["reason"], attempt=ctx.attempt,
        input=[{"seq": e.seq, "user": e.user, "assistant": e.assistant} for e in folded],
        output=text, payload={k: v for k, v in history.summarized.items() if k != "reason"},
    ))
    return history


def remember(
    history: History, ctx: StepContext, user_text: str, answer: Any, *, agent_name: str,
    agent_version: str | None, tokens: int,
) -> int:
    """Store this call's exchange in the session and record its ``session.appended`` event.

    Commits one write transaction (the exchange; the event is committed with the step).

    Returns:
        The exchange's ``seq``.
    """
    database = _database(ctx)
    assistant = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False, sort_keys=True)
    seq = write_entry(
        database, session_id=history.session_id, kind="exchange", entry_key=history.entry_key,
        created_at=format_utc(ctx.now()), user_text=user_text, assistant_text=assistant, tokens=tokens,
        run_id=ctx.run_id, step=ctx.step,
    )
    ctx.record_call(RecordedCall(
        event_type="session.appended", name=agent_name, version=agent_version, decision=f"seq:{seq}",
        attempt=ctx.attempt, input=user_text, output=assistant,
        payload={"session_id": history.session_id, "seq": seq, "history_exchanges": len(history.exchanges)},
    ))
    return seq


def _exchange(entry: SessionEntry) -> Exchange:
    return Exchange(entry.seq, entry.user_text or "", entry.assistant_text or "")


def _database(ctx: StepContext) -> Any:
    if ctx.database is None:
        raise StoreError(
            "a session agent keeps its conversation in the engine's database; "
            "this context has none (run the agent in an Engine)"
        )
    return ctx.database
