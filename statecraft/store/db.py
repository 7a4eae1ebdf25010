"""Opening a statecraft database: engine, pragmas, schema, triggers, genesis.

SQLite is the embedded default (stdlib driver, WAL). Every write is one short
explicit transaction begun with ``BEGIN IMMEDIATE``, so the write lock is
taken up front: reading the ledger head and appending cannot interleave with
another writer, and lock waits happen at BEGIN (where ``busy_timeout``
applies) rather than as a mid-transaction "database is locked".
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DatabaseError, OperationalError

from .._time import format_utc, utc_now
from ..errors import NotAStatecraftDatabase, StoreError
from .migrations import SCHEMA_VERSION

__all__ = ["DEFAULT_DB", "GUARD_TRIGGERS", "Database", "Synchronous", "database_url", "guard_ddl", "sqlite_path"]

DEFAULT_DB = "statecraft.db"
"""Default database file, in the working directory (overridable: ``--db``, ``STATECRAFT_DB``)."""

Synchronous = Literal["FULL", "NORMAL"]

GUARD_TRIGGERS: dict[str, str] = {
    "audit_event_no_delete": "DELETE",
    "audit_event_no_update": "UPDATE of hashed columns",
    "audit_event_no_replace": "INSERT OR REPLACE, or an insert that does not append to the chain",
    "audit_event_payload_redaction_only": "payload changes other than lawful redaction",
}
"""The ledger's guard triggers (SQLite) and what each refuses; ``audit verify`` reports a missing one."""

_TRIGGERS = (
    # Guard rails against mistakes, not evidence: whoever can write the file can
    # drop a trigger (AUDIT.md). Evidence is the hash chain plus anchors.
    """CREATE TRIGGER IF NOT EXISTS audit_event_no_delete
       BEFORE DELETE ON audit_event
       BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: DELETE refused'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_event_no_update
       BEFORE UPDATE OF {hashed} ON audit_event
       BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: UPDATE refused'); END""",
    # An insert must append: take the next seq and chain onto the entry_hash
    # at seq - 1 (the genesis onto 64 zeros). So no insert forks the chain or
    # lands in the middle, and INSERT OR REPLACE (and REPLACE INTO), which
    # would delete the row it collides with (SQLite fires DELETE triggers for
    # that only under PRAGMA recursive_triggers, which a stdlib sqlite3 prompt
    # leaves off), finds nothing to collide with on seq; event_id and
    # (run_id, run_seq) are probed through their unique indexes. Reads the
    # table's last page and two index probes, no hash index (issue #11).
    """CREATE TRIGGER IF NOT EXISTS audit_event_no_replace
       BEFORE INSERT ON audit_event
       BEGIN SELECT CASE
           WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_event)
           THEN RAISE(ABORT, 'audit_event is append-only: an event must take the next seq (REPLACE and inserts in the middle refused)')
           WHEN NEW.prev_hash IS NOT COALESCE((SELECT entry_hash FROM audit_event WHERE seq = NEW.seq - 1), '{genesis}')
           THEN RAISE(ABORT, 'audit_event is append-only: prev_hash must be the entry_hash of the event before it (a fork refused)')
           WHEN EXISTS (SELECT 1 FROM audit_event WHERE event_id = NEW.event_id)
             OR EXISTS (SELECT 1 FROM audit_event
                        WHERE run_id = NEW.run_id AND run_seq = NEW.run_seq)
           THEN RAISE(ABORT, 'audit_event is append-only: event_id or run_seq taken (REPLACE refused)')
       END; END""",
    # The one permitted change: clearing a payload that a payload.redacted event
    # authorises (lawful redaction keeps the chain intact via payload_sha256).
    """CREATE TRIGGER IF NOT EXISTS audit_event_payload_redaction_only
       BEFORE UPDATE OF payload_json ON audit_event
       WHEN NEW.payload_json IS NOT NULL OR NOT EXISTS (
           SELECT 1 FROM audit_event r
           WHERE r.event_type = 'payload.redacted' AND r.caused_by_event_id = OLD.event_id)
       BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: payload may only be redacted'); END""",
)


def guard_ddl(*, sqlite: bool) -> list[str]:
    """The ledger's guard triggers (and PostgreSQL's function and grants), as DDL to run in order.

    Used when a schema is created and by migrations that rebuild ``audit_event``.
    """
    from ..audit.chain import GENESIS_PREV_HASH, HASHED_COLUMNS

    hashed = ", ".join(HASHED_COLUMNS + ("entry_hash",))
    return [
        ddl.replace("{hashed}", hashed).replace("{genesis}", GENESIS_PREV_HASH)
        for ddl in (_TRIGGERS if sqlite else _POSTGRES_GUARDS)
    ]


