"""Circuit breakers per dependency: stop calling a model API that keeps failing, and probe it later.

Why: when the provider is down or overloaded, every run's every attempt
would still send its request, wait for its timeout and retry — piling
load on a struggling service and spending each run's deadline on calls
that cannot succeed. A breaker counts *consecutive* failures of one
dependency across all runs; after ``failure_threshold`` of them it
**opens**: calls fail at once with ``LLMCircuitOpen`` (``error_code``
``circuit_open``; retryable, ``retry_after`` = the rest of the cool-down)
without being sent, so each run takes its retry policy, its error edge or
fails, quickly. After ``cooldown`` the next call is let through as a
**probe** (the breaker is **half open**; other calls still fail fast): its
success **closes** the breaker, its failure opens it again for another
cool-down.

What counts as a failure: the dependency not serving the call —
``LLMUnavailable`` (5xx, 529 overloaded, connection failures, timeouts) and
``LLMProtocolError``. An answer of any other kind (a 400, a 401, a 429, an
answer that does not validate) proves the service is up, and counts as a
success for the breaker: a bad request must not cut every run off a
healthy API, and rate limiting is the limiter's job.

Why the database: the breaker must see the failures of every run and every
process calling the dependency, so its state is a row of the engine's
database (``circuit_breaker``, statecraft/store/breakers.py). Each state
change appends a ledger event in the same transaction — ``circuit.opened``,
``circuit.half_opened``, ``circuit.closed`` — with no ``run_id``, as
``payload.redacted`` has none: a breaker belongs to no run. The half-open
probe is leased (``probe_until``), so a probe whose process died does not
keep the breaker half open forever. Without a database the state lives in
the process (and its changes are only logged).

Interplay with budgets: a call refused by an open breaker is never sent
and costs nothing; a run's ``Budget`` is checked before every attempt as
usual, and the engine never retries sooner than ``retry_after``, so a
retry policy with enough attempts waits out the cool-down rather than
hammering the breaker (docs/agents.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .._time import format_utc, parse_utc
from ..errors import DefinitionError
from ..policy import ms
from ..store.breakers import BreakerRecord, LedgerNote, read_breaker, update_breaker
from .errors import LLMCircuitOpen, LLMError, LLMProtocolError, LLMUnavailable

if TYPE_CHECKING:
    from ..store.db import Database

__all__ = ["Admission", "CircuitBreaker", "admit", "check", "counts_as_failure", "record"]

_log = logging.getLogger("statecraft.agents.breaker")


def counts_as_failure(exc: BaseException) -> bool:
    """Whether an error says the dependency did not serve the call (it counts towards opening)."""
    return isinstance(exc, (LLMUnavailable, LLMProtocolError)) and not isinstance(exc, LLMCircuitOpen)


@dataclass(frozen=True)
class CircuitBreaker:
    """A circuit breaker's declaration; its state is shared by every run and process.

    Attributes:
        failure_threshold: consecutive failures that open it.
        cooldown: how long it stays open before one probe call is let through.
        name: the dependency it guards; default ``anthropic:<model>``.
            Agents declaring the same name share one breaker.
        probe_timeout: how long a half-open probe holds its lease before
            another call may probe instead; default the agent's HTTP timeout.

    Raises:
        DefinitionError: a bound is out of range.
    """

    failure_threshold: int = 5
    cooldown: timedelta = timedelta(seconds=30)
    name: str | None = None
    probe_timeout: timedelta | None = None

    def __post_init__(self) -> None:
        threshold = self.failure_threshold
        if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
            raise DefinitionError(f"CircuitBreaker.failure_threshold must be a positive integer, got {threshold!r}")
        if not isinstance(self.cooldown, timedelta) or self.cooldown <= timedelta(0):
            raise DefinitionError("CircuitBreaker.cooldown must be a positive timedelta")
        if self.probe_timeout is not None and (
            not isinstance(self.probe_timeout, timedelta) or self.probe_timeout <= timedelta(0)
        ):
            raise DefinitionError("CircuitBreaker.probe_timeout must be a positive timedelta or None")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise DefinitionError("CircuitBreaker.name must be a non-empty string or None")


@dataclass(frozen=True)
class Admission:
    """A call the breaker let through.

    Attributes:
        name: the breaker.
        probe: the call is the half-open probe (its outcome closes or reopens the breaker).
        state: the state the breaker was in when the call was admitted.
    """

    name: str
    probe: bool
    state: str


def admit(
    breaker: CircuitBreaker, name: str, database: Database | None, now: datetime,
    probe_timeout: timedelta, where: tuple[str, str],
) -> Admission:
    """Let a call through, or refuse it because the breaker is open.

    Reads the breaker's state; writes (one transaction, with its ledger
    event) only when the call becomes the half-open probe.

    Raises:
        LLMCircuitOpen: the breaker is open and cooling down, or half open
            with a probe in flight; the call must not be sent.
    """
    record = _read(database, name)
    if record is None or record.state == "closed":
        return Admission(name, False, "closed")
    stamp = format_utc(now)

    def rule(rec: BreakerRecord | None) -> tuple[BreakerRecord | None, LedgerNote | None, Admission | LLMCircuitOpen]:
        if rec is None or rec.state == "closed":
            return None, None, Admission(name, False, "closed")
        if rec.state == "open":
            reopen = parse_utc(rec.opened_at or stamp) + breaker.cooldown
            if now < reopen:
                return None, None, _refusal(name, rec, reopen - now, "open")
            probe = replace(rec, state="half_open", probe_until=format_utc(now + probe_timeout), updated_at=stamp)
            note = LedgerNote(
                "circuit.half_opened", "half_open",
                f"circuit {name}: cool-down of {ms(breaker.cooldown)} ms over; one probe call let through",
                rec.last_error_code,
                {"breaker": name, "failures": rec.failures, "cooldown_ms": ms(breaker.cooldown),
                 "probe_run_id": where[0], "probe_step": where[1]},
            )
            return probe, note, Admission(name, True, "open")
        until = parse_utc(rec.probe_until or stamp)
        if now < until:
            return None, None, _refusal(name, rec, until - now, "half open, a probe call is in flight")
        # The probe's lease ran out (its process died, or it hangs): probe again.
        return replace(rec, probe_until=format_utc(now + probe_timeout), updated_at=stamp), None, \
            Admission(name, True, "half_open")

    verdict: Admission | LLMCircuitOpen = _update(database, name, stamp, rule)
    if isinstance(verdict, LLMCircuitOpen):
        raise verdict
    return verdict


def check(breaker: CircuitBreaker, name: str, database: Database | None, now: datetime) -> None:
    """Fail fast, before waiting for a rate-limit slot, if the breaker is open and cooling down. Read-only.

    Raises:
        LLMCircuitOpen: open, cool-down not over.
    """
    rec = _read(database, name)
    if rec is not None and rec.state == "open":
        reopen = parse_utc(rec.opened_at or format_utc(now)) + breaker.cooldown
        if now < reopen:
            raise _refusal(name, rec, reopen - now, "open")


def record(
    breaker: CircuitBreaker, admission: Admission, database: Database | None, now: datetime,
    error: LLMError | None, where: tuple[str, str],
) -> None:
    """Record how an admitted call ended: ``error`` (``None``: the dependency answered).

    Writes (one transaction, with a ledger event on a state change) only
    when something changes: a counted failure, or the first success after
    failures or while half open.
    """
    failed = error is not None and counts_as_failure(error)
    name = admission.name
    if not failed:
        current = _read(database, name)
        if current is None or (current.state == "closed" and current.failures == 0) or current.state == "open":
            return  # nothing to reset; a straggler's success does not close an open breaker
    stamp = format_utc(now)
    code = None if error is None else error.error_code

    def rule(rec: BreakerRecord | None) -> tuple[BreakerRecord | None, LedgerNote | None, None]:
        rec = rec or BreakerRecord(name, "closed", 0, None, None, None, stamp)
        if not failed:
            if rec.state == "half_open":
                closed = BreakerRecord(name, "closed", 0, None, None, rec.last_error_code, stamp)
                return closed, LedgerNote(
                    "circuit.closed", "close", f"circuit {name}: probe call succeeded; closed", None,
                    {"breaker": name, "opened_at": rec.opened_at, "probe_run_id": where[0], "probe_step": where[1]},
                ), None
            if rec.state == "closed" and rec.failures:
                return replace(rec, failures=0, updated_at=stamp), None, None
            return None, None, None
        failures = rec.failures + 1
        if rec.state == "half_open" or (rec.state == "closed" and failures >= breaker.failure_threshold):
            why = (f"probe call failed ({code})" if rec.state == "half_open"
                   else f"{failures} consecutive failures (threshold {breaker.failure_threshold}), last {code}")
            opened = BreakerRecord(name, "open", failures, stamp, None, code, stamp)
            return opened, LedgerNote(
                "circuit.opened", "open", f"circuit {name}: {why}; calls fail fast for {ms(breaker.cooldown)} ms",
                code, {"breaker": name, "failures": failures, "threshold": breaker.failure_threshold,
                       "cooldown_ms": ms(breaker.cooldown), "run_id": where[0], "step": where[1],
                       "from_state": rec.state},
            ), None
        return replace(rec, failures=failures, last_error_code=code, updated_at=stamp), None, None

    _update(database, name, stamp, rule)


def _refusal(name: str, rec: BreakerRecord, left: timedelta, how: str) -> LLMCircuitOpen:
    return LLMCircuitOpen(
        f"circuit {name} is {how} after {rec.failures} consecutive failure(s) "
        f"(last {rec.last_error_code}); not sent, next probe in {max(0, ms(left))} ms",
        breaker=name, retry_after=max(left, timedelta(0)),
    )


# -- storage: the database, or the process ---------------------------------------------------

_LOCAL: dict[str, BreakerRecord] = {}
_LOCAL_GUARD = threading.RLock()


def _read(database: Database | None, name: str) -> BreakerRecord | None:
    if database is not None:
        return read_breaker(database, name)
    with _LOCAL_GUARD:
        return _LOCAL.get(name)


def _update(database: Database | None, name: str, stamp: str, rule: Callable[..., Any]) -> Any:
    if database is not None:
        return update_breaker(database, name, stamp, rule)
    with _LOCAL_GUARD:
        new, note, result = rule(_LOCAL.get(name))
        if new is not None:
            _LOCAL[name] = new
        if note is not None:
            _log.warning(note.reason, extra={"fields": {"event_type": note.event_type, **note.payload}})
        return result
