"""Named schema migrations: a schema-1 database made by an earlier main upgrades, verifies and runs on.

``tests/fixtures/schema_v1.sql.gz`` is the ``iterdump`` of a database made by
main at commit c733eae (schema 1, before migrations were recorded), with runs
of ``tests/fixtures/schema1_machine.py``: one DONE without a gate, one
approved, one rejected whose denial was lawfully redacted, one left
WAITING_FOR_APPROVAL.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest

from statecraft import Engine, NotAStatecraftDatabase, RunStatus
from statecraft.audit.verify import verify_ledger
from statecraft.loader import load_machine
from statecraft.store.migrations import MIGRATIONS, SCHEMA_VERSION
from tests.conftest import Cli

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
WAITING = "bc946874-506e-49e5-b3fa-2e8928243f33"
WAITING_DIGEST = "290e84742c0f86c33c0bd6d4ef219c1af0e44ffea01d963a0e7d1927040cf535"


def _schema_1(path: Path) -> Path:
    raw = sqlite3.connect(path)
    with gzip.open(FIXTURES / "schema_v1.sql.gz", "rt", encoding="utf-8") as dump:
        raw.executescript(dump.read())
    raw.close()
    return path


def _meta(path: Path) -> dict[str, str]:
    raw = sqlite3.connect(path)
    try:
        return dict(raw.execute("SELECT key, value FROM statecraft_meta").fetchall())
    finally:
        raw.close()


def test_a_schema_1_database_upgrades_verifies_and_its_waiting_run_continues(tmp_path: Path) -> None:
    db = _schema_1(tmp_path / "old.db")
    assert _meta(db)["schema_version"] == "1"
    machine = load_machine(str(FIXTURES / "schema1_machine.py"))

    with Engine(db, machines=[machine]) as engine:
        events = engine.events()
        migrated = events[-1]
        assert migrated.event_type == "ledger.migrated" and migrated.run_id is None
        payload = json.loads(migrated.payload_json or "{}")
        assert payload["from_version"] == 1 and payload["to_version"] == SCHEMA_VERSION
        assert [m["name"] for m in payload["applied"]] == [m.name for m in MIGRATIONS[1:]]
        report = verify_ledger(engine.db)
        assert report.ok, report
        assert report.redactions  # the lawful redaction made under schema 1 still verifies

        waiting = engine.get(WAITING)
        assert waiting.status is RunStatus.WAITING_FOR_APPROVAL
        done = engine.approve(WAITING, by="alice@example.com", digest=WAITING_DIGEST, comment="ok after upgrade")
        assert done.status is RunStatus.DONE and done.state["refunded"] is True
        assert verify_ledger(engine.db).ok
    assert _meta(db)["schema_version"] == str(SCHEMA_VERSION)
    raw = sqlite3.connect(db)
    recorded = [r[0] for r in raw.execute("SELECT name FROM statecraft_migration ORDER BY name")]
    raw.close()
    assert recorded == [m.name for m in MIGRATIONS]

    # Opening again applies nothing more and writes nothing.
    with Engine(db) as engine:
        head = engine.events()[-1].seq
    with Engine(db) as engine:
        assert engine.events()[-1].seq == head


def test_a_fresh_database_is_created_at_the_newest_schema_with_every_migration_recorded(tmp_path: Path) -> None:
    with Engine(tmp_path / "new.db") as engine:
        assert [e.event_type for e in engine.events()] == ["ledger.genesis"]
    assert _meta(tmp_path / "new.db")["schema_version"] == str(SCHEMA_VERSION)
    raw = sqlite3.connect(tmp_path / "new.db")
    assert [r[0] for r in raw.execute("SELECT name FROM statecraft_migration ORDER BY name")] == [
        m.name for m in MIGRATIONS
    ]
    raw.close()


def _schema_of(path: Path) -> set[tuple[str, str]]:
    raw = sqlite3.connect(path)
    try:
        return {
            (kind, " ".join((sql or "").split()))
            for kind, sql in raw.execute(
                "SELECT type, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND sql IS NOT NULL"
            )
        }
    finally:
        raw.close()


def test_an_upgraded_database_has_the_schema_of_a_new_one(tmp_path: Path) -> None:
    old = _schema_1(tmp_path / "old.db")
    Engine(old).close()
    Engine(tmp_path / "new.db").close()
    assert _schema_of(old) == _schema_of(tmp_path / "new.db")


def test_a_database_of_a_newer_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    Engine(db).close()
    raw = sqlite3.connect(db)
    raw.execute("UPDATE statecraft_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    raw.commit()
    raw.close()
    with pytest.raises(NotAStatecraftDatabase, match="newer than this statecraft knows"):
        Engine(db)
    result = Cli(db)("list")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "upgrade statecraft" in result.stderr


def test_a_read_only_copy_of_an_old_database_is_read_without_upgrading(tmp_path: Path) -> None:
    db = _schema_1(tmp_path / "old.db")
    before = db.read_bytes()
    with Engine(f"file:{db}?mode=ro") as engine:
        assert verify_ledger(engine.db).ok
        assert len(engine.list()) == 4
    assert db.read_bytes() == before
    assert _meta(db)["schema_version"] == "1"
