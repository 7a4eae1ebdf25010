"""Driver-level transactions: the hot path of a step commit.

A step commit is a handful of small statements in one ``BEGIN IMMEDIATE``
transaction. Through SQLAlchemy each statement costs tens of microseconds of
Python (compilation cache lookups, result objects, events) and opening a
``Connection`` another ~60 µs, which together would cost more than SQLite
itself; bench/bench_transitions.py measures it. So on SQLite the hot path
runs the same named-parameter SQL on a DB-API connection (the stdlib
``sqlite3`` driver, with the pragmas ``Database`` set on connect), under the
SQLModel schema. Writes go through one writer connection per process and
database, held out of the pool (:class:`_Writer`). Other backends go through
SQLAlchemy ``text()`` with the same SQL, so there is one SQL text per
statement either way.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from operator import itemgetter
from types import TracebackType
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, TextClause, text

from ..errors import StoreError
from . import checkpoint
from .db import Database

__all__ = ["Tx", "close_writer", "group_write", "read_on_writer", "read_one", "read_tx", "tx_of", "write_tx"]

_TEXT: dict[str, TextClause] = {}

# BEGIN IMMEDIATE waits for the write lock through busy_timeout (30 s); a few
# SQLite paths return SQLITE_BUSY without calling the busy handler (e.g. while
# another connection runs WAL recovery), so BEGIN is retried a bounded number
# of times rather than letting "database is locked" reach the user.
_BEGIN_TRIES = 20


class Tx:
    """One open write transaction; runs named-parameter SQL (``:name``).

    Either a stdlib ``sqlite3`` connection (SQLite) or a SQLAlchemy
    ``Connection`` (other backends, or a caller's open transaction).
    """

    __slots__ = ("raw", "sa")

    def __init__(self, raw: sqlite3.Connection | None = None, sa: Connection | None = None) -> None:
        self.raw = raw
        self.sa = sa

    @property
    def sqlite(self) -> bool:
        """Whether this transaction is on SQLite (where the SQL dialects differ, store/ asks)."""
        return self.raw is not None or (self.sa is not None and self.sa.dialect.name == "sqlite")

    def run(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """Execute a statement; return its rowcount."""
        if self.raw is not None:
            if params:
                # The stdlib driver binds "?" markers about twice as fast as
                # ":name" ones (46 per audit row): same SQL, markers rewritten once.
                positional, values = _positional(sql)
                return self.raw.execute(positional, values(params)).rowcount
            return self.raw.execute(sql).rowcount
        assert self.sa is not None
        return int(self.sa.execute(_text(sql), dict(params or {})).rowcount)

    def one(self, sql: str, params: Mapping[str, Any] | None = None) -> tuple[Any, ...] | None:
        """Execute a query; return its first row as a tuple, or ``None``."""
        if self.raw is not None:
            row = self.raw.execute(sql, params or {}).fetchone()
            return None if row is None else tuple(row)
        assert self.sa is not None
        first = self.sa.execute(_text(sql), dict(params or {})).first()
        return None if first is None else tuple(first)

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Execute a query; return every row as a tuple."""
        if self.raw is not None:
            return [tuple(r) for r in self.raw.execute(sql, params or {}).fetchall()]
        assert self.sa is not None
        return [tuple(r) for r in self.sa.execute(_text(sql), dict(params or {})).all()]


_POSITIONAL: dict[str, tuple[str, Callable[[Mapping[str, Any]], Sequence[Any]]]] = {}
_MARKER = re.compile(r":([A-Za-z_][A-Za-z0-9_]*)")


def _positional(sql: str) -> tuple[str, Callable[[Mapping[str, Any]], Sequence[Any]]]:
    """``sql`` with each ``:name`` outside quotes replaced by ``?``, and a function picking the values in order."""
    cached = _POSITIONAL.get(sql)
    if cached is None:
        names: list[str] = []

        def mark(match: re.Match[str]) -> str:
            names.append(match.group(1))
            return "?"

        parts = sql.split("'")
        for i in range(0, len(parts), 2):  # even parts are outside string literals
            parts[i] = _MARKER.sub(mark, parts[i])
        cached = _POSITIONAL[sql] = ("'".join(parts), _picker(names))
    return cached


def _picker(names: Sequence[str]) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """``params -> [params[n] for n in names]`` at C speed (KeyError on a missing name, likewise)."""
    if len(names) > 1:
        return itemgetter(*names)  # a tuple
    if names:
        name = names[0]
        return lambda params: (params[name],)
    return lambda params: ()


def _text(sql: str) -> TextClause:
    clause = _TEXT.get(sql)
    if clause is None:
        clause = _TEXT[sql] = text(sql)
    return clause


def tx_of(conn: Connection | Tx) -> Tx:
    """A :class:`Tx` running inside ``conn``'s open transaction (the same DB-API connection)."""
    if isinstance(conn, Tx):
        return conn
    if conn.dialect.name == "sqlite":
        driver = conn.connection.driver_connection
        if isinstance(driver, sqlite3.Connection):
            return Tx(raw=driver)
    return Tx(sa=conn)


def write_tx(db: Database, *, appends: bool = True) -> AbstractContextManager[Tx]:
    """One write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success, rolls back on error.

    Use as ``with write_tx(db) as tx: ...``. ``appends=False``: see :meth:`Database.write`.

    Raises:
        StoreError: the database is closed, or the write lock could not be had.
    """
    if not db.is_sqlite:
        return _sa_write_tx(db, appends)
    db._check_open()
    db.check_writable()
    return _WriteTx(db, _writer(db))


class _WriteTx:
    """``write_tx`` on SQLite: a plain class, not a generator, on the hot path (~2 µs less per commit)."""

    __slots__ = ("_db", "_writer")

    def __init__(self, db: Database, writer: _Writer) -> None:
        self._db = db
        self._writer = writer

    def __enter__(self) -> Tx:
        writer = self._writer
        # Threads of one process queue here, in order, instead of inside SQLite,
        # whose busy handler polls with sleeps of up to 100 ms: with 32 threads
        # advancing runs, that polling, not the disk, would set the pace.
        writer.lock.acquire()
        try:
            self._db._check_open()  # closed while this thread waited for the lock
            raw = writer.connection(self._db)
            _begin(raw, self._db.url)
        except BaseException:
            writer.lock.release()
            raise
        return Tx(raw=raw)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        writer = self._writer
        try:
            if exc_type is None:
                assert writer.raw is not None
                try:
                    writer.raw.execute("COMMIT")
                except BaseException:
                    writer.rollback()
                    raise
            else:
                writer.rollback()
        finally:
            writer.lock.release()
        if exc_type is None and writer.checkpoints is not None:
            writer.checkpoints.nudge()  # the WAL is copied back beside the next steps, not inside one


# -- group commit --------------------------------------------------------------------------

_GROUP_MAX = 64  # units per transaction: bounds a batch's latency and a rollback's blast radius

T = TypeVar("T")


class _Unit(Generic[T]):
    """One caller's unit of work waiting for (or in) a group transaction."""

    __slots__ = ("done", "error", "result", "wake", "work")

    def __init__(self, work: Callable[[Tx], T]) -> None:
        self.work = work
        self.done = False
        self.result: T | None = None
        self.error: BaseException | None = None
        # Held until the caller may go on: released once, by the leader that
        # settled the unit or that hands this caller the lead. A lock, not an
        # Event: a waiter is woken by its own release and nobody else's.
        self.wake = threading.Lock()
        self.wake.acquire()


class _Group:
    """The queue of units waiting for the writer, and whether a leader is committing."""

    __slots__ = ("leading", "lock", "pending")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: list[_Unit[Any]] = []
        self.leading = False


def group_write(db: Database, work: Callable[[Tx], T]) -> T:
    """Run ``work(tx)`` in a write transaction that may be shared with other threads' units.

    Group commit (issue #11). On SQLite every commit costs an fsync
    (``synchronous=FULL``) and writers are serialised anyway, so while one
    thread commits, the units other threads submit queue up. When the
    committing thread (the leader) is done, it wakes the callers of its
    batch and hands the lead to the oldest queued unit's caller, which runs
    *every* queued unit in one ``BEGIN IMMEDIATE`` transaction — each under
    its own ``SAVEPOINT``, so a unit that raises (a fenced UPDATE finding
    the run moved) rolls back alone — then commits once. Each waiting
    caller is woken exactly once, by name: to return, or to lead (a shared
    condition woke all 32 callers of a 32-run benchmark after every batch,
    to find one leader). No unit waits for company: a lone unit commits at
    once, without savepoints, so one run at a time pays nothing. Each caller
    returns only after the transaction holding its unit is durable: what an
    acknowledgement means does not change, only how many acknowledgements
    one fsync buys.

    Units must be independent of each other (different runs): within a
    batch they run one after another on one connection, each seeing the
    previous ones' writes, so the ledger's chain stays one sequence.

    Args:
        db: the database.
        work: the unit, ``tx -> result``; it may raise, which rolls back its
            own writes only.

    Returns:
        What ``work`` returned, once its transaction committed.

    Raises:
        Whatever ``work`` raised (its writes were rolled back); the commit's
        own error (every unit of that transaction is then lost, and each
        caller gets the error); StoreError: the database is closed.
    """
    if not db.is_sqlite:
        with write_tx(db) as tx:
            return work(tx)
    db._check_open()
    db.check_writable()
    writer = _writer(db)
    group = writer.group
    unit: _Unit[T] = _Unit(work)
    with group.lock:
        group.pending.append(unit)
        waits = group.leading
        group.leading = True
    if waits:
        unit.wake.acquire()  # settled by a leader, or handed the lead
        if unit.done:
            return _settled(unit)
    # Leading: this unit is the oldest queued (a new leader finds the queue
    # empty; a handed lead goes to the queue's head), so it is in this batch.
    batch: list[_Unit[Any]] = []
    try:
        with group.lock:
            batch, group.pending[:] = group.pending[:_GROUP_MAX], group.pending[_GROUP_MAX:]
        _run_batch(db, writer, batch)
    finally:
        with group.lock:
            if not unit.done and unit in group.pending:
                group.pending.remove(unit)  # interrupted before its batch ran: its caller gets the error
            if group.pending:
                heir: _Unit[Any] | None = group.pending[0]
            else:
                heir, group.leading = None, False
        for settled in batch:
            if not settled.done:  # interrupted between taking the batch and running it
                settled.error = StoreError("the group commit holding this write was interrupted; nothing was written")
                settled.done = True
            if settled is not unit:
                settled.wake.release()
        if heir is not None:
            heir.wake.release()  # not settled: its caller leads the next batch
    return _settled(unit)


def _settled(unit: _Unit[T]) -> T:
    if unit.error is not None:
        raise unit.error
    return unit.result  # type: ignore[return-value]  # set whenever error is None


def _run_batch(db: Database, writer: _Writer, batch: list[_Unit[Any]]) -> None:
    """One transaction for ``batch``; every unit ends ``done`` with its result or error."""
    try:
        with _WriteTx(db, writer) as tx:
            raw = tx.raw
            assert raw is not None
            if len(batch) == 1:
                unit = batch[0]
                unit.result = unit.work(tx)  # alone: its error rolls back the whole transaction
            else:
                for unit in batch:
                    raw.execute("SAVEPOINT statecraft_unit")
                    try:
                        unit.result = unit.work(tx)
                    except BaseException as exc:
                        unit.error = exc
                        raw.execute("ROLLBACK TO statecraft_unit")
                    raw.execute("RELEASE statecraft_unit")
    except BaseException as exc:
        for unit in batch:
            if unit.error is None:
                unit.error, unit.result = exc, None
    finally:
        for unit in batch:
            unit.done = True


@contextmanager
def _sa_write_tx(db: Database, appends: bool = True) -> Iterator[Tx]:
    with db.write(appends=appends) as conn:
        yield Tx(sa=conn)


@contextmanager
def read_tx(db: Database, *, on_writer: bool = False) -> Iterator[Tx]:
    """A read-only unit of work: one consistent snapshot (``BEGIN`` … ``COMMIT``).

    Like :meth:`Database.read`, on the DB-API connection directly (SQLite):
    no SQLAlchemy ``Connection``, transaction events or result objects,
    which cost ~40 µs per unit of work. Other backends go through
    :meth:`Database.read`.

    Args:
        db: the database.
        on_writer: read on the writer connection (SQLite), after this
            process's write transaction in progress, if any: for a read right
            after this process's own writes, whose pages that connection
            still caches (a pooled connection would re-read each one
            another connection's commit invalidated: ~150 µs for a run).
    """
    if not db.is_sqlite:
        with db.read() as conn:
            yield tx_of(conn)
        return
    db._check_open()
    if on_writer:
        writer = _writer(db)
        with writer.lock:
            db._check_open()
            raw = writer.connection(db)
            raw.execute("BEGIN")
            try:
                yield Tx(raw=raw)
            finally:
                if raw.in_transaction:
                    raw.execute("COMMIT")  # read-only: nothing to keep or lose either way
        return
    pooled = db.sa_engine.raw_connection()
    try:
        driver = pooled.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        driver.execute("BEGIN")
        try:
            yield Tx(raw=driver)
        finally:
            if driver.in_transaction:
                driver.execute("COMMIT")
    finally:
        pooled.close()


def read_on_writer(db: Database, read: Callable[[Tx], T]) -> T:
    """Run ``read(tx)`` on the writer connection, in autocommit (each statement its own snapshot).

    Like :func:`read_one`, for a typed read of the store (``store.runs.load_run``).
    """
    if not db.is_sqlite:
        with db.read() as conn:
            return read(tx_of(conn))
    db._check_open()
    writer = _writer(db)
    with writer.lock:
        db._check_open()
        return read(Tx(raw=writer.connection(db)))


def read_one(db: Database, sql: str, params: Mapping[str, Any] | None = None) -> tuple[Any, ...] | None:
    """The first row of one read-only statement, or ``None``; read on the writer connection (SQLite).

    One statement in autocommit mode is one consistent snapshot. It waits for
    this process's write transaction in progress, if any, which a caller about
    to write (``advance`` reading a run before taking its lease) waits for anyway;
    in exchange it skips a pool checkout and a transaction (~30 µs).
    """
    if not db.is_sqlite:
        with db.read() as conn:
            return tx_of(conn).one(sql, params)
    db._check_open()
    writer = _writer(db)
    with writer.lock:
        db._check_open()
        return Tx(raw=writer.connection(db)).one(sql, params)


class _Writer:
    """The one stdlib connection a process's write transactions on one database go through.

    They are serialised by ``lock`` anyway, so one connection serves them all,
    kept out of the pool: no checkout per transaction (~20 µs of SQLAlchemy),
    and a page cache that only another connection's commit can invalidate.
    Opened by the engine's pool (same URL, same pragmas), then detached from it;
    :func:`close_writer` closes it when the :class:`Database` closes. On a
    database file, WAL checkpoints run beside it (``checkpoints``,
    store/checkpoint.py), and its own automatic checkpoint is only the bound.
    """

    __slots__ = ("checkpoints", "group", "lock", "pid", "raw")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.raw: sqlite3.Connection | None = None
        self.pid = 0
        self.group = _Group()
        self.checkpoints: checkpoint.Checkpointer | None = None

    def connection(self, db: Database) -> sqlite3.Connection:
        """The connection, opened on first use (and again in a forked child: never share one across fork)."""
        if self.raw is None or self.pid != os.getpid():
            pooled = db.sa_engine.raw_connection()
            raw = pooled.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            pooled.detach()
            if self.checkpoints is None and checkpoint.wanted(db):
                self.checkpoints = checkpoint.Checkpointer(db)
            if self.checkpoints is not None:
                raw.execute(f"PRAGMA wal_autocheckpoint = {checkpoint.WRITER_AUTOCHECKPOINT_PAGES}")
            self.raw, self.pid = raw, os.getpid()
        return self.raw

    def rollback(self) -> None:
        raw = self.raw
        if raw is None or not raw.in_transaction:
            return
        try:
            raw.execute("ROLLBACK")
        except sqlite3.Error:
            # A connection that cannot roll back is in no state to reuse.
            self.discard()

    def discard(self) -> None:
        raw, self.raw = self.raw, None
        if raw is not None and self.pid == os.getpid():
            try:
                raw.close()
            except sqlite3.Error:
                pass


_WRITERS: weakref.WeakKeyDictionary[Database, _Writer] = weakref.WeakKeyDictionary()
_WRITERS_GUARD = threading.Lock()


def _writer(db: Database) -> _Writer:
    writer = _WRITERS.get(db)
    if writer is None:
        with _WRITERS_GUARD:
            writer = _WRITERS.setdefault(db, _Writer())
    return writer


def close_writer(db: Database) -> None:
    """Stop ``db``'s checkpoint thread; close its writer connection, after the transaction in progress (if any) ends."""
    writer = _WRITERS.get(db)
    if writer is not None:
        if writer.checkpoints is not None:
            writer.checkpoints.close()
        with writer.lock:
            writer.discard()


def _begin(raw: sqlite3.Connection, url: str) -> None:
    for attempt in range(_BEGIN_TRIES):
        try:
            raw.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if "locked" not in message and "busy" not in message:
                raise
            time.sleep(min(0.005 * 2**attempt, 0.5))
    raise StoreError(f"{url}: could not get the write lock after {_BEGIN_TRIES} tries (database is locked)")
