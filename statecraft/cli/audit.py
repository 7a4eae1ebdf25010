"""``statecraft audit …``: query, verify, anchor, export and redact the audit ledger.

For compliance reviewers (docs/audit.md). Thin like the rest of the CLI:
parse, call one function of ``statecraft.audit``, render. Data goes to
stdout (a rich table, ``--json`` JSON lines or one JSON object, ``--csv``);
messages to stderr; errors are one line with exit 1, usage errors exit 2.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..lifecycle import RunStatus
from ..render import cell, csv_cell, safe
from .common import (
    EXIT_USAGE,
    db_option,
    default_actor,
    emit,
    err_console,
    fail,
    json_option,
    open_engine,
    resolve_run,
    table,
)

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

    from ..audit.anchor import Anchor
    from ..audit.query import RunTimeline
    from ..audit.verify import VerifyReport

__all__ = ["audit"]

#: What ``audit redact --part`` can remove: ``statecraft.audit.redact.PARTS``
#: (a test keeps the two equal; importing that module here would load SQLAlchemy for --help).
_PARTS = ("payload", "input", "output", "state")
_DEFAULT_PARTS = ("payload", "input", "output")
_TABLE_LIMIT = 200
_PREVIEW_CHARS = 160


@click.group()
def audit() -> None:
    """Query, verify, anchor, export and redact the audit ledger.

    \b
    Example:
      statecraft audit log --actor alice@example.com --since 2025-03-01T00:00Z
      statecraft audit show RUN_ID
      statecraft audit anchor --out anchors/2025-03-01.anchor
      statecraft audit verify --anchor anchors/2025-03-01.anchor
      statecraft audit export --run RUN_ID --out run.jsonl
    """


def _time(value: str | None, option: str) -> str | None:
    if value is None:
        return None
    from ..audit.query import parse_time

    try:
        return parse_time(value)
    except ValueError as exc:
        fail(f"{option}: {exc}", EXIT_USAGE)


def _run_ref(engine: Any, ref: str) -> str:
    """The run id ``ref`` names (a unique prefix is enough); ``ref`` itself if no run row has it.

    The ledger may hold events of a run whose row is gone (an insider's
    deletion that verify reports): a reviewer must still be able to name it.
    """
    from ..errors import AmbiguousRunId, RunNotFound

    try:
        return resolve_run(engine, ref)
    except AmbiguousRunId:
        raise
    except RunNotFound:
        return ref


def _anchors(paths: tuple[str, ...]) -> list[Anchor]:
    from ..audit.anchor import read_anchor

    return [read_anchor(p) for p in paths]


# -- log -------------------------------------------------------------------------------


@audit.command(name="log")
@click.option("--run", "run_id", help="Only events of this run.")
@click.option("--machine", help="Only events of runs of this machine name.")
@click.option("--actor", help="Only events by this actor id (person, agent or service).")
@click.option("--event", "event_types", multiple=True, metavar="TYPE",
              help="Only this event type; wildcards allowed (approval.*); repeatable.")
@click.option("--step", help="Only events leaving or entering this step.")
@click.option("--status", type=click.Choice([s.value for s in RunStatus], case_sensitive=False),
              help="Only events after which the run has this status.")
@click.option("--since", help="From this time on (ISO 8601 with offset, inclusive).")
@click.option("--until", help="Before this time (ISO 8601 with offset, exclusive).")
@click.option("--model", help="Only events of calls to this model id.")
@click.option("--after", "after_seq", type=click.IntRange(0), default=0, help="Page: only events after this seq.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help=f"At most this many events (table default {_TABLE_LIMIT}; --json/--csv: all).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (every column) instead of a table.")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines (every column) instead of a table.")
def audit_log(
    run_id: str | None, machine: str | None, actor: str | None, event_types: tuple[str, ...],
    step: str | None, status: str | None, since: str | None, until: str | None, model: str | None,
    after_seq: int, limit: int | None, as_csv: bool, db: str, as_json: bool,
) -> None:
    """Print audit events in seq order, filtered; page with --after and --limit.

    Filters combine (all must match). Times are ISO 8601 with an offset
    (Z or +02:00); the window is since <= occurred_at < until, compared in
    UTC. When a page is cut off, the next page's --after is printed on stderr.

    \b
    Example:
      statecraft audit log --run 3f2c… --json
      statecraft audit log --actor alice@example.com --since 2025-03-01T00:00:00Z --until 2025-04-01T00:00:00Z
      statecraft audit log --event 'approval.*' --csv > approvals.csv
    """
    from ..audit.chain import ALL_COLUMNS
    from ..audit.query import EventFilter, iter_events

    if as_json and as_csv:
        fail("choose one of --json and --csv", EXIT_USAGE)
    table_output = not (as_json or as_csv)
    page = limit if limit is not None else (_TABLE_LIMIT if table_output else None)
    flt = EventFilter(
        run_id=run_id, machine=machine, actor=actor, event_types=event_types, step=step,
        status=status, model=model, since=_time(since, "--since"), until=_time(until, "--until"),
        after_seq=after_seq, limit=None if page is None else page + 1,
    )
    with open_engine(db) as engine:
        if run_id is not None:
            flt = dataclasses.replace(flt, run_id=_run_ref(engine, run_id))
            run_id = flt.run_id
        shown = 0
        last_seq = None
        more = False
        rows = table("seq", "time (UTC)", "run", "#", "event", "status", "step", "actor", "model", "reason",
                     optional=("#", "status", "model"), whole=("seq", "time (UTC)", "run"))
        writer = csv.DictWriter(sys.stdout, fieldnames=list(ALL_COLUMNS)) if as_csv else None
        if writer is not None:
            writer.writeheader()
        for e in iter_events(engine.db, flt):
            if page is not None and shown == page:
                more = True
                break
            shown += 1
            last_seq = e["seq"]
            if as_json:
                click.echo(json.dumps(e, ensure_ascii=False))
            elif writer is not None:
                writer.writerow({k: ("" if v is None else csv_cell(v)) for k, v in e.items()})
            else:
                rows.add_row(*_log_cells(e))
        if shown == 0 and run_id is not None and after_seq == 0:
            if not any(True for _ in iter_events(engine.db, EventFilter(run_id=run_id, limit=1))):
                fail(f"no run with id {run_id!r} in the audit log")
    if table_output:
        emit(rows)
    if more:
        err_console().print(cell(f"more events: next page with --after {last_seq}"), highlight=False)


def _log_cells(e: dict[str, Any]) -> tuple[Text, ...]:
    status = f"{e['from_status'] or ''}→{e['to_status']}" if e["to_status"] else ""
    if e["from_step"] and e["from_step"] != e["to_step"]:
        step = f"{e['from_step']}→{e['to_step']}"
    else:
        step = e["to_step"] or ""
    return tuple(cell(v) for v in (
        e["seq"], e["occurred_at"][:23], (e["run_id"] or "")[:8], e["run_seq"] or "",
        e["event_type"], status, step, f"{e['actor_type']}:{e['actor_id']}", e["model_id"] or "",
        e["reason"] or "",
    ))


def _rows(table: Table, *values: Any) -> None:
    """One table row of data: every value rendered through ``render.cell`` (never markup)."""
    from rich.text import Text

    table.add_row(*(v if isinstance(v, Text) else cell(v) for v in values))


# -- show ------------------------------------------------------------------------------


@audit.command(name="show")
@click.argument("run_id")
@click.option("--full", is_flag=True, help="Show inputs, outputs and payloads in full (default: truncated).")
@db_option
@json_option
def audit_show(run_id: str, full: bool, db: str, as_json: bool) -> None:
    """The full timeline of one run: transitions, actors, reasons, approvals, usage, inputs and outputs.

    Inputs and outputs come from the blob store; "(redacted)" marks a body
    removed lawfully (see `statecraft audit redact`). --json prints one
    object with every event and the full bodies.

    \b
    Example:
      statecraft audit show 3f2c… --full
    """
    with open_engine(db) as engine:
        from ..audit.query import run_timeline

        timeline = run_timeline(engine.db, _run_ref(engine, run_id))
    if as_json:
        click.echo(json.dumps(_timeline_json(timeline), ensure_ascii=False))
        return
    _print_timeline(timeline, full)


def _timeline_json(t: RunTimeline) -> dict[str, Any]:
    events = []
    for e in t.events:
        item = dict(e)
        for column in ("input_sha256", "output_sha256", "state_sha256"):
            item[column.removesuffix("_sha256")] = _body_json(t, e[column])
        redaction = t.redactions.get(e["event_id"])
        item["redacted_by_seq"] = None if redaction is None else redaction["seq"]
        events.append(item)
    return {
        "run": t.run,
        "totals": dict(t.totals),
        "children": list(t.children),
        "approvals": [
            {
                "requested": {k: a.request[k] for k in ("seq", "occurred_at", "actor_id", "reason", "event_id")},
                "decisions": [
                    {k: d[k] for k in ("seq", "event_type", "occurred_at", "actor_id", "reason")}
                    for d in a.decisions
                ],
                "self_approved_by": list(a.self_approved_by),
            }
            for a in t.approvals
        ],
        "events": events,
        "redactions": [
            {"seq": r["seq"], "redacted_event_id": target, "by": r["actor_id"], "reason": r["reason"],
             "occurred_at": r["occurred_at"]}
            for target, r in t.redactions.items()
        ],
    }


def _body_json(t: RunTimeline, digest: str | None) -> Any:
    if digest is None:
        return None
    if digest not in t.blobs:
        return {"sha256": digest, "missing": True}
    body = t.blobs[digest]
    if body is None:
        return {"sha256": digest, "redacted": True}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {"sha256": digest, "size": len(body), "text": None}
    try:
        return {"sha256": digest, "json": json.loads(text)}
    except ValueError:
        return {"sha256": digest, "text": text}


def _clip(value: str | None, full: bool) -> str:
    if value is None:
        return ""
    if full or len(value) <= _PREVIEW_CHARS:
        return value
    return value[:_PREVIEW_CHARS] + f"… ({len(value)} chars; --full shows all)"


def _print_timeline(t: RunTimeline, full: bool) -> None:
    from rich.table import Table
    from rich.text import Text

    run = t.run
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold")
    head.add_column()
    _rows(head, "run", run["run_id"])
    if "machine_name" in run:
        _rows(head, "machine", f"{run['machine_name']} v{run['machine_version']} ({run['machine_digest'][:16]}…)")
        _rows(head, "status", f"{run['status']} at step {run['step']}")
        _rows(head, "started by", f"{run['started_by']} at {run['created_at']}")
        _rows(head, "last change", run["updated_at"])
        if run.get("parent_run_id"):
            _rows(head, "parent run", run["parent_run_id"])
        if run.get("reason"):
            _rows(head, "error", f"{run.get('error_code') or ''} {run['reason']}".strip())
    else:
        _rows(head, "status", "no run row (events only)")
    if t.children:
        _rows(head, "sub-runs", ", ".join(t.children))
    _rows(head, "events", len(t.events))
    _rows(
        head,
        "usage",
        f"{t.totals['tokens_in']} tokens in / {t.totals['tokens_out']} out, "
        f"${t.totals['cost_micros'] / 1e6:.6f} ({t.totals['cost_micros']} micro-USD), "
        f"{t.totals['latency_ms']} ms in agents",
    )
    emit(head)

    timeline = Table("#", "seq", "time (UTC)", "event", "transition", "actor", "details", title="timeline")
    for e in t.events:
        transition = safe(f"{e['from_status'] or '∅'}→{e['to_status']}")
        if e["from_step"] != e["to_step"]:
            transition += "\n" + safe(f"{e['from_step'] or '∅'}→{e['to_step']}")
        elif e["to_step"]:
            transition += "\n" + safe(f"@{e['to_step']}")
        _rows(
            timeline, e["run_seq"], e["seq"], e["occurred_at"], e["event_type"], Text(transition),
            f"{e['actor_type']}:{e['actor_id']}", _details(t, e, full),
        )
    emit(timeline)

    if t.approvals:
        gates = Table("requested", "by", "reason", "decided", "decision", "by", "comment", "flags", title="approvals")
        for a in t.approvals:
            req = a.request
            decisions = a.decisions or ({},)
            for d in decisions:
                flags = []
                if d and d["actor_id"] in a.self_approved_by:
                    flags.append("SELF-APPROVAL")
                if d and not (d.get("reason") or "").strip():
                    flags.append("no reason recorded")
                _rows(
                    gates,
                    f"seq {req['seq']} {req['occurred_at']}", req["actor_id"], _clip(req["reason"], full),
                    f"seq {d['seq']} {d['occurred_at']}" if d else "(pending)",
                    d.get("event_type", "").removeprefix("approval.") if d else "",
                    d.get("actor_id", "") if d else "", _clip(d.get("reason"), full) if d else "",
                    ", ".join(flags),
                )
        emit(gates)


def _details(t: RunTimeline, e: dict[str, Any], full: bool) -> Text:
    from rich.text import Text

    lines: list[str] = []
    if e["decision"] or e["outcome"]:
        lines.append(f"decision {e['decision'] or '-'} → {e['outcome'] or '-'}")
    if e["reason"]:
        lines.append(f"reason: {_clip(e['reason'], full)}")
    if e["error_code"]:
        lines.append(f"error: {e['error_code']}")
    if e["agent_name"]:
        lines.append(
            f"agent {e['agent_name']} v{e['agent_version'] or '?'}, prompt {e['prompt_version'] or '-'}"
        )
    if e["model_id"]:
        lines.append(f"model {e['model_provider'] or '?'}/{e['model_id']}")
    usage = []
    if e["tokens_in"] is not None or e["tokens_out"] is not None:
        usage.append(f"{e['tokens_in'] or 0} in / {e['tokens_out'] or 0} out tokens")
    if e["cost_micros"] is not None:
        usage.append(f"${e['cost_micros'] / 1e6:.6f}")
    if e["latency_ms"] is not None:
        usage.append(f"{e['latency_ms']} ms")
    if e["attempt"] is not None:
        usage.append(f"attempt {e['attempt']}")
    if usage:
        lines.append(", ".join(usage))
    if e["caused_by_event_id"]:
        cause = next((c for c in t.events if c["event_id"] == e["caused_by_event_id"]), None)
        lines.append(f"answers seq {cause['seq']}" if cause else f"answers event {e['caused_by_event_id']}")
    for label, column in (("input", "input_sha256"), ("output", "output_sha256")):
        body = t.blob_text(e[column], pretty=full)
        if body is not None:
            lines.append(f"{label}: {_clip(body, full)}")
    redaction = t.redactions.get(e["event_id"])
    if e["payload_json"] is not None:
        lines.append(f"payload: {_clip(e['payload_json'], full)}")
    elif e["payload_sha256"] is not None:
        lines.append("payload: (redacted)")
    if redaction is not None:
        lines.append(
            f"redacted (authorised by seq {redaction['seq']}, {redaction['actor_id']}: {redaction['reason']})"
        )
    # Each line is escaped on its own: a data string cannot add a line, and the
    # line breaks of a pretty-printed JSON body (ours; its strings escape theirs) stay.
    return Text("\n".join("\n".join(safe(part) for part in line.split("\n")) if _is_json_body(line) else safe(line)
                          for line in lines))


def _is_json_body(line: str) -> bool:
    return line.startswith(("input: ", "output: ", "payload: "))


# -- verify ----------------------------------------------------------------------------


@audit.command(name="verify")
@click.option("--anchor", "anchor_paths", multiple=True, metavar="FILE",
              help="An anchor file (from `audit anchor`); repeatable: the newest is checked, older ones must match too.")
@click.option("--blob-refs/--no-blob-refs", default=True, show_default=True,
              help="Check that every blob an event references is stored (a deleted blob row); one lookup per reference.")
@click.option("--keyring", metavar="DIR",
              help="Also check every approval's signature against this keyring (statecraft keys).")
@db_option
@json_option
def audit_verify(anchor_paths: tuple[str, ...], blob_refs: bool, keyring: str | None, db: str, as_json: bool) -> None:
    """Verify the hash chain, blobs and run rows; with --anchor, also the tail and history.

    Exit 0 with "OK up to seq N" when intact; exit 1 with "FAILED at seq N:
    reason" otherwise. Without an anchor this proves the ledger internally
    consistent up to seq N, not that its tail was not cut off nor that it
    was not rewritten and rehashed; an anchor kept outside the database
    proves rows 1..its seq are the originals. An anchor older than one the
    database has already seen is refused. Lawfully redacted payloads are
    listed as "redacted (authorised by seq M)".

    With --keyring DIR, every signed approval must verify and the keyring
    must bind its key to the approver; a gate that required signatures must
    have only signed approvals. The first bad approval is named by its seq.

    \b
    Example:
      statecraft audit verify
      statecraft audit verify --anchor /worm/ledger-2025-03.anchor
      statecraft audit verify --keyring /srv/statecraft/keyring
    """
    from ..audit.anchor import remember_anchor
    from ..audit.verify import verify_ledger

    anchors = _anchors(anchor_paths)
    ring = None
    if keyring is not None:
        from ..signing import Keyring

        ring = Keyring.load(keyring)
    with open_engine(db) as engine:
        report = verify_ledger(engine.db, anchors=anchors, check_blob_refs=blob_refs, keyring=ring)
        remembered = True
        if report.ok and anchors:
            remembered = remember_anchor(engine.db, max(anchors, key=lambda a: a.seq))
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json"), ensure_ascii=False))
    else:
        click.echo(safe(_verify_line(report, anchors)))
        for seq, by in report.redactions:
            click.echo(f"seq {seq}: redacted (authorised by seq {by})")
        if report.ok and report.signatures_checked is not None:
            click.echo(safe(f"signatures: {report.signatures_checked} signed approvals verified against keyring {keyring}"))
    if not as_json:
        for warning in report.warnings:
            err_console().print(cell(f"warning: {warning}"), highlight=False)
    if not remembered:
        err_console().print("note: the database is read-only here, so this anchor was not remembered", highlight=False)
    if not report.ok:
        sys.exit(1)


def _verify_line(report: VerifyReport, anchors: list[Anchor]) -> str:
    if not report.ok:
        if report.first_bad_seq is None:
            return f"FAILED: {report.reason}"
        return f"FAILED at seq {report.first_bad_seq}: {report.reason}"
    if report.anchored_seq is None:
        return (
            f"OK up to seq {report.last_seq} ({report.events_checked} events; "
            "internally consistent, no anchor checked)"
        )
    newest = max(anchors, key=lambda a: a.seq)
    tail = (
        f"; rows after seq {report.anchored_seq} internally consistent"
        if report.last_seq > report.anchored_seq else ""
    )
    return (
        f"OK up to seq {report.last_seq} ({report.events_checked} events; anchored: rows "
        f"1..{report.anchored_seq} match {newest.describe()}{tail})"
    )


# -- anchor ----------------------------------------------------------------------------


@audit.command(name="anchor")
@click.option("--out", "out", metavar="FILE", help="Write the anchor to FILE (must not exist); default stdout.")
@click.option("--by", default=None, help="Actor id recorded on the ledger.anchored event (default user:$USER).")
@db_option
@json_option
def audit_anchor(out: str | None, by: str | None, db: str, as_json: bool) -> None:
    """Record a ledger.anchored event and write the ledger head as an anchor.

    The anchor (format "statecraft-anchor v1": ledger_id, seq, entry_hash,
    time; see docs/audit.md) is meant to be kept OUTSIDE the database, in
    write-once storage; `audit verify --anchor FILE` then detects a
    truncated tail and a rewritten history.

    \b
    Example:
      statecraft audit anchor --out /worm/ledger-$(date -u +%Y%m%dT%H%M%SZ).anchor
    """
    if out is not None and Path(out).exists():
        fail(f"{out} exists; anchors are write-once, choose a new file name")
    from ..audit.anchor import take_anchor

    with open_engine(db) as engine:
        anchor = take_anchor(engine.db, by=by or default_actor(), actor_type="human")
    if out is not None:
        _write_new(Path(out), anchor.text())
        err_console().print(cell(f"anchored seq {anchor.seq} of ledger {anchor.ledger_id} → {out}"), highlight=False)
    if as_json:
        click.echo(json.dumps({"ledger_id": anchor.ledger_id, "seq": anchor.seq,
                               "entry_hash": anchor.entry_hash, "time": anchor.time, "text": anchor.text()}))
    elif out is None:
        click.echo(anchor.text(), nl=False)


def _write_new(path: Path, content: str) -> None:
    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")


# -- export ----------------------------------------------------------------------------


@audit.command(name="export")
@click.option("--run", "runs", multiple=True, metavar="RUN_ID", help="Events of this run; repeatable (default: all runs).")
@click.option("--since", help="From this time on (ISO 8601 with offset, inclusive).")
@click.option("--until", help="Before this time (ISO 8601 with offset, exclusive).")
@click.option("--through", type=click.IntRange(1), default=None,
              help="Extend the chain context to this seq (e.g. an anchor's), so the bundle can be checked against it.")
@click.option("--anchor", "anchor_paths", multiple=True, metavar="FILE",
              help="Include this anchor and extend the context to it; repeatable.")
@click.option("--out", "out", required=True, metavar="FILE", help="The bundle to write (must not exist); - for stdout.")
@db_option
@json_option
def audit_export(
    runs: tuple[str, ...], since: str | None, until: str | None, through: int | None,
    anchor_paths: tuple[str, ...], out: str, db: str, as_json: bool,
) -> None:
    """Write a self-contained JSON-lines bundle: events, their blobs, and chain context.

    `statecraft audit verify-export FILE` checks it without the database.
    Context rows (other events between the selected ones, without payloads
    or blobs) let the verifier recompute the chain across the whole span.

    \b
    Example:
      statecraft audit export --run 3f2c… --out run-3f2c.jsonl
      statecraft audit export --since 2025-03-01T00:00Z --until 2025-04-01T00:00Z --anchor q1.anchor --out march.jsonl
    """
    from ..audit.export import export_bundle

    anchors = _anchors(anchor_paths)
    target = None if out == "-" else Path(out)
    if target is not None and target.exists():
        fail(f"{out} exists; choose a new file name")
    with open_engine(db) as engine:
        runs = tuple(_run_ref(engine, r) for r in runs)
        if target is None:
            summary = export_bundle(engine.db, sys.stdout, runs=runs, since=_time(since, "--since"),
                                    until=_time(until, "--until"), through=through, anchors=anchors)
        else:
            # Write beside the target and rename: a reader never sees half a bundle.
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                    summary = export_bundle(engine.db, handle, runs=runs, since=_time(since, "--since"),
                                            until=_time(until, "--until"), through=through, anchors=anchors)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.link(tmp, target)  # fails if the target appeared meanwhile
            finally:
                os.unlink(tmp)
    message = (
        f"exported {summary.events} events, {summary.context} context rows, {summary.blobs} blobs "
        f"(seqs {summary.first_seq}..{summary.last_seq}) → {out}"
    )
    if as_json and target is not None:
        click.echo(json.dumps({"out": out, **dataclasses.asdict(summary)}))
    else:
        err_console().print(cell(message), highlight=False)


@audit.command(name="verify-export")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--anchor", "anchor_paths", multiple=True, metavar="FILE",
              help="An anchor kept outside the database; its seq must lie inside the bundle. Repeatable.")
@json_option
def audit_verify_export(bundle: str, anchor_paths: tuple[str, ...], as_json: bool) -> None:
    """Check an export bundle without the database.

    Recomputes every entry hash and chain link in the bundle, payload and
    blob hashes, redactions and anchors. Exit 0 with "OK …", exit 1 with
    "FAILED at seq N: reason".

    \b
    Example:
      statecraft audit verify-export run-3f2c.jsonl --anchor q1.anchor
    """
    if not Path(bundle).is_file():
        fail(f"no bundle at {bundle}", EXIT_USAGE)
    from ..audit.export import verify_export

    report = verify_export(bundle, anchors=_anchors(anchor_paths))
    if as_json:
        click.echo(json.dumps(report.model_dump(mode="json"), ensure_ascii=False))
    elif report.ok:
        if report.anchored_seq is not None:
            bound = (
                f"anchored: rows {report.first_seq}..{report.anchored_seq} are the ledger's own "
                f"(anchor of {report.anchor_time}, given from outside)"
            )
        elif report.embedded_anchor_seq is not None:
            bound = (
                f"internally consistent; an anchor inside the bundle claims seq {report.embedded_anchor_seq} "
                "(not proof: whoever could rewrite the rows could rewrite it; check with --anchor FILE "
                "from your own write-once copy)"
            )
        else:
            bound = "internally consistent, no anchor covers it"
        click.echo(safe(
            f"OK: seqs {report.first_seq}..{report.last_seq} of ledger {report.ledger_id}: "
            f"{report.events} events, {report.context} context rows, {report.blobs} blobs; {bound}"
        ))
        for seq, by in report.redactions:
            click.echo(f"seq {seq}: redacted (authorised by seq {by})")
        if report.selection:
            click.echo(safe(f"selection: {json.dumps(report.selection, ensure_ascii=False)}"))
    elif report.first_bad_seq is None:
        click.echo(safe(f"FAILED: {report.reason}"))
    else:
        click.echo(safe(f"FAILED at seq {report.first_bad_seq}: {report.reason}"))
    if not report.ok:
        sys.exit(1)


# -- redact ----------------------------------------------------------------------------


@audit.command(name="redact")
@click.argument("event")
@click.option("--by", required=True, help="Stable id of who authorises the redaction (e.g. the DPO).")
@click.option("--reason", required=True, help="Why (e.g. the erasure request's reference); recorded.")
@click.option("--part", "parts", multiple=True, type=click.Choice(_PARTS),
              help=f"What to remove; repeatable (default: {', '.join(_DEFAULT_PARTS)}).")
@db_option
@json_option
def audit_redact(event: str, by: str, reason: str, parts: tuple[str, ...], db: str, as_json: bool) -> None:
    """Remove an event's payload and input/output bodies, recorded by a payload.redacted event.

    EVENT is the event's event_id (or its seq). Hashes stay, so the chain
    still verifies: `audit verify` reports the event as "redacted
    (authorised by seq N)". Commits one transaction.

    \b
    Example:
      statecraft audit redact 6f1e… --by dpo@example.com --reason "erasure request ER-2025-17"
    """
    from ..audit.redact import redact_event

    with open_engine(db) as engine:
        done = redact_event(engine.db, event, by=by, reason=reason, parts=parts or _DEFAULT_PARTS)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(done)))
        return
    removed = (["payload"] if done.payload_removed else []) + [
        f"{column.removesuffix('_sha256')} blob {digest[:12]}…" for column, digest in done.blobs_removed.items()
    ]
    click.echo(
        f"redacted seq {done.seq} ({', '.join(removed)}); authorised by seq {done.redaction_seq} (payload.redacted)"
    )
