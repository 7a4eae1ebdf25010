"""Operators' commands: start, status, list, approve, reject, cancel, retry, resume, worker, graph.

Each parses its options, calls one :class:`~statecraft.engine.Engine`
method, and renders the answer (rich tables for people, ``--json`` and
``--csv`` for programs). RUN_ID arguments take any unique prefix of a run id.
Exit codes: :mod:`statecraft.cli.common`.
"""

from __future__ import annotations

import csv
import os
import sys
from contextlib import nullcontext
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from ..lifecycle import RunStatus
from .common import (
    EXIT_USAGE,
    StepProgress,
    db_option,
    default_actor,
    emit,
    err_console,
    fail,
    interrupt_hint,
    json_option,
    open_engine,
    outcome_exit,
    print_json,
    read_input,
    resolve_run,
    status_text,
    table,
    when,
)

if TYPE_CHECKING:
    from ..views import PendingApproval, RunInfo

__all__ = ["RUN_COMMANDS"]

_STATUSES = click.Choice([s.value for s in RunStatus], case_sensitive=False)
_LIST_TABLE_LIMIT = 100


def _print_run(info: RunInfo, as_json: bool, *, full_state: bool = True) -> None:
    if as_json:
        print_json(info.model_dump(mode="json"))
        return
    from rich.table import Table

    from ..render import cell

    grid = Table(show_header=False, box=None, pad_edge=False)
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")

    def row(label: str, value: Any) -> None:
        grid.add_row(cell(label), value if not isinstance(value, (str, int)) else cell(value))

    row("run", info.run_id)
    row("machine", f"{info.machine} v{info.version}")
    row("status", status_text(info.status))
    row("step", info.step)
    row("steps", info.steps_taken)
    row("started by", info.started_by)
    row("updated", when(info.updated_at))
    if info.reason:
        row("reason", f"{info.error_code or ''} {info.reason}".strip())
    if info.pending is not None:
        p = info.pending
        row("waiting for", f"approval to continue at {p.resume_at!r}")
        row("proposal", p.reason or "")
        row("digest", p.proposal_digest)
        if p.required > 1 or p.approved_by or p.approver_group is not None:
            row("approvals", _approvals_text(p))
    if info.tokens_in or info.tokens_out or info.cost_micros:
        row("usage", f"{info.tokens_in} in / {info.tokens_out} out tokens, ${info.cost_micros / 1e6:.6f}")
    if full_state:
        for key, value in info.state.items():
            # One level of nesting is expanded: reports are usually a dict of scalars.
            items = value.items() if isinstance(value, dict) and value else [("", value)]
            for sub, item in items:
                row(f"state.{key}.{sub}" if sub else f"state.{key}", _brief(item))
    emit(grid)


def _brief(value: Any, limit: int = 100) -> str:
    """One line for a state value: scalars as JSON, collections by their size."""
    import json

    if isinstance(value, list):
        return f"[{len(value)} items]" if value else "[]"
    if isinstance(value, dict):
        keys = ", ".join(list(value)[:6])
        return "{" + keys + (", …" if len(value) > 6 else "") + "}"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _approvals_text(p: PendingApproval) -> str:
    so_far = ", ".join(p.approved_by) or "none yet"
    group = f"; eligible: {', '.join(p.approver_group)}" if p.approver_group is not None else ""
    return f"{len(p.approved_by)} of {p.required} ({so_far}){group}"


def _next_hint(info: RunInfo) -> None:
    from ..render import cell

    err = err_console()
    if info.status == RunStatus.RUNNING:
        err.print(cell(f"run {info.run_id} is RUNNING: a worker advances it (statecraft worker), "
                       f"or continue it here: statecraft resume {info.run_id}"), highlight=False)
    if info.status == RunStatus.WAITING_FOR_APPROVAL and info.pending is not None:
        if info.pending.required > 1:
            err.print(cell(f"approvals: {_approvals_text(info.pending)}"), highlight=False)
        for line in (
            f"run {info.run_id} waits for approval: {info.pending.reason}",
            f"  approve: statecraft approve {info.run_id} --by YOUR_ID --digest {info.pending.proposal_digest}",
            f"  reject:  statecraft reject {info.run_id} --by YOUR_ID --reason TEXT",
        ):
            err.print(cell(line), highlight=False)


