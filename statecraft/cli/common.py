"""What every ``statecraft`` command shares: errors and exit codes, options, output, run ids.

Exit codes (docs/cli.md), the same for every command:

====  ==========================================================================
0     done: the run is DONE, WAITING_FOR_APPROVAL, or was left to a worker;
      a query printed its answer
1     refused: statecraft said no (unknown or ambiguous run id, illegal action,
      wrong digest, a database or input that cannot be used); one line on stderr
2     usage: a missing or malformed option or argument; one line on stderr
3     the run ended FAILED (``start``, ``retry``, ``resume``, ``approve``)
130   interrupted (Ctrl-C); the run keeps its last checkpoint and the line
      printed says how to continue it
====  ==========================================================================

Nothing here imports the engine, SQLAlchemy or rich at module level: those
load when a command runs, so ``statecraft --help`` stays fast (issue #9,
bench/bench_startup.py).
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from ..errors import StatecraftError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

    from ..engine import Engine, StepReport
    from ..lifecycle import RunStatus
    from ..views import RunInfo

__all__ = [
    "EXIT_FAILED_RUN",
    "EXIT_INTERRUPTED",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "CliError",
    "StatecraftGroup",
    "StepProgress",
    "db_option",
    "default_actor",
    "emit",
    "err_console",
    "fail",
    "interrupt_hint",
    "json_option",
    "open_engine",
    "out_console",
    "outcome_exit",
    "print_json",
    "read_input",
    "resolve_run",
    "status_text",
    "Rows",
    "table",
    "when",
]

F = TypeVar("F", bound=Callable[..., Any])

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_FAILED_RUN = 3
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A one-line failure to report, with its exit code (module docstring)."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    """Stop the command: ``message`` on stderr as one ``error:`` line, exit ``code``."""
    raise CliError(message, code)


def _one_line(message: object) -> str:
    from ..render import safe

    return safe(" ".join(str(message).split()))


class StatecraftGroup(click.Group):
    """The top-level group: every error becomes one ``error: …`` line and an exit code, never a traceback.

    Runs click in non-standalone mode and reports everything itself, so a
    usage error reads like every other error (``error: no such option:
    --bogus (see statecraft start --help)``) instead of click's three-line
    usage block, and exit codes follow the module docstring.
    """

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code = self._main(args, prog_name, complete_var, **extra)
        if standalone_mode:
            sys.exit(code)
        return code

    def _main(self, args: list[str] | None, prog_name: str | None, complete_var: str | None, **extra: Any) -> int:
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            return result if isinstance(result, int) else 0
        except CliError as exc:
            return _report(str(exc), exc.code)
        except click.UsageError as exc:
            where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            return _report(f"{exc.format_message()}{where}", EXIT_USAGE)
        except click.ClickException as exc:
            return _report(exc.format_message(), exc.exit_code)
        except click.Abort:  # Ctrl-C or EOF at a prompt, outside a run
            return _report("interrupted", EXIT_INTERRUPTED)
        except StatecraftError as exc:
            return _report(str(exc), EXIT_REFUSED)
        except Exception as exc:
            message = _known_failure(exc)
            if message is None:
                raise
            return _report(message, EXIT_REFUSED)


_SQLITE_HINTS = (
    ("readonly", " (the file or its folder is read-only here; nothing was written)"),
    ("disk I/O error", " (is the disk full or failing? the last transaction was rolled back)"),
    ("disk is full", " (free some space; the last transaction was rolled back)"),
    ("locked", " (another process holds a write lock; try again)"),
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _report(message: str, code: int) -> int:
    click.echo(f"error: {_one_line(message)}", err=True)
    return code


def _known_failure(exc: Exception) -> str | None:
    """The one-line message for an environmental failure we can name, or ``None`` (a bug: traceback)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "input"
        return f"input does not fit the machine's state: {loc}: {first['msg']}"
    if isinstance(exc, ModuleNotFoundError) and exc.name in ("psycopg", "psycopg2", "psycopg_binary"):
        return "this --db needs the PostgreSQL driver: pip install 'statecraft[postgres]'"
    if isinstance(exc, UnicodeError):
        return f"text that is not valid UTF-8: {exc}"
    import sqlite3

    cause: BaseException = exc
    if "sqlalchemy.exc" in sys.modules:
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, DBAPIError):
            cause = exc.orig if exc.orig is not None else exc
            if not isinstance(cause, sqlite3.Error):
                return f"the database refused: {_first_line(cause)}"
    if isinstance(cause, sqlite3.Error):
        text = _first_line(cause)
        hint = next((h for marker, h in _SQLITE_HINTS if marker in text), "")
        return f"the database refused: {text}{hint}"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror}"
    return None


