"""A request that raises has written nothing (docs/embedding.md; issue #8).

Reproductions: ``start(advance=True)`` and ``approve(advance=True)`` raised
``LeaseHeld`` after committing when a worker picked the run up first (8 %
of inline starts with an in-process ``Worker``); ``approve`` after the
deadline wrote ``approval.expired`` and then raised. The sweep below sends
every public ``Engine`` request in each of its failing cases and checks
that the database — ledger, runs, blobs, side effects — is byte-for-byte
unchanged; a new public request fails the sweep until its cases are added.
"""

from __future__ import annotations

import inspect
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest

from statecraft import (
    AdvanceInterrupted,
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalRefused,
    Engine,
    Finish,
    Goto,
    IllegalTransition,
    InvalidActorId,
    LeaseHeld,
    Machine,
    MachineDefinitionError,
    MachineLoadError,
    MachineMismatch,
    NotAuthenticated,
    RunError,
    RunNotFound,
    RunStatus,
    SignatureRefused,
    Step,
    StoreError,
    load_machine,
)

SWEEP = '''
from datetime import timedelta

from pydantic import BaseModel

from statecraft import ApprovalPolicy, Finish, Goto, Machine, RequestApproval, Step


class Ask(BaseModel):
    late: bool = False
    signed: bool = False
    done: bool = False


def route(state, ctx):
    return Goto("ask_late" if state.late else "ask")


def ask(state, ctx):
    policy = ApprovalPolicy(group=["alice@example.com", "bob@example.com"], require_signature=state.signed)
    return RequestApproval("pay?", resume_at="pay", policy=policy)


def ask_late(state, ctx):
    return RequestApproval("pay, soon?", resume_at="pay")


def pay(state, ctx):
    return Finish(update={"done": True})


machine = Machine("sweep", "1", Ask, steps=[
    Step("route", route, next=["ask", "ask_late"]),
    Step("ask", ask, next=["pay"]),
    Step("ask_late", ask_late, next=["pay"], approval_deadline=timedelta(hours=1)),
    Step("pay", pay, may_finish=True, writes=["done"]),
])
'''

CLERK = "clerk@example.com"

#: Public Engine methods that only read, or manage the engine object itself.
NOT_REQUESTS = {
    "close", "stop", "register", "get", "list", "resolve_run_id", "events", "task", "machine_for", "runnable", "keyring",
    "report",  # hands a committed transition to the on_event hook; writes nothing
}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def snapshot(db: Path) -> tuple[list[Any], ...]:
    """Every row a request could write, read with the stdlib driver."""
    conn = sqlite3.connect(db)
    try:
        return tuple(
            conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("audit_event", "run", "blob", "side_effect", "statecraft_meta")
        )
    finally:
        conn.close()