def _print_outcome(info: RunInfo, as_json: bool, *, failed_exit: bool = True) -> None:
    """The run as a command left it; exit 3 when it ended FAILED and ``failed_exit`` (not for reject/cancel)."""
    if as_json:
        print_json(info.model_dump(mode="json"))
    else:
        from ..render import cell

        out_line = cell(f"{info.run_id} {info.status.value}")
        emit(out_line)
        _next_hint(info)
    if failed_exit:
        outcome_exit(info)


@click.command()
@click.argument("machine_ref", metavar="MACHINE")
@click.option("--input", "input_path", metavar="FILE|-",
              help="The run's input: a text file, a JSON object file, - for stdin, or a pipe such as <(…).")
@click.option("--by", default=None, help="Actor id of who starts the run (default user:$USER).")
@click.option("--detach", is_flag=True, help="Create and start the run, but leave advancing it to a worker.")
@db_option
@json_option
def start(machine_ref: str, input_path: str | None, by: str | None, detach: bool, db: str, as_json: bool) -> None:
    """Start a run of MACHINE and advance it until it finishes, fails or waits for approval.

    MACHINE is path/to/file.py[:attr] or package.module:attr. Exit 0 when the
    run is DONE or waits for approval, 3 when it ended FAILED; on Ctrl-C
    (exit 130) the line printed names the run and how to resume it.

    \b
    Example:
      statecraft start machines/contract_review.py --input machines/samples/sample_msa.md
      statecraft start machines/payments.py --input - < payment.json --json
    """
    from ..loader import load_machine

    machine = load_machine(machine_ref)
    task = read_input(input_path)
    with open_engine(db, create=True) as engine:
        info = engine.start(machine, task, by=by or default_actor(), actor_type="human", ref=machine_ref,
                            advance=False)
        if not detach:
            info = _advance(engine, info, as_json)
        _print_outcome(info, as_json)


def _advance(engine: Any, info: RunInfo, as_json: bool) -> RunInfo:
    """Advance a run just started, with progress lines, a Ctrl-C hint, and a worker's lease respected."""
    from ..errors import LeaseHeld

    with interrupt_hint(info.run_id), StepProgress(None if as_json else info.step) as progress:
        try:
            return engine.advance(info.run_id, on_event=None if as_json else progress)  # type: ignore[no-any-return]
        except LeaseHeld:  # a worker took it between the start and now: it is in good hands
            return engine.get(info.run_id)  # type: ignore[no-any-return]


@click.command()
@click.argument("run_id")
@db_option
@json_option
def status(run_id: str, db: str, as_json: bool) -> None:
    """Show one run: status, step, pending proposal and its digest, state.

    \b
    Example:
      statecraft status 3f2c… --json
    """
    with open_engine(db) as engine:
        _print_run(engine.get(resolve_run(engine, run_id)), as_json)


