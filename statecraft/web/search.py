"""Audit search for the web: the filters of ``statecraft audit log``, and its CSV and JSON-lines output.

The query string takes the CLI's option names (``run``, ``machine``,
``actor``, ``event`` — repeatable or comma-separated, wildcards allowed —,
``step``, ``status``, ``since``, ``until``, ``model``, ``after``, ``limit``)
and builds the same :class:`~statecraft.audit.query.EventFilter`, so a page
and ``audit log`` with the same filters list the same events, and the
exports are byte-for-byte what ``audit log --csv`` / ``--json`` print
(formula-like CSV cells defused the same way, statecraft/render.py).

Exports stream in pages of 1,000 events by keyset (``after_seq``), each page
its own short read transaction: the ledger is append-only, so pages cannot
disagree, and no transaction stays open while a slow client downloads.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..audit.chain import ALL_COLUMNS
from ..audit.query import EventFilter, iter_events, parse_time
from ..lifecycle import RunStatus
from ..render import csv_cell
from ..store.db import Database

__all__ = ["PAGE_DEFAULT", "SearchForm", "csv_chunks", "events_page", "jsonl_chunks", "parse_search"]

PAGE_DEFAULT = 200
"""Events on one page of results (as ``audit log``'s table)."""
PAGE_MAX = 10_000
_BATCH = 1000


@dataclass(frozen=True)
class SearchForm:
    """The filter values as typed, to fill the search form again (every field a string)."""

    run: str = ""
    machine: str = ""
    actor: str = ""
    event: str = ""
    step: str = ""
    status: str = ""
    since: str = ""
    until: str = ""
    model: str = ""
    after: str = ""
    limit: str = ""

    def query(self, **changes: str) -> dict[str, str]:
        """The non-empty fields as query parameters, with ``changes`` applied (for paging links)."""
        values = {**asdict(self), **changes}
        return {k: v for k, v in values.items() if v}


def _int(value: str, name: str, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {value!r}") from None
    if number < low or (high is not None and number > high):
        raise ValueError(f"{name} must be between {low} and {high}" if high else f"{name} must be at least {low}")
    return number


def parse_search(params: Mapping[str, Sequence[str]], *, default_limit: int | None) -> tuple[SearchForm, EventFilter]:
    """Build the filter from query parameters (``{name: [values]}``).

    Args:
        params: the query string, every value as a list.
        default_limit: the limit when none is given (``None``: all events).

    Returns:
        The form values and the filter (``limit`` set to what was asked or the default).

    Raises:
        ValueError: a malformed time, status, ``after`` or ``limit`` (one line, for the page).
    """

    def one(name: str) -> str:
        values = [v.strip() for v in params.get(name, ()) if v.strip()]
        return values[-1] if values else ""

    events = tuple(t.strip() for v in params.get("event", ()) for t in v.split(",") if t.strip())
    form = SearchForm(
        run=one("run"), machine=one("machine"), actor=one("actor"), event=", ".join(events), step=one("step"),
        status=one("status"), since=one("since"), until=one("until"), model=one("model"), after=one("after"),
        limit=one("limit"),
    )
    if form.status and form.status not in {s.value for s in RunStatus}:
        raise ValueError(f"status must be one of {', '.join(s.value for s in RunStatus)}")
    since = until = None
    try:
        since = parse_time(form.since) if form.since else None
        until = parse_time(form.until) if form.until else None
    except ValueError as exc:
        raise ValueError(f"{'since' if form.since and since is None else 'until'}: {exc}") from None
    after = _int(form.after, "after", 0) if form.after else 0
    limit = _int(form.limit, "limit", 1, PAGE_MAX) if form.limit else default_limit
    flt = EventFilter(
        run_id=form.run or None, machine=form.machine or None, actor=form.actor or None, event_types=events,
        step=form.step or None, status=form.status or None, model=form.model or None, since=since, until=until,
        after_seq=after, limit=limit,
    )
    return form, flt


def events_page(db: Database, flt: EventFilter) -> tuple[list[dict[str, Any]], int | None]:
    """One page of events (at most ``flt.limit``), and the ``after`` of the next page if there is one. Read-only."""
    size = flt.limit or PAGE_DEFAULT
    rows = list(iter_events(db, replace(flt, limit=size + 1)))
    more = len(rows) > size
    rows = rows[:size]
    return rows, (rows[-1]["seq"] if more and rows else None)


def _batches(db: Database, flt: EventFilter) -> Iterator[list[dict[str, Any]]]:
    after, remaining = flt.after_seq, flt.limit
    while remaining is None or remaining > 0:
        size = _BATCH if remaining is None else min(_BATCH, remaining)
        rows = list(iter_events(db, replace(flt, after_seq=after, limit=size)))
        if rows:
            yield rows
        if len(rows) < size:
            return
        after = rows[-1]["seq"]
        if remaining is not None:
            remaining -= len(rows)


def csv_chunks(db: Database, flt: EventFilter) -> Iterator[str]:
    """``audit log --csv``: a header of every column, then one row per event. Read-only.

    ``None`` is an empty cell; text that a spreadsheet would evaluate as a
    formula is defused with a leading ``'`` (``render.csv_cell``), as the CLI does.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(ALL_COLUMNS))
    writer.writeheader()
    yield buffer.getvalue()
    for rows in _batches(db, flt):
        buffer.seek(0)
        buffer.truncate()
        for e in rows:
            writer.writerow({k: ("" if v is None else csv_cell(v)) for k, v in e.items()})
        yield buffer.getvalue()


def jsonl_chunks(db: Database, flt: EventFilter) -> Iterator[str]:
    """``audit log --json``: one JSON object per line, every column. Read-only."""
    for rows in _batches(db, flt):
        yield "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in rows)
