"""WAL checkpoints run on a background thread, beside the commits (statecraft/store/checkpoint.py).

What must hold: committed pages reach the database file without any commit
running a checkpoint; the WAL stays bounded when the thread cannot keep up;
closing the database, or a quiet spell, ends the thread; a database that has
no WAL (in memory) or is never written gets none.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from statecraft import Database, Engine
from statecraft.store import checkpoint
from statecraft.store.txn import _writer, write_tx

PAGE = 4096


def _write(db: Database, commits: int, tag: str, body_bytes: int = 3 * PAGE) -> None:
    """``commits`` write transactions of one new blob each (about ``body_bytes`` of new pages)."""
    for i in range(commits):
        with write_tx(db) as tx:
            tx.run(
                "INSERT INTO blob (sha256, body, size, media_type, created_at) "
                "VALUES (:s, :b, :n, 'application/octet-stream', '2026-12-04T00:00:00.000000Z')",
                {"s": f"{tag}{i:060d}", "b": os.urandom(body_bytes), "n": body_bytes},
            )


def _shipped_thread_stopped(db: Database) -> Any:
    """Commit once (which opens the writer), stop the checkpointer it came with; return the writer."""
    _write(db, 1, "warm")
    writer = _writer(db)
    assert writer.checkpoints is not None
    writer.checkpoints.close()
    return writer


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "statecraft-checkpoint" and t.is_alive()]


def _wait_for(condition: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_committed_pages_reach_the_database_file_without_a_commit_checkpointing(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    db = Database(path)
    try:
        _write(db, 1, "warm")
        before = path.stat().st_size
        # ~200 commits of ~4 pages: far below the writer's own automatic
        # checkpoint (4,000 pages) and SQLite's default (1,000), so only the
        # thread can have copied them into the database file.
        _write(db, 200, "a")
        writer = _writer(db)
        assert writer.checkpoints is not None
        assert _wait_for(lambda: path.stat().st_size >= before + 200 * 3 * PAGE), (
            f"database file {path.stat().st_size} bytes, was {before}: the WAL was not copied back"
        )
        assert writer.checkpoints.checkpoints >= 1
        assert writer.raw is not None
        assert writer.raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == checkpoint.WRITER_AUTOCHECKPOINT_PAGES
        # Everything committed is there, read from the file by another connection.
        other = sqlite3.connect(path)
        try:
            assert other.execute("SELECT COUNT(*) FROM blob WHERE sha256 LIKE 'a%'").fetchone()[0] == 200
            assert other.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            other.close()
    finally:
        db.close()


def test_the_wal_stays_bounded_when_the_thread_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    db = Database(path)
    try:
        writer = _shipped_thread_stopped(db)  # as if it could not keep up at all
        assert _wait_for(lambda: not _checkpoint_threads())
        # ~5,500 pages of commits: past the writer's bound of 4,000 pages, where
        # its own automatic checkpoint copies the WAL back and lets it restart.
        _write(db, 1_400, "b")
        wal_pages = os.path.getsize(f"{path}-wal") // (PAGE + 24)
        assert wal_pages <= checkpoint.WRITER_AUTOCHECKPOINT_PAGES + 16, wal_pages
        assert writer.checkpoints.checkpoints <= 1  # the thread did not do it
    finally:
        db.close()


def test_closing_the_database_ends_the_thread(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "e.db")
    before = set(_checkpoint_threads())
    _write(engine.db, 3, "e")
    assert _wait_for(lambda: set(_checkpoint_threads()) - before)
    engine.close()
    assert _wait_for(lambda: not (set(_checkpoint_threads()) - before), 5.0)


def test_a_quiet_thread_exits_and_the_next_commit_starts_another(tmp_path: Path) -> None:
    db = Database(tmp_path / "q.db")
    try:
        writer = _shipped_thread_stopped(db)
        quick = checkpoint.Checkpointer(db, min_interval_s=0.0, idle_s=0.2)
        writer.checkpoints = quick
        _write(db, 2, "q")
        assert _wait_for(lambda: quick.checkpoints >= 1)
        assert _wait_for(lambda: quick._thread is None, 5.0), "an idle thread should exit"
        ran = quick.checkpoints
        _write(db, 2, "r")
        assert _wait_for(lambda: quick.checkpoints > ran), "a commit after a quiet spell starts the thread again"
    finally:
        db.close()


@pytest.mark.parametrize(
    ("is_sqlite", "read_only", "wanted"), [(False, False, False), (True, True, False), (True, False, True)],
)
def test_only_a_writable_sqlite_file_gets_a_thread(is_sqlite: bool, read_only: bool, wanted: bool) -> None:
    # PostgreSQL checkpoints by itself; a read-only file is never written. (An
    # in-memory SQLite database, which has no WAL, is refused by Database itself.)
    assert checkpoint.wanted(SimpleNamespace(is_sqlite=is_sqlite, read_only=read_only)) is wanted  # type: ignore[arg-type]


def test_a_read_only_database_starts_no_thread(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    Database(path).close()
    before = set(_checkpoint_threads())
    reader = Database(path, read_only=True)
    try:
        assert reader.read_only
        assert Engine(reader).list() == []  # reads, and nothing to copy back
    finally:
        reader.close()
    assert not (set(_checkpoint_threads()) - before)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_while_the_thread_works_leaves_the_child_able_to_write(tmp_path: Path) -> None:
    # A child forked while the thread is opening its connection or
    # checkpointing would inherit locks (the connection pool's, SQLite's
    # mutexes) held by a thread it does not have, and hang on its first
    # connection; the fork waits for the thread instead. Forking right after
    # a database's first commit lands on the thread opening its connection.
    import signal

    for round_ in range(6):
        db = Database(tmp_path / f"f{round_}.db")
        try:
            _write(db, 1 + round_ * 10, "parent-")
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports through its exit status
                try:
                    signal.alarm(10)  # a hung child dies (SIGALRM) instead of hanging the test
                    _write(db, 2, "child-")
                    os._exit(0)
                except BaseException:  # noqa: BLE001 - anything at all must end the child
                    os._exit(2)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, f"round {round_}: the child ended with status {status}"
            with write_tx(db) as tx:
                assert tx.one("SELECT COUNT(*) FROM blob WHERE sha256 LIKE 'child-%'") == (2,)
        finally:
            db.close()


def test_a_nudge_as_the_idle_thread_leaves_is_not_lost(tmp_path: Path) -> None:
    db = Database(tmp_path / "n.db")
    try:
        writer = _shipped_thread_stopped(db)
        late = checkpoint.Checkpointer(db, min_interval_s=0.0, idle_s=0.05)
        real_wait, calls = late._wanted.wait, []

        def wait(timeout: float | None = None) -> bool:
            calls.append(timeout)
            if len(calls) == 1:
                # The idle wait times out, and a commit's nudge lands just then:
                # it finds the thread alive, so it starts none.
                late._wanted.set()
                return False
            return real_wait(timeout)

        late._wanted.wait = wait  # type: ignore[method-assign]
        writer.checkpoints = late
        late._start()
        assert _wait_for(lambda: late.checkpoints >= 1), "the nudge was lost with the leaving thread"
    finally:
        db.close()
