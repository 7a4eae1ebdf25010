"""Canary agent versions: one step, two versions of its agent, a declared traffic split.

Why: a new prompt or a new model is best judged on real traffic, but on a
slice of it, with its results kept apart from the old version's. A
:class:`Canary` is the step's agent; for each run it hands the step to the
``stable`` or the ``candidate`` version, by ``split`` (e.g. ``(90, 10)``).

Why chosen from the run id, deterministically: a run must see one version
throughout (every visit of the step, every retry, a resume on another
worker), and a reviewer must be able to recompute which version a run got.
The choice is ``int(SHA-256(salt + NUL + run_id)[:8]) % 100 < candidate
percent``; the salt defaults to the canary's ``agent_name``, so two canary
steps of one machine split runs the same way unless given different salts.

What is recorded: the step's audit event names the version that acted
(``agent_version``, ``prompt_version``; the engine reads
``ctx.acting_agent``), and so does every ``agent.called`` event of its LLM
calls — which is what the reviewer query comparing versions reads
(docs/audit.md, q10: calls, failure rate, cost and run outcomes per version).
The canary's own ``agent_version`` (``"2|3@90/10"``) names both versions
and the split, so changing the split changes the machine's digest.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import DefinitionError
from ..outcomes import Outcome
from .base import StepContext

__all__ = ["AsyncCanary", "Canary", "canary_bucket"]


def canary_bucket(salt: str, run_id: str) -> int:
    """The run's bucket, 0..99: ``int(SHA-256(salt NUL run_id)[:8 bytes]) % 100``. Pure."""
    digest = hashlib.sha256(f"{salt}\x00{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def _version(agent: Any, label: str) -> str:
    version = getattr(agent, "agent_version", None)
    if not isinstance(version, str) or not version.strip():
        raise DefinitionError(f"Canary: the {label} agent needs an agent_version (a non-empty string)")
    return version


class Canary:
    """The agent of a step that runs one of two agent versions per run, by a traffic split.

    Args:
        stable: the current version (an agent with ``agent_version``).
        candidate: the new version (another ``agent_version``).
        split: percentages ``(stable, candidate)``, summing to 100.
        agent_name: the name audited for the step; default the stable agent's.
        salt: mixed into the choice; default ``agent_name``.

    Both agents must be alike: both plain callables or both coroutine
    functions (``Canary(...)`` of two async agents is an :class:`AsyncCanary`).

    Raises:
        DefinitionError: versions missing or equal, a bad split, mixed sync and async agents.
    """

    def __new__(cls, stable: Any, candidate: Any, **kwargs: Any) -> Canary:
        from ..execution import is_async_callable  # execution imports agents.base

        if cls is Canary and is_async_callable(stable) and is_async_callable(candidate):
            cls = AsyncCanary
        return super().__new__(cls)

    def __init__(
        self,
        stable: Any,
        candidate: Any,
        *,
        split: tuple[int, int] = (90, 10),
        agent_name: str | None = None,
        salt: str | None = None,
    ) -> None:
        from ..execution import is_async_callable

        if not callable(stable) or not callable(candidate):
            raise DefinitionError("Canary: stable and candidate must be agents (callables)")
        if is_async_callable(stable) != is_async_callable(candidate):
            raise DefinitionError("Canary: stable and candidate must both be sync or both be async agents")
        stable_v, candidate_v = _version(stable, "stable"), _version(candidate, "candidate")
        if stable_v == candidate_v:
            raise DefinitionError(f"Canary: both agents have agent_version {stable_v!r}; a canary compares two versions")
        if (
            not isinstance(split, tuple) or len(split) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 100 for p in split)
            or sum(split) != 100
        ):
            raise DefinitionError(f"Canary: split must be two integer percentages summing to 100, got {split!r}")
        name = agent_name or getattr(stable, "agent_name", None) or getattr(stable, "__qualname__", None)
        if not isinstance(name, str) or not name:
            raise DefinitionError("Canary: give agent_name= (the stable agent has none)")
        self.stable = stable
        self.candidate = candidate
        self.split = split
        self.agent_name = name
        self.salt = salt if salt is not None else name
        self.agent_version = f"{stable_v}|{candidate_v}@{split[0]}/{split[1]}"
        prompts = [getattr(a, "prompt_version", None) for a in (stable, candidate)]
        self.prompt_version = (
            None if not any(isinstance(p, str) for p in prompts) else "|".join(str(p or "") for p in prompts)
        )

    def choose(self, run_id: str) -> tuple[str, Any]:
        """``("stable" | "candidate", agent)`` for ``run_id``. Pure and deterministic."""
        if canary_bucket(self.salt, run_id) < self.split[1]:
            return "candidate", self.candidate
        return "stable", self.stable

    def __call__(self, state: Any, ctx: StepContext, /) -> Outcome:
        """Run the chosen version on this step; the step's event records it."""
        _, agent = self.choose(ctx.run_id)
        ctx.acting_agent = agent
        outcome: Outcome = agent(state, ctx)
        return outcome

    def __repr__(self) -> str:
        return f"<Canary {self.agent_name} {self.agent_version}>"


class AsyncCanary(Canary):
    """A :class:`Canary` of two coroutine agents; awaited by the engine."""

    async def __call__(self, state: Any, ctx: StepContext, /) -> Outcome:  # type: ignore[override]
        """Run the chosen version on this step (awaitable); the step's event records it."""
        _, agent = self.choose(ctx.run_id)
        ctx.acting_agent = agent
        outcome: Outcome = await agent(state, ctx)
        return outcome
