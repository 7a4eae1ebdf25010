"""The ``statecraft`` command line: parse, call one engine method, render.

Data goes to stdout (``--json`` on every command that shows data), messages
and progress to stderr. Our errors become one line on stderr with exit code 1;
usage errors exit 2. ``--db`` (or ``$STATECRAFT_DB``) names the database on
every command.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .engine import Engine, StepReport
from .errors import StatecraftError
from .lifecycle import RunStatus, lifecycle_mermaid
from .loader import load_machine
from .render import cell, safe
from .store.db import Database, database_url, sqlite_path
from .views import RunInfo

F = TypeVar("F", bound=Callable[..., Any])

# Piped output is data for another program: never cut it to an 80-column guess.
_out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
_err = Console(stderr=True, soft_wrap=True)


class CliError(Exception):
    """A one-line failure to report; ``code`` 1 for run/data errors, 2 for usage."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _fail(message: str, code: int = 1) -> NoReturn:
    raise CliError(message, code)


class _Group(click.Group):
    """Turns statecraft errors into one stderr line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            click.echo(f"error: {safe(exc)}", err=True)
            ctx.exit(exc.code)
        except StatecraftError as exc:
            click.echo(f"error: {safe(exc)}", err=True)
            ctx.exit(1)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "input"
            click.echo(safe(f"error: input does not fit the machine's state: {loc}: {first['msg']}"), err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("error: interrupted; the run keeps its last checkpoint", err=True)
            ctx.exit(130)


def _db_options(fn: F) -> F:
    fn = click.option(
        "--db",
        "db",
        envvar="STATECRAFT_DB",
        default="statecraft.db",
        show_default=True,
        help="Database file or SQLAlchemy URL (env: STATECRAFT_DB).",
    )(fn)
    return fn


def _json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def _open(db: str, *, create: bool = False, keyring: str | None = None) -> Engine:
    path = sqlite_path(database_url(db))
    if not create and path and not Path(path).exists():
        _fail(f"no database at {db} (start a run first, or pass --db / STATECRAFT_DB)")
    # Durability is an operator's choice per deployment, so it comes from the
    # environment rather than a flag every command would have to repeat.
    synchronous = os.environ.get("STATECRAFT_SYNCHRONOUS", "FULL").upper()
    if synchronous not in ("FULL", "NORMAL"):
        _fail(f"STATECRAFT_SYNCHRONOUS must be FULL or NORMAL, not {synchronous!r}", 2)
    return Engine(Database(db, create=create, synchronous=synchronous), keyring=keyring)  # type: ignore[arg-type]


def _default_actor() -> str:
    try:
        return f"user:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "user:unknown"


def _read_input(source: str | None) -> Any:
    if source is None:
        return None
    if source == "-":
        raw = sys.stdin.read()
    else:
        path = Path(source)
        if not path.is_file():
            _fail(f"input file {source} does not exist", 2)
        try:
            raw = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            _fail(f"input file {source} is not UTF-8 text")
    stripped = raw.lstrip()
    if stripped.startswith("{"):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return raw
        if isinstance(value, dict):
            return value
    return raw


def _run_json(info: RunInfo) -> dict[str, Any]:
    return info.model_dump(mode="json")


def _print_run(info: RunInfo, as_json: bool, *, full_state: bool = True) -> None:
    if as_json:
        click.echo(json.dumps(_run_json(info), ensure_ascii=False))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()

    def row(label: str, value: Any) -> None:
        table.add_row(cell(label), value if isinstance(value, Text) else cell(value))

    row("run", info.run_id)
    row("machine", f"{info.machine} v{info.version}")
    row("status", _status_text(info.status))
    row("step", info.step)
    row("steps", info.steps_taken)
    row("started by", info.started_by)
    row("updated", info.updated_at)
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
    _out.print(table)


def _brief(value: Any, limit: int = 100) -> str:
    """One line for a state value: scalars as JSON, collections by their size."""
    if isinstance(value, list):
        return f"[{len(value)} items]" if value else "[]"
    if isinstance(value, dict):
        keys = ", ".join(list(value)[:6])
        return "{" + keys + (", …" if len(value) > 6 else "") + "}"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _status_text(status: RunStatus) -> Text:
    colour = {
        RunStatus.DONE: "green",
        RunStatus.FAILED: "red",
        RunStatus.WAITING_FOR_APPROVAL: "yellow",
        RunStatus.RUNNING: "cyan",
    }.get(status, "white")
    return Text(status.value, style=colour)


def _progress(report: StepReport) -> None:
    arrow = f"{report.from_step} → {report.to_step}" if report.from_step != report.to_step else str(report.from_step)
    tail = f" — {report.reason}" if report.reason and report.status != RunStatus.RUNNING else ""
    line = Text("  ")
    line.append(f"{report.event_type:<20}", style="dim")
    line.append(f" {safe(arrow):<36} ")
    line.append_text(_status_text(report.status))
    line.append(f" {report.latency_ms} ms", style="dim")
    line.append(safe(tail))
    _err.print(line, highlight=False)


def _approvals_text(p: Any) -> str:
    so_far = ", ".join(p.approved_by) or "none yet"
    group = f"; eligible: {', '.join(p.approver_group)}" if p.approver_group is not None else ""
    return f"{len(p.approved_by)} of {p.required} ({so_far}){group}"


def _next_hint(info: RunInfo) -> None:
    if info.status == RunStatus.WAITING_FOR_APPROVAL and info.pending is not None:
        if info.pending.required > 1:
            _err.print(cell(f"approvals: {_approvals_text(info.pending)}"), highlight=False)
        for line in (
            f"run {info.run_id} waits for approval: {info.pending.reason}",
            f"  approve: statecraft approve {info.run_id} --by YOUR_ID --digest {info.pending.proposal_digest}",
            f"  reject:  statecraft reject {info.run_id} --by YOUR_ID --reason TEXT",
        ):
            _err.print(cell(line), highlight=False)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="statecraft")
def main() -> None:
    """statecraft: run, approve and audit state-machine workflows of agents.

    \b
    Example:
      statecraft start machines/contract_review.py --input machines/samples/sample_msa.md
      statecraft status RUN_ID
      statecraft approve RUN_ID --by alice@example.com --digest DIGEST
      statecraft audit verify
    """


@main.command()
@click.argument("machine_ref", metavar="MACHINE")
@click.option("--input", "input_path", metavar="FILE|-", help="The run's input: a text file, a JSON object file, or - for stdin.")
@click.option("--by", default=None, help="Actor id of who starts the run (default user:$USER).")
@click.option("--detach", is_flag=True, help="Create and start the run, but leave advancing it to a worker.")
@_db_options
@_json_option
def start(machine_ref: str, input_path: str | None, by: str | None, detach: bool, db: str, as_json: bool) -> None:
    """Start a run of MACHINE and advance it until it finishes, fails or waits for approval.

    MACHINE is path/to/file.py[:attr] or package.module:attr.

    \b
    Example:
      statecraft start machines/contract_review.py --input machines/samples/sample_msa.md
    """
    machine = load_machine(machine_ref)
    task = _read_input(input_path)
    with _open(db, create=True) as engine:
        info = engine.start(
            machine,
            task,
            by=by or _default_actor(),
            actor_type="human",
            ref=machine_ref,
            advance=not detach,
            on_event=None if as_json else _progress,
        )
        if as_json:
            click.echo(json.dumps(_run_json(info), ensure_ascii=False))
        else:
            _out.print(cell(f"{info.run_id} {info.status.value}"), highlight=False)
            _next_hint(info)


@main.command()
@click.argument("run_id")
@_db_options
@_json_option
def status(run_id: str, db: str, as_json: bool) -> None:
    """Show one run: status, step, pending proposal and its digest, state.

    \b
    Example:
      statecraft status 3f2c… --json
    """
    with _open(db) as engine:
        _print_run(engine.get(run_id), as_json)


@main.command(name="list")
@click.option("--status", "status_", type=click.Choice([s.value for s in RunStatus]), help="Only runs with this status.")
@click.option("--machine", help="Only runs of this machine name.")
@click.option("--limit", default=100, show_default=True, help="At most this many runs.")
@_db_options
@_json_option
def list_runs(status_: str | None, machine: str | None, limit: int, db: str, as_json: bool) -> None:
    """List runs, newest first.

    \b
    Example:
      statecraft list --status WAITING_FOR_APPROVAL --json
    """
    with _open(db) as engine:
        runs = engine.list(status=status_, machine=machine, limit=limit)
    if as_json:
        click.echo(json.dumps([_run_json(r) for r in runs], ensure_ascii=False))
        return
    table = Table("run", "machine", "status", "step", "updated", "reason")
    for r in runs:
        table.add_row(
            cell(r.run_id), cell(f"{r.machine} v{r.version}"), _status_text(r.status), cell(r.step),
            cell(r.updated_at), cell(r.reason or (r.pending.reason if r.pending else "") or ""),
        )
    _out.print(table)


@main.command()
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
@_db_options
@_json_option
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
        _fail("approve needs --digest DIGEST (the proposal you reviewed, from `statecraft status "
              f"{run_id}`), or --no-digest to approve whatever is pending", 2)
    if digest is not None and no_digest:
        _fail("give --digest or --no-digest, not both", 2)
    signature = None
    if sign_key is not None:
        if digest is None:
            _fail("--sign-key signs the digest you reviewed: give --digest", 2)
        from .identity import normalize_actor
        from .signing import SigningKey

        key = SigningKey.load(sign_key)
        approver = normalize_actor(by, run_id=run_id)
        if key.actor_id != approver:
            _fail(f"the key in {sign_key} belongs to {key.actor_id}, not {approver}")
        signature = key.sign_approval(run_id=run_id, proposal_digest=digest, approver_id=approver)
    with _open(db, keyring=keyring) as engine:
        info = engine.approve(
            run_id, by=by, comment=comment, digest=digest, signature=signature, advance=not no_continue,
            extend=_parse_extend(extend) or None, on_event=None if as_json else _progress,
        )
        _print_outcome(info, as_json)


@main.command()
@click.argument("run_id")
@click.option("--by", required=True, help="The reviewer's stable id.")
@click.option("--reason", required=True, help="Why the proposal is rejected (audited).")
@_db_options
@_json_option
def reject(run_id: str, by: str, reason: str, db: str, as_json: bool) -> None:
    """Reject the proposal RUN_ID waits on; the run goes FAILED.

    \b
    Example:
      statecraft reject 3f2c… --by bob@example.com --reason "unlimited liability"
    """
    with _open(db) as engine:
        _print_outcome(engine.reject(run_id, by=by, reason=reason), as_json)


@main.command()
@click.argument("run_id")
@click.option("--by", required=True, help="The operator's stable id.")
@click.option("--reason", required=True, help="Why the run is cancelled (audited).")
@_db_options
@_json_option
def cancel(run_id: str, by: str, reason: str, db: str, as_json: bool) -> None:
    """Cancel a run that has not finished; it goes FAILED.

    \b
    Example:
      statecraft cancel 3f2c… --by ops@example.com --reason "duplicate request"
    """
    with _open(db) as engine:
        _print_outcome(engine.cancel(run_id, by=by, reason=reason), as_json)


@main.command()
@click.argument("run_id")
@click.option("--by", required=True, help="The operator's stable id.")
@click.option("--reason", help="Why the run is retried (audited).")
@_db_options
@_json_option
def retry(run_id: str, by: str, reason: str | None, db: str, as_json: bool) -> None:
    """Retry a FAILED run from its last checkpoint and advance it inline.

    \b
    Example:
      statecraft retry 3f2c… --by ops@example.com --reason "upstream outage over"
    """
    with _open(db) as engine:
        info = engine.retry(run_id, by=by, reason=reason, on_event=None if as_json else _progress)
        _print_outcome(info, as_json)


def _parse_extend(items: tuple[str, ...]) -> dict[str, int | timedelta]:
    out: dict[str, int | timedelta] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            _fail(f"--extend takes BUDGET=INTEGER, not {item!r}", 2)
        out[name.strip()] = timedelta(seconds=int(value)) if name.strip() == "deadline" else int(value)
    return out


@main.command()
@click.argument("run_id")
@click.option("--wait", "wait_s", type=float, default=0.0, show_default=True,
              help="Seconds to wait for a live lease held by another process to expire.")
@_db_options
@_json_option
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
    with _open(db) as engine:
        info = engine.resume(run_id, wait=timedelta(seconds=wait_s), on_event=None if as_json else _progress)
        _print_outcome(info, as_json)


@main.command()
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1, 256), help="Runs advanced at once (threads).")
@click.option("--poll", "poll_s", default=1.0, show_default=True, type=click.FloatRange(0.01), help="Seconds between polls when idle.")
@click.option("--grace", "grace_s", default=30.0, show_default=True, type=click.FloatRange(0), help="Seconds steps in progress may take after SIGTERM before they are abandoned.")
@click.option("--lease", "lease_s", default=60.0, show_default=True, type=click.FloatRange(0.1), help="Lease duration in seconds (renewed every third of it).")
@click.option("--until-idle", is_flag=True, help="Exit once nothing is runnable or in flight (for cron jobs and tests).")
@click.option("--verbose", is_flag=True, help="Also log skipped runs (debug level).")
@_db_options
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

    from .worker import Worker, configure_logging

    if "://" not in db and not Path(db).exists():
        _fail(f"no database at {db} (start a run first, or pass --db / STATECRAFT_DB)")
    configure_logging(logging.DEBUG if verbose else logging.INFO)
    with Engine(Database(db, create=False), lease=timedelta(seconds=lease_s)) as engine:
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


def _print_outcome(info: RunInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(_run_json(info), ensure_ascii=False))
    else:
        _out.print(cell(f"{info.run_id} {info.status.value}"), highlight=False)
        _next_hint(info)


@main.command()
@click.argument("machine_ref", metavar="MACHINE", required=False)
@click.option("--lifecycle", is_flag=True, help="Print the run lifecycle instead of a machine.")
def graph(machine_ref: str | None, lifecycle: bool) -> None:
    """Print MACHINE's step graph (or the run lifecycle) as a Mermaid stateDiagram.

    \b
    Example:
      statecraft graph machines/contract_review.py > contract_review.mmd
    """
    if lifecycle:
        click.echo(lifecycle_mermaid())
        return
    if machine_ref is None:
        _fail("give a MACHINE (path.py[:attr] or module:attr) or --lifecycle", 2)
    click.echo(load_machine(machine_ref).mermaid())


def _register_subgroups() -> None:
    from .cli_audit import audit
    from .cli_keys import keys
    from .web.command import serve  # imports click only; FastAPI loads when `serve` runs

    main.add_command(audit)
    main.add_command(keys)
    main.add_command(serve)


_register_subgroups()

