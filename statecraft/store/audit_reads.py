"""The reads that verify, query, export and redact make of the ledger: every statement here, none there.

statecraft/audit/ holds the rules (what a valid chain is, what a reviewer is
shown); this module holds the SQL they need, one function per question, each
taking an open SQLAlchemy ``Connection`` (one consistent snapshot, opened by
the caller) and returning plain values. Where dialects differ — SQLite's
``GLOB`` and ``json_object`` rendering, its ``sqlite_master``; PostgreSQL's
regular expressions and ``pg_trigger`` — the choice is made here.

Verify streams the whole ledger, so its scan is built to be fast: on
SQLite it reads rows from the plain ``sqlite3`` cursor in batches, and may
have SQLite render each row's canonical envelope itself (``json_object``
over the hashed columns in sorted order), which statecraft/audit/verify.py
trusts only where it proves equal to ``chain.canonical_json``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import Connection, text

__all__ = [
    "BLOB_ROWS_SQL",
    "MISSING_BLOB_REF_SQL",
    "authorised_later",
    "begin_snapshot",
    "blob_body",
    "blob_exists",
    "blob_rows",
    "child_runs",
    "count_matches",
    "data_version",
    "duplicate_event_ids",
    "end_snapshot",
    "entry_hash_at",
    "event_refs",
    "events_between",
    "first_missing_blob_ref",
    "fold_details",
    "fold_last_events",
    "is_sqlite",
    "last_anchored_before",
    "ledger_head_seq",
    "meta_ledger_id",
    "min_seq_after",
    "pending_proposals",
    "prev_hash_at",
    "raw_first",
    "raw_stream",
    "ref_rows",
    "run_details",
    "run_positions",
    "run_row",
    "run_events",
    "redaction_events",
    "seq_with_entry_hash",
    "sibling_of",
    "sqlite_raw",
    "sqlite_scan",
    "trigger_names",
]

_BATCH: Final = 2000


def is_sqlite(conn: Connection) -> bool:
    """Whether ``conn`` is a SQLite connection."""
    return conn.dialect.name == "sqlite"


def sqlite_raw(conn: Connection) -> sqlite3.Connection:
    """The stdlib connection under a SQLite ``conn`` (for streaming scans)."""
    raw = conn.connection.dbapi_connection
    assert isinstance(raw, sqlite3.Connection)
    return raw


# -- the ledger scan ------------------------------------------------------------------------


def scan_sql(columns: Sequence[str], *, after: bool = False) -> str:
    """Every row's ``columns`` in ``seq`` order (``after``: rows after a ``?``/``:s`` bound)."""
    where = " WHERE seq > :s" if after else ""
    return f"SELECT {', '.join(columns)} FROM audit_event{where} ORDER BY seq"


def sqlite_scan(
    raw: sqlite3.Connection, checked: Sequence[str], hashed: Sequence[str], max_safe_int: int
) -> str | None:
    """The scan that has SQLite render each row's envelope, for this table's declared types.

    Columns: ``checked``, then an "unsafe" flag (a value JSON rendering cannot
    be trusted with: a REAL or an integer beyond ±``max_safe_int``, in a
    column without TEXT affinity), then ``json_object`` over ``hashed``.
    ``None`` if a hashed column is missing (someone rebuilt the table).
    """
    declared = {r[1]: r[2] for r in raw.execute("PRAGMA table_info(audit_event)")}
    if not set(hashed) <= declared.keys():
        return None
    unsafe = " OR ".join(
        f"typeof({c}) = 'real' OR {c} > {max_safe_int} OR {c} < -{max_safe_int}"
        for c in hashed
        if not _has_text_affinity(declared[c])
    )
    return f"SELECT {', '.join(checked)}, ({unsafe or '0'}), {envelope_sql(hashed)} FROM audit_event ORDER BY seq"


def envelope_sql(hashed: Sequence[str]) -> str:
    """The SQL expression that has SQLite render a row's envelope: ``json_object`` over ``hashed``, in order."""
    return "json_object(" + ", ".join(f"'{c}', {c}" for c in hashed) + ")"


def _has_text_affinity(declared: str) -> bool:
    # SQLite's column affinity rules (https://sqlite.org/datatype3.html, 3.1):
    # such a column converts numbers to TEXT, so it never holds a REAL or INTEGER.
    declared = declared.upper()
    return "INT" not in declared and any(t in declared for t in ("CHAR", "CLOB", "TEXT"))


