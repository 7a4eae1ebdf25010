"""The control tables (rate limits, breakers, prompt digests, sessions) exist in new and older databases."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from statecraft.agents.limits import RateLimit, reserve
from statecraft.store.breakers import read_breaker
from statecraft.store.db import Database
from statecraft.store.prompts import digests_seen, remember_digest
from statecraft.store.sessions import load_session, write_entry

CONTROL = {"rate_limit_bucket", "circuit_breaker", "prompt_digest", "session_entry"}


def _tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_a_new_database_has_the_control_tables(db_path: Path) -> None:
    Database(db_path).close()

    assert CONTROL <= _tables(db_path)


def test_a_schema_2_database_gets_them_by_the_named_migration(db_path: Path) -> None:
    import json

    from statecraft import Engine
    from statecraft.audit.verify import verify_ledger

    Database(db_path).close()
    conn = sqlite3.connect(db_path)  # as a statecraft of schema 2 left it
    for table in CONTROL:
        conn.execute(f"DROP TABLE {table}")
    conn.execute("DELETE FROM statecraft_migration WHERE name = '0003_model_controls'")
    conn.execute("UPDATE statecraft_meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()

    with Engine(db_path) as engine:
        migrated = engine.events()[-1]
        assert read_breaker(engine.db, "anthropic:x") is None
        assert reserve(RateLimit(requests_per_minute=60, key="k"), "k", 0, engine.db).wait_us == 0
        assert verify_ledger(engine.db).ok

    assert CONTROL <= _tables(db_path)
    assert migrated.event_type == "ledger.migrated"
    assert [m["name"] for m in json.loads(migrated.payload_json or "{}")["applied"]] == ["0003_model_controls"]


def test_prompt_digests_are_remembered_once_per_agent_and_version(db_path: Path) -> None:
    with Database(db_path) as db:
        remember_digest(db, "triage", "v1", "a" * 64, "2025-01-01T00:00:00.000000Z", "r1")
        remember_digest(db, "triage", "v1", "a" * 64, "2025-01-02T00:00:00.000000Z", "r2")
        seen = remember_digest(db, "triage", "v1", "b" * 64, "2025-01-03T00:00:00.000000Z", "r3")

        assert [(s.prompt_digest[0], s.first_run_id) for s in seen] == [("a", "r1"), ("b", "r3")]
        assert digests_seen(db, "triage", "v2") == []


def test_session_entries_take_the_next_seq_and_a_key_rewrites_its_own(db_path: Path) -> None:
    now = "2025-01-01T00:00:00.000000Z"
    with Database(db_path) as db:
        one = write_entry(db, session_id="s", kind="exchange", entry_key="k1", created_at=now, user_text="a")
        two = write_entry(db, session_id="s", kind="exchange", entry_key="k2", created_at=now, user_text="b")
        again = write_entry(db, session_id="s", kind="exchange", entry_key="k1", created_at=now, user_text="a2")
        write_entry(db, session_id="s", kind="summary", entry_key="k3", created_at=now, summary_text="sum",
                    covers_through=1)
        summary, exchanges = load_session(db, "s")

    assert (one, two, again) == (1, 2, 1)
    assert summary is not None and summary.summary_text == "sum"
    assert [(e.seq, e.user_text) for e in exchanges] == [(2, "b")]
