"""Named schema migrations, recorded in the database and in the ledger.

Why our own small runner rather than Alembic: statecraft is embedded in other
people's services, often with one SQLite file and no migration tooling, so
upgrading must happen by itself when a newer statecraft opens an older
database, in one transaction, with nothing to configure. And the audit table
is hash-covered: a migration may add columns, tables, indexes or views, or
rebuild a table by copying every row with every value unchanged (SQLite
cannot drop a constraint otherwise: ``0004_leaner_ledger``), but must never
rewrite an existing audit row (each row's ``schema_version``
column names the columns its hash covers, so old rows keep verifying). That
is the shape of sqlite-utils' ``migrations`` (named functions applied in
order, recorded in a table), which we follow; the DDL itself goes through
SQLAlchemy (``MetaData.create_all`` with the declared tables, or plain DDL
where both dialects accept it), so SQLite and PostgreSQL migrate alike.

How it runs (:func:`upgrade`, called by ``Database`` when it opens a
database for writing):

1. in one write transaction (``BEGIN IMMEDIATE`` on SQLite: two processes
   opening the same old file cannot both upgrade it), read the schema
   version and the migrations recorded in ``statecraft_migration``;
2. apply every migration not yet recorded, in order, each one recorded with
   its time;
3. set ``statecraft_meta.schema_version`` and append one ``ledger.migrated``
   event naming the migrations applied and the versions before and after
   (a reviewer sees when the schema changed, and by which statecraft);
4. commit: either every pending migration is applied, or none.

A new database is created at the newest schema (the declared tables) with
every migration recorded as applied. A database whose schema version is
newer than this statecraft knows is refused, in one line, before anything
is read or written. Databases from before this module existed (schema 1,
no ``statecraft_migration`` table) count as having ``0001_initial``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, inspect, text

__all__ = ["MIGRATIONS", "Migration", "SCHEMA_VERSION", "applied", "record_all", "upgrade"]


@dataclass(frozen=True)
class Migration:
    """One named schema change.

    Attributes:
        name: ``NNNN_what``; recorded in ``statecraft_migration`` when applied.
        version: the schema version once it is applied.
        description: one line, for ``ledger.migrated`` and the docs.
        apply: ``(connection) -> None``, inside the upgrade's transaction; it
            may add tables, columns, indexes, views and triggers, and rebuild
            a table copying its rows unchanged; it must never change an
            existing ``audit_event`` row's values.
    """

    name: str
    version: int
    description: str
    apply: Callable[[Connection], None]


def _initial(conn: Connection) -> None:
    """Schema 1: created by ``Database`` before migrations were recorded; nothing to do."""


def _migration_table(conn: Connection) -> None:
    from . import tables

    tables.MigrationRow.__table__.create(conn, checkfirst=True)  # type: ignore[attr-defined]


def _model_controls(conn: Connection) -> None:
    from . import tables

    for table in tables.CONTROL_TABLES:
        table.__table__.create(conn, checkfirst=True)  # type: ignore[union-attr]


def _leaner_ledger(conn: Connection) -> None:
    """Schema 4: fewer B-trees touched per event (issue #11, bench/README.md "hot path").

    - ``audit_event`` loses ``UNIQUE(prev_hash)`` and ``UNIQUE(entry_hash)``:
      the ``audit_event_no_replace`` guard (PostgreSQL: ``audit_event_no_fork``)
      now makes every insert take the next seq and chain onto the entry_hash
      at seq - 1, which refuses a fork outright;
    - ``ix_audit_model_time`` covers only events with a model (a
      ``model_id = ?`` query still uses it);
    - SQLite: ``blob`` is ``WITHOUT ROWID`` (the hash is the row's key).

    SQLite cannot drop a table constraint, so ``audit_event`` and ``blob``
    are rebuilt: renamed aside, created anew from the declared tables (so an
    upgraded schema is a new one's, text for text), every row copied with
    every value unchanged, the old tables dropped. No audit row is rewritten:
    the same values under the same seq, so every entry hash still holds
    (``audit verify`` after the upgrade says so). It costs one copy of both
    tables, once, inside the upgrade's transaction.
    """
    from . import tables
    from .db import guard_ddl

    audit = tables.AuditEventRow.__table__  # type: ignore[attr-defined]
    blob = tables.BlobRow.__table__  # type: ignore[attr-defined]
    if conn.dialect.name != "sqlite":
        for constraint in ("uq_audit_prev_hash", "uq_audit_entry_hash"):
            conn.exec_driver_sql(f"ALTER TABLE audit_event DROP CONSTRAINT IF EXISTS {constraint}")
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_audit_model_time")
        for index in audit.indexes:
            if index.name == "ix_audit_model_time":
                index.create(conn)
        for ddl in guard_ddl(sqlite=False):
            if ddl.startswith("CREATE OR REPLACE FUNCTION") or "TRIGGER audit_event_no_fork " in ddl:
                conn.exec_driver_sql(ddl)
        return
    # Whatever refers to the two tables goes first (a rename re-parses the schema).
    conn.exec_driver_sql("DROP VIEW IF EXISTS checkpoint")
    for name in [r[0] for r in conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name IN ('audit_event', 'blob')"
    )]:
        conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
    for index in audit.indexes:  # the old table's carry the same names
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index.name}")
    for table, order in ((audit, "seq"), (blob, "sha256")):
        old = f"_statecraft_old_{table.name}"
        conn.exec_driver_sql(f"ALTER TABLE {table.name} RENAME TO {old}")
        table.create(conn)  # with its indexes
        present = {r[1] for r in conn.exec_driver_sql(f"PRAGMA table_info({old})")}
        columns = ", ".join(c.name for c in table.columns if c.name in present)
        conn.exec_driver_sql(
            f"INSERT INTO {table.name} ({columns}) SELECT {columns} FROM {old} ORDER BY {order}"
        )
        conn.exec_driver_sql(f"DROP TABLE {old}")
    conn.exec_driver_sql(tables.CHECKPOINT_VIEW)
    for ddl in guard_ddl(sqlite=True):
        conn.exec_driver_sql(ddl)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration("0001_initial", 1, "runs, blobs, side effects, the audit ledger, checkpoint view, guard triggers", _initial),
    Migration("0002_migration_table", 2, "statecraft_migration records the migrations applied", _migration_table),
    Migration(
        "0003_model_controls", 3,
        "rate_limit_bucket, circuit_breaker, prompt_digest, session_entry: the controls in front of a model",
        _model_controls,
    ),
    Migration(
        "0004_leaner_ledger", 4,
        "audit_event without UNIQUE(prev_hash)/UNIQUE(entry_hash) (the append guard checks the chain link), "
        "ix_audit_model_time partial, blob WITHOUT ROWID (SQLite)",
        _leaner_ledger,
    ),
)
"""Every migration, in order. Append only: never edit or reorder a released one."""

SCHEMA_VERSION: Final[int] = MIGRATIONS[-1].version
"""The schema version this statecraft creates and upgrades to."""


def applied(conn: Connection) -> list[str]:
    """Names of the migrations recorded in the database (``0001_initial`` for a schema-1 database)."""
    if not inspect(conn).has_table("statecraft_migration"):
        return ["0001_initial"]
    return [str(r[0]) for r in conn.execute(text("SELECT name FROM statecraft_migration ORDER BY name"))]


def record_all(conn: Connection, now: str) -> None:
    """Record every migration as applied (a new database, created at the newest schema)."""
    conn.execute(
        text("INSERT INTO statecraft_migration (name, applied_at) VALUES (:n, :t)"),
        [{"n": m.name, "t": now} for m in MIGRATIONS],
    )


def upgrade(conn: Connection, *, ledger_id: str, now: str, from_version: int) -> list[str]:
    """Apply the pending migrations inside the caller's write transaction; the names applied.

    Args:
        conn: a connection in an open write transaction (the caller commits).
        ledger_id: the ledger's id, for the ``ledger.migrated`` event.
        now: the time to record (UTC, stored form).
        from_version: the schema version read before upgrading.

    Returns:
        The names of the migrations applied (empty: nothing to do, nothing written).
    """
    from ..audit.chain import append_event

    recorded = inspect(conn).has_table("statecraft_migration")
    done = set(applied(conn))
    pending = [m for m in MIGRATIONS if m.name not in done]
    if not pending:
        return []
    for migration in pending:
        migration.apply(conn)
    # A schema-1 database had no table to record 0001 in: record it now, with the rest.
    new = [m for m in MIGRATIONS if m in pending or (not recorded and m.name in done)]
    rows: list[dict[str, Any]] = [{"n": m.name, "t": now} for m in new]
    conn.execute(text("INSERT INTO statecraft_migration (name, applied_at) VALUES (:n, :t)"), rows)
    conn.execute(
        text("UPDATE statecraft_meta SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION)}
    )
    append_event(
        conn,
        ledger_id=ledger_id,
        fields={
            "event_type": "ledger.migrated",
            "actor_type": "system",
            "actor_id": "statecraft",
            "occurred_at": now,
            "decision": "migrate",
            "outcome": "success",
            "reason": f"schema {from_version} -> {SCHEMA_VERSION}: " + ", ".join(m.name for m in pending),
        },
        payload={
            "from_version": from_version,
            "to_version": SCHEMA_VERSION,
            "applied": [{"name": m.name, "description": m.description} for m in pending],
        },
    )
    return [m.name for m in pending]