def sqlite_json_object(values: Sequence[Any]) -> Any:
    """SQLite's own ``json_object('k', ?, 'm', ?, 'n', ?, 'p', ?, 'z', ?)`` of five values (a probe)."""
    conn = sqlite3.connect(":memory:")
    try:
        return conn.execute("SELECT json_object('k', ?, 'm', ?, 'n', ?, 'p', ?, 'z', ?)", tuple(values)).fetchone()[0]
    finally:
        conn.close()


def row_values_sql(hashed: Sequence[str]) -> str:
    """One row's ``hashed`` values by ``seq`` (a ``?`` parameter; the plain sqlite3 cursor)."""
    return f"SELECT {', '.join(hashed)} FROM audit_event WHERE seq = ?"


def stream(conn: Connection, sql: str, params: Mapping[str, Any] | None = None) -> Iterator[Sequence[Any]]:
    """Batches of rows of ``sql`` (one of this module's), on the plain sqlite3 cursor where possible."""
    if is_sqlite(conn) and not params:
        yield from raw_stream(sqlite_raw(conn), sql)
        return
    yield from conn.execution_options(stream_results=True).execute(text(sql), dict(params or {})).partitions(_BATCH)


def raw_stream(raw: sqlite3.Connection, sql: str) -> Iterator[Sequence[Any]]:
    """Batches of rows of ``sql`` (no parameters) on a stdlib connection."""
    cursor = raw.cursor()
    try:
        cursor.execute(sql)
        while rows := cursor.fetchmany(_BATCH):
            yield rows
    finally:
        cursor.close()


def raw_first(raw: sqlite3.Connection, sql: str) -> tuple[Any, ...] | None:
    """The first row of ``sql`` (no parameters) on a stdlib connection, or ``None``."""
    row = raw.execute(sql).fetchone()
    return None if row is None else tuple(row)


def data_version(raw: sqlite3.Connection) -> int:
    """``PRAGMA data_version``: changes exactly when another connection's commit becomes visible to ``raw``.

    https://sqlite.org/pragma.html#pragma_data_version; verify's second
    connection uses it to prove it reads the walk's snapshot.
    """
    return int(raw.execute("PRAGMA data_version").fetchone()[0])


def begin_snapshot(raw: sqlite3.Connection) -> None:
    """Begin a read transaction on an autocommit stdlib connection and take its snapshot now (at its first read)."""
    raw.execute("BEGIN")
    raw.execute("SELECT 1 FROM statecraft_meta LIMIT 1").fetchall()


def end_snapshot(raw: sqlite3.Connection) -> None:
    """End the read transaction :func:`begin_snapshot` began, if still open (nothing to keep or lose)."""
    if raw.in_transaction:
        raw.execute("COMMIT")


# -- single facts -----------------------------------------------------------------------------


def meta_ledger_id(conn: Connection) -> str | None:
    """The ledger id ``statecraft_meta`` holds."""
    value = conn.execute(text("SELECT value FROM statecraft_meta WHERE key = 'ledger_id'")).scalar()
    return None if value is None else str(value)


def duplicate_event_ids(conn: Connection) -> set[str]:
    """Event ids used by more than one row."""
    return {r[0] for r in conn.execute(text("SELECT event_id FROM audit_event GROUP BY event_id HAVING COUNT(*) > 1"))}


def min_seq_after(conn: Connection, seq: int) -> int | None:
    """The first seq after ``seq``."""
    return conn.execute(text("SELECT MIN(seq) FROM audit_event WHERE seq > :s"), {"s": seq}).scalar()


def prev_hash_at(conn: Connection, seq: int) -> str | None:
    """The ``prev_hash`` of the row at ``seq``."""
    return conn.execute(text("SELECT prev_hash FROM audit_event WHERE seq = :s"), {"s": seq}).scalar()


def entry_hash_at(conn: Connection, seq: int) -> str | None:
    """The ``entry_hash`` of the row at ``seq``."""
    return conn.execute(text("SELECT entry_hash FROM audit_event WHERE seq = :s"), {"s": seq}).scalar()


def seq_with_entry_hash(conn: Connection, entry_hash: str) -> int | None:
    """The first seq whose ``entry_hash`` is this."""
    return conn.execute(
        text("SELECT seq FROM audit_event WHERE entry_hash = :h ORDER BY seq LIMIT 1"), {"h": entry_hash}
    ).scalar()