# -- options ---------------------------------------------------------------------------


def db_option(fn: F) -> F:
    """``--db`` (or ``$STATECRAFT_DB``): a database file or a SQLAlchemy URL."""
    return click.option(
        "--db",
        "db",
        envvar="STATECRAFT_DB",
        default="statecraft.db",
        show_default=True,
        help="Database file or SQLAlchemy URL (env: STATECRAFT_DB).",
    )(fn)


def json_option(fn: F) -> F:
    """``--json``: print JSON instead of a table."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(fn)


def open_engine(db: str, *, create: bool = False, keyring: str | None = None, **options: Any) -> Engine:
    """An :class:`~statecraft.engine.Engine` on ``db``; refuses a missing SQLite file unless ``create``.

    ``options`` go to the Engine (e.g. ``lease=timedelta(seconds=60)``).

    Durability (``STATECRAFT_SYNCHRONOUS``: FULL, the default, or NORMAL) is an
    operator's choice per deployment, so it comes from the environment rather
    than a flag every command would repeat.

    Raises:
        CliError: no database there (exit 1), or a bad ``STATECRAFT_SYNCHRONOUS`` (exit 2).
    """
    from ..engine import Engine
    from ..store.db import Database, database_url, sqlite_path

    path = sqlite_path(database_url(db))
    if not create and path and not Path(path).exists():
        fail(f"no database at {db} (start a run first, or pass --db / STATECRAFT_DB)")
    synchronous = os.environ.get("STATECRAFT_SYNCHRONOUS", "FULL").upper()
    if synchronous not in ("FULL", "NORMAL"):
        fail(f"STATECRAFT_SYNCHRONOUS must be FULL or NORMAL, not {synchronous!r}", EXIT_USAGE)
    return Engine(Database(db, create=create, synchronous=synchronous), keyring=keyring, **options)  # type: ignore[arg-type]


def default_actor() -> str:
    """``user:LOGIN`` of whoever runs the command (``user:unknown`` where there is no login name)."""
    try:
        return f"user:{getpass.getuser()}"
    except Exception:  # no login name in some containers
        return "user:unknown"


def read_input(source: str | None) -> Any:
    """A run's input from a file, ``-`` (stdin) or a pipe such as ``<(…)``: a JSON object as a dict, else text.

    Raises:
        CliError: no such file (exit 2); not UTF-8, or a JSON object holding
            lone surrogates (``"\\ud800"``), which no database can store (exit 1).
    """
    if source is None:
        return None
    try:
        if source == "-":
            raw = sys.stdin.buffer.read().decode("utf-8")
        else:
            path = Path(source)
            # A pipe (`--input <(…)`, /dev/stdin) is not a regular file, and is fine.
            if not path.exists() or path.is_dir():
                fail(f"input file {source} does not exist" if not path.exists() else f"{source} is a folder", EXIT_USAGE)
            raw = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"input {'on stdin' if source == '-' else source} is not UTF-8 text (byte {exc.start})")
    except OSError as exc:
        fail(f"cannot read input {source}: {exc.strerror or exc}")
    value: Any = raw
    if raw.lstrip().startswith("{"):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            value = parsed
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        fail(f"input {'on stdin' if source == '-' else source} holds a lone surrogate (e.g. \"\\ud800\"), "
             "which is not text")
    return value


def resolve_run(engine: Engine, ref: str) -> str:
    """The full id of the run ``ref`` names: the id itself or a unique prefix of it (git-style).

    Raises:
        RunNotFound, AmbiguousRunId: from :meth:`Engine.resolve_run_id`.
    """
    return engine.resolve_run_id(ref)


@contextmanager
def interrupt_hint(run_id: str) -> Iterator[None]:
    """Turn Ctrl-C while ``run_id`` advances into exit 130 and the command that continues it."""
    try:
        yield
    except KeyboardInterrupt:
        fail(f"interrupted: run {run_id} keeps its last checkpoint; continue it with: statecraft resume {run_id}",
             EXIT_INTERRUPTED)


# -- output ----------------------------------------------------------------------------


def _width() -> int | None:
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    # Piped output is data for another program: never cut it to an 80-column guess.
    return None if sys.stdout.isatty() else 200


def out_console() -> Console:
    """The console for data (stdout); ``COLUMNS`` wide when set, else the terminal's (200 when piped)."""
    from rich.console import Console

    return Console(soft_wrap=True, width=_width())


