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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final


from .._time import format_utc, parse_utc
from ..errors import RunNotFound
from ..store import audit_reads as reads
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

    def where(self, *, sqlite: bool = True) -> tuple[str, dict[str, Any]]:
        """The SQL ``WHERE`` clause (``"1 = 1"`` if none) and its named parameters (built by the store)."""
        return reads.event_filter_where(self, sqlite=sqlite)

    @property
    def indexed(self) -> bool:
        """Whether a filter with an index of its own is set (run, actor, event type, model, time)."""
        return bool(self.event_types) or any(
            v is not None for v in (self.run_id, self.actor, self.model, self.since, self.until)
        )

    def sql(self, *, use_index: bool | None = None, sqlite: bool = True) -> tuple[str, dict[str, Any]]:
        """The full ``SELECT`` (every column, ``seq`` order, ``LIMIT``) and its parameters.

        Args:
            use_index: search the filter's index and sort the matches by
                ``seq`` (right when few rows match), rather than walk the
                table in ``seq`` order and filter (right when many match and
                a page is wanted). Default: whenever an indexed filter is set.
            sqlite: build it for SQLite (else PostgreSQL).
        """
        by_index = self.indexed if use_index is None else use_index
        return reads.event_filter_select(self, ALL_COLUMNS, by_index=by_index, sqlite=sqlite)


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
            where, params = flt.where(sqlite=reads.is_sqlite(conn))
            use_index = reads.count_matches(conn, where, params, _PROBE) < _PROBE
        sql, params = flt.sql(use_index=use_index, sqlite=reads.is_sqlite(conn))
        for rows in reads.stream(conn, sql, params or None):
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
        run_row = reads.run_row(conn, run_id)
        events = tuple(dict(zip(ALL_COLUMNS, r)) for r in reads.run_events(conn, ALL_COLUMNS, run_id))
        if run_row is None and not events:
            raise RunNotFound(run_id)
        ids = {e["event_id"] for e in events}
        redactions = {
            r["caused_by_event_id"]: r
            for r in (dict(zip(ALL_COLUMNS, row)) for row in reads.redaction_events(conn, ALL_COLUMNS))
            if r["caused_by_event_id"] in ids
        }
        blobs: dict[str, bytes | None] = {}
        wanted = {
            e[c] for e in events for c in ("input_sha256", "output_sha256", "state_sha256") if e[c]
        }
        for digest in sorted(wanted):
            found = reads.blob_body(conn, digest)
            if found is not None:
                blobs[digest] = found[0]
        children = reads.child_runs(conn, run_id)
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