def sibling_of(conn: Connection, prev_hash: str, seq: int) -> int | None:
    """Another row (not ``seq``) chained to the same ``prev_hash``: a fork."""
    return conn.execute(
        text("SELECT seq FROM audit_event WHERE prev_hash = :h AND seq <> :s ORDER BY seq LIMIT 1"),
        {"h": prev_hash, "s": seq},
    ).scalar()


def ledger_head_seq(conn: Connection) -> int:
    """The highest seq (0 for an empty table)."""
    return int(conn.execute(text("SELECT MAX(seq) FROM audit_event")).scalar() or 0)


def last_anchored_before(conn: Connection, last_seq: int) -> tuple[int, str] | None:
    """``(seq, occurred_at)`` of the newest ``ledger.anchored`` event at or before ``last_seq``."""
    row = conn.execute(
        text(
            "SELECT seq, occurred_at FROM audit_event WHERE event_type = 'ledger.anchored' "
            "AND seq <= :last ORDER BY seq DESC LIMIT 1"
        ),
        {"last": last_seq},
    ).first()
    return None if row is None else (int(row[0]), str(row[1]))


def authorised_later(conn: Connection, event_id: str, seq: int) -> bool:
    """Whether a ``payload.redacted`` event after ``seq`` names ``event_id``."""
    return conn.execute(
        text(
            "SELECT 1 FROM audit_event WHERE event_type = 'payload.redacted' "
            "AND caused_by_event_id = :e AND seq > :s LIMIT 1"
        ),
        {"e": event_id, "s": seq},
    ).first() is not None


def trigger_names(conn: Connection) -> set[str]:
    """The triggers defined on the database."""
    if is_sqlite(conn):
        sql = "SELECT name FROM sqlite_master WHERE type = 'trigger'"
    else:
        sql = "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
    return {str(r[0]) for r in conn.execute(text(sql))}


# -- runs -------------------------------------------------------------------------------------


def fold_last_events(conn: Connection) -> list[tuple[Any, ...]]:
    """``(run_id, to_status, to_step, state_sha256, run_seq)`` of each run's last event."""
    return [tuple(r) for r in conn.execute(text(
        "SELECT a.run_id, a.to_status, a.to_step, a.state_sha256, a.run_seq "
        "FROM audit_event a JOIN ("
        "  SELECT run_id, MAX(run_seq) AS last_run_seq FROM audit_event"
        "  WHERE run_id IS NOT NULL GROUP BY run_id"
        ") b ON a.run_id = b.run_id AND a.run_seq = b.last_run_seq"
    ))]


def run_positions(conn: Connection) -> dict[str, tuple[Any, Any, Any, Any]]:
    """``run_id -> (status, step, state_sha256, run_seq)`` of every run row."""
    return {
        r[0]: (r[1], r[2], r[3], r[4])
        for r in conn.execute(text("SELECT run_id, status, step, state_sha256, run_seq FROM run"))
    }


def fold_details(conn: Connection) -> dict[str, tuple[Any, ...]]:
    """Per run, what its events say of its reviewer-facing columns (``verify.FOLDED_COLUMNS`` order)."""
    rows = conn.execute(text(
        "SELECT l.run_id, l.machine_name, l.machine_version, l.machine_digest, l.parent_run_id, "
        "f.actor_id, f.occurred_at, l.occurred_at, "
        "CASE WHEN l.to_status = 'FAILED' THEN l.error_code END, "
        "CASE WHEN l.to_status = 'FAILED' THEN l.reason END, "
        "t.tokens_in, t.tokens_out, t.cost_micros "
        "FROM ("
        "  SELECT run_id, MAX(run_seq) AS last_run_seq, COALESCE(SUM(tokens_in), 0) AS tokens_in,"
        "         COALESCE(SUM(tokens_out), 0) AS tokens_out, COALESCE(SUM(cost_micros), 0) AS cost_micros"
        "  FROM audit_event WHERE run_id IS NOT NULL GROUP BY run_id"
        ") t "
        "JOIN audit_event l ON l.run_id = t.run_id AND l.run_seq = t.last_run_seq "
        "JOIN audit_event f ON f.run_id = t.run_id AND f.run_seq = 1"
    ))
    return {r[0]: tuple(r[1:]) for r in rows}


