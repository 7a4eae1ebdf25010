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
from pydantic import BaseModel

from statecraft import Engine, Finish, Machine, NotAStatecraftDatabase, RunStatus, Step
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


def _counter_machine() -> Machine:
    class Counter(BaseModel):
        n: int = 0

    def count(state: Counter, ctx: object) -> Finish:
        return Finish(update={"n": state.n + 1})

    return Machine("counter", "1", Counter, [Step("count", count, next=[], writes=["n"], may_finish=True)])


def _sqlite_hash_indexes(path: Path) -> list[str]:
    raw = sqlite3.connect(path)
    try:
        return [r[0] for r in raw.execute("SELECT sql FROM sqlite_master WHERE name = 'audit_event'")
                if "UNIQUE (prev_hash)" in r[0] or "UNIQUE (entry_hash)" in r[0]]
    finally:
        raw.close()


def test_the_schema_1_upgrade_leaves_the_lean_ledger_with_every_row_unchanged(tmp_path: Path) -> None:
    db = _schema_1(tmp_path / "old.db")
    raw = sqlite3.connect(db)
    before = raw.execute("SELECT * FROM audit_event ORDER BY seq").fetchall()
    blobs = raw.execute("SELECT * FROM blob ORDER BY sha256").fetchall()
    raw.close()

    Engine(db).close()

    raw = sqlite3.connect(db)
    try:
        after = raw.execute("SELECT * FROM audit_event ORDER BY seq").fetchall()
        assert after[: len(before)] == before  # every value of every row, under its seq
        assert raw.execute("SELECT * FROM blob ORDER BY sha256").fetchall() == blobs
        assert "WITHOUT ROWID" in raw.execute("SELECT sql FROM sqlite_master WHERE name = 'blob'").fetchone()[0]
        assert not raw.execute("SELECT name FROM sqlite_master WHERE name LIKE '_statecraft_old_%'").fetchall()
    finally:
        raw.close()
    assert _sqlite_hash_indexes(db) == []


@pytest.mark.postgres_only
def test_a_schema_3_postgresql_database_upgrades_to_the_append_guard(backend: str, db_url: str) -> None:
    import psycopg

    machine = _counter_machine()
    with Engine(db_url) as engine:
        engine.start(machine, {"n": 1})
    search_path = db_url.rsplit("%3D", 1)[1]
    # Back to schema 3 as it was: the two hash constraints, a whole-table model
    # index, no insert guard, 0004 not recorded.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE audit_event ADD CONSTRAINT uq_audit_prev_hash UNIQUE (prev_hash)")
        conn.execute("ALTER TABLE audit_event ADD CONSTRAINT uq_audit_entry_hash UNIQUE (entry_hash)")
        conn.execute("DROP INDEX ix_audit_model_time")
        conn.execute("CREATE INDEX ix_audit_model_time ON audit_event (model_id, occurred_at)")
        conn.execute("DROP TRIGGER audit_event_no_fork ON audit_event")
        conn.execute("UPDATE statecraft_meta SET value = '3' WHERE key = 'schema_version'")
        conn.execute("DELETE FROM statecraft_migration WHERE name = '0004_leaner_ledger'")
        before = conn.execute("SELECT * FROM audit_event ORDER BY seq").fetchall()

    with Engine(db_url, machines=[machine]) as engine:
        migrated = engine.events()[-1]
        assert migrated.event_type == "ledger.migrated"
        assert [m["name"] for m in json.loads(migrated.payload_json or "{}")["applied"]] == ["0004_leaner_ledger"]
        assert engine.start(machine, {"n": 5}).state["n"] == 6  # appends pass the new guard
        assert verify_ledger(engine.db).ok

    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT * FROM audit_event ORDER BY seq").fetchall()[: len(before)] == before
        constraints = {r[0] for r in conn.execute(
            "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
            "WHERE n.nspname = %s", (search_path,))}
        assert not constraints & {"uq_audit_prev_hash", "uq_audit_entry_hash"}
        assert {"uq_audit_run_seq", "uq_audit_event_id"} <= constraints
        indexdef = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'ix_audit_model_time'",
            (search_path,),
        ).fetchone()[0]
        assert "WHERE (model_id IS NOT NULL)" in indexdef
        seq, entry_hash = conn.execute("SELECT seq, entry_hash FROM audit_event ORDER BY seq DESC LIMIT 1").fetchone()
        parent = conn.execute("SELECT entry_hash FROM audit_event WHERE seq = %s", (seq - 1,)).fetchone()[0]
        columns = "seq, ledger_id, prev_hash, entry_hash, hash_alg, schema_version, event_id, event_type, occurred_at, recorded_at, actor_type, actor_id"
        fork = "SELECT %s, ledger_id, %s, %s, hash_alg, schema_version, %s, event_type, occurred_at, recorded_at, actor_type, actor_id FROM audit_event WHERE seq = %s"
        with pytest.raises(psycopg.errors.RaiseException, match="a fork refused"):
            conn.execute(f"INSERT INTO audit_event ({columns}) {fork}", (seq + 1, parent, "f" * 64, "forged", seq))
        with pytest.raises(psycopg.errors.RaiseException, match="must take the next seq"):
            conn.execute(f"INSERT INTO audit_event ({columns}) {fork}", (seq + 2, entry_hash, "f" * 64, "forged", seq))