@click.command(name="list")
@click.option("--status", "status_", type=_STATUSES, help="Only runs with this status (any case).")
@click.option("--machine", help="Only runs of this machine name.")
@click.option("--since", help="Only runs created at or after this time (ISO 8601 with offset).")
@click.option("--until", help="Only runs created before this time (ISO 8601 with offset).")
@click.option("--after", "after", metavar="RUN_ID", help="Page: the runs listed after this one.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help=f"At most this many runs (table default {_LIST_TABLE_LIMIT}; --json/--csv: all).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@db_option
@json_option
def list_runs(
    status_: str | None, machine: str | None, since: str | None, until: str | None, after: str | None,
    limit: int | None, as_csv: bool, db: str, as_json: bool,
) -> None:
    """List runs, newest first; page with --after and --limit.

    Filters combine. A table shows at most 100 runs unless --limit says
    otherwise; when a page is cut off, the command for the next page is
    printed on stderr (never a silent cut).

    \b
    Example:
      statecraft list --status waiting_for_approval
      statecraft list --machine payments --since 2026-12-01T00:00Z --csv > runs.csv
      statecraft list --after 3f2c1a9b --limit 50 --json
    """
    if as_json and as_csv:
        fail("choose one of --json and --csv", EXIT_USAGE)
    page = limit if limit is not None else (None if as_json or as_csv else _LIST_TABLE_LIMIT)
    with open_engine(db) as engine:
        if after is not None:
            after = resolve_run(engine, after)
        try:
            runs = engine.list(status=status_, machine=machine, since=since, until=until, after=after,
                               limit=(page + 1) if page is not None else 2**62)
        except ValueError as exc:
            fail(f"--since/--until: {exc}", EXIT_USAGE)
    more = page is not None and len(runs) > page
    runs = runs[:page] if page is not None else runs
    if as_json:
        print_json([r.model_dump(mode="json") for r in runs])
    elif as_csv:
        _runs_csv(runs)
    else:
        from ..render import cell

        rows = table("run", "status", "updated (UTC)", "step", "machine", "reason", optional=("machine",),
                     whole=("run", "updated (UTC)"))
        for r in runs:
            rows.add_row(
                cell(r.run_id), status_text(r.status), cell(when(r.updated_at)), cell(r.step),
                cell(f"{r.machine} v{r.version}"), cell(r.reason or (r.pending.reason if r.pending else "") or ""),
            )
        emit(rows)
    if more:
        from ..render import cell

        err_console().print(cell(f"more runs: next page with --after {runs[-1].run_id}"), highlight=False)


_CSV_COLUMNS = ("run_id", "machine", "version", "status", "step", "steps_taken", "started_by",
                "created_at", "updated_at", "error_code", "reason")


def _runs_csv(runs: list[RunInfo]) -> None:
    from ..render import csv_cell

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for r in runs:
        record = r.model_dump(mode="json")
        writer.writerow(["" if record.get(c) is None else csv_cell(record.get(c)) for c in _CSV_COLUMNS])


@click.command()
@click.argument("run_id")
@click.option("--by", required=True, help="The approver's stable id (e.g. an email).")
@click.option("--comment", help="Why you approve; recorded in the audit event.")
@click.option("--digest", help="The proposal digest you reviewed (from `statecraft status`); refused if it changed.")
@click.option("--no-digest", "no_digest", is_flag=True,
              help="Approve whatever is pending without naming its digest (recorded as digest_checked: false).")
@click.option("--sign-key", "sign_key", metavar="FILE",
              help="Sign the approval with your key (from `statecraft keys init`); needs --digest.")
@click.option("--keyring", metavar="DIR", envvar="STATECRAFT_KEYRING",
              help="Keyring the engine checks signed approvals against (env: STATECRAFT_KEYRING).")
@click.option("--no-continue", "no_continue", is_flag=True, help="Record the approval only; a worker continues the run.")
@click.option("--extend", "extend", multiple=True, metavar="BUDGET=LIMIT",
              help="Raise a budget (max_steps, max_visits, max_tokens, max_cost_micros; deadline in seconds). Repeatable.")
@db_option
@json_option
def approve(
    run_id: str, by: str, comment: str | None, digest: str | None, no_digest: bool, sign_key: str | None,
    keyring: str | None, no_continue: bool, extend: tuple[str, ...], db: str, as_json: bool,
) -> None:
    """Approve the proposal RUN_ID waits on, then continue the run inline.

    Name the proposal you reviewed with --digest (from `statecraft status`),
    or say --no-digest to approve whatever is pending (recorded). A gate with
    an approval policy (e.g. two of a finance group) records each approval
    and keeps waiting until enough distinct, eligible people approved;
    self-approval and approving twice are refused, whatever the spelling of
    the id. --sign-key signs the approval (Ed25519) over the digest, the run
    and your id; a gate that requires signatures refuses unsigned approvals.

    \b
    Example:
      statecraft approve 3f2c… --by alice@example.com --digest 9ab1… --comment "liability cap acceptable"
      statecraft approve 3f2c… --by alice@example.com --digest 9ab1… --sign-key ~/.statecraft/alice.key
      statecraft approve 3f2c… --by alice@example.com --no-digest --extend max_cost_micros=5000000
    """
    if digest is None and not no_digest:
        fail("approve needs --digest DIGEST (the proposal you reviewed, from `statecraft status "
             f"{run_id}`), or --no-digest to approve whatever is pending", EXIT_USAGE)
    if digest is not None and no_digest:
        fail("give --digest or --no-digest, not both", EXIT_USAGE)
    if sign_key is not None and digest is None:
        fail("--sign-key signs the digest you reviewed: give --digest", EXIT_USAGE)
    budgets = _parse_extend(extend) or None
    with open_engine(db, keyring=keyring) as engine:
        run_id = resolve_run(engine, run_id)
        signature = None
        if sign_key is not None:
            assert digest is not None
            from ..identity import normalize_actor
            from ..signing import SigningKey

            key = SigningKey.load(sign_key)
            approver = normalize_actor(by, run_id=run_id)
            if key.actor_id != approver:
                fail(f"the key in {sign_key} belongs to {key.actor_id}, not {approver}")
            signature = key.sign_approval(run_id=run_id, proposal_digest=digest, approver_id=approver)
        with interrupt_hint(run_id), _progress_for(engine, run_id, as_json or no_continue) as progress:
            info = engine.approve(
                run_id, by=by, comment=comment, digest=digest, signature=signature, advance=not no_continue,
                extend=budgets, on_event=progress,
            )
        _print_outcome(info, as_json)


def _progress_for(engine: Any, run_id: str, quiet: bool) -> Any:
    """A :class:`StepProgress` for advancing ``run_id`` from where it stands (silent with ``quiet``)."""
    if quiet:
        return nullcontext()  # as ``progress``: None, so the engine reports to no one
    current = engine.get(run_id)
    step = current.pending.resume_at if current.pending is not None else current.step
    return StepProgress(step)


@click.command()
@click.argument("run_id")
@click.option("--by", required=True, help="The reviewer's stable id.")
@click.option("--reason", required=True, help="Why the proposal is rejected (audited).")
@db_option
@json_option
def reject(run_id: str, by: str, reason: str, db: str, as_json: bool) -> None:
    """Reject the proposal RUN_ID waits on; the run goes FAILED.

    \b
    Example:
      statecraft reject 3f2c… --by bob@example.com --reason "unlimited liability"
    """
    with open_engine(db) as engine:
        info = engine.reject(resolve_run(engine, run_id), by=by, reason=reason)
    _print_outcome(info, as_json, failed_exit=False)


@click.command()
@click.argument("run_id")
@click.option("--by", required=True, help="The operator's stable id.")
@click.option("--reason", required=True, help="Why the run is cancelled (audited).")
@db_option
@json_option
def cancel(run_id: str, by: str, reason: str, db: str, as_json: bool) -> None:
    """Cancel a run that has not finished; it goes FAILED.

    \b
    Example:
      statecraft cancel 3f2c… --by ops@example.com --reason "duplicate request"
    """
    with open_engine(db) as engine:
        info = engine.cancel(resolve_run(engine, run_id), by=by, reason=reason)
    _print_outcome(info, as_json, failed_exit=False)


@click.command()
@click.argument("run_id")
@click.option("--by", required=True, help="The operator's stable id.")
@click.option("--reason", help="Why the run is retried (audited).")
@db_option
@json_option
def retry(run_id: str, by: str, reason: str | None, db: str, as_json: bool) -> None:
    """Retry a FAILED run from its last checkpoint and advance it inline.

    \b
    Example:
      statecraft retry 3f2c… --by ops@example.com --reason "upstream outage over"
    """
    with open_engine(db) as engine:
        run_id = resolve_run(engine, run_id)
        with interrupt_hint(run_id), _progress_for(engine, run_id, as_json) as progress:
            info = engine.retry(run_id, by=by, reason=reason, on_event=progress)
    _print_outcome(info, as_json)


def _parse_extend(items: tuple[str, ...]) -> dict[str, int | timedelta]:
    out: dict[str, int | timedelta] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            fail(f"--extend takes BUDGET=INTEGER, not {item!r}", EXIT_USAGE)
        out[name.strip()] = timedelta(seconds=int(value)) if name.strip() == "deadline" else int(value)
    return out


@click.command()
@click.argument("run_id")
@click.option("--wait", "wait_s", type=float, default=0.0, show_default=True,
              help="Seconds to wait for a live lease held by another process to expire.")
@db_option
@json_option
def resume(run_id: str, wait_s: float, db: str, as_json: bool) -> None:
    """Continue RUN_ID, a RUNNING run whose process died, from its last checkpoint.

    Committed steps are not run again; the step in flight when the process
    died is (side effects keep their idempotency keys). A lease held by a
    dead process on this host is taken over at once, any other after it
    expires; the takeover is audited.

    \b
    Example:
      statecraft resume 3f2c… --wait 60
    """
    with open_engine(db) as engine:
        run_id = resolve_run(engine, run_id)
        with interrupt_hint(run_id), _progress_for(engine, run_id, as_json) as progress:
            info = engine.resume(run_id, wait=timedelta(seconds=wait_s), on_event=progress)
    _print_outcome(info, as_json)


@click.command()
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1, 256), help="Runs advanced at once (threads).")
@click.option("--poll", "poll_s", default=1.0, show_default=True, type=click.FloatRange(0.01), help="Seconds between polls when idle.")
@click.option("--grace", "grace_s", default=30.0, show_default=True, type=click.FloatRange(0), help="Seconds steps in progress may take after SIGTERM before they are abandoned.")
@click.option("--lease", "lease_s", default=60.0, show_default=True, type=click.FloatRange(0.1), help="Lease duration in seconds (renewed every third of it).")
@click.option("--until-idle", is_flag=True, help="Exit once nothing is runnable or in flight (for cron jobs and tests).")
@click.option("--verbose", is_flag=True, help="Also log skipped runs (debug level).")
@db_option
def worker(concurrency: int, poll_s: float, grace_s: float, lease_s: float, until_idle: bool, verbose: bool, db: str) -> None:
    """Advance runnable runs until stopped; log one JSON object per line on stderr.

    Picks up runs started with --detach, approved with --no-continue, or left
    RUNNING by a dead process; enforces approval deadlines. SIGTERM/SIGINT
    stop it gracefully (steps in progress finish, leases are released); a
    second signal abandons the steps in progress.

    \b
    Example:
      statecraft worker --concurrency 4 --db /var/lib/statecraft/prod.db
    """
    import logging

    from ..worker import Worker, configure_logging

    configure_logging(logging.DEBUG if verbose else logging.INFO)
    with open_engine(db, lease=timedelta(seconds=lease_s)) as engine:
        w = Worker(
            engine, concurrency=concurrency, poll=timedelta(seconds=poll_s),
            grace=timedelta(seconds=grace_s),
        )
        w.install_signal_handlers()
        stats = w.run(until_idle=until_idle)
    if stats.abandoned:
        # Abandoned agents may still be running on pool threads that the
        # interpreter would wait for at exit; their leases are released and
        # their commits fenced, so leave now (as a crash would, minus the wait).
        sys.stderr.flush()
        os._exit(0)


@click.command()
@click.argument("machine_ref", metavar="MACHINE", required=False)
@click.option("--lifecycle", is_flag=True, help="Print the run lifecycle instead of a machine.")
def graph(machine_ref: str | None, lifecycle: bool) -> None:
    """Print MACHINE's step graph (or the run lifecycle) as a Mermaid stateDiagram.

    \b
    Example:
      statecraft graph machines/contract_review.py > contract_review.mmd
    """
    if lifecycle:
        from ..lifecycle import lifecycle_mermaid

        click.echo(lifecycle_mermaid())
        return
    if machine_ref is None:
        fail("give a MACHINE (path.py[:attr] or module:attr) or --lifecycle", EXIT_USAGE)
    from ..loader import load_machine

    click.echo(load_machine(machine_ref).mermaid())


RUN_COMMANDS = (start, status, list_runs, approve, reject, cancel, retry, resume, worker, graph)
