"""A ledger copy on read-only media can be listed, shown and verified; changes are refused in one line.

Reproduction (issue #8): on a 444 file in a 555 folder every command failed
with "attempt to write a readonly database" (or "unable to open database
file"). Tests run as root, whom file modes do not stop, so the read-only
media here is the real thing for root too: ``chattr +i`` on the copy and its
folder (the kernel then refuses every write, root's included). Where
``chattr`` cannot be used (another file system) that test is skipped, saying
so; the ``file:…?mode=ro`` tests run everywhere.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from statecraft import Database, Engine, StoreError
from tests.conftest import REPO, Cli
from tests.support.toy import machine as toy

TOY = str(REPO / "tests" / "support" / "toy.py")


def _ledger_with_a_waiting_run(path: Path) -> str:
    with Engine(path) as engine:
        engine.start(toy, "two words", ref=TOY)
        waiting = engine.start(toy, "one two three four five", ref=TOY)
    # A quiet copy: everything checkpointed into the main file.
    import sqlite3

    raw = sqlite3.connect(path)
    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw.close()
    return waiting.run_id


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def immutable_copy(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    source = tmp_path / "live.db"
    run_id = _ledger_with_a_waiting_run(source)
    folder = tmp_path / "media"
    folder.mkdir()
    shutil.copy(source, folder / "ledger.db")
    (folder / "ledger.db").chmod(0o444)
    folder.chmod(0o555)
    locked = subprocess.run(["chattr", "+i", str(folder / "ledger.db"), str(folder)], capture_output=True)
    if locked.returncode != 0:
        folder.chmod(0o755)
        pytest.skip(f"chattr +i is not available here ({locked.stderr.decode().strip()}): no read-only media to test on")
    try:
        yield folder / "ledger.db", run_id
    finally:
        subprocess.run(["chattr", "-i", str(folder), str(folder / "ledger.db")], check=False)
        folder.chmod(0o755)


def test_a_copy_on_read_only_media_can_be_listed_shown_and_verified(immutable_copy: tuple[Path, str]) -> None:
    db, run_id = immutable_copy
    before = _digest(db.parent)
    cli = Cli(db)
    for command in (("list",), ("status", run_id), ("audit", "log"), ("audit", "show", run_id), ("audit", "verify")):
        result = cli(*command)
        assert result.exit_code == 0, (command, result.output)
    assert cli("audit", "verify").stdout.startswith("OK up to seq")
    refused = cli("cancel", run_id, "--by", "ops@example.com", "--reason", "cleanup")
    assert refused.exit_code == 1
    assert refused.stderr.count("\n") == 1 and "read-only" in refused.stderr
    assert _digest(db.parent) == before  # not a byte written, no -wal or -shm created


def test_mode_ro_opens_read_only_and_refuses_every_change(tmp_path: Path) -> None:
    path = tmp_path / "live.db"
    run_id = _ledger_with_a_waiting_run(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with Engine(Database(f"file:{path}?mode=ro", create=False)) as engine:
        assert engine.db.read_only
        assert engine.get(run_id).status.value == "WAITING_FOR_APPROVAL"
        with pytest.raises(StoreError, match="read-only"):
            engine.approve(run_id, by="alice@example.com")
        with pytest.raises(StoreError, match="read-only"):
            engine.cancel(run_id, by="ops@example.com", reason="cleanup")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    verified = Cli(tmp_path / "unused.db")
    result = verified.runner.invoke(
        __import__("statecraft.cli", fromlist=["main"]).main,
        ["audit", "verify", "--db", f"file:{path}?mode=ro"],
    )
    assert result.exit_code == 0 and result.stdout.startswith("OK"), result.output
