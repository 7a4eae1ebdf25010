"""``statecraft audit …``: read and verify the audit ledger (for compliance reviewers).

Thin like the rest of the CLI: parse, call one function, render.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.table import Table

from .cli import _db_options, _fail, _Group, _json_option, _open, _out

@click.group(cls=_Group)
def audit() -> None:
    """Read and verify the audit ledger.

    \b
    Example:
      statecraft audit log --run 3f2c…
      statecraft audit verify
    """


@audit.command(name="log")
@click.option("--run", "run_id", help="Only events of this run.")
@_db_options
@_json_option
def audit_log(run_id: str | None, db: str, as_json: bool) -> None:
    """Print audit events in seq order (JSON lines with --json).

    \b
    Example:
      statecraft audit log --run 3f2c… --json
    """
    with _open(db) as engine:
        events = engine.events(run_id)
    if run_id is not None and not events:
        _fail(f"no run with id {run_id!r} in the audit log")
    if as_json:
        for e in events:
            click.echo(json.dumps(e.model_dump(mode="json"), ensure_ascii=False))
        return
    table = Table("seq", "time (UTC)", "run", "#", "event", "status", "step", "actor", "reason")
    for e in events:
        status_txt = f"{e.from_status or ''}→{e.to_status}" if e.to_status else ""
        step_txt = f"{e.from_step}→{e.to_step}" if e.from_step and e.from_step != e.to_step else (e.to_step or "")
        table.add_row(
            str(e.seq), e.occurred_at[:23], (e.run_id or "")[:8], str(e.run_seq or ""),
            e.event_type, status_txt, step_txt, f"{e.actor_type}:{e.actor_id}", (e.reason or "")[:60],
        )
    _out.print(table)


@audit.command(name="verify")
@_db_options
@_json_option
def audit_verify(db: str, as_json: bool) -> None:
    """Verify the hash chain and that run rows equal the fold of their events.

    Exit 0 with "OK up to seq N" when intact; exit 1 with the first bad seq and
    the reason otherwise. Without an anchor this proves the ledger internally
    consistent up to seq N, not that its tail was not cut off.

    \b
    Example:
      statecraft audit verify
    """
    from .audit.verify import verify_ledger

    with _open(db) as engine:
        report = verify_ledger(engine.db)
    if as_json:
        click.echo(json.dumps(report_json(report), ensure_ascii=False))
    elif report.ok:
        click.echo(f"OK up to seq {report.last_seq} ({report.events_checked} events; internally consistent, no anchor checked)")
    else:
        click.echo(f"FAILED at seq {report.first_bad_seq}: {report.reason}")
    if not report.ok:
        sys.exit(1)


def report_json(report: Any) -> dict[str, Any]:
    """A verify report as a JSON-compatible dict."""
    if hasattr(report, "model_dump"):
        return report.model_dump(mode="json")  # type: ignore[no-any-return]
    import dataclasses

    return {k: (list(v) if isinstance(v, (tuple, frozenset, set)) else v) for k, v in dataclasses.asdict(report).items()}


