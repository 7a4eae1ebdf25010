"""Reading the ledger as a reviewer: filtered event listings and one run's timeline.

Read-only throughout. Every listing is in ``seq`` order (the ledger's own
order; stable across calls) and pages by keyset (``after_seq``), so a
million-event ledger is read in pieces without ``OFFSET`` rescans.

Each filter maps to one column and, where AUDIT.md provides one, to an
index: ``run_id`` (``uq_audit_run_seq``), ``actor_id`` (``ix_audit_actor_time``),
``event_type`` (``ix_audit_type_time``), ``model_id`` (``ix_audit_model_time``)
and the time window (``ix_audit_time``). ``machine``, ``step`` and ``status``
have no index of their own: combine them with one of the others (a time
window at least) on a large ledger.

Times: filters take ISO 8601 with an explicit offset (``Z`` or ``+02:00``)
and compare against the stored UTC text (``YYYY-MM-DDTHH:MM:SS.ffffffZ``,
fixed width, so text order is time order; NIST SP 800-53 AU-8). The window
is half-open: ``since <= occurred_at < until``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection, text

from .._time import format_utc, parse_utc
from ..errors import RunNotFound
from ..store.db import Database
from .chain import ALL_COLUMNS

__all__ = [
    "Approval",
    "EventFilter",
    "RunTimeline",
    "iter_events",
    "parse_time",
    "run_timeline",
]

_COLUMNS: Final = ", ".join(ALL_COLUMNS)
_PROBE: Final = 10_000


def parse_time(value: str) -> str:
    """ISO 8601 with an explicit offset, as the ledger stores it (UTC, fixed width).

    Raises:
        ValueError: not ISO 8601, or no offset (a local time names no instant; AU-8).
    """
    try:
        return format_utc(parse_utc(value.strip()))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an ISO 8601 time with an offset ({exc})") from None


@dataclass(frozen=True)
class EventFilter:
    """Which audit events to list. Every field is optional; all given must match.

    Attributes:
        run_id: events of this run.
        machine: events of runs of this machine name.
        actor: events whose ``actor_id`` is this (a person, agent or service).
        event_types: event types; ``*`` and ``?`` are wildcards (``approval.*``).
        step: events that leave or enter this step (``from_step`` or ``to_step``).
        status: events after which the run has this status (``to_status``).
        model: events of calls to this model (``model_id``).
        since, until: stored-form UTC times (see :func:`parse_time`);
            ``since <= occurred_at < until``.
        after_seq: only events with ``seq`` above this (keyset paging).
        limit: at most this many events (``None``: all).
    """

    run_id: str | None = None
    machine: str | None = None
    actor: str | None = None
    event_types: tuple[str, ...] = ()
    step: str | None = None
    status: str | None = None
    model: str | None = None
    since: str | None = None
    until: str | None = None
    after_seq: int = 0
    limit: int | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        """The SQL ``WHERE`` clause (``"1"`` if none) and its named parameters."""
        clauses: list[str] = []
        params: dict[str, Any] = {}

        def add(clause: str, **values: Any) -> None:
            clauses.append(clause)
            params.update(values)

        if self.run_id is not None:
            add("run_id = :run_id", run_id=self.run_id)
        if self.machine is not None:
            add("machine_name = :machine", machine=self.machine)
        if self.actor is not None:
            add("actor_id = :actor", actor=self.actor)
        if self.event_types:
            exact = [t for t in self.event_types if not any(ch in t for ch in "*?[")]
            globs = [t for t in self.event_types if t not in exact]
            parts = []
            if exact:
                names = [f"et{i}" for i in range(len(exact))]
                parts.append(f"event_type IN ({', '.join(':' + n for n in names)})")
                params.update(zip(names, exact))
            for i, pattern in enumerate(globs):
                parts.append(f"event_type GLOB :eg{i}")
                # GLOB: the shell's * ? [..], case-sensitive like event types.
                params[f"eg{i}"] = pattern
            clauses.append("(" + " OR ".join(parts) + ")")
        if self.step is not None:
            add("(to_step = :step OR from_step = :step)", step=self.step)
        if self.status is not None:
            add("to_status = :status", status=self.status)
        if self.model is not None:
            add("model_id = :model", model=self.model)
        if self.since is not None:
            add("occurred_at >= :since", since=self.since)
        if self.until is not None:
            add("occurred_at < :until", until=self.until)
        if self.after_seq:
            add("seq > :after_seq", after_seq=int(self.after_seq))
        return (" AND ".join(clauses) or "1"), params

    @property
    def indexed(self) -> bool:
        """Whether a filter with an index of its own is set (run, actor, event type, model, time)."""
        return bool(self.event_types) or any(
            v is not None for v in (self.run_id, self.actor, self.model, self.since, self.until)
        )

    def sql(self, *, use_index: bool | None = None) -> tuple[str, dict[str, Any]]:
        """The full ``SELECT`` (every column, ``seq`` order, ``LIMIT``) and its parameters.

        Args:
            use_index: search the filter's index and sort the matches by
                ``seq`` (right when few rows match), rather than walk the
                table in ``seq`` order and filter (right when many match and
                a page is wanted). Default: whenever an indexed filter is set.
        """
        where, params = self.where()
        # ``+seq`` is no longer a plain reference to the rowid, so SQLite
        # cannot satisfy ORDER BY by walking the table and must use the
        # filter's index (then sort); plain ``seq`` lets it walk in order.
        by_index = self.indexed if use_index is None else use_index
        sql = f"SELECT {_COLUMNS} FROM audit_event WHERE {where} ORDER BY {'+seq' if by_index else 'seq'}"
        if self.limit is not None:
            sql += " LIMIT :limit"
            params["limit"] = int(self.limit)
        return sql, params


def iter_events(db: Database, flt: EventFilter) -> Iterator[dict[str, Any]]:
    """Yield the matching events as ``{column: value}`` dicts in ``seq`` order. Read-only.

    One read transaction for the whole iteration (a consistent snapshot);
    rows stream, so memory does not grow with the result.

    """
    with db.read() as conn:
        use_index = None
        if flt.indexed and flt.since is None and flt.until is None and flt.limit is not None:
            # A page of a filter that matches much of the ledger (a popular
            # model, a busy service account) is found fastest by walking in
            # seq order; a selective one through its index. Ask the index
            # (at most _PROBE entries) which it is. A time window always
            # uses its index: walking from seq 1 to reach it could take long.
            where, params = flt.where()
            matches = conn.execute(
                text(f"SELECT COUNT(*) FROM (SELECT 1 FROM audit_event WHERE {where} LIMIT {_PROBE})"), params
            ).scalar()
            use_index = int(matches or 0) < _PROBE
        sql, params = flt.sql(use_index=use_index)
        result = conn.execution_options(stream_results=True).execute(text(sql), params)
        for rows in result.partitions(1000):
            for row in rows:
                yield dict(zip(ALL_COLUMNS, row))


# -- one run's timeline -------------------------------------------------------------------


@dataclass(frozen=True)
class Approval:
    """One approval gate of a run: the request and what was decided.

    Attributes:
        request: the ``approval.requested`` event.
        decisions: the ``approval.granted`` / ``approval.denied`` /
            ``approval.expired`` events answering it (``caused_by_event_id``), in order.
        started_by: who started the run (``run.created``'s actor), for the
            self-approval check.
    """

    request: dict[str, Any]
    decisions: tuple[dict[str, Any], ...]
    started_by: str | None = None

    @property
    def self_approved_by(self) -> tuple[str, ...]:
        """Approvers who also requested the gate or started the run (requester = approver)."""
        requester = self.request["actor_id"]
        return tuple(
            d["actor_id"]
            for d in self.decisions
            if d["event_type"] == "approval.granted" and d["actor_id"] in (requester, self.started_by)
        )


@dataclass(frozen=True)
class RunTimeline:
    """Everything the ledger holds about one run, for a human reviewer. Read-only snapshot.

    Attributes:
        run: the ``run`` row (status, machine, totals), as a dict.
        events: the run's events in ``run_seq`` order (every column).
        redactions: ``payload.redacted`` events whose target is one of the
            run's events, keyed by the target's ``event_id``.
        approvals: the run's gates, in order.
        blobs: ``{sha256: body}`` of every input, output and state the events
            reference; ``None`` for a redacted body; absent if not stored.
        children: ids of runs started with this run as ``parent_run_id``.
    """

    run: dict[str, Any]
    events: tuple[dict[str, Any], ...]
    redactions: Mapping[str, dict[str, Any]]
    approvals: tuple[Approval, ...]
    blobs: Mapping[str, bytes | None]
    children: tuple[str, ...] = ()
    totals: Mapping[str, int] = field(default_factory=dict)

    def blob_text(self, digest: str | None, *, pretty: bool = False) -> str | None:
        """A blob body as text, ``"(redacted)"``, ``"(not stored)"``, or ``None`` for no reference.

        JSON bodies are re-serialised: on one line, or indented with ``pretty``.
        """
        if digest is None:
            return None
        if digest not in self.blobs:
            return "(not stored)"
        body = self.blobs[digest]
        if body is None:
            return "(redacted)"
        try:
            decoded = body.decode("utf-8")
        except UnicodeDecodeError:
            return f"({len(body)} bytes, not UTF-8)"
        try:
            value = json.loads(decoded)
        except ValueError:
            return decoded
        if pretty:
            return json.dumps(value, ensure_ascii=False, indent=1, sort_keys=True)
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def run_timeline(db: Database, run_id: str) -> RunTimeline:
    """The full timeline of one run (reviewer question 1). Read-only, one snapshot.

    Uses the indexes ``uq_audit_run_seq`` (the run's events),
    ``ix_audit_type_time`` (redactions), the blob primary key, and scans
    ``run`` for child runs (no index on ``parent_run_id``).

    Raises:
        RunNotFound: no run row and no events with this id.
    """
    with db.read() as conn:
        run_row = conn.execute(text("SELECT * FROM run WHERE run_id = :r"), {"r": run_id}).mappings().first()
        events = tuple(
            dict(zip(ALL_COLUMNS, r))
            for r in conn.execute(
                text(f"SELECT {_COLUMNS} FROM audit_event WHERE run_id = :r ORDER BY run_seq"),
                {"r": run_id},
            )
        )
        if run_row is None and not events:
            raise RunNotFound(run_id)
        ids = {e["event_id"] for e in events}
        redactions = {
            r["caused_by_event_id"]: r
            for r in _rows(
                conn,
                f"SELECT {_COLUMNS} FROM audit_event WHERE event_type = 'payload.redacted' ORDER BY seq",
            )
            if r["caused_by_event_id"] in ids
        }
        blobs: dict[str, bytes | None] = {}
        wanted = {
            e[c] for e in events for c in ("input_sha256", "output_sha256", "state_sha256") if e[c]
        }
        for digest in sorted(wanted):
            found = conn.execute(text("SELECT body FROM blob WHERE sha256 = :h"), {"h": digest}).first()
            if found is not None:
                blobs[digest] = None if found[0] is None else bytes(found[0])
        children = tuple(
            str(r[0])
            for r in conn.execute(
                text("SELECT run_id FROM run WHERE parent_run_id = :r ORDER BY created_at"), {"r": run_id}
            )
        )
    started_by = next((e["actor_id"] for e in events if e["run_seq"] == 1), None)
    requests = [e for e in events if e["event_type"] == "approval.requested"]
    approvals = tuple(
        Approval(
            request=req,
            decisions=tuple(
                e for e in events
                if e["caused_by_event_id"] == req["event_id"] and e["event_type"].startswith("approval.")
            ),
            started_by=started_by,
        )
        for req in requests
    )
    totals = {
        key: sum(e[key] or 0 for e in events)
        for key in ("tokens_in", "tokens_out", "cost_micros", "latency_ms")
    }
    return RunTimeline(
        run=dict(run_row) if run_row is not None else {"run_id": run_id},
        events=events,
        redactions=redactions,
        approvals=approvals,
        blobs=blobs,
        children=children,
        totals=totals,
    )


def _rows(conn: Connection, sql: str, params: Mapping[str, Any] | None = None) -> Sequence[dict[str, Any]]:
    return [dict(zip(ALL_COLUMNS, r)) for r in conn.execute(text(sql), dict(params or {}))]
