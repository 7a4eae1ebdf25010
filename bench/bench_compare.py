"""Benchmark: statecraft next to Burr, LangGraph and SQLite's own floor, in one process (issue #11).

Why this shape
--------------
A durable step's cost on SQLite is one fsync plus the CPU around it, and on a
shared machine the fsync's latency drifts by 10x within minutes. Figures
taken minutes apart, or by separate scripts, compare moments of the disk
rather than engines. So every contender runs here, in one process, on the
same directory, with the same ``synchronous`` setting and WAL, **interleaved
round by round** (the order rotated each round): one round is one 20-step
run of each, so a slow disk moment hits all of them alike, and each round
gives its own ratio to the floor. Medians and quartiles over rounds are
reported, never a single best run.

The workflow is a 20-step counter: each step is a no-op agent that adds 1
to ``n``; the run's state is persisted durably after every step. Contenders:

1. **floor**: the stdlib ``sqlite3`` driver, per step ``BEGIN IMMEDIATE``;
   UPDATE the run row (the first step INSERTs it); INSERT one event row
   holding the step and the state; ``COMMIT``. Nothing durable is cheaper.
2. **burr**: Burr's ``SQLitePersister`` (``burr.core.persistence``; the
   pinned version has no ``b_sqlite`` module), saving after every step
   through its post-step hook (one INSERT and one commit per step), on a
   connection opened with WAL and the same ``synchronous``.
3. **langgraph**: LangGraph's ``SqliteSaver`` with ``durability="sync"``
   (every super-step's writes and checkpoint committed before the next
   step). It lives in ``langgraph-checkpoint-sqlite``, which is *not* in
   requirements/lock.txt: without it LangGraph is skipped with a one-line
   reason (install it by hand to include it).
4. **statecraft**: ``Engine.start`` of a 20-step ``Machine`` (the run is
   created, started and advanced to DONE): per step one transaction holding
   the run row, the hash-chained audit event (the checkpoint) and the state
   blob, leases and fencing included, exactly as production does.

A contender whose package is missing is skipped with a one-line reason.

Figures, per contender:

- **µs per durable step**: one whole run's wall time / 20 (so each engine
  pays its own per-run work: building the app, creating the run), median
  and quartiles over rounds; **ratio to the floor**, taken per round;
- **CPU µs per step**: the process's CPU time (all threads) over the same
  runs / 20; on tmpfs (``--dir /dev/shm``) the wall time is nearly all CPU;
- **bytes per step**: growth of database + WAL (after a TRUNCATE
  checkpoint) over the timed rounds / steps written;
- **32 runs at once**: 32 threads in one process, each running one
  20-step run (statecraft: one shared ``Engine``; floor: one shared writer
  connection, each transaction committed alone; "floor, batched": the same
  threads, their transactions committed in batches by one writer thread,
  each step acknowledged after its batch's fsync, i.e. what group commit
  can reach; Burr: one application and one persister connection per run;
  LangGraph: one compiled graph and saver, a ``thread_id`` per run) →
  durable steps/s, and its ratio to the same contender's single-run rate;
- **fan-out**: 8 branches that each sleep 100 ms, every branch's result
  persisted, one run per contender: wall time minus the slowest branch's
  own duration (statecraft: a ``fan_out`` step, i.e. ``run_parallel``
  inside one step, through the ``Engine``; Burr: a ``MapStates`` action
  whose sub-applications persist through the parent's persister; LangGraph:
  ``Send`` to 8 parallel node runs, ``max_concurrency`` 8; floor: 8 plain
  threads, then one transaction writing the 8 results). Threads everywhere,
  so the figures compare orchestration, not asyncio against threads.

Usage::

    python bench/bench_compare.py                          # temp dir on the real disk, FULL, 200 rounds
    python bench/bench_compare.py --dir /dev/shm           # tmpfs: fsync is free, CPU alone
    python bench/bench_compare.py --rounds 200 --synchronous NORMAL --json
    python bench/bench_compare.py --profile 200            # cProfile of 200 statecraft runs instead

Not a timed test: the figures depend on the machine and are printed, never
asserted. Targets (issue #11): a durable statecraft step at most 1.25x the
floor at synchronous=FULL; at most 1 KiB per step; 32 runs at least 10x the
single-run steps/s; fan-out overhead at most 5 ms over the slowest branch.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import operator
import os
import pstats
import queue
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, TypedDict

STEPS = 20
CONCURRENT_RUNS = 32
BRANCHES = 8
BRANCH_SLEEP_S = 0.100
WARMUP_RUNS = 3


class Skip(Exception):
    """A contender cannot run here; ``str()`` is the one-line reason."""


# -- shared helpers --------------------------------------------------------------


def _fresh(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path


def disk_bytes(path: Path) -> int:
    """Bytes of the database file plus its WAL, after a TRUNCATE checkpoint (pages, not rows).

    The checkpoint runs on a connection of its own; contenders' connections
    must be idle (no open transaction), which they are between runs.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for _ in range(100):
            if not conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]:
                break
            time.sleep(0.01)
        else:
            raise RuntimeError(f"{path}: the WAL could not be checkpointed (a connection is busy)")
    finally:
        conn.close()
    wal = Path(f"{path}-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def wal_pages_per_step(contender: Any) -> float:
    """Pages one 20-step run appends to the WAL, per step: what each commit writes (and fsyncs).

    The WAL is truncated first, and one run is far below the 1,000-page
    autocheckpoint, so the file's size afterwards counts exactly its frames.
    """
    disk_bytes(contender.path)
    contender.run_one()
    wal = Path(f"{contender.path}-wal")
    conn = sqlite3.connect(contender.path)
    try:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    frames = max(0, wal.stat().st_size - 32) // (page + 24) if wal.exists() else 0
    return frames / STEPS


def _connection_class(synchronous: str) -> type[sqlite3.Connection]:
    """A ``sqlite3.Connection`` subclass that sets WAL and ``synchronous`` on connect.

    Burr's persister opens a new connection for each copy it hands a
    sub-application (``SQLitePersister.copy``); a ``factory`` in its
    ``connect_kwargs`` is the one hook that reaches those connections too.
    """

    class PragmaConnection(sqlite3.Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.execute("PRAGMA journal_mode = WAL")
            self.execute(f"PRAGMA synchronous = {synchronous}")

    return PragmaConnection


class BranchClock:
    """Records how long each fan-out branch itself ran, to subtract the slowest from a run's wall time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.durations: list[float] = []

    def sleep(self) -> float:
        """One branch's work: sleep ``BRANCH_SLEEP_S``; returns (and records) the seconds it took."""
        started = time.perf_counter()
        time.sleep(BRANCH_SLEEP_S)
        took = time.perf_counter() - started
        with self._lock:
            self.durations.append(took)
        return took

    def overhead_ms(self, run: Callable[[], None]) -> float:
        """Milliseconds ``run`` took beyond its slowest branch; checks that every branch ran."""
        self.durations.clear()
        started = time.perf_counter()
        run()
        wall = time.perf_counter() - started
        if len(self.durations) != BRANCHES:
            raise RuntimeError(f"{len(self.durations)} branches ran, expected {BRANCHES}")
        return (wall - max(self.durations)) * 1000


CLOCK = BranchClock()

# Each run starts its counter at a value no other run uses, so every state is
# new: no engine gains from finding a state it stored before (statecraft's
# content-addressed blobs would, for 20 identical runs), as with real inputs.
_STARTS = itertools.count(1_000_000, 1_000)


# -- contenders --------------------------------------------------------------------
#
# Each takes (path, synchronous) and offers: run_one() (one durable 20-step
# run), run_many(n) (n runs at once, in its idiomatic concurrent form),
# fan_out() (one run of the 8-branch fan-out), steps_written (for bytes per
# step) and close(). Constructing one raises Skip when its package is missing.


class Floor:
    """The cheapest durable step: stdlib ``sqlite3``, one UPDATE + one INSERT per ``BEGIN IMMEDIATE`` transaction."""

    name = "floor"

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = _fresh(path)
        self.synchronous = synchronous
        self.conn = self._connect()
        self.conn.execute("CREATE TABLE run (run_id TEXT PRIMARY KEY, step TEXT, n INTEGER)")
        self.conn.execute("CREATE TABLE event (seq INTEGER PRIMARY KEY, run_id TEXT, step TEXT, state TEXT)")
        self.lock = threading.Lock()
        self.steps_written = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    def _statements(self, run_id: str, start: int, i: int) -> list[tuple[str, tuple[Any, ...]]]:
        n = start + i + 1
        first = ("INSERT INTO run (run_id, step, n) VALUES (?, ?, ?)", (run_id, f"s{i}", n))
        update = ("UPDATE run SET step = ?, n = ? WHERE run_id = ?", (f"s{i}", n, run_id))
        insert = ("INSERT INTO event (run_id, step, state) VALUES (?, ?, ?)", (run_id, f"s{i}", json.dumps({"n": n})))
        return [first if i == 0 else update, insert]

    def _commit(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        with self.lock:  # the in-process writer queue: one connection, one transaction at a time
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            for sql, args in statements:
                conn.execute(sql, args)
            conn.execute("COMMIT")

    def run_one(self) -> None:
        run_id, start = str(uuid.uuid4()), next(_STARTS)
        for i in range(STEPS):
            self._commit(self._statements(run_id, start, i))
        self.steps_written += STEPS

    def run_many(self, runs: int) -> None:
        def one(_: int) -> None:
            run_id, start = str(uuid.uuid4()), next(_STARTS)
            for i in range(STEPS):
                self._commit(self._statements(run_id, start, i))

        with ThreadPoolExecutor(runs) as pool:
            list(pool.map(one, range(runs)))

    def fan_out(self) -> None:
        run_id = str(uuid.uuid4())
        threads = [threading.Thread(target=CLOCK.sleep) for _ in range(BRANCHES)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._commit(
            [("INSERT INTO run (run_id, step, n) VALUES (?, 'fan', ?)", (run_id, BRANCHES))]
            + [("INSERT INTO event (run_id, step, state) VALUES (?, ?, ?)", (run_id, f"b{i}", "1")) for i in range(BRANCHES)]
        )

    def close(self) -> None:
        self.conn.close()


class FloorBatched(Floor):
    """The floor's 32-run form with group commit: one writer thread commits whatever is queued as one transaction.

    Each step waits until the transaction holding it is committed (durable at
    ``synchronous=FULL``), so an acknowledgement means what it means in
    :class:`Floor`; only the number of steps per fsync changes. Used for the
    concurrency figure only: it is what batching across runs can reach.
    """

    name = "floor, batched"

    def run_many(self, runs: int) -> None:
        pending: queue.Queue[tuple[list[tuple[str, tuple[Any, ...]]], threading.Event] | None] = queue.Queue()

        def writer() -> None:
            conn = self.conn
            while True:
                first = pending.get()
                if first is None:
                    return
                batch = [first]
                while True:
                    try:
                        item = pending.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        pending.put(None)
                        break
                    batch.append(item)
                conn.execute("BEGIN IMMEDIATE")
                for statements, _ in batch:
                    for sql, args in statements:
                        conn.execute(sql, args)
                conn.execute("COMMIT")
                for _, done in batch:
                    done.set()

        def one(_: int) -> None:
            run_id, start = str(uuid.uuid4()), next(_STARTS)
            for i in range(STEPS):
                done = threading.Event()
                pending.put((self._statements(run_id, start, i), done))
                done.wait()

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            with ThreadPoolExecutor(runs) as pool:
                list(pool.map(one, range(runs)))
        finally:
            pending.put(None)
            thread.join()


class Burr:
    """Burr's ``SQLitePersister`` saving after every step (its post-run-step hook)."""

    name = "burr"

    def __init__(self, path: Path, synchronous: str) -> None:
        try:
            from burr.core import ApplicationBuilder, State, action
            from burr.core.graph import GraphBuilder
            from burr.core.parallelism import MapStates
            from burr.core.persistence import SQLitePersister
        except ImportError as exc:
            raise Skip(f"burr is not installed ({exc.name}); pip install -e '.[bench]'") from exc
        self.path = _fresh(path)
        self._builder = ApplicationBuilder
        self._connect_kwargs = {"check_same_thread": False, "factory": _connection_class(synchronous)}
        self._persister_class = SQLitePersister
        self.persister = self._persister()
        self.persister.initialize()
        self.steps_written = 0

        def step(i: int) -> Any:
            @action(reads=["n"], writes=["n"])
            def act(state: State[Any]) -> State[Any]:
                return state.update(n=state["n"] + 1)

            return act  # named by its key in with_actions

        self.graph = (
            GraphBuilder()
            .with_actions(**{f"s{i}": step(i) for i in range(STEPS)})
            .with_transitions(*[(f"s{i}", f"s{i + 1}") for i in range(STEPS - 1)])
            .build()
        )

        @action(reads=["i"], writes=["out"])
        def branch(state: State[Any]) -> State[Any]:
            CLOCK.sleep()
            return state.update(out=state["i"])

        class Fan(MapStates):
            def action(self, state: State[Any], inputs: dict[str, Any]) -> Any:
                return branch

            def states(self, state: State[Any], context: Any, inputs: dict[str, Any]) -> Any:
                for i in range(BRANCHES):
                    yield state.update(i=i)

            def reduce(self, state: State[Any], states: Any) -> State[Any]:
                return state.update(results=[s["out"] for s in states])

            @property
            def reads(self) -> list[str]:
                return []

            @property
            def writes(self) -> list[str]:
                return ["results"]

        self.fan_graph = GraphBuilder().with_actions(fan=Fan()).build()

    def _persister(self) -> Any:
        return self._persister_class(str(self.path), "burr_state", connect_kwargs=self._connect_kwargs)

    def _run(self, persister: Any) -> None:
        start = next(_STARTS)
        app = (
            self._builder()
            .with_graph(self.graph)
            .with_entrypoint("s0")
            .with_state(n=start)
            .with_identifiers(app_id=str(uuid.uuid4()))
            .with_state_persister(persister)
            .build()
        )
        _, _, state = app.run(halt_after=[f"s{STEPS - 1}"])
        assert state["n"] == start + STEPS

    def run_one(self) -> None:
        self._run(self.persister)
        self.steps_written += STEPS

    def run_many(self, runs: int) -> None:
        persisters = [self._persister() for _ in range(runs)]  # one connection per application, as Burr's copy() gives
        try:
            with ThreadPoolExecutor(runs) as pool:
                list(pool.map(self._run, persisters))
        finally:
            for p in persisters:
                p.cleanup()

    def fan_out(self) -> None:
        app = (
            self._builder()
            .with_graph(self.fan_graph)
            .with_entrypoint("fan")
            .with_state(results=[])
            .with_identifiers(app_id=str(uuid.uuid4()))
            .with_state_persister(self.persister)
            .with_parallel_executor(lambda: ThreadPoolExecutor(BRANCHES))
            .build()
        )
        _, _, state = app.run(halt_after=["fan"])
        assert sorted(state["results"]) == list(range(BRANCHES))

    def close(self) -> None:
        self.persister.cleanup()


class LangGraph:
    """LangGraph's ``SqliteSaver`` (package ``langgraph-checkpoint-sqlite``), ``durability="sync"``."""

    name = "langgraph"

    def __init__(self, path: Path, synchronous: str) -> None:
        try:
            from langgraph.graph import END, START, StateGraph
            from langgraph.types import Send
        except ImportError as exc:
            raise Skip(f"langgraph is not installed ({exc.name}); pip install -e '.[bench]'") from exc
        try:
            from langgraph.checkpoint.sqlite import SqliteSaver
        except ImportError as exc:
            raise Skip(
                "its SQLite checkpointer (langgraph-checkpoint-sqlite) is not in requirements/lock.txt; "
                "pip install langgraph-checkpoint-sqlite to include it"
            ) from exc
        self.path = _fresh(path)
        self.conn = sqlite3.connect(self.path, check_same_thread=False, factory=_connection_class(synchronous))
        self.saver = SqliteSaver(self.conn)  # serialises its own use of the connection with a lock
        self.saver.setup()
        self.steps_written = 0

        class Counter(TypedDict):
            n: int

        def step(state: Counter) -> dict[str, int]:
            return {"n": state["n"] + 1}

        builder = StateGraph(Counter)
        for i in range(STEPS):
            builder.add_node(f"s{i}", step)
        builder.add_edge(START, "s0")
        for i in range(STEPS - 1):
            builder.add_edge(f"s{i}", f"s{i + 1}")
        builder.add_edge(f"s{STEPS - 1}", END)
        self.graph = builder.compile(checkpointer=self.saver)

        class Fan(TypedDict):
            results: Annotated[list[int], operator.add]

        class Branch(TypedDict):
            i: int

        def branch(state: Branch) -> dict[str, list[int]]:
            CLOCK.sleep()
            return {"results": [state["i"]]}

        fan = StateGraph(Fan)
        fan.add_node("branch", branch)
        fan.add_conditional_edges(START, lambda _: [Send("branch", {"i": i}) for i in range(BRANCHES)], ["branch"])
        fan.add_edge("branch", END)
        self.fan_graph = fan.compile(checkpointer=self.saver)

    def _run(self, _: object = None) -> None:
        start = next(_STARTS)
        config: Any = {"configurable": {"thread_id": str(uuid.uuid4())}}
        out = self.graph.invoke({"n": start}, config, durability="sync")
        assert out["n"] == start + STEPS

    def run_one(self) -> None:
        self._run()
        self.steps_written += STEPS

    def run_many(self, runs: int) -> None:
        with ThreadPoolExecutor(runs) as pool:
            list(pool.map(self._run, range(runs)))

    def fan_out(self) -> None:
        config: Any = {"configurable": {"thread_id": str(uuid.uuid4())}, "max_concurrency": BRANCHES}
        out = self.fan_graph.invoke({"results": []}, config, durability="sync")
        assert sorted(out["results"]) == list(range(BRANCHES))

    def close(self) -> None:
        self.conn.close()


class Statecraft:
    """statecraft's ``Engine``: run row + hash-chained audit event + state in one transaction per step."""

    name = "statecraft"

    def __init__(self, path: Path, synchronous: str) -> None:
        from pydantic import BaseModel

        from statecraft import Engine, Finish, Goto, Machine, Step
        from statecraft.patterns import FanOutResult, fan_out

        class Counter(BaseModel):
            n: int = 0

        def step(i: int) -> Any:
            last = i == STEPS - 1

            def agent(state: Counter, ctx: object) -> object:
                update = {"n": state.n + 1}
                return Finish(update=update) if last else Goto(f"s{i + 1}", update=update)

            agent.__qualname__ = agent.__name__ = f"count{i}"
            return agent

        self.machine = Machine(
            "bench_counter20",
            "1",
            Counter,
            [
                Step(f"s{i}", step(i), next=[] if i == STEPS - 1 else [f"s{i + 1}"], writes=["n"], may_finish=i == STEPS - 1)
                for i in range(STEPS)
            ],
        )

        class Fan(BaseModel):
            results: FanOutResult | None = None

        def sleeper(inp: Any, bctx: Any) -> float:
            return CLOCK.sleep()

        self.fan_machine = Machine(
            "bench_fan8",
            "1",
            Fan,
            [fan_out("fan", branches={f"w{i}": sleeper for i in range(BRANCHES)}, into="results", max_concurrency=BRANCHES)],
        )
        self.path = _fresh(path)
        self._started_at = 0.0
        self.engine = Engine(self.path, synchronous=synchronous, on_event=self._on_event)  # type: ignore[arg-type]
        self.steps_written = 0
        self.advance_us: list[float] = []
        self.create_us: list[float] = []

    def _on_event(self, report: Any) -> None:
        # Called after each transition commits: "run.started" ends the
        # create-and-start transaction (which also takes the run's lease).
        if report.event_type == "run.started":
            self._started_at = time.perf_counter()

    def _run(self, _: object = None) -> None:
        run = self.engine.start(self.machine, {"n": next(_STARTS)})
        assert run.status.value == "DONE" and run.steps_taken == STEPS, run

    def run_one(self) -> None:
        # As a service starts a run: created, started and leased in one
        # transaction, then advanced inline (``start``'s default); the hook
        # above splits the time at the commit of that first transaction.
        started = time.perf_counter()
        done = self.engine.start(self.machine, {"n": next(_STARTS)})
        ended = time.perf_counter()
        self.advance_us.append((ended - self._started_at) / STEPS * 1e6)
        self.create_us.append((self._started_at - started) * 1e6)
        assert done.status.value == "DONE" and done.steps_taken == STEPS, done
        self.steps_written += STEPS

    def run_many(self, runs: int) -> None:
        with ThreadPoolExecutor(runs) as pool:
            list(pool.map(self._run, range(runs)))

    def fan_out(self) -> None:
        run = self.engine.start(self.fan_machine, {})
        assert run.status.value == "DONE", run

    def close(self) -> None:
        self.engine.close()


CONTENDERS: list[type[Any]] = [Floor, Burr, LangGraph, Statecraft]


# -- measuring ----------------------------------------------------------------------


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def single_runs(contenders: list[Any], rounds: int) -> dict[str, dict[str, Any]]:
    """Interleave one 20-step run of each contender per round (order rotated); wall, CPU and disk per step.

    Returns:
        contender name -> {"wall_us": [...], "cpu_us": [...], "ratio": [...],
        "bytes_per_step": float}, one list entry per round (µs per step).
    """
    out: dict[str, dict[str, Any]] = {c.name: {"wall_us": [], "cpu_us": [], "ratio": []} for c in contenders}
    for c in contenders:
        for _ in range(WARMUP_RUNS):  # caches, the schema, lazy imports
            c.run_one()
    start_bytes = {c.name: disk_bytes(c.path) for c in contenders}
    start_steps = {c.name: c.steps_written for c in contenders}
    for r in range(rounds):
        k = r % len(contenders)
        this_round: dict[str, float] = {}
        for c in contenders[k:] + contenders[:k]:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            c.run_one()
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            this_round[c.name] = wall
            out[c.name]["wall_us"].append(wall / STEPS * 1e6)
            out[c.name]["cpu_us"].append(cpu / STEPS * 1e6)
        if "floor" in this_round:
            for name, wall in this_round.items():
                out[name]["ratio"].append(wall / this_round["floor"])
    for c in contenders:
        out[c.name]["wal_pages_per_step"] = wal_pages_per_step(c)
        c.close()
        grown = disk_bytes(c.path) - start_bytes[c.name]
        out[c.name]["bytes_per_step"] = grown / (c.steps_written - start_steps[c.name])
    return out


def many_runs(make: list[Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """``CONCURRENT_RUNS`` 20-step runs at once per contender, interleaved over ``rounds``; durable steps/s."""
    contenders = [m() for m in make]
    out: dict[str, list[float]] = {c.name: [] for c in contenders}
    for c in contenders:
        c.run_many(4)  # warm: threads, connections, the schema
    for r in range(rounds):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            started = time.perf_counter()
            c.run_many(CONCURRENT_RUNS)
            out[c.name].append(CONCURRENT_RUNS * STEPS / (time.perf_counter() - started))
    for c in contenders:
        c.close()
    return out


def fan_outs(make: list[Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """One 8 x 100 ms fan-out run per contender per round, interleaved; ms over the slowest branch."""
    contenders = [m() for m in make]
    out: dict[str, list[float]] = {c.name: [] for c in contenders}
    for c in contenders:
        c.fan_out()  # warm
    for r in range(rounds):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            out[c.name].append(CLOCK.overhead_ms(c.fan_out))
    for c in contenders:
        c.close()
    return out


def _make(cls: type[Any], path: Path, synchronous: str) -> Callable[[], Any]:
    return lambda: cls(path, synchronous)


def _filesystem(path: Path) -> str:
    """The file system type holding ``path`` (from /proc/mounts; '?' elsewhere)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "?"
    best = ("", "?")
    resolved = str(path.resolve())
    for m in mounts:
        if len(m) > 2 and (resolved == m[1] or resolved.startswith(m[1].rstrip("/") + "/")) and len(m[1]) > len(best[0]):
            best = (m[1], m[2])
    return best[1]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0], "sqlite": sqlite3.sqlite_version}
    for dist in ("statecraft", "burr", "langgraph", "langgraph-checkpoint-sqlite"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def measure(base: Path, synchronous: str, rounds: int, concurrent_rounds: int, fan_rounds: int) -> dict[str, Any]:
    """Run the three sections and return the JSON-ready result (see the module docstring)."""
    load_before = os.getloadavg()
    started = time.perf_counter()
    skipped: dict[str, str] = {}
    available: list[type[Any]] = []
    for cls in CONTENDERS:
        try:
            cls(base / f"probe-{cls.name}.db", synchronous).close()
            available.append(cls)
        except Skip as exc:
            skipped[cls.name] = str(exc)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{base / f'probe-{cls.name}.db'}{suffix}").unlink(missing_ok=True)

    singles = [cls(base / f"single-{cls.name}.db", synchronous) for cls in available]
    single = single_runs(singles, rounds)
    many_classes: list[type[Any]] = [*available[:1], FloorBatched, *available[1:]] if Floor in available else available
    many = many_runs(
        [_make(cls, base / f"many-{cls.name.replace(', ', '-')}.db", synchronous) for cls in many_classes],
        concurrent_rounds,
    )
    fans = fan_outs([_make(cls, base / f"fan-{cls.name}.db", synchronous) for cls in available], fan_rounds)

    floor_wall = statistics.median(single["floor"]["wall_us"]) if "floor" in single else None
    floor_quarters = _quartiles(single["floor"]["wall_us"]) if "floor" in single else None
    engines: dict[str, Any] = {}
    for name in [c.name for c in many_classes]:
        row: dict[str, Any] = {}
        base_name = "floor" if name == "floor, batched" else name
        if name in single:
            s = single[name]
            q1, med, q3 = _quartiles(s["wall_us"])
            row.update(
                us_per_step=round(med, 1),
                us_per_step_quartiles=[round(q1, 1), round(q3, 1)],
                steps_per_s=round(1e6 / med),
                cpu_us_per_step=round(statistics.median(s["cpu_us"]), 1),
                cpu_us_per_step_quartiles=[round(x, 1) for x in _quartiles(s["cpu_us"])[::2]],
                bytes_per_step=round(s["bytes_per_step"]),
                wal_pages_per_step=round(s["wal_pages_per_step"], 1),
            )
            if s["ratio"]:
                r1, rmed, r3 = _quartiles(s["ratio"])
                row.update(ratio_to_floor=round(rmed, 2), ratio_to_floor_quartiles=[round(r1, 2), round(r3, 2)])
                # The ratio depends on how long an fsync takes at that moment: split the
                # rounds by the floor's own speed (its fastest and slowest quarter).
                floor_q1, _, floor_q3 = _quartiles(single["floor"]["wall_us"])
                pairs = list(zip(single["floor"]["wall_us"], s["ratio"]))
                fast = [r for f, r in pairs if f <= floor_q1]
                slow = [r for f, r in pairs if f >= floor_q3]
                row.update(
                    ratio_to_floor_fast_fsync_rounds=round(statistics.median(fast), 2),
                    ratio_to_floor_slow_fsync_rounds=round(statistics.median(slow), 2),
                )
        split = next((c for c in singles if c.name == name and hasattr(c, "advance_us")), None)
        if split is not None:  # statecraft: the same runs without creating and starting them
            row["us_per_step_advance_only"] = round(statistics.median(split.advance_us[WARMUP_RUNS:]), 1)
            row["us_create_and_start_per_run"] = round(statistics.median(split.create_us[WARMUP_RUNS:]), 1)
        if name in many:
            m = many[name]
            row[f"concurrent_{CONCURRENT_RUNS}_steps_per_s"] = round(statistics.median(m))
            row[f"concurrent_{CONCURRENT_RUNS}_steps_per_s_range"] = [round(min(m)), round(max(m))]
            single_rate = 1e6 / statistics.median(single[base_name]["wall_us"]) if base_name in single else None
            if single_rate:
                row[f"concurrent_{CONCURRENT_RUNS}_vs_single_run"] = round(statistics.median(m) / single_rate, 2)
        if name in fans:
            q1, med, q3 = _quartiles(fans[name])
            row.update(fan_out_overhead_ms=round(med, 1), fan_out_overhead_ms_quartiles=[round(q1, 1), round(q3, 1)])
        engines[name] = row
    return {
        "dir": str(base),
        "filesystem": _filesystem(base),
        "synchronous": synchronous,
        "journal_mode": "WAL",
        "steps_per_run": STEPS,
        "rounds": rounds,
        "concurrent_runs": CONCURRENT_RUNS,
        "concurrent_rounds": concurrent_rounds,
        "fan_out": f"{BRANCHES} x {BRANCH_SLEEP_S * 1000:.0f} ms",
        "fan_out_rounds": fan_rounds,
        "floor_us_per_step": None if floor_wall is None else round(floor_wall, 1),
        "floor_us_per_step_fast_slow_quarter_bounds": (
            None if floor_quarters is None else [round(floor_quarters[0], 1), round(floor_quarters[2], 1)]
        ),
        "engines": engines,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - started, 1),
        "load_avg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "versions": _versions(),
    }


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The ratio table's headers and one row of cells per contender (empty where not measured)."""

    def num(row: dict[str, Any], key: str, fmt: str) -> str:
        return fmt.format(row[key]) if key in row else ""

    def q(row: dict[str, Any], key: str, fmt: str = "{:,.0f}") -> str:
        pair = row.get(key)
        return "" if not pair else f"{fmt.format(pair[0])}–{fmt.format(pair[1])}"

    n = result["concurrent_runs"]
    headers = ["engine", "µs/step", "q1–q3", "× floor", "q1–q3", "CPU µs/step", "bytes/step", "WAL pages/step",
               "steps/s", f"{n} runs: steps/s", "× single run", "fan-out: ms over slowest", "q1–q3"]
    rows = [
        [
            name,
            num(row, "us_per_step", "{:,.0f}"),
            q(row, "us_per_step_quartiles"),
            num(row, "ratio_to_floor", "{:.2f}"),
            q(row, "ratio_to_floor_quartiles", "{:.2f}"),
            num(row, "cpu_us_per_step", "{:,.0f}"),
            num(row, "bytes_per_step", "{:,}"),
            num(row, "wal_pages_per_step", "{:.1f}"),
            num(row, "steps_per_s", "{:,}"),
            num(row, f"concurrent_{n}_steps_per_s", "{:,}"),
            num(row, f"concurrent_{n}_vs_single_run", "{:.2f}"),
            num(row, "fan_out_overhead_ms", "{:.1f}"),
            q(row, "fan_out_overhead_ms_quartiles", "{:.1f}"),
        ]
        for name, row in result["engines"].items()
    ]
    return headers, rows


def _caption(result: dict[str, Any]) -> tuple[str, list[str]]:
    title = (
        f"{result['steps_per_run']}-step counter runs, synchronous={result['synchronous']}, WAL, "
        f"{result['dir']} ({result['filesystem']}); {result['rounds']} interleaved rounds; "
        f"{result['concurrent_runs']} runs at once x {result['concurrent_rounds']}; "
        f"fan-out {result['fan_out']} x {result['fan_out_rounds']}"
    )
    notes = [f"skipped {name}: {why}" for name, why in result["skipped"].items()]
    bounds = result.get("floor_us_per_step_fast_slow_quarter_bounds")
    split = [
        f"{name} {row['ratio_to_floor_fast_fsync_rounds']:.2f} / {row['ratio_to_floor_slow_fsync_rounds']:.2f}"
        for name, row in result["engines"].items()
        if "ratio_to_floor_fast_fsync_rounds" in row and name != "floor"
    ]
    if bounds and split:
        notes.append(
            f"× floor in the rounds where the floor was fastest (≤ {bounds[0]:,.0f} µs/step) / slowest "
            f"(≥ {bounds[1]:,.0f} µs/step): " + ", ".join(split)
        )
    sc = result["engines"].get("statecraft", {})
    if "us_per_step_advance_only" in sc:
        notes.append(
            f"statecraft without creating and starting the run: {sc['us_per_step_advance_only']:,.0f} µs/step "
            f"(create + start: {sc['us_create_and_start_per_run']:,.0f} µs per run)"
        )
    versions = ", ".join(f"{k} {val}" for k, val in result["versions"].items())
    la = result["load_avg_1min_before_after"]
    notes.append(f"{versions}; {result['cpus']} CPUs; load average {la[0]} before, {la[1]} after; {result['seconds']} s")
    return title, notes


def render(result: dict[str, Any], markdown: bool = False) -> None:
    """Print the ratio table (rich, or a Markdown table for notes) and the lines under it."""
    headers, rows = table_rows(result)
    title, notes = _caption(result)
    if markdown:
        print(title + "\n")
        print("| " + " | ".join(headers) + " |")
        print("| --- |" + " ---: |" * (len(headers) - 1))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        for note in notes:
            print(f"- {note}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for header in headers:
        table.add_column(header, justify="left" if header == "engine" else "right")
    for row in rows:
        table.add_row(*row)
    console = Console(width=max(180, Console().width))
    console.print(table)
    for note in notes:
        console.print(note)


def profile(base: Path, synchronous: str, runs: int, top: int) -> None:
    """cProfile ``runs`` statecraft 20-step runs (after warm-up) and print the top functions by own time."""
    sc = Statecraft(base / "profile-statecraft.db", synchronous)
    for _ in range(WARMUP_RUNS):
        sc.run_one()
    profiler = cProfile.Profile()
    cpu0 = time.process_time()
    profiler.enable()
    for _ in range(runs):
        sc.run_one()
    profiler.disable()
    cpu = time.process_time() - cpu0
    sc.close()
    steps = runs * STEPS
    print(f"{runs} runs, {steps} steps; CPU under the profiler {cpu / steps * 1e6:.0f} µs/step (profiling inflates it)")
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf).strip_dirs().sort_stats(key)
        stats.print_stats(top)
        print(f"--- by {key}, per step: divide by {steps}")
        print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:20000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dir", help="directory for the database files (default: a new temp dir, removed afterwards)")
    parser.add_argument("--rounds", type=int, default=200, help="interleaved rounds of single 20-step runs (default 200)")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    parser.add_argument("--concurrent-rounds", type=int, default=5, help=f"rounds of {CONCURRENT_RUNS} runs at once (default 5)")
    parser.add_argument("--fan-rounds", type=int, default=15, help="rounds of the fan-out (default 15)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for notes)")
    parser.add_argument("--profile", type=int, metavar="RUNS", help="instead: cProfile RUNS statecraft runs")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.concurrent_rounds < 1 or args.fan_rounds < 1:
        parser.error("rounds must be at least 1")

    base = Path(tempfile.mkdtemp(prefix="statecraft-compare-", dir=args.dir))
    try:
        if args.profile:
            profile(base, args.synchronous, args.profile, 30)
            return 0
        result = measure(base, args.synchronous, args.rounds, args.concurrent_rounds, args.fan_rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        render(result, markdown=args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