def public_requests() -> set[str]:
    names = {n for n, _ in inspect.getmembers(Engine, inspect.isfunction) if not n.startswith("_")}
    return names - NOT_REQUESTS


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Runs in every status, from two machine files; the second file is then edited."""
    sweep, moved = tmp_path / "sweep.py", tmp_path / "moved.py"
    sweep.write_text(SWEEP)
    # Another machine file (its own code digest: digests are over contents).
    moved.write_text(SWEEP + "\n# the moved copy\n")
    db, clock = tmp_path / "sweep.db", Clock()
    runs: dict[str, str] = {}
    with Engine(db, clock=clock) as setup:
        m, mm = load_machine(str(sweep)), load_machine(str(moved))
        runs["idle"] = setup.create(m, {}, by=CLERK, ref=str(sweep)).run_id
        runs["waiting"] = setup.start(m, {}, by=CLERK, ref=str(sweep)).run_id
        runs["signed"] = setup.start(m, {"signed": True}, by=CLERK, ref=str(sweep)).run_id
        runs["late"] = setup.start(m, {"late": True}, by=CLERK, ref=str(sweep)).run_id
        runs["failed"] = setup.start(m, {}, by=CLERK, ref=str(sweep)).run_id
        setup.reject(runs["failed"], by="alice@example.com", reason="no")
        runs["done"] = setup.start(m, {"late": True}, by=CLERK, ref=str(sweep)).run_id
        setup.approve(runs["done"], by="alice@example.com")
        runs["running"] = setup.start(m, {}, by=CLERK, ref=str(sweep), advance=False).run_id
        runs["moved_idle"] = setup.create(mm, {}, by=CLERK, ref=str(moved)).run_id
        runs["moved_waiting"] = setup.start(mm, {}, by=CLERK, ref=str(moved)).run_id
        runs["moved_failed"] = setup.start(mm, {}, by=CLERK, ref=str(moved)).run_id
        setup.reject(runs["moved_failed"], by="alice@example.com", reason="no")
        runs["moved_running"] = setup.start(mm, {}, by=CLERK, ref=str(moved), advance=False).run_id
    moved.write_text(SWEEP.replace('{"done": True}', '{"done": False}') + "\n# the moved copy\n")
    clock.now += timedelta(hours=2)  # the "late" gate is past its deadline
    holder = Engine(db, clock=clock)  # another engine holds the running run's lease
    assert holder.runner.acquire(runs["running"]) is not None
    with Engine(db, clock=clock) as engine:
        yield {"db": db, "engine": engine, "runs": runs, "machine": m, "clock": clock}
    holder.close()


def cases(w: dict[str, Any]) -> list[tuple[str, str, Callable[[], object], type[BaseException]]]:
    e: Engine = w["engine"]
    r, m, db, clock = w["runs"], w["machine"], w["db"], w["clock"]
    refuse = Engine(db, clock=clock, authenticate=lambda claimed: None)
    closed = Engine(db, clock=clock)
    closed.close()
    digest = e.get(r["waiting"]).pending.proposal_digest  # type: ignore[union-attr]
    nul = "alice@example.com\x00"
    return [
        ("create", "input that does not fit", lambda: e.create(m, {"late": "sometimes"}), pydantic.ValidationError),
        ("create", "invalid actor id", lambda: e.create(m, {}, by=nul), InvalidActorId),
        ("create", "not authenticated", lambda: refuse.create(m, {}), NotAuthenticated),
        ("create", "closed engine", lambda: closed.create(m, {}), StoreError),
        ("start", "input that does not fit", lambda: e.start(m, {"signed": []}), pydantic.ValidationError),
        ("start", "invalid actor id", lambda: e.start(m, {}, by="cl\u200berk"), InvalidActorId),
        ("start", "not authenticated", lambda: refuse.start(m, {}), NotAuthenticated),
        ("start", "closed engine", lambda: closed.start(m, {}), StoreError),
        ("start_created", "unknown run", lambda: e.start_created("nope"), RunNotFound),
        ("start_created", "not idle", lambda: e.start_created(r["waiting"]), IllegalTransition),
        ("start_created", "changed code", lambda: e.start_created(r["moved_idle"]), MachineMismatch),
        ("start_created", "invalid actor id", lambda: e.start_created(r["idle"], by=nul), InvalidActorId),
        ("start_created", "closed engine", lambda: closed.start_created(r["idle"]), StoreError),
        ("approve", "unknown run", lambda: e.approve("nope", by="alice@example.com"), RunNotFound),
        ("approve", "not waiting", lambda: e.approve(r["idle"], by="alice@example.com"), IllegalTransition),
        ("approve", "past the deadline", lambda: e.approve(r["late"], by="alice@example.com"), ApprovalExpired),
        ("approve", "stale digest", lambda: e.approve(r["waiting"], by="alice@example.com", digest="0" * 64),
         ApprovalMismatch),
        ("approve", "changed code", lambda: e.approve(r["moved_waiting"], by="alice@example.com"), MachineMismatch),
        ("approve", "not in the group", lambda: e.approve(r["waiting"], by="carol@example.com", digest=digest),
         ApprovalRefused),
        ("approve", "self-approval spelled differently",
         lambda: e.approve(r["waiting"], by="Clerk+me@example.com"), ApprovalRefused),
        ("approve", "unsigned where required", lambda: e.approve(r["signed"], by="alice@example.com"),
         SignatureRefused),
        ("approve", "invalid actor id", lambda: e.approve(r["waiting"], by=nul), InvalidActorId),
        ("approve", "not authenticated", lambda: refuse.approve(r["waiting"], by="alice@example.com"),
         NotAuthenticated),
        ("approve", "closed engine", lambda: closed.approve(r["waiting"], by="alice@example.com"), StoreError),
        ("reject", "unknown run", lambda: e.reject("nope", by="alice@example.com", reason="x"), RunNotFound),
        ("reject", "not waiting", lambda: e.reject(r["done"], by="alice@example.com", reason="x"), IllegalTransition),
        ("reject", "past the deadline", lambda: e.reject(r["late"], by="alice@example.com", reason="x"),
         ApprovalExpired),
        ("reject", "no reason", lambda: e.reject(r["waiting"], by="alice@example.com", reason=" "), RunError),
        ("reject", "not in the group", lambda: e.reject(r["waiting"], by="carol@example.com", reason="x"),
         ApprovalRefused),
        ("reject", "invalid actor id", lambda: e.reject(r["waiting"], by=nul, reason="x"), InvalidActorId),
        ("reject", "closed engine", lambda: closed.reject(r["waiting"], by="alice@example.com", reason="x"),
         StoreError),
        ("cancel", "unknown run", lambda: e.cancel("nope", by="ops@example.com", reason="x"), RunNotFound),
        ("cancel", "already done", lambda: e.cancel(r["done"], by="ops@example.com", reason="x"), IllegalTransition),
        ("cancel", "no reason", lambda: e.cancel(r["waiting"], by="ops@example.com", reason=""), RunError),
        ("cancel", "invalid actor id", lambda: e.cancel(r["waiting"], by="\u202eops", reason="x"), InvalidActorId),
        ("cancel", "not authenticated", lambda: refuse.cancel(r["waiting"], by="ops@example.com", reason="x"),
         NotAuthenticated),
        ("cancel", "closed engine", lambda: closed.cancel(r["waiting"], by="ops@example.com", reason="x"),
         StoreError),
        ("retry", "unknown run", lambda: e.retry("nope", by="ops@example.com"), RunNotFound),
        ("retry", "not failed", lambda: e.retry(r["waiting"], by="ops@example.com"), IllegalTransition),
        ("retry", "changed code", lambda: e.retry(r["moved_failed"], by="ops@example.com"), MachineMismatch),
        ("retry", "invalid actor id", lambda: e.retry(r["failed"], by="", reason="x"), InvalidActorId),
        ("retry", "closed engine", lambda: closed.retry(r["failed"], by="ops@example.com"), StoreError),
        ("advance", "unknown run", lambda: e.advance("nope"), RunNotFound),
        ("advance", "lease held by another engine", lambda: e.advance(r["running"]), LeaseHeld),
        ("advance", "changed code", lambda: e.advance(r["moved_running"]), MachineMismatch),
        ("advance", "closed engine", lambda: closed.advance(r["running"]), StoreError),
        ("resume", "unknown run", lambda: e.resume("nope"), RunNotFound),
        ("resume", "not running", lambda: e.resume(r["waiting"]), IllegalTransition),
        ("resume", "lease held by another engine", lambda: e.resume(r["running"]), LeaseHeld),
        ("resume", "closed engine", lambda: closed.resume(r["running"]), StoreError),
        ("expire_approvals", "closed engine", lambda: closed.expire_approvals(), StoreError),
        ("claim", "closed engine", lambda: closed.claim(5), StoreError),
        ("release_leases", "closed engine", lambda: closed.release_leases(), StoreError),
    ]


def test_every_public_request_that_raises_has_written_nothing(world: dict[str, Any]) -> None:
    swept = cases(world)
    assert {name for name, *_ in swept} == public_requests(), "a public request has no failing cases here"
    for name, case, request, error in swept:
        before = snapshot(world["db"])
        try:
            request()
        except error:
            pass
        else:
            raise AssertionError(f"{name} ({case}) did not raise {error.__name__}")
        assert snapshot(world["db"]) == before, f"{name} ({case}) raised {error.__name__} after writing"


def test_a_machine_that_cannot_be_loaded_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    (tmp_path / "sweep.py").write_text(SWEEP)
    with Engine(db) as first:  # registered, not loadable by reference
        m = load_machine(str(tmp_path / "sweep.py"))
        waiting = first.start(m, {}, by=CLERK).run_id
        idle = first.create(m, {}, by=CLERK).run_id
    with Engine(db) as later:
        for request in (lambda: later.approve(waiting, by="alice@example.com"),
                        lambda: later.start_created(idle)):
            before = snapshot(db)
            with pytest.raises(MachineLoadError):
                request()
            assert snapshot(db) == before


# -- a worker that takes the run first -------------------------------------------------

STEAL = (
    "CREATE TRIGGER a_worker_takes_it AFTER UPDATE OF status ON run "
    "WHEN OLD.status != 'RUNNING' AND NEW.status = 'RUNNING' BEGIN "
    "UPDATE run SET lease_owner = 'elsewhere:1:worker', lease_expires_at = '9999-01-01T00:00:00.000000Z' "
    "WHERE run_id = NEW.run_id; END"
)


class Counter(pydantic.BaseModel):
    n: int = 0


def _gated() -> Machine[Counter]:
    from statecraft import RequestApproval

    def ask(state: Counter, ctx: Any) -> object:
        return RequestApproval("continue?", resume_at="finish") if state.n == 0 else Goto("finish")

    return Machine("gated", "1", Counter, steps=[
        Step("ask", ask, next=["finish"]),
        Step("finish", lambda s, c: Finish(update={"n": 1}), may_finish=True, writes=["n"]),
    ])


def test_a_committed_request_whose_run_a_worker_took_first_returns_the_run(db_path: Path) -> None:
    # Deterministic: the moment the run becomes RUNNING, "a worker" holds its
    # lease (a trigger plays the worker). The request was committed; it must
    # return the run in the worker's hands, not raise LeaseHeld.
    with Engine(db_path) as engine:
        idle = engine.create(_gated(), {}).run_id
        engine.reject(engine.start(_gated(), {}).run_id, by="bob@example.com", reason="first no")
        failed = engine.list(status=RunStatus.FAILED)[0].run_id
        waiting = engine.start(_gated(), {}).run_id
        with engine.db.write() as conn:
            conn.exec_driver_sql(STEAL)
        started = engine.start(_gated(), {})
        approved = engine.approve(waiting, by="alice@example.com")
        retried = engine.retry(failed, by="ops@example.com")
        begun = engine.start_created(idle)
    for info in (started, approved, retried, begun):
        assert info.status is RunStatus.RUNNING and info.lease_owner == "elsewhere:1:worker"


def test_the_async_engine_also_returns_a_committed_run_a_worker_took_first(db_path: Path) -> None:
    import asyncio

    from statecraft import AsyncEngine

    async def scenario() -> list[Any]:
        async with AsyncEngine(db_path) as engine:
            waiting = (await engine.start(_gated(), {})).run_id
            failed = (await engine.start(_gated(), {})).run_id
            await engine.reject(failed, by="bob@example.com", reason="no")
            with engine.engine.db.write() as conn:
                conn.exec_driver_sql(STEAL)
            return [
                await engine.start(_gated(), {}),
                await engine.approve(waiting, by="alice@example.com"),
                await engine.retry(failed, by="ops@example.com"),
            ]

    for info in asyncio.run(scenario()):
        assert info.status is RunStatus.RUNNING and info.lease_owner == "elsewhere:1:worker"


def test_an_error_that_stops_the_inline_advance_after_the_commit_says_the_request_was_committed(
    db_path: Path,
) -> None:
    def misconfigured(state: Counter, ctx: Any) -> object:
        raise MachineDefinitionError("sub", ["an agent built an invalid machine"])  # the caller's setup

    machine = Machine("broken", "1", Counter, steps=[Step("one", misconfigured, may_finish=True)])
    with Engine(db_path) as engine:
        with pytest.raises(AdvanceInterrupted, match="the request was committed") as info:
            engine.start(machine, {})
        assert isinstance(info.value.__cause__, MachineDefinitionError)
        run = info.value.run
        assert run is not None and run.status is RunStatus.RUNNING  # committed; a worker or resume continues
        assert [e.event_type for e in engine.events(run.run_id)] == ["run.created", "run.started"]
