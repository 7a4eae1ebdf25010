"""The worker: a long-running process that advances runnable runs from the database.

What it does, every poll (``statecraft worker``):

1. applies the on-timeout action of gates whose approval deadline passed
   (``Engine.expire_approvals``);
2. claims up to ``concurrency`` runnable runs (``Engine.runnable``): RUNNING
   runs without a live lease and past their retry backoff, i.e. runs
   started with ``start --detach``, approved with ``approve --no-continue``,
   approved by default at a deadline, or orphaned by a dead process;
3. advances each on a thread of its pool (``Engine.advance``; a run another
   worker claimed first raises ``LeaseHeld`` and is skipped).

Stopping (SIGTERM or SIGINT): the first signal stops claiming and lets every
step in progress finish and commit (or time out), then the leases are
released; the process exits 0. A second signal, or ``grace`` running out,
abandons the steps still in progress: their leases are released at once, so
another worker may resume those runs, and nothing of the abandoned steps is
committed (commits are fenced on the lease).

Log lines are JSON objects, one per line, on stderr (logger
``statecraft.worker``): ``ts``, ``level``, ``event``, ``worker`` and the
event's fields (``run_id``, ``status``, ``steps``, ``error``, …).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import Any

from ._time import format_utc, utc_now
from .engine import Engine
from .views import StepReport
from .errors import LeaseHeld, StatecraftError

__all__ = ["JsonFormatter", "Worker", "WorkerStats"]

log = logging.getLogger("statecraft.worker")

# A run whose advance failed with our own error (machine not loadable, …)
# is left alone this long, so one bad run cannot keep a worker spinning.
_COOLDOWN_S = 60.0
# After a failure that is not the run's own (the database unreachable for a
# moment): a short pause, so a restarting server does not park every run.
_STORE_COOLDOWN_S = 1.0


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: ``ts`` (UTC), ``level``, ``logger``, ``event`` and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": format_utc(utc_now()),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


@dataclass
class WorkerStats:
    """What a worker did. Attributes count runs advanced, transitions committed, expiries, errors."""

    advanced: int = 0
    transitions: int = 0
    expired: int = 0
    errors: int = 0
    skipped: int = 0
    abandoned: list[str] = field(default_factory=list)


class Worker:
    """Advances runnable runs until stopped.

    Args:
        engine: the engine to use (its owner id names the worker in leases and logs).
        concurrency: runs advanced at once (threads).
        poll: how long to sleep when there is nothing to do.
        grace: after a stop request, how long steps in progress may take
            before they are abandoned.
        max_transitions: transitions per claim before the run is put back
            (fairness between many runs); ``None`` advances a run until it stops.
        on_event: called with a ``StepReport`` after each transition this
            worker commits (steps of the runs it advances, expiries it
            applies), on the worker's threads; a hook that raises is logged
            (``worker.on_event_failed``) and ignored.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        concurrency: int = 1,
        poll: timedelta = timedelta(seconds=1),
        grace: timedelta = timedelta(seconds=30),
        max_transitions: int | None = None,
        on_event: Callable[[StepReport], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.engine = engine
        self.on_event = on_event
        self.concurrency = concurrency
        self.poll = poll
        self.grace = grace
        self.max_transitions = max_transitions
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._cooldown: dict[str, float] = {}

    # -- control ---------------------------------------------------------------------

    def stop(self, *, abandon: bool = False) -> None:
        """Ask the worker to stop: gracefully, or abandoning steps in progress. Thread-safe."""
        if self._stop.is_set() or abandon:
            self._abandon.set()
        self._stop.set()
        self.engine.stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT: first one stops gracefully, the second abandons. Main thread only."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            self._log("worker.signal", signal=signal.Signals(signum).name,
                      action="abandon" if self._stop.is_set() else "drain")
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _log(self, event: str, level: int = logging.INFO, **fields: Any) -> None:
        log.log(level, event, extra={"fields": {"worker": self.engine.owner, **fields}})

    # -- the loop --------------------------------------------------------------------

    def run(self, *, until_idle: bool = False) -> WorkerStats:
        """Work until stopped (or, with ``until_idle``, until nothing is runnable or in flight).

        Returns:
            What was done.
        """
        self._log("worker.started", concurrency=self.concurrency, db=self.engine.db.url)
        inflight: dict[Future[Any], str] = {}
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="statecraft-worker")
        try:
            while not self._stop.is_set():
                self._expire()
                claimed = self._claim(pool, inflight)
                if until_idle and not inflight and not claimed:
                    break
                if inflight:
                    done, _ = wait(list(inflight), timeout=self.poll.total_seconds(), return_when=FIRST_COMPLETED)
                    for fut in done:
                        self._reap(fut, inflight.pop(fut))
                elif not claimed:
                    self._stop.wait(self.poll.total_seconds())
            self._drain(inflight)
        finally:
            pool.shutdown(wait=not self._abandon.is_set(), cancel_futures=True)
            self._log("worker.stopped", advanced=self.stats.advanced, transitions=self.stats.transitions,
                      expired=self.stats.expired, errors=self.stats.errors,
                      abandoned=self.stats.abandoned)
        return self.stats

    def _expire(self) -> None:
        try:
            for info in self.engine.expire_approvals():
                self.stats.expired += 1
                self._tell(StepReport(info.run_id, "approval.expired", info.step, info.step, info.status, 0,
                                      info.reason))
                self._log("approval.expired", run_id=info.run_id, status=info.status.value, step=info.step)
        except Exception as exc:  # ours, or the database gone for a moment: log, go on next poll
            self.stats.errors += 1
            self._log("worker.error", logging.ERROR, phase="expire", error=str(exc)[:300],
                      error_type=type(exc).__name__)

    def _tell(self, report: StepReport) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(report)
        except Exception as exc:  # a listener's failure is not the run's
            self._log("worker.on_event_failed", logging.ERROR, run_id=report.run_id, error=repr(exc)[:300])

    def _claim(self, pool: ThreadPoolExecutor, inflight: dict[Future[Any], str]) -> int:
        free = self.concurrency - len(inflight)
        if free <= 0:
            return 0
        now = time.monotonic()
        busy = set(inflight.values())
        claimed = 0
        cooling = {run_id for run_id, until in self._cooldown.items() if until > now}
        try:
            candidates = self.engine.claim(free, exclude=busy | cooling)
        except Exception as exc:  # ours, or the database gone for a moment: log, go on next poll
            self.stats.errors += 1
            self._log("worker.error", logging.ERROR, phase="claim", error=str(exc)[:300],
                      error_type=type(exc).__name__)
            self._stop.wait(self.poll.total_seconds())
            return 0
        for run_id in candidates:
            if claimed >= free:
                break
            if run_id in busy or self._cooldown.get(run_id, 0.0) > now:
                continue
            inflight[pool.submit(self._advance, run_id)] = run_id
            claimed += 1
        return claimed

    def _advance(self, run_id: str) -> dict[str, Any]:
        transitions = 0

        def count(report: StepReport) -> None:
            nonlocal transitions
            transitions += 1
            self._tell(report)

        info = self.engine.advance(run_id, max_transitions=self.max_transitions, on_event=count)
        return {"status": info.status.value, "step": info.step, "steps": info.steps_taken,
                "transitions": transitions, "error_code": info.error_code}

    def _reap(self, fut: Future[Any], run_id: str) -> None:
        try:
            result = fut.result()
        except LeaseHeld as exc:
            self.stats.skipped += 1
            self._log("run.skipped", logging.DEBUG, run_id=run_id, reason=str(exc))
            return
        except StatecraftError as exc:
            self.stats.errors += 1
            self._cooldown[run_id] = time.monotonic() + _COOLDOWN_S
            self._log("run.error", logging.ERROR, run_id=run_id, error=str(exc), error_type=type(exc).__name__)
            return
        except Exception as exc:  # a store failure (the database restarting) or a bug: keep serving
            self.stats.errors += 1
            # Not the run's fault, most likely: try it again soon, not after the long cool-down.
            self._cooldown[run_id] = time.monotonic() + _STORE_COOLDOWN_S
            self._log("run.error", logging.ERROR, run_id=run_id, error=repr(exc)[:300],
                      error_type=type(exc).__name__)
            return
        self.stats.advanced += 1
        self.stats.transitions += result["transitions"]
        self._log("run.advanced", run_id=run_id, **result)

    def _drain(self, inflight: dict[Future[Any], str]) -> None:
        if not inflight:
            return
        self._log("worker.draining", runs=sorted(inflight.values()), grace_s=self.grace.total_seconds())
        until = time.monotonic() + self.grace.total_seconds()
        while inflight and not self._abandon.is_set():
            left = until - time.monotonic()
            if left <= 0:
                break
            done, _ = wait(list(inflight), timeout=min(left, 0.2), return_when=FIRST_COMPLETED)
            for fut in done:
                self._reap(fut, inflight.pop(fut))
        if inflight:
            self.stats.abandoned = sorted(inflight.values())
            self._release_all()
            self._log("worker.abandoned", logging.WARNING, runs=self.stats.abandoned)

    def _release_all(self) -> None:
        """Release every lease this worker holds: abandoned steps then commit nothing (fenced)."""
        self.engine.release_leases()


def configure_logging(level: int = logging.INFO, stream: Any = None) -> Callable[[], None]:
    """Send ``statecraft.*`` logs (worker and engine) to ``stream`` (stderr) as JSON lines; returns an undo.

    For the ``statecraft worker`` command. An application embedding a
    :class:`Worker` does not call it: ``statecraft.worker`` and
    ``statecraft.engine`` records then propagate to the application's own
    handlers, with their structured fields in ``record.fields``.
    """
    root = logging.getLogger("statecraft")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    previous = root.level, root.propagate
    root.setLevel(level)
    root.propagate = False  # the CLI's own output, not the host's handlers

    def undo() -> None:
        root.removeHandler(handler)
        root.setLevel(previous[0])
        root.propagate = previous[1]

    return undo