def run_details(conn: Connection, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """``(run_id, *columns)`` of every run row."""
    return [tuple(r) for r in conn.execute(text("SELECT run_id, " + ", ".join(columns) + " FROM run"))]


def pending_proposals(conn: Connection) -> list[tuple[Any, ...]]:
    """For each waiting run: its row's pending reason, digest and resume_at, and its last request's seq, reason, payload."""
    return [tuple(r) for r in conn.execute(text(
        "SELECT r.run_id, r.pending_reason, r.pending_proposal_digest, r.pending_resume_at, "
        "e.seq, e.reason, e.payload_json FROM run r JOIN audit_event e ON e.run_id = r.run_id "
        "AND e.run_seq = (SELECT MAX(run_seq) FROM audit_event x WHERE x.run_id = r.run_id "
        "AND x.event_type = 'approval.requested') WHERE r.status = 'WAITING_FOR_APPROVAL'"
    ))]


def run_row(conn: Connection, run_id: str) -> dict[str, Any] | None:
    """Every column of the run row, or ``None``."""
    found = conn.execute(text("SELECT * FROM run WHERE run_id = :r"), {"r": run_id}).mappings().first()
    return None if found is None else dict(found)


def child_runs(conn: Connection, run_id: str) -> tuple[str, ...]:
    """Runs delegated by ``run_id``, oldest first."""
    return tuple(
        str(r[0]) for r in conn.execute(
            text("SELECT run_id FROM run WHERE parent_run_id = :r ORDER BY created_at"), {"r": run_id}
        )
    )


# -- events -----------------------------------------------------------------------------------


def run_events(conn: Connection, columns: Sequence[str], run_id: str) -> list[tuple[Any, ...]]:
    """Every event of one run, in ``run_seq`` order."""
    return [tuple(r) for r in conn.execute(
        text(f"SELECT {', '.join(columns)} FROM audit_event WHERE run_id = :r ORDER BY run_seq"), {"r": run_id}
    )]


def redaction_events(conn: Connection, columns: Sequence[str]) -> list[tuple[Any, ...]]:
    """Every ``payload.redacted`` event, in ``seq`` order."""
    return [tuple(r) for r in conn.execute(
        text(f"SELECT {', '.join(columns)} FROM audit_event WHERE event_type = 'payload.redacted' ORDER BY seq")
    )]


def events_between(conn: Connection, columns: Sequence[str], first: int, last: int) -> Iterator[Sequence[Any]]:
    """Batches of the rows ``first``..``last``, in ``seq`` order."""
    return stream(
        conn, f"SELECT {', '.join(columns)} FROM audit_event WHERE seq BETWEEN :a AND :b ORDER BY seq",
        {"a": first, "b": last},
    )


_REFS: Final = "SELECT seq, input_sha256, output_sha256, state_sha256 FROM audit_event"


def event_refs(conn: Connection, event_id: str) -> tuple[Any, ...] | None:
    """``(seq, input_sha256, output_sha256, state_sha256)`` of one event."""
    row = conn.execute(text(f"{_REFS} WHERE event_id = :e"), {"e": event_id}).first()
    return None if row is None else tuple(row)


def ref_rows(conn: Connection) -> Iterator[Sequence[Any]]:
    """Batches of ``(seq, input_sha256, output_sha256, state_sha256)``, in ``seq`` order."""
    return stream(conn, f"{_REFS} ORDER BY seq")


MISSING_BLOB_REF_SQL: Final = (
    f"{_REFS} e WHERE "
    + " OR ".join(
        f"(e.{c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM blob b WHERE b.sha256 = e.{c}))"
        for c in ("input_sha256", "output_sha256", "state_sha256")
    )
    + " ORDER BY seq LIMIT 1"
)
"""The first event naming a blob that is not stored: ``(seq, input, output, state)``; no parameters."""

BLOB_ROWS_SQL: Final = "SELECT sha256, body FROM blob"
"""``(sha256, body)`` of every stored blob; no parameters."""


def first_missing_blob_ref(conn: Connection) -> tuple[Any, ...] | None:
    """The first event naming a blob that is not stored: ``(seq, input, output, state)``."""
    row = conn.execute(text(MISSING_BLOB_REF_SQL)).first()
    return None if row is None else tuple(row)


def blob_rows(conn: Connection) -> Iterator[Sequence[Any]]:
    """Batches of ``(sha256, body)`` of every stored blob."""
    return stream(conn, BLOB_ROWS_SQL)


def blob_exists(conn: Connection, digest: str) -> bool:
    """Whether a blob row with this hash exists (its body may be redacted)."""
    return conn.execute(text("SELECT 1 FROM blob WHERE sha256 = :h"), {"h": digest}).first() is not None


def blob_body(conn: Connection, digest: str) -> tuple[bytes | None, int, str] | None:
    """``(body, size, media_type)`` of a blob (``body`` ``None`` if redacted), or ``None`` if not stored."""
    row = conn.execute(text("SELECT body, size, media_type FROM blob WHERE sha256 = :h"), {"h": digest}).first()
    if row is None:
        return None
    return (None if row[0] is None else bytes(row[0]), int(row[1]), str(row[2]))


def count_matches(conn: Connection, where: str, params: Mapping[str, Any], probe: int) -> int:
    """How many rows match ``where`` (a filter built by :func:`event_filter_sql`), counting at most ``probe``."""
    return int(conn.execute(
        text(f"SELECT COUNT(*) FROM (SELECT 1 FROM audit_event WHERE {where} LIMIT {int(probe)}) AS probe"), params
    ).scalar() or 0)


# -- reviewer listings (statecraft/audit/query.py's EventFilter) ---------------------------------


def event_filter_where(flt: Any, *, sqlite: bool) -> tuple[str, dict[str, Any]]:
    """The ``WHERE`` clause for an ``EventFilter`` and its named parameters; ``"1 = 1"`` if no filter."""
    clauses: list[str] = []
    params: dict[str, Any] = {}

    def add(clause: str, **values: Any) -> None:
        clauses.append(clause)
        params.update(values)

    if flt.run_id is not None:
        add("run_id = :run_id", run_id=flt.run_id)
    if flt.machine is not None:
        add("machine_name = :machine", machine=flt.machine)
    if flt.actor is not None:
        add("actor_id = :actor", actor=flt.actor)
    if flt.event_types:
        exact = [t for t in flt.event_types if not any(ch in t for ch in "*?[")]
        globs = [t for t in flt.event_types if t not in exact]
        parts = []
        if exact:
            names = [f"et{i}" for i in range(len(exact))]
            parts.append(f"event_type IN ({', '.join(':' + n for n in names)})")
            params.update(zip(names, exact))
        for i, pattern in enumerate(globs):
            # The shell's * ? [..], case-sensitive like event types: SQLite's GLOB,
            # a regular expression on PostgreSQL.
            parts.append(f"event_type GLOB :eg{i}" if sqlite else f"event_type ~ :eg{i}")
            params[f"eg{i}"] = pattern if sqlite else _glob_regex(pattern)
        clauses.append("(" + " OR ".join(parts) + ")")
    if flt.step is not None:
        add("(to_step = :step OR from_step = :step)", step=flt.step)
    if flt.status is not None:
        add("to_status = :status", status=flt.status)
    if flt.model is not None:
        add("model_id = :model", model=flt.model)
    if flt.since is not None:
        add("occurred_at >= :since", since=flt.since)
    if flt.until is not None:
        add("occurred_at < :until", until=flt.until)
    if flt.after_seq:
        add("seq > :after_seq", after_seq=int(flt.after_seq))
    return (" AND ".join(clauses) or "1 = 1"), params


def _glob_regex(pattern: str) -> str:
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch in "[]":
            out.append(ch)
        else:
            out.append("\\" + ch if not ch.isalnum() and ch != "_" else ch)
    return "^" + "".join(out) + "$"


def event_filter_select(
    flt: Any, columns: Sequence[str], *, by_index: bool, sqlite: bool
) -> tuple[str, dict[str, Any]]:
    """The full ``SELECT`` for an ``EventFilter`` (``seq`` order, ``LIMIT``) and its parameters.

    ``by_index``: ``ORDER BY +seq``, which is no longer a plain reference to
    the rowid, so SQLite cannot satisfy the order by walking the table and
    uses the filter's index (then sorts); plain ``seq`` lets it walk in order.
    PostgreSQL plans by itself.
    """
    where, params = event_filter_where(flt, sqlite=sqlite)
    order = "+seq" if by_index and sqlite else "seq"
    sql = f"SELECT {', '.join(columns)} FROM audit_event WHERE {where} ORDER BY {order}"
    if flt.limit is not None:
        sql += " LIMIT :limit"
        params["limit"] = int(flt.limit)
    return sql, params


# -- redaction, anchors, export -------------------------------------------------------------------


def event_by_key(conn: Connection, columns: Sequence[str], key: str | int) -> dict[str, Any] | None:
    """One event by its seq (an int, or digits) or its ``event_id``."""
    by_seq = isinstance(key, int) or (isinstance(key, str) and key.isdigit())
    column = "seq" if by_seq else "event_id"
    found = conn.execute(
        text(f"SELECT {', '.join(columns)} FROM audit_event WHERE {column} = :k"), {"k": int(key) if by_seq else key}
    ).mappings().first()
    return None if found is None else dict(found)


def live_run_using_blob(conn: Connection, digest: str) -> tuple[str, str] | None:
    """``(run_id, status)`` of an unfinished run whose current state or task is this blob."""
    row = conn.execute(
        text(
            "SELECT run_id, status FROM run WHERE (state_sha256 = :h OR task_sha256 = :h) "
            "AND status NOT IN ('DONE', 'FAILED') LIMIT 1"
        ),
        {"h": digest},
    ).first()
    return None if row is None else (str(row[0]), str(row[1]))


def meta_value(conn: Connection, key: str) -> str | None:
    """``statecraft_meta``'s value for ``key``."""
    value = conn.execute(text("SELECT value FROM statecraft_meta WHERE key = :k"), {"k": key}).scalar()
    return None if value is None else str(value)


def ledger_head_row(conn: Connection) -> tuple[int, str] | None:
    """``(seq, entry_hash)`` of the newest row."""
    row = conn.execute(text("SELECT seq, entry_hash FROM audit_event ORDER BY seq DESC LIMIT 1")).first()
    return None if row is None else (int(row[0]), str(row[1]))


def seqs_matching(conn: Connection, where: str, params: Mapping[str, Any]) -> set[int]:
    """The seqs of events matching ``where`` (built by :func:`event_filter_where`)."""
    return {int(r[0]) for r in conn.execute(text(f"SELECT seq FROM audit_event WHERE {where}"), dict(params))}


def redaction_pairs(conn: Connection) -> list[tuple[int, int]]:
    """``(payload.redacted seq, target seq)`` of every redaction."""
    return [(int(r[0]), int(r[1])) for r in conn.execute(text(
        "SELECT r.seq, e.seq FROM audit_event r JOIN audit_event e "
        "ON e.event_id = r.caused_by_event_id WHERE r.event_type = 'payload.redacted'"
    ))]


def refs_between(conn: Connection, first: int, last: int) -> list[tuple[Any, ...]]:
    """``(seq, input_sha256, output_sha256, state_sha256)`` of the rows ``first``..``last``."""
    return [tuple(r) for r in conn.execute(
        text(f"{_REFS} WHERE seq >= :a AND seq <= :b"), {"a": first, "b": last}
    )]


def redaction_of_blob(conn: Connection, digest: str) -> tuple[int, int] | None:
    """``(target seq, payload.redacted seq)`` of the first redaction of an event that referenced ``digest``."""
    row = conn.execute(
        text(
            "SELECT e.seq, r.seq FROM audit_event r JOIN audit_event e ON e.event_id = r.caused_by_event_id "
            "WHERE r.event_type = 'payload.redacted' AND e.seq < r.seq "
            "AND (e.input_sha256 = :h OR e.output_sha256 = :h OR e.state_sha256 = :h) "
            "ORDER BY r.seq LIMIT 1"
        ),
        {"h": digest},
    ).first()
    return None if row is None else (int(row[0]), int(row[1]))


def approvals_with_requests(conn: Connection) -> list[tuple[Any, ...]]:
    """Every ``approval.granted`` event with the request it answers, in ``seq`` order.

    Rows: ``(seq, run_id, actor_id, payload_json, request seq, request event_type,
    request payload_json, request output_sha256)``; the request columns are
    ``None`` when no request has that ``event_id``.
    """
    return [tuple(r) for r in conn.execute(text(
        "SELECT g.seq, g.run_id, g.actor_id, g.payload_json, r.seq, r.event_type, r.payload_json, "
        "r.output_sha256 FROM audit_event g LEFT JOIN audit_event r ON r.event_id = g.caused_by_event_id "
        "WHERE g.event_type = 'approval.granted' ORDER BY g.seq"
    ))]

