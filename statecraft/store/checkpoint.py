"""WAL checkpoints off the commit path: a background thread copies the WAL back into the database file.

In WAL mode every commit appends pages to the ``-wal`` file, and a
*checkpoint* copies them back into the database file (with an fsync of each
at ``synchronous=FULL``) so the WAL can start over. By default SQLite runs
that checkpoint inside the commit that takes the WAL past 1,000 pages: about
one step commit in 70 here (a step writes ~14 pages) pays a checkpoint on
top of its own fsync, and the steps of every run queued behind it wait. That
is the slow tail of a step: on this project's 2-CPU machines, p99 step
latency 1.7-2.0 ms on disk against a median of 0.33 ms; 0.63 ms with the
checkpoints beside (bench/bench_checkpoint.py, figures in bench/README.md).

SQLite's own advice for this (https://sqlite.org/wal.html, "Automatic
Checkpoint": "an application can ... run checkpoints in a separate thread or
process") is what :class:`Checkpointer` does. After each write transaction
commits, the writer *nudges* it (one attribute read when it is already
awake); its thread then runs ``PRAGMA wal_checkpoint(PASSIVE)`` on its own
connection, which copies what it can without waiting for, or blocking, any
reader or writer. SQLite releases the GIL while it copies, so on two cores
the copy runs beside the steps instead of inside one.

What does not change: durability (a commit is durable when the WAL is
synced, as before; a checkpoint only moves committed pages, under SQLite's
own locking, with the database's ``synchronous`` setting, so power loss
during one loses nothing), and the WAL's bound: the writer's connection keeps
an automatic checkpoint, at :data:`WRITER_AUTOCHECKPOINT_PAGES` instead of
1,000, so a checkpointer that falls behind (a long reader, a stalled disk)
still cannot let the WAL grow without limit.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .db import Database

__all__ = ["WRITER_AUTOCHECKPOINT_PAGES", "Checkpointer", "wanted"]

_log = logging.getLogger("statecraft.store")

# Held by a thread while it checkpoints, and by os.fork() (at-fork hooks below):
# a child forked mid-checkpoint would inherit SQLite's internal mutexes held
# by a thread that does not exist in it, and hang on its first connection. So
# a fork waits for the checkpoint in progress (milliseconds), and none starts
# until the fork is done.
_FORK_GUARD = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_FORK_GUARD.acquire,
        after_in_parent=_FORK_GUARD.release,
        after_in_child=_FORK_GUARD.release,
    )

WRITER_AUTOCHECKPOINT_PAGES = 4000
"""The writer connection's ``wal_autocheckpoint`` (pages; 16 MiB at 4 KiB pages): the WAL's bound if the thread falls behind."""


class Checkpointer:
    """One daemon thread per SQLite database file that runs passive checkpoints after commits.

    Started on the first :meth:`nudge`, it checkpoints, then waits at least
    ``min_interval_s`` seconds before the next (commits in between are
    covered by that next one), and exits after ``idle_s`` seconds without a
    nudge, closing its connection (the next nudge starts it again): an idle
    process keeps no thread. It holds no reference to the
    :class:`~statecraft.store.db.Database` (a weak one), so an unclosed
    database can still be collected; its thread then ends at the next wake.
    In a forked child the parent's thread does not exist: the next nudge
    starts the child's own.

    Args:
        db: the database (an SQLite file, not read-only).
        min_interval_s: seconds between two checkpoints at most once.
        idle_s: seconds without a commit after which the thread exits.
    """

    def __init__(self, db: Database, *, min_interval_s: float = 0.05, idle_s: float = 30.0) -> None:
        self._db = weakref.ref(db)
        self._min_interval_s = min_interval_s
        self._idle_s = idle_s
        self._wanted = threading.Event()  # a commit happened since the last checkpoint began
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self.checkpoints = 0
        """How many checkpoints the thread ran (for tests and benchmarks)."""

    def nudge(self) -> None:
        """Note that a write transaction committed: the thread checkpoints soon. Never blocks on I/O."""
        if not self._wanted.is_set():
            self._wanted.set()
        thread = self._thread
        if thread is None or not thread.is_alive() or self._pid != os.getpid():
            self._start()

    def _start(self) -> None:
        with self._guard:
            thread = self._thread
            if thread is not None and thread.is_alive() and self._pid == os.getpid():
                return
            self._spawn()

    def _spawn(self) -> None:
        """A new thread, unless closed; ``_guard`` held."""
        if self._stop.is_set():
            self._thread = None
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="statecraft-checkpoint", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (after the checkpoint in progress, if any) and close its connection.

        Args:
            timeout_s: seconds to wait for the thread to end.
        """
        self._stop.set()
        self._wanted.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while self._wanted.wait(self._idle_s) and not self._stop.is_set():
                self._wanted.clear()
                db = self._db()
                if db is None or db._closed:
                    return
                try:
                    with _FORK_GUARD:  # everything this thread does in SQLite
                        if conn is None:
                            conn = _connect(db)
                        del db
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    # Another process's checkpoint in progress, or a disk error the
                    # next commit will also meet: the writer's own bound still holds.
                    _log.debug("background checkpoint skipped: %s", exc)
                except Exception:  # noqa: BLE001 - a thread's error reaches nobody; say it, go on
                    _log.warning("background checkpoint failed; the writer's own checkpoints still bound the WAL", exc_info=True)
                if self._stop.wait(self._min_interval_s):
                    return
        finally:
            if conn is not None:
                with _FORK_GUARD:
                    conn.close()
            with self._guard:
                if self._thread is threading.current_thread():
                    # A nudge that came as this thread was leaving found it
                    # still alive and started none: start one for it.
                    if self._wanted.is_set():
                        self._spawn()
                    else:
                        self._thread = None


def _connect(db: Database) -> sqlite3.Connection:
    """A stdlib connection of the database's own pool settings (WAL, its ``synchronous``), out of the pool."""
    pooled = db.sa_engine.raw_connection()
    raw = pooled.driver_connection
    assert isinstance(raw, sqlite3.Connection)
    pooled.detach()
    return raw


def wanted(db: Database) -> bool:
    """Whether ``db`` gets a :class:`Checkpointer`: a writable SQLite file (``Database`` refuses in-memory ones)."""
    return db.is_sqlite and not db.read_only
