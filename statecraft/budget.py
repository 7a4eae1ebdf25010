"""Budgets and loop bounds: the limits in force for a run, and the check before each agent call.

Pure functions over the run row (DESIGN.md invariant 6). The limits in force
are the machine's (``Machine.max_steps`` and ``Machine.budget``) overlaid
with whatever a human raised when approving a budget gate; those raises are
stored in the run row (``budget_json``) and audited on the
``approval.granted`` event that made them.

Which budget, what is counted:

==================  ==========================================================
``max_steps``       committed steps of the run (agent outcomes and error edges)
``max_visits``      successful completions of the step about to run
``max_tokens``      input + output tokens reported, including failed attempts
``max_cost_micros`` cost reported, integer micro-USD
``deadline``        wall time since the run last entered RUNNING
==================  ==========================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Final

from .errors import RunError
from .policy import ms

__all__ = ["BUDGET_NAMES", "Exceeded", "Limits", "check", "extend", "limits_for", "visits_of"]

BUDGET_NAMES: Final = ("max_steps", "max_visits", "max_tokens", "max_cost_micros", "deadline")


@dataclass(frozen=True)
class Limits:
    """The limits in force for one run. ``None`` means unbounded; ``deadline_ms`` is milliseconds."""

    max_steps: int
    max_visits: int | None = None
    max_tokens: int | None = None
    max_cost_micros: int | None = None
    deadline_ms: int | None = None
    on_exceeded: str = "fail"

    def get(self, name: str) -> int | None:
        """The limit called ``name`` (one of :data:`BUDGET_NAMES`)."""
        value: int | None = self.deadline_ms if name == "deadline" else getattr(self, name)
        return value


@dataclass(frozen=True)
class Exceeded:
    """A budget found exhausted before an agent call.

    Attributes:
        budget: which one (:data:`BUDGET_NAMES`).
        limit: its limit (milliseconds for ``deadline``).
        used: what the run has used (milliseconds for ``deadline``).
        step: the step that was about to run.
    """

    budget: str
    limit: int
    used: int
    step: str

    @property
    def reason(self) -> str:
        """One line for the audit event and the run row."""
        if self.budget == "deadline":
            return f"deadline of {self.limit} ms passed ({self.used} ms running) before step {self.step!r}"
        if self.budget == "max_visits":
            return f"max_visits budget of {self.limit} exhausted: step {self.step!r} completed {self.used} times"
        return f"{self.budget} budget of {self.limit} exhausted ({self.used} used) before step {self.step!r}"

    def payload(self) -> dict[str, Any]:
        """The audited detail (integers and strings only)."""
        return {"budget": self.budget, "limit": self.limit, "used": self.used, "step": self.step}


def limits_for(machine: Any, budget_json: str | None) -> Limits:
    """The limits in force: the machine's, overlaid with approved raises (``run.budget_json``)."""
    b = machine.budget
    limits = Limits(
        max_steps=machine.max_steps,
        max_visits=b.max_visits,
        max_tokens=b.max_tokens,
        max_cost_micros=b.max_cost_micros,
        deadline_ms=None if b.deadline is None else ms(b.deadline),
        on_exceeded=b.on_exceeded,
    )
    if budget_json:
        raised = json.loads(budget_json)
        limits = replace(
            limits,
            **{("deadline_ms" if k == "deadline" else k): v for k, v in raised.items() if k in BUDGET_NAMES},
        )
    return limits


def visits_of(run: Mapping[str, Any]) -> dict[str, int]:
    """``{step: successful completions}`` from the run row."""
    raw = run.get("visits_json")
    return dict(json.loads(raw)) if raw else {}


def check(
    limits: Limits,
    run: Mapping[str, Any],
    step: str,
    *,
    now: datetime,
    running_since: datetime | None,
) -> Exceeded | None:
    """The first budget exhausted before running ``step``, or ``None``. Pure.

    A limit is exhausted when what was used reaches it: with ``max_tokens``
    1000 and 1000 tokens used, the next call is not made.
    """
    if limits.deadline_ms is not None and running_since is not None:
        elapsed = int((now - running_since) / timedelta(milliseconds=1))
        if elapsed >= limits.deadline_ms:
            return Exceeded("deadline", limits.deadline_ms, elapsed, step)
    if run["steps_taken"] >= limits.max_steps:
        return Exceeded("max_steps", limits.max_steps, run["steps_taken"], step)
    if limits.max_visits is not None:
        done = visits_of(run).get(step, 0)
        if done >= limits.max_visits:
            return Exceeded("max_visits", limits.max_visits, done, step)
    if limits.max_tokens is not None:
        tokens = run["tokens_in"] + run["tokens_out"]
        if tokens >= limits.max_tokens:
            return Exceeded("max_tokens", limits.max_tokens, tokens, step)
    if limits.max_cost_micros is not None and run["cost_micros"] >= limits.max_cost_micros:
        return Exceeded("max_cost_micros", limits.max_cost_micros, run["cost_micros"], step)
    return None


def extend(
    run: Mapping[str, Any],
    changes: Mapping[str, int | timedelta],
    *,
    asking: str | None,
) -> str:
    """Validate raised limits given at approval; return the run's new ``budget_json``.

    Args:
        run: the run row (for what has been used).
        changes: ``{budget name: new limit}``; ``deadline`` takes a ``timedelta``.
        asking: the budget the pending gate asks to raise (``None`` for other gates).

    Raises:
        RunError: an unknown budget name, a limit that is not a positive
            integer, one that does not exceed what is used, or a budget gate
            approved without raising the budget it asks about.
    """
    run_id = run["run_id"]
    unknown = sorted(set(changes) - set(BUDGET_NAMES))
    if unknown:
        raise RunError(f"run {run_id}: unknown budget(s) {unknown}; known: {list(BUDGET_NAMES)}", run_id=run_id)
    if asking is not None and asking not in changes:
        raise RunError(
            f"run {run_id} waits for a higher {asking}; approve with "
            f"extend={{'{asking}': NEW_LIMIT}} (CLI: --extend {asking}=NEW_LIMIT)",
            run_id=run_id,
        )
    raised: dict[str, int] = json.loads(run["budget_json"]) if run.get("budget_json") else {}
    used = {
        "max_steps": run["steps_taken"],
        "max_visits": max(visits_of(run).values(), default=0),
        "max_tokens": run["tokens_in"] + run["tokens_out"],
        "max_cost_micros": run["cost_micros"],
        "deadline": 0,  # approval starts a new RUNNING stretch
    }
    for name, value in changes.items():
        limit = ms(value) if name == "deadline" and isinstance(value, timedelta) else value
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise RunError(f"run {run_id}: {name} must be a positive integer, got {value!r}", run_id=run_id)
        if name != "deadline" and limit <= used[name]:
            raise RunError(
                f"run {run_id}: new {name} {limit} does not exceed what is used ({used[name]})",
                run_id=run_id,
            )
        raised[name] = limit
    return json.dumps(raised, sort_keys=True, separators=(",", ":"))
