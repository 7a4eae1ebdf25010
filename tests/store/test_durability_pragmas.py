"""The durability the docs promise is the durability in force on the connections that commit.

A mutant that forced ``PRAGMA synchronous = OFF`` survived the suite before:
nothing looked at the pragma actually in force. ``synchronous=FULL`` (2) by
default, ``NORMAL`` (1) when asked, on the process's writer connection (step
commits, group commit) and on pooled connections (operator actions), with WAL.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from statecraft import Database, Engine
from statecraft.store.txn import group_write, write_tx
from tests.support.toy import machine as toy

_LEVELS = {"FULL": 2, "NORMAL": 1}


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_every_committing_connection_runs_with_the_promised_synchronous_level(
    db_path: Path, synchronous: str
) -> None:
    with Engine(db_path, synchronous=synchronous) as engine:  # type: ignore[arg-type]
        engine.start(toy, "two words")  # step commits go through the writer connection
        seen = group_write(engine.db, lambda tx: tx.one("PRAGMA synchronous"))
        with write_tx(engine.db) as tx:
            writer = tx.one("PRAGMA synchronous")
            journal = tx.one("PRAGMA journal_mode")
        with engine.db.write() as conn:  # operator actions: a pooled connection
            pooled = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    assert seen == (_LEVELS[synchronous],)
    assert writer == (_LEVELS[synchronous],)
    assert pooled == _LEVELS[synchronous]
    assert journal == ("wal",)


def test_the_cli_honours_statecraft_synchronous(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from statecraft.cli.common import open_engine as _open

    Database(db_path).close()
    for value, level in (("NORMAL", 1), ("FULL", 2), (None, 2)):
        if value is None:
            monkeypatch.delenv("STATECRAFT_SYNCHRONOUS", raising=False)
        else:
            monkeypatch.setenv("STATECRAFT_SYNCHRONOUS", value)
        with _open(str(db_path)) as engine:
            assert group_write(engine.db, lambda tx: tx.one("PRAGMA synchronous")) == (level,)


