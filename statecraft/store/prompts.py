"""SQL of the prompt registry: which prompt digests were seen under which prompt version.

A prompt edited without bumping its ``prompt_version`` keeps the version
and changes the digest; the ledger alone cannot find that cheaply
(``prompt_version`` is not indexed and the digest lives in payloads), so
every digest is remembered here, per agent and version, the first time a
call uses it (statecraft/agents/prompts.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .db import Database
from .txn import read_tx, write_tx

__all__ = ["PromptDigestSeen", "digests_seen", "remember_digest"]

_SELECT: Final = (
    "SELECT prompt_digest, first_seen_at, first_run_id FROM prompt_digest "
    "WHERE agent_name = :agent AND prompt_version = :version ORDER BY first_seen_at, prompt_digest"
)
_INSERT: Final = (
    "INSERT INTO prompt_digest (agent_name, prompt_version, prompt_digest, first_seen_at, first_run_id) "
    "VALUES (:agent, :version, :digest, :now, :run_id) "
    "ON CONFLICT (agent_name, prompt_version, prompt_digest) DO NOTHING"
)


@dataclass(frozen=True)
class PromptDigestSeen:
    """One digest seen under an agent's prompt version.

    Attributes:
        prompt_digest: 64 hex.
        first_seen_at: when a call first used it (UTC, fixed width).
        first_run_id: the run of that call, if any.
    """

    prompt_digest: str
    first_seen_at: str
    first_run_id: str | None


def digests_seen(db: Database, agent_name: str, prompt_version: str) -> list[PromptDigestSeen]:
    """Every digest seen under ``(agent_name, prompt_version)``, oldest first. Read-only."""
    with read_tx(db) as tx:
        rows = tx.all(_SELECT, {"agent": agent_name, "version": prompt_version})
    return [PromptDigestSeen(str(r[0]), str(r[1]), r[2]) for r in rows]


def remember_digest(
    db: Database, agent_name: str, prompt_version: str, prompt_digest: str, now: str, run_id: str | None
) -> list[PromptDigestSeen]:
    """Record ``prompt_digest`` under the version (if new); every digest seen, oldest first.

    Commits one write transaction.
    """
    with write_tx(db) as tx:
        tx.run(_INSERT, {"agent": agent_name, "version": prompt_version, "digest": prompt_digest,
                         "now": now, "run_id": run_id})
        rows = tx.all(_SELECT, {"agent": agent_name, "version": prompt_version})
    return [PromptDigestSeen(str(r[0]), str(r[1]), r[2]) for r in rows]
