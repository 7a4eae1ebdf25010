"""``AsyncEngine``: the engine for asyncio services, without a thread tied up for a whole run.

A FastAPI handler or an aiohttp worker must not block its event loop, and
should not park a thread per run either (a run may take minutes of LLM calls).
So this driver runs the same step loop as :class:`~statecraft.engine.Engine`
(statecraft/runner.py: ``begin``, ``next_move``, ``conclude``, ``end``) with
its effects placed where they belong:

- **database work** (taking the lease, committing a transition, reading a
  run) runs in a worker thread (``asyncio.to_thread``): short, blocking I/O;
- **coroutine agents** (``async def``, e.g. Claude through ``AsyncAnthropic``)
  are awaited on the service's own loop, under the step's timeout, and
  cancelled for real when it passes (statecraft.execution.attempt_async);
- **plain agents** run in a worker thread for the length of their call only;
- retry backoffs are ``asyncio.sleep``.

Everything else — leases, fencing, budgets, the audit chain, group commit —
is the synchronous engine's, unchanged: an ``AsyncEngine`` and ``Engine``\\ s or
workers in other processes share one database safely. What is sync and what
is async is listed in docs/embedding.md.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import threading
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from .engine import Engine
from .errors import AdvanceInterrupted, LeaseHeld
from .execution import Attempt, attempt_async, is_async_callable, run_attempt
from .lifecycle import RunStatus
from .machine import Machine
from .runner import AgentCall, Backoff
from .store.db import Database
from .views import AuditEvent, RunInfo, StepReport

__all__ = ["AsyncEngine"]


class AsyncEngine:
    """Advances runs from an asyncio event loop; the async face of :class:`~statecraft.engine.Engine`.

    Construct it like an ``Engine`` (same arguments; opening the database is
    done here, synchronously, once); use it as ``async with``. Every request
    method is a coroutine with the synchronous method's arguments, results
    and errors (``RunNotFound``, ``IllegalTransition``, ``ApprovalMismatch``,
    ``ApprovalRefused``, ``LeaseHeld``, …); a request that raises has written
    nothing, as on ``Engine``.

    Attributes:
        engine: the synchronous engine underneath (same database, same lease
            owner id, same registered machines).
    """

    def __init__(self, db: str | os.PathLike[str] | Database | None = None, **options: Any) -> None:
        self.engine = Engine(db, **options)

    async def __aenter__(self) -> AsyncEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop renewing leases and close the database."""
        await asyncio.to_thread(self.engine.close)

    def register(self, machine: Machine[Any]) -> None:
        """Make ``machine`` available to advance runs recorded with its digest (no I/O)."""
        self.engine.register(machine)

    # -- requests -------------------------------------------------------------------

    async def start(
        self,
        machine: Machine[Any],
        input: Any = None,
        *,
        by: str = "service",
        actor_type: str = "service",
        ref: str | None = None,
        parent_run_id: str | None = None,
        advance: bool = True,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """Create and start a run (one transaction), then advance it on this loop unless ``advance=False``.

        See :meth:`Engine.start`.
        """
        info = await asyncio.to_thread(
            self.engine.start, machine, input, by=by, actor_type=actor_type, ref=ref,
            parent_run_id=parent_run_id, advance=False,
        )
        return await self._continue(info.run_id, on_event) if advance else info

    async def _continue(self, run_id: str, on_event: Callable[[StepReport], None] | None) -> RunInfo:
        """Advance a run whose request just committed, as ``Engine`` does.

        A worker that took the run first is not an error (the run is returned
        as it stands); anything else that stops the advance is
        ``AdvanceInterrupted``, the one error that says something was written.
        """
        try:
            return await self.advance(run_id, on_event=on_event)
        except LeaseHeld:
            return await self.get(run_id)
        except Exception as exc:
            try:
                current: RunInfo | None = await self.get(run_id)
            except Exception:
                current = None
            raise AdvanceInterrupted(run_id, current, exc) from exc

    async def approve(
        self,
        run_id: str,
        *,
        by: str,
        comment: str | None = None,
        digest: str | None = None,
        extend: Mapping[str, int | timedelta] | None = None,
        advance: bool = True,
        on_event: Callable[[StepReport], None] | None = None,
        **options: Any,
    ) -> RunInfo:
        """Approve the pending proposal (one transaction), then continue the run on this loop.

        See :meth:`Engine.approve`; extra keyword ``options`` are passed to it.
        """
        info = await asyncio.to_thread(
            lambda: self.engine.approve(
                run_id, by=by, comment=comment, digest=digest, extend=extend, advance=False, **options
            )
        )
        if advance and info.status is RunStatus.RUNNING:
            return await self._continue(run_id, on_event)
        return info

    async def reject(self, run_id: str, *, by: str, reason: str, **options: Any) -> RunInfo:
        """See :meth:`Engine.reject`."""
        return await asyncio.to_thread(lambda: self.engine.reject(run_id, by=by, reason=reason, **options))

    async def cancel(self, run_id: str, *, by: str, reason: str, **options: Any) -> RunInfo:
        """See :meth:`Engine.cancel`."""
        return await asyncio.to_thread(lambda: self.engine.cancel(run_id, by=by, reason=reason, **options))

    async def retry(
        self,
        run_id: str,
        *,
        by: str,
        reason: str | None = None,
        advance: bool = True,
        on_event: Callable[[StepReport], None] | None = None,
        **options: Any,
    ) -> RunInfo:
        """Resume a FAILED run from its last checkpoint, on this loop. See :meth:`Engine.retry`."""
        info = await asyncio.to_thread(
            lambda: self.engine.retry(run_id, by=by, reason=reason, advance=False, **options)
        )
        return await self._continue(run_id, on_event) if advance else info

    async def get(self, run_id: str) -> RunInfo:
        """See :meth:`Engine.get`."""
        return await asyncio.to_thread(self.engine.get, run_id)

    async def list(self, **filters: Any) -> builtins.list[RunInfo]:
        """See :meth:`Engine.list`."""
        return await asyncio.to_thread(lambda: self.engine.list(**filters))

    async def events(self, run_id: str | None = None) -> builtins.list[AuditEvent]:
        """See :meth:`Engine.events`."""
        return await asyncio.to_thread(self.engine.events, run_id)

    # -- the step loop ------------------------------------------------------------------

    async def advance(
        self,
        run_id: str,
        *,
        max_transitions: int | None = None,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> RunInfo:
        """Execute steps of a RUNNING run until a gate, a terminal status, or the lease is lost.

        The asynchronous driver of the engine's step loop (module docstring).
        Cancelling the task that awaits this stops after the current
        database call; an agent coroutine in flight is cancelled, its
        attempt commits nothing, and the lease is released.

        Raises:
            RunNotFound, LeaseHeld, MachineLoadError, MachineMismatch: as :meth:`Engine.advance`.
        """
        runner = self.engine.runner
        with runner.run_span(run_id):
            live = await asyncio.to_thread(runner.begin, run_id)
            if live is None:
                return await self.get(run_id)
            try:
                done = 0
                while (max_transitions is None or done < max_transitions) and not runner.stopping.is_set():
                    with runner.step_span(live) as step_span:
                        nxt = await asyncio.to_thread(runner.next_move, live)
                        if isinstance(nxt, Backoff):
                            await asyncio.sleep(nxt.seconds)
                            continue
                        if isinstance(nxt, AgentCall):
                            with runner.attempt_span(live, nxt) as attempt_span:
                                result = await self._attempt(nxt, live.lost)
                                runner.note_attempt(attempt_span, result)
                            nxt = await asyncio.to_thread(runner.conclude, live, nxt, result)
                        if not runner.committed(live, nxt, on_event, step_span):
                            break
                    done += 1
            finally:
                await asyncio.shield(asyncio.to_thread(runner.end, live))
            return await self.get(run_id)

    @staticmethod
    async def _attempt(call: AgentCall, lost: threading.Event) -> Attempt:
        """One attempt: a coroutine agent on this loop, a plain one in a thread for its call only."""
        agent = call.step.agent
        if is_async_callable(agent):
            return await attempt_async(
                agent,  # type: ignore[arg-type]  # a coroutine function: is_async_callable
                call.view, call.ctx, timeout_s=call.timeout_s, lost=lost, abandon=call.effects.abandon,
            )
        return await asyncio.to_thread(
            run_attempt, agent, call.view, call.ctx, timeout_s=call.timeout_s, lost=lost,
            abandon=call.effects.abandon,
        )

    async def resume(
        self, run_id: str, *, on_event: Callable[[StepReport], None] | None = None
    ) -> RunInfo:
        """Continue a RUNNING run whose engine died, from its last checkpoint. See :meth:`Engine.resume`.

        Raises:
            IllegalTransition: the run is not RUNNING (nothing written).
            LeaseHeld: another engine holds a live lease on it.
        """
        info = await self.get(run_id)
        if info.status is not RunStatus.RUNNING:
            # Engine.resume raises the precise refusal, and writes nothing.
            return await asyncio.to_thread(self.engine.resume, run_id)
        return await self.advance(run_id, on_event=on_event)