# PostgreSQL: the same guard rails, in PL/pgSQL; TRUNCATE refused too, and the
# privileges to change rows revoked from PUBLIC (the table's owner keeps them:
# guard rails, not evidence — the chain and anchors are the evidence).
_POSTGRES_GUARDS = (
    """CREATE OR REPLACE FUNCTION statecraft_audit_event_guard() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            -- Append only: the next seq, chained onto the entry_hash at seq - 1.
            IF NEW.seq IS DISTINCT FROM (SELECT COALESCE(MAX(seq), 0) + 1 FROM audit_event) THEN
                RAISE EXCEPTION 'audit_event is append-only: an event must take the next seq';
            END IF;
            IF NEW.prev_hash IS DISTINCT FROM COALESCE(
                (SELECT entry_hash FROM audit_event WHERE seq = NEW.seq - 1), '{genesis}') THEN
                RAISE EXCEPTION 'audit_event is append-only: prev_hash must be the entry_hash of the event before it (a fork refused)';
            END IF;
            RETURN NEW;
        ELSIF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'audit_event is append-only: DELETE refused';
        ELSIF TG_OP = 'TRUNCATE' THEN
            RAISE EXCEPTION 'audit_event is append-only: TRUNCATE refused';
        END IF;
        -- UPDATE: the one permitted change is clearing a payload that a
        -- payload.redacted event authorises (the chain binds it by payload_sha256).
        IF (to_jsonb(NEW) - 'payload_json') IS DISTINCT FROM (to_jsonb(OLD) - 'payload_json') THEN
            RAISE EXCEPTION 'audit_event is append-only: UPDATE refused';
        END IF;
        IF NEW.payload_json IS DISTINCT FROM OLD.payload_json AND (
            NEW.payload_json IS NOT NULL OR NOT EXISTS (
                SELECT 1 FROM audit_event r
                WHERE r.event_type = 'payload.redacted' AND r.caused_by_event_id = OLD.event_id)
        ) THEN
            RAISE EXCEPTION 'audit_event is append-only: payload may only be redacted';
        END IF;
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER audit_event_no_fork BEFORE INSERT ON audit_event "
    "FOR EACH ROW EXECUTE FUNCTION statecraft_audit_event_guard()",
    "CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event "
    "FOR EACH ROW EXECUTE FUNCTION statecraft_audit_event_guard()",
    "CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event "
    "FOR EACH ROW EXECUTE FUNCTION statecraft_audit_event_guard()",
    "CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event "
    "FOR EACH STATEMENT EXECUTE FUNCTION statecraft_audit_event_guard()",
    "REVOKE UPDATE, DELETE, TRUNCATE ON audit_event FROM PUBLIC",
)


def database_url(db: str | os.PathLike[str] | None) -> str:
    """Turn a path, SQLAlchemy URL or ``None`` into a SQLAlchemy URL.

    ``None`` means ``$STATECRAFT_DB`` if set, else ``statecraft.db`` in the
    working directory.
    """
    if db is None:
        db = os.environ.get("STATECRAFT_DB") or DEFAULT_DB
    db = os.fspath(db)
    scheme = db.split("://", 1)[0] if "://" in db else ""
    if scheme in ("postgresql", "postgres"):
        # psycopg 3 (the ``postgres`` extra), not SQLAlchemy's default psycopg2.
        return "postgresql+psycopg://" + db.split("://", 1)[1]
    if "://" in db:
        return db
    if db.startswith("file:"):
        # An SQLite URI (https://sqlite.org/uri.html), e.g. file:/mnt/copy.db?mode=ro
        return f"sqlite:///{db}{'&' if '?' in db else '?'}uri=true"
    return f"sqlite:///{Path(db).expanduser()}"


def sqlite_path(url: str) -> str:
    """The file path an SQLite URL names (``file:`` URIs unwrapped, query dropped); "" for other URLs."""
    if not url.startswith("sqlite"):
        return ""
    path = url.split(":///", 1)[-1]
    if path.startswith("file:"):
        path = path[len("file:"):].split("?", 1)[0]
    return path


def _read_only_url(path: str) -> str:
    # immutable=1: the file (and its folder) cannot change while we read, so
    # SQLite needs no -wal/-shm files, which a read-only folder cannot hold.
    return f"sqlite:///file:{Path(path).resolve()}?mode=ro&immutable=1&uri=true"


class Database:
    """A statecraft database: SQLAlchemy engine, schema and ledger identity.

    Args:
        db: a file path or SQLAlchemy URL (see :func:`database_url`).
        synchronous: SQLite durability. ``FULL`` (default): a committed
            transition survives power loss. ``NORMAL``: in WAL mode, a commit
            survives a process crash but the last transactions may roll back
            on power loss; faster. Documented in docs/reliability.md.
        create: create the schema (and the ledger's genesis event) if the
            database is empty. With ``False`` an empty database raises.
        busy_timeout_ms: how long a writer waits for the lock before failing.
        read_only: open for reading only. ``None`` (default): read-only when
            the URL says so (``file:…?mode=ro``), or, with ``create=False``,
            when the file cannot be opened for writing (a copy on read-only
            media: a 444 file in a 555 folder, a read-only mount, an
            immutable file); it is then opened with ``immutable=1``, so take
            the copy of a quiet (checkpointed) database. Writing to a
            read-only database raises ``StoreError``.

    Raises:
        NotAStatecraftDatabase: the file is not SQLite, or holds other tables
            but no statecraft schema, or a newer schema version.
        StoreError: the database cannot be opened at all, or is an in-memory
            SQLite database (each connection would see a new, empty one).
    """

    def __init__(
        self,
        db: str | os.PathLike[str] | None = None,
        *,
        synchronous: Synchronous = "FULL",
        create: bool = True,
        busy_timeout_ms: int = 30_000,
        read_only: bool | None = None,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self.url = database_url(db)
        self.synchronous = synchronous
        self.is_sqlite = self.url.startswith("sqlite")
        self._closed = False
        self._local = threading.local()
        self.sa_engine: Engine  # SQLAlchemy's; the name keeps it apart from statecraft's Engine
        self.read_only = bool(read_only) or "mode=ro" in self.url or "immutable=1" in self.url
        if self.is_sqlite:
            path = sqlite_path(self.url)
            if path in ("", ":memory:") or self.url.rstrip("/").endswith("sqlite:") or "mode=memory" in self.url:
                # Each connection to an in-memory database is a new, empty one, and
                # statecraft uses several (the writer, readers, the checkpoint thread).
                raise StoreError(
                    f"{db if db is not None else self.url}: an in-memory SQLite database cannot hold a "
                    "statecraft ledger (each connection would see a new, empty one); "
                    "pass a file path (for speed, one on tmpfs, e.g. /dev/shm/runs.db)"
                )
            if not create and not Path(path).exists():
                raise NotAStatecraftDatabase(f"{path}: no such database file")
            if path:
                parent = Path(path).parent
                if not parent.exists():
                    raise StoreError(f"{path}: directory {parent} does not exist")
            if read_only is None and not create and not self.read_only and path and not _writable(path):
                self.read_only = True
            if self.read_only and "mode=ro" not in self.url:
                self.url = _read_only_url(path)
            self._sqlite_engine(path)
        else:
            self._postgres_engine()
        try:
            self.ledger_id = self._init_schema(create)
        except (OperationalError, DatabaseError) as exc:
            self.sa_engine.dispose()
            path = sqlite_path(self.url)
            if read_only is not False and not create and "immutable=1" not in self.url and path and _read_only_error(exc):
                # Opening for writing failed where reading may not (read-only media).
                self.read_only, self.url = True, _read_only_url(path)
                self._sqlite_engine(path)
                try:
                    self.ledger_id = self._init_schema(create)
                    return
                except (OperationalError, DatabaseError) as again:
                    self.sa_engine.dispose()
                    exc = again
            raise NotAStatecraftDatabase(
                f"{self.url}: not a usable statecraft database ({exc.orig})"
            ) from exc
        except Exception:
            self.sa_engine.dispose()
            raise

    def _sqlite_engine(self, path: str) -> None:
        self.sa_engine = create_engine(
            self.url,
            # isolation_level=None hands transaction control to us, so that
            # we can issue BEGIN IMMEDIATE (the pysqlite default defers BEGIN).
            connect_args={"isolation_level": None, "check_same_thread": False},
            # LIFO: a thread gets back the connection it just used, whose
            # page cache is still valid; FIFO rotation would start most
            # transactions on a cache another connection's commit had
            # invalidated (several times slower per step, bench_transitions).
            pool_use_lifo=True,
        )
        event.listen(self.sa_engine, "connect", self._on_connect)
        event.listen(self.sa_engine, "begin", self._on_begin)

    def _postgres_engine(self) -> None:
        if not self.url.startswith("postgresql"):
            # The SQL, the append guard and the writer lock exist for these two only.
            scheme = self.url.split("://", 1)[0]
            raise StoreError(
                f"{scheme}://: not a database statecraft runs on; pass a SQLite file path "
                "or a postgresql:// URL"
            )
        try:
            import psycopg  # noqa: F401  (only to say what to install)
        except ImportError:
            raise StoreError(
                "a PostgreSQL database needs the psycopg driver: pip install 'statecraft[postgres]'"
            ) from None
        self.sa_engine = create_engine(self.url, pool_pre_ping=True)
        event.listen(self.sa_engine, "begin", self._on_begin_postgres)

    def _on_begin_postgres(self, conn: Connection) -> None:
        if getattr(self._local, "begin_mode", "DEFERRED") != "IMMEDIATE":
            return
        # One writer at a time, as BEGIN IMMEDIATE gives on SQLite: every write
        # transaction appends to the one hash chain, and reading its head and
        # inserting the next row must not interleave with another writer's.
        # A transaction-scoped advisory lock, keyed by the schema (so ledgers
        # in separate schemas of one database do not wait for each other).
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(hashtext('statecraft.ledger.' || current_schema()))")

    def _on_connect(self, dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        # busy_timeout: concurrent writers queue for the lock instead of failing
        # at once with "database is locked".
        cur.execute(f"PRAGMA busy_timeout = {int(30_000)}")
        if self.read_only:
            # Nothing will be written: journal and durability settings would
            # themselves be writes (and fail on read-only media).
            cur.close()
            return
        # WAL: readers never block the writer and vice versa; one fsync per commit.
        cur.execute("PRAGMA journal_mode = WAL")
        # synchronous: FULL fsyncs the WAL at every commit, so an acknowledged
        # transition survives power loss (NORMAL only survives process crashes).
        cur.execute(f"PRAGMA synchronous = {self.synchronous}")
        # foreign_keys: SQLite leaves them off by default; on, so that any
        # foreign key the schema declares is enforced as on Postgres.
        cur.execute("PRAGMA foreign_keys = ON")
        # recursive_triggers: rows that INSERT OR REPLACE deletes fire DELETE
        # triggers only with this on, so the ledger's append-only trigger also
        # stops a REPLACE from this connection (https://sqlite.org/lang_conflict.html).
        cur.execute("PRAGMA recursive_triggers = ON")
        cur.close()

    def _on_begin(self, conn: Connection) -> None:
        mode = getattr(self._local, "begin_mode", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    # -- schema ---------------------------------------------------------------

    def _init_schema(self, create: bool) -> str:
        with self.sa_engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
        if "statecraft_meta" not in names:
            if names and "audit_event" not in names:
                raise NotAStatecraftDatabase(
                    f"{self.url}: has tables {sorted(names)[:5]} but no statecraft schema"
                )
            if not create:
                raise NotAStatecraftDatabase(f"{self.url}: no statecraft schema")
            return self._create_schema()
        with self.sa_engine.connect() as conn:
            meta: dict[str, str] = {
                str(k): str(v)
                for k, v in conn.execute(text("SELECT key, value FROM statecraft_meta")).all()
            }
        version = int(meta.get("schema_version", "0"))
        if version > SCHEMA_VERSION:
            raise NotAStatecraftDatabase(
                f"{sqlite_path(self.url) or self.url}: schema version {version} is newer than this "
                f"statecraft knows ({SCHEMA_VERSION}); upgrade statecraft to open it"
            )
        if "ledger_id" not in meta:
            raise NotAStatecraftDatabase(f"{self.url}: statecraft_meta has no ledger_id")
        ledger_id = str(meta["ledger_id"])
        if version < SCHEMA_VERSION and not self.read_only:
            self._upgrade(ledger_id)
        return ledger_id

    def _upgrade(self, ledger_id: str) -> None:
        """Apply pending migrations in one write transaction (statecraft/store/migrations.py)."""
        from .migrations import upgrade

        with self.write() as conn:
            # Read again under the write lock: another process may have upgraded meanwhile.
            version = int(conn.execute(
                text("SELECT value FROM statecraft_meta WHERE key = 'schema_version'")
            ).scalar() or 0)
            upgrade(conn, ledger_id=ledger_id, now=format_utc(utc_now()), from_version=version)

    def _create_schema(self) -> str:
        # The table models (SQLModel, SQLAlchemy's ORM: ~0.15 s to import) are
        # needed only here and in migrations; opening an existing database to
        # read or write runs needs neither (issue #9, bench/bench_startup.py).
        from sqlmodel import SQLModel

        from ..audit.chain import append_event
        from . import tables
        from .migrations import record_all

        with self.write() as conn:
            # Another process may have created it between our check and the lock.
            existing = conn.execute(
                text("SELECT value FROM statecraft_meta WHERE key = 'ledger_id'")
            ).first() if inspect(conn).has_table("statecraft_meta") else None
            if existing is not None:
                return str(existing[0])
            SQLModel.metadata.create_all(
                conn,
                tables=[
                    t.__table__  # type: ignore[union-attr]
                    for t in (
                        tables.MetaRow,
                        tables.MigrationRow,
                        tables.RunRow,
                        tables.BlobRow,
                        tables.SideEffectRow,
                        tables.AuditEventRow,
                        *tables.CONTROL_TABLES,
                    )
                ],
            )
            conn.exec_driver_sql(tables.CHECKPOINT_VIEW)
            for ddl in guard_ddl(sqlite=self.is_sqlite):
                conn.exec_driver_sql(ddl)
            ledger_id = str(uuid.uuid4())
            now = format_utc(utc_now())
            conn.execute(
                text("INSERT INTO statecraft_meta (key, value) VALUES (:k, :v)"),
                [
                    {"k": "schema_version", "v": str(SCHEMA_VERSION)},
                    {"k": "ledger_id", "v": ledger_id},
                    {"k": "created_at", "v": now},
                ],
            )
            record_all(conn, now)  # created at the newest schema: every migration is in it
            append_event(
                conn,
                ledger_id=ledger_id,
                fields={
                    "event_type": "ledger.genesis",
                    "actor_type": "system",
                    "actor_id": "statecraft",
                    "occurred_at": now,
                    "reason": "ledger created",
                },
                payload={"schema_version": SCHEMA_VERSION},
            )
        return ledger_id

    # -- transactions -----------------------------------------------------------

    @contextmanager
    def write(self, *, appends: bool = True) -> Iterator[Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` on SQLite); commits on success.

        Args:
            appends: the transaction may append to the ledger, so it holds the
                ledger's write lock (on PostgreSQL a transaction advisory
                lock; SQLite has one writer at a time anyway). ``False``
                only for writes that never append (claiming free runs), which
                may then run beside an append on PostgreSQL.

        Raises:
            StoreError: the database is closed, or opened read-only.
        """
        self._check_open()
        self.check_writable()
        with self.sa_engine.connect() as conn:
            self._local.begin_mode = "IMMEDIATE" if appends or self.is_sqlite else "DEFERRED"
            try:
                with conn.begin():
                    yield conn
            finally:
                self._local.begin_mode = "DEFERRED"

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only unit of work (one consistent snapshot on SQLite WAL)."""
        self._check_open()
        with self.sa_engine.connect() as conn:
            with conn.begin():
                yield conn

    def check_writable(self) -> None:
        """Raise ``StoreError`` (one line) if this database was opened read-only."""
        if self.read_only:
            raise StoreError(
                f"{sqlite_path(self.url) or self.url} is open read-only (a read-only copy or mode=ro): "
                "listing, showing and verifying work, changes do not"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"database {self.url} is closed")

    def close(self) -> None:
        """Release all connections; using the database afterwards raises ``StoreError``."""
        if not self._closed:
            self._closed = True
            from .txn import close_writer  # txn builds on this module

            close_writer(self)
            self.sa_engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _writable(path: str) -> bool:
    """Whether this process may write ``path`` and create files beside it (never true for root's
    immutable files, which ``os.access`` cannot see: those are caught when opening fails)."""
    target = Path(path)
    if target.exists() and not os.access(target, os.W_OK):
        return False
    return os.access(target.parent, os.W_OK)


def _read_only_error(exc: Exception) -> bool:
    message = str(getattr(exc, "orig", exc)).lower()
    return any(m in message for m in ("readonly", "read-only", "unable to open", "disk i/o error"))

