"""Detecting a prompt edited without a version bump.

Reviewers find calls by ``prompt_version`` ("which runs used prompt v3?"),
which is only honest if one version means one prompt. A version is a
promise made by whoever edits the prompt; the ``prompt_digest`` (SHA-256
of everything that shapes the answer except the input) is what the prompt
*is*. So every call's digest is remembered per agent and version
(table ``prompt_digest``, statecraft/store/prompts.py): when a version has
been seen with more than one digest, every call under it is flagged on its
``agent.called`` event (``payload.prompt_digest_changed``, with the other
digests and when each was first seen), the edited prompt's calls and the
original's alike, since both now answer to one version.

Without a database (an agent called outside an engine) the memory is the
process's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..store.prompts import PromptDigestSeen, digests_seen, remember_digest

if TYPE_CHECKING:
    from ..store.db import Database

__all__ = ["PromptCheck", "check_prompt"]


@dataclass(frozen=True)
class PromptCheck:
    """What the registry knows about one call's prompt.

    Attributes:
        digest: this call's prompt digest.
        others: the other digests seen under the same agent and version, oldest first.
    """

    digest: str
    others: tuple[PromptDigestSeen, ...]

    @property
    def changed(self) -> bool:
        """The version has been seen with another digest: a prompt edited without a version bump."""
        return bool(self.others)

    def payload(self) -> dict[str, Any]:
        """The flag for the call's audit payload (empty when nothing changed)."""
        if not self.others:
            return {}
        return {
            "prompt_digest_changed": True,
            "other_prompt_digests": [
                {"prompt_digest": o.prompt_digest, "first_seen_at": o.first_seen_at, "first_run_id": o.first_run_id}
                for o in self.others
            ],
        }


_LOCAL: dict[tuple[str, str], list[PromptDigestSeen]] = {}
_LOCAL_GUARD = threading.Lock()


def check_prompt(
    database: Database | None, agent_name: str, prompt_version: str, digest: str, now: str, run_id: str | None
) -> PromptCheck:
    """Remember ``digest`` under the agent's version and say whether others were seen.

    Reads once per call; writes (one transaction) only the first time a digest is seen.

    Args:
        database: the engine's database (``ctx.database``), or ``None``.
        agent_name: the agent's stable name.
        prompt_version: its declared prompt version.
        digest: the call's prompt digest.
        now: the time (UTC, fixed width), recorded with a new digest.
        run_id: the run, recorded with a new digest.

    Returns:
        What is known about the digest.
    """
    if database is not None:
        seen = digests_seen(database, agent_name, prompt_version)
        if digest not in {s.prompt_digest for s in seen}:
            seen = remember_digest(database, agent_name, prompt_version, digest, now, run_id)
    else:
        with _LOCAL_GUARD:
            seen = _LOCAL.setdefault((agent_name, prompt_version), [])
            if digest not in {s.prompt_digest for s in seen}:
                seen.append(PromptDigestSeen(digest, now, run_id))
            seen = list(seen)
    return PromptCheck(digest, tuple(s for s in seen if s.prompt_digest != digest))