def err_console() -> Console:
    """The console for messages and progress (stderr)."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def emit(renderable: RenderableType | Rows) -> None:
    """Print ``renderable`` on stdout; when not a terminal, without the padding rich leaves at line ends."""
    console = out_console()
    if isinstance(renderable, Rows):
        rows = renderable
        renderable = rows.build(console.width)
        if rows.needed > console.width:
            console.width = rows.needed  # whole columns (run ids) are never cut, even on a tiny console
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


#: Below this console width, tables abbreviate run ids and drop optional columns.
WIDE = 120
#: An abbreviated run id: the first 13 characters (``7dfa965e-332d``), a prefix any command accepts.
SHORT_ID = 13


class Rows:
    """A table for a person that fits the console: one line per row, cut text ends in ``…``.

    Every column is as wide as its widest cell, except the ``flex`` column,
    which takes the width left and is cut; when even that does not fit,
    columns other than the ``whole`` ones (default: ``run``) shrink and are
    cut too. On a console narrower than
    :data:`WIDE` (an 80-column terminal), ``run`` cells show the first
    :data:`SHORT_ID` characters of the id (a prefix every command accepts, so
    they can be pasted back) and the ``optional`` columns are left out.
    Rendered by :func:`emit`.
    """

    def __init__(
        self,
        *columns: str,
        flex: str | None = None,
        optional: tuple[str, ...] = (),
        whole: tuple[str, ...] = ("run",),
        title: str | None = None,
    ) -> None:
        self.columns = columns
        self.flex = flex if flex is not None else columns[-1]
        self.optional = optional
        self.whole = whole
        self.title = title
        self.rows: list[tuple[Any, ...]] = []
        self.needed = 0  # the width the last build needs: more than asked when whole columns do not fit

    def add_row(self, *cells: Any) -> None:
        """One row: rich ``Text`` cells (``render.cell``), one per column."""
        self.rows.append(cells)

    def build(self, width: int) -> Any:
        """The rich table for a console ``width`` columns wide."""
        from rich import box
        from rich.table import Table

        narrow = width < WIDE
        keep = [i for i, name in enumerate(self.columns) if not (narrow and name in self.optional)]
        names = [self.columns[i] for i in keep]
        rows = [[r[i] for i in keep] for r in self.rows]
        if narrow and "run" in names:
            at = names.index("run")
            for r in rows:
                r[at] = r[at][:SHORT_ID]
        widths = [max([len(name)] + [len(getattr(r[i], "plain", str(r[i]))) for r in rows])
                  for i, name in enumerate(names)]
        gaps = 2 * (len(names) - 1)
        _fit(widths, [self._give(name) for name in names], width - gaps)
        self.needed = sum(widths) + gaps
        # box.SIMPLE without edges: two spaces between columns, a rule under the header.
        t = Table(title=self.title, box=box.SIMPLE, show_edge=False, pad_edge=False, padding=(0, 1),
                  collapse_padding=True)
        for name, w in zip(names, widths):
            t.add_column(name, no_wrap=True, overflow="ellipsis", width=w)
        for r in rows:
            t.add_row(*r)
        return t


    def _give(self, name: str) -> int:
        """In which round a column gives up width: the flex column first, then the rest; whole ones never."""
        return 0 if name == self.flex else (2 if name in self.whole else 1)


def _fit(widths: list[int], give: list[int], room: int) -> None:
    """Shrink ``widths`` in place until they sum to ``room``: round 0 columns first (to 8), then round 1 (to 3).

    Round 2 columns keep their width even if the line must then be longer.
    """
    for rank, floor in ((0, 8), (1, 3)):
        while sum(widths) > room:
            candidates = [i for i, g in enumerate(give) if g == rank and widths[i] > floor]
            if not candidates:
                break
            widest = max(candidates, key=lambda i: widths[i])
            widths[widest] -= 1


def table(
    *columns: str,
    flex: str | None = None,
    optional: tuple[str, ...] = (),
    whole: tuple[str, ...] = ("run",),
    title: str | None = None,
) -> Rows:
    """A :class:`Rows` table: ``flex`` (default: the last column) is cut to fit; ``optional`` go when narrow."""
    return Rows(*columns, flex=flex, optional=optional, whole=whole, title=title)


def when(stored: str | None) -> str:
    """A stored UTC time (``2026-12-03T16:46:19.382109Z``) as ``2026-12-03 16:46:19Z`` for a table."""
    if not stored:
        return ""
    return f"{stored[:10]} {stored[11:19]}Z" if len(stored) >= 19 and stored[10] == "T" else stored


def status_text(status: RunStatus | str) -> Text:
    """A status, coloured (DONE green, FAILED red, waiting yellow, running cyan)."""
    from rich.text import Text

    colour = {"DONE": "green", "FAILED": "red", "WAITING_FOR_APPROVAL": "yellow", "RUNNING": "cyan"}
    return Text(str(status), style=colour.get(str(status), "white"))


class StepProgress:
    """The ``on_event`` hook of an advancing command: one line per transition on stderr.

    On a terminal, a step that has been running for more than ``after``
    seconds also shows a live spinner with its elapsed time (rich's
    progress display, cleared when the step ends). Off a terminal (a pipe,
    a log file, CI) only the lines are printed.

    Use as a context manager around the engine call; ``step`` names the step
    about to run.
    """

    def __init__(self, step: str | None = None, *, after: float = 1.0) -> None:
        self._console = err_console()
        self._after = after
        self._step = step
        self._since = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._progress: Any = None
        self._task: Any = None
        self._watcher: threading.Thread | None = None

    def __enter__(self) -> StepProgress:
        if self._console.is_terminal:
            from rich.progress import Progress, SpinnerColumn, TextColumn

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"),
                console=self._console, transient=True,
            )
            self._progress.start()
            self._watcher = threading.Thread(target=self._watch, name="statecraft-cli-progress", daemon=True)
            self._watcher.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join()
        if self._progress is not None:
            self._progress.stop()

    def _watch(self) -> None:
        from ..render import safe

        while not self._stop.wait(0.1):
            with self._lock:
                if self._step is None:
                    continue
                elapsed = time.monotonic() - self._since
                if elapsed < self._after:
                    continue
                text = f"step {safe(self._step)} running for {elapsed:.1f} s"
                if self._task is None:
                    self._task = self._progress.add_task(text)
                else:
                    self._progress.update(self._task, description=text)

    def __call__(self, report: StepReport) -> None:
        """Print ``report`` as one line and restart the clock for the step it leads to."""
        from rich.text import Text

        from ..render import safe

        arrow = f"{report.from_step} → {report.to_step}" if report.from_step != report.to_step else str(report.from_step)
        tail = f" — {report.reason}" if report.reason and str(report.status) != "RUNNING" else ""
        line = Text("  ")
        line.append(f"{report.event_type:<20}", style="dim")
        line.append(f" {safe(arrow):<36} ")
        line.append_text(status_text(report.status))
        line.append(f" {report.latency_ms} ms", style="dim")
        line.append(safe(tail))
        with self._lock:
            if self._task is not None:
                self._progress.remove_task(self._task)
                self._task = None
            self._step = report.to_step if str(report.status) == "RUNNING" else None
            self._since = time.monotonic()
        self._console.print(line, highlight=False)


def print_json(value: Any) -> None:
    """``value`` as one line of JSON on stdout (non-ASCII kept)."""
    click.echo(json.dumps(value, ensure_ascii=False))


def outcome_exit(info: RunInfo) -> None:
    """Exit 3 (with the reason on stderr) when the run an advancing command left is FAILED."""
    if str(info.status) == "FAILED":
        from ..render import safe

        why = " ".join(part for part in (info.error_code, info.reason) if part)
        click.echo(f"error: run {info.run_id} FAILED: {safe(why)}", err=True)
        raise click.exceptions.Exit(EXIT_FAILED_RUN)
