"""AsyncEngine: runs advanced on the service's event loop, database work in short threads."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from statecraft import (
    AsyncEngine, Finish, Goto, IllegalTransition, Machine, RequestApproval, RunStatus, Step,
)
from tests.support.reliability import Counter, assert_ledger_ok


class Ticket(BaseModel):
    text: str = ""
    answer: str = ""


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_async_agents_run_on_the_services_own_loop(db_path: Path) -> None:
    loops: list[Any] = []

    async def draft(state: Ticket, ctx: Any) -> Goto:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return Goto("send", update={"answer": f"re: {state.text}"})

    async def send(state: Ticket, ctx: Any) -> Finish:
        loops.append(asyncio.get_running_loop())
        return Finish()

    m = Machine("reply", "1", Ticket, [
        Step("draft", draft, next=["send"], writes=["answer"]),
        Step("send", send, may_finish=True),
    ])

    async def main() -> Any:
        async with AsyncEngine(db_path) as engine:
            run = await engine.start(m, {"text": "hello"})
            return run, asyncio.get_running_loop()

    run, loop = _run(main())
    assert run.status is RunStatus.DONE and run.state["answer"] == "re: hello"
    assert loops == [loop, loop]


def test_fifty_runs_waiting_in_their_agents_tie_up_no_thread_each(db_path: Path) -> None:
    inside = 0
    all_in = asyncio.Event()
    go = asyncio.Event()

    async def waits(state: Counter, ctx: Any) -> Finish:
        nonlocal inside
        inside += 1
        if inside == 50:
            all_in.set()
        await go.wait()
        return Finish(update={"n": 1})

    m = Machine("wait", "1", Counter, [Step("wait", waits, writes=["n"], may_finish=True)])

    async def main() -> tuple[list[Any], int]:
        async with AsyncEngine(db_path, synchronous="NORMAL") as engine:
            # Threads other tests left (idle DaemonThreads, the event loop's) are not this test's.
            threads_before = threading.active_count()
            tasks = [asyncio.create_task(engine.start(m, {})) for _ in range(50)]
            await asyncio.wait_for(all_in.wait(), 30)
            threads_added = threading.active_count() - threads_before
            go.set()
            return await asyncio.gather(*tasks), threads_added

    runs, threads = _run(main())
    assert all(r.status is RunStatus.DONE for r in runs)
    # 50 runs are inside their agents at once; a thread per run would show here.
    assert threads < 25, f"{threads} threads added for 50 waiting runs"


def test_approve_continues_the_run_on_the_loop(db_path: Path) -> None:
    async def ask(state: Counter, ctx: Any) -> RequestApproval:
        return RequestApproval("refund 900", resume_at="pay")

    async def pay(state: Counter, ctx: Any) -> Finish:
        return Finish(update={"n": 900})

    m = Machine("refund", "1", Counter, [
        Step("ask", ask, next=["pay"]),
        Step("pay", pay, writes=["n"], may_finish=True),
    ])

    async def main() -> Any:
        async with AsyncEngine(db_path) as engine:
            waiting = await engine.start(m, {})
            assert waiting.status is RunStatus.WAITING_FOR_APPROVAL
            done = await engine.approve(waiting.run_id, by="alice@example.com",
                                        digest=waiting.pending.proposal_digest)
            try:
                await engine.approve(waiting.run_id, by="bob@example.com")
            except IllegalTransition as refused:
                return done, refused, await engine.events(waiting.run_id)
            raise AssertionError("approving a DONE run must be refused")

    done, refused, events = _run(main())
    assert done.status is RunStatus.DONE and done.state["n"] == 900
    assert refused.run_id == done.run_id
    assert [e.event_type for e in events][-2:] == ["approval.granted", "run.completed"]


def test_a_step_timeout_cancels_the_coroutine_on_the_services_loop(db_path: Path) -> None:
    cancelled = asyncio.Event()

    async def hangs(state: Counter, ctx: Any) -> Finish:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Finish()

    m = Machine("hang", "1", Counter, [Step("hang", hangs, may_finish=True, timeout=timedelta(milliseconds=200))])

    async def main() -> Any:
        async with AsyncEngine(db_path) as engine:
            run = await engine.start(m, {})
            await asyncio.wait_for(cancelled.wait(), 5)
            return run

    run = _run(main())
    assert run.status is RunStatus.FAILED and run.error_code == "timeout"


def test_plain_agents_work_too_and_the_ledger_verifies(db_path: Path) -> None:
    def plain(state: Counter, ctx: Any) -> Finish:
        return Finish(update={"n": state.n + 1})

    m = Machine("plain", "1", Counter, [Step("plain", plain, writes=["n"], may_finish=True)])

    async def main() -> Any:
        async with AsyncEngine(db_path) as engine:
            run = await engine.start(m, {"n": 1})
            assert_ledger_ok(engine.engine)
            return run

    assert _run(main()).state["n"] == 2


def test_cancelling_the_advancing_task_commits_nothing_more_and_releases_the_lease(db_path: Path) -> None:
    started = asyncio.Event()
    agent_cancelled = asyncio.Event()

    async def slow(state: Counter, ctx: Any) -> Finish:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            agent_cancelled.set()
            raise
        return Finish(update={"n": 1})

    m = Machine("slow", "1", Counter, [Step("slow", slow, writes=["n"], may_finish=True)])

    async def main() -> Any:
        async with AsyncEngine(db_path) as engine:
            task = asyncio.create_task(engine.start(m, {}))
            await asyncio.wait_for(started.wait(), 5)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            await asyncio.wait_for(agent_cancelled.wait(), 5)  # the agent went with its driver
            [run] = await engine.list()
            return run, await engine.events(run.run_id)

    run, events = _run(main())
    assert run.status is RunStatus.RUNNING and run.lease_owner is None
    assert [e.event_type for e in events] == ["run.created", "run.started"]
