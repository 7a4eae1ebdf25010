"""Debate / consensus: independent advocates, an explicit rubric, a human for disagreements.

``debate(...)`` returns one step. Two or more **advocates** process the same
input concurrently and independently: each gets its own deep copy of the
input and a branch context with no access to the others' outputs (they run
at the same time, so none could wait for another's). Each returns a
structured position, validated against ``position_model``.

A **judge** then applies an explicit rubric: a list of :class:`Criterion`,
each comparing one field of every position (``equal`` values, ``same_set``
of items, or your own comparison). Agreement on every criterion moves the
run to ``next`` with the agreed position. Any disagreement, or any advocate
that failed, asks for human approval (``RequestApproval``) with both
positions summarised and the differing criteria named; the proposal
carries the position of the ``prefer`` advocate (default: the first, so
list the most cautious first), which approval accepts and rejection refuses.

Audit: one ``agent.called`` event per advocate attempt (its structured
position is the event's output, by hash), a ``fanout.completed`` event, and
one ``judge.decided`` event (``agree`` / ``disagree``) whose payload holds
every criterion's verdict and each advocate's value as text.

Example::

    review = debate(
        "debate",
        advocates={"conservative": conservative, "precise": precise},
        rubric=[Criterion("verdict"), Criterion("high_risk", compare="same_set")],
        position_model=Position, into="debate", next="report",
        approvers=ApprovalPolicy(1, group={"user:counsel"}),
    )
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..agents.base import RecordedCall, StepContext
from ..machine import Step
from ..outcomes import ApprovalPolicy, Goto, Outcome, RequestApproval
from ..policy import RetryPolicy
from .parallel import (
    BranchCall,
    BranchContext,
    callable_name,
    config_digest,
    run_parallel,
)

__all__ = ["Criterion", "CriterionVerdict", "DebateRecord", "debate"]

Advocate = Callable[[Any, BranchContext], Any]


@dataclass(frozen=True)
class Criterion:
    """One rubric line: do the advocates agree on ``field`` of their positions?

    Attributes:
        field: the position field compared (dotted for nested fields).
        compare: ``equal`` (same value), ``same_set`` (same items, order and
            duplicates ignored), or ``(values_by_advocate) -> bool``.
        name: the criterion's name in the audit (default: ``field``).
        description: one line for the docs and the reviewer summary.
    """

    field: str
    compare: Literal["equal", "same_set"] | Callable[[Mapping[str, Any]], bool] = "equal"
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.field)

    def judge(self, positions: Mapping[str, Any]) -> tuple[bool, dict[str, str]]:
        """Whether all positions agree on this criterion, and each one's value as text."""
        values = {adv: _get(pos, self.field) for adv, pos in positions.items()}
        if self.compare == "equal":
            texts = {adv: _text(v) for adv, v in values.items()}
            return len(set(texts.values())) <= 1, texts
        if self.compare == "same_set":
            sets = {adv: sorted({_text(x) for x in (v or [])}) for adv, v in values.items()}
            texts = {adv: json.dumps(v, ensure_ascii=False) for adv, v in sets.items()}
            return len(set(texts.values())) <= 1, texts
        return bool(self.compare(values)), {adv: _text(v) for adv, v in values.items()}

    def describe(self) -> dict[str, Any]:
        """JSON form for the configuration digest."""
        compare = self.compare if isinstance(self.compare, str) else callable_name(self.compare)
        return {"name": self.name, "field": self.field, "compare": compare}


class CriterionVerdict(BaseModel):
    """The judge's finding on one criterion: agreement, and each advocate's value as text."""

    model_config = ConfigDict(frozen=True)

    agree: bool
    values: dict[str, str]


class DebateRecord(BaseModel):
    """Everything the debate produced; written to ``into`` (declare it ``DebateRecord | None``).

    Attributes:
        agreement: every advocate succeeded and every criterion agreed.
        positions: advocate -> structured position (successful ones).
        failed: advocate -> error, for advocates without a position.
        criteria: criterion name -> verdict.
        disagreements: names of the criteria that disagreed.
        proposed_by: whose position ``resolution`` is (the agreed one's first
            advocate, or ``prefer`` on disagreement).
        resolution: the position the run continues with (after approval,
            when there was disagreement).
        resolved_by: ``consensus`` or ``human`` (pending until approved).
    """

    model_config = ConfigDict(frozen=True)

    agreement: bool
    positions: dict[str, Any]
    failed: dict[str, str] = {}
    criteria: dict[str, CriterionVerdict]
    disagreements: list[str] = []
    proposed_by: str | None = None
    resolution: Any = None
    resolved_by: str


class _DebateAgent:
    def __init__(
        self,
        name: str,
        advocates: Mapping[str, Advocate],
        rubric: Sequence[Criterion],
        position_model: type[BaseModel],
        into: str,
        next_step: str,
        prefer: str,
        approvers: ApprovalPolicy | None,
        inputs: Callable[[Any, StepContext], Any] | None,
        max_concurrency: int,
        branch_timeout: timedelta | None,
        retry: RetryPolicy | None,
    ) -> None:
        self.advocates = dict(advocates)
        self.rubric = tuple(rubric)
        self.position_model = position_model
        self.into = into
        self.next_step = next_step
        self.prefer = prefer
        self.approvers = approvers
        self.inputs = inputs
        self.max_concurrency = max_concurrency
        self.branch_timeout = branch_timeout
        self.retry = retry
        self.agent_name = f"debate:{name}"
        self.agent_version = config_digest(
            {
                "advocates": self.advocates, "rubric": [c.describe() for c in self.rubric],
                "position_model": position_model, "prefer": prefer,
                "approvers": None if approvers is None else approvers.describe(),
                "inputs": inputs, "max_concurrency": max_concurrency,
                "branch_timeout": branch_timeout, "retry": retry,
            }
        )

    def __call__(self, state: Any, ctx: StepContext) -> Outcome:
        shared = self.inputs(state, ctx) if self.inputs is not None else state
        calls = [
            BranchCall(
                key=adv,
                fn=fn,
                # Each advocate gets its own copy: none can see, or change, what another gets.
                input=copy.deepcopy(shared),
                agent_name=adv,
                agent_version=getattr(fn, "agent_version", None),
                output_model=self.position_model,
                payload={"role": "advocate"},
            )
            for adv, fn in self.advocates.items()
        ]
        agg = run_parallel(
            ctx, calls, max_concurrency=self.max_concurrency, branch_timeout=self.branch_timeout,
            retry=self.retry, label=self.agent_name,
        )
        positions = agg.outputs
        failed = {adv: r.error or r.status for adv, r in agg.flagged.items()}
        criteria = {}
        for criterion in self.rubric:
            agree, values = criterion.judge(positions)
            criteria[criterion.name] = CriterionVerdict(agree=agree, values=values)
        disagreements = [n for n, v in criteria.items() if not v.agree]
        agreement = not failed and not disagreements
        ctx.record_call(RecordedCall(
            event_type="judge.decided",
            name=f"{self.agent_name}:judge",
            version=self.agent_version,
            decision="agree" if agreement else "disagree",
            reason=_judge_reason(disagreements, failed),
            payload={
                "criteria": {n: {"agree": v.agree, "values": v.values} for n, v in criteria.items()},
                "failed": failed,
                "proposed_by": None if agreement else self.prefer,
            },
        ))
        if agreement:
            first = next(iter(self.advocates))
            record = DebateRecord(
                agreement=True, positions=positions, criteria=criteria,
                proposed_by=first, resolution=positions[first], resolved_by="consensus",
            )
            return Goto(
                self.next_step,
                update={self.into: record.model_dump(mode="json")},
                reason=f"advocates agree on {', '.join(criteria) or 'everything'}",
            )
        proposed_by = self.prefer if self.prefer in positions else next(iter(positions), None)
        record = DebateRecord(
            agreement=False, positions=positions, failed=failed, criteria=criteria,
            disagreements=disagreements, proposed_by=proposed_by,
            resolution=None if proposed_by is None else positions[proposed_by], resolved_by="human",
        )
        return RequestApproval(
            reason=_judge_reason(disagreements, failed),
            resume_at=self.next_step,
            update={self.into: record.model_dump(mode="json")},
            summary=_summary(record, self.rubric),
            policy=self.approvers,
        )


def _judge_reason(disagreements: Sequence[str], failed: Mapping[str, str]) -> str:
    parts = []
    if disagreements:
        parts.append(f"advocates disagree on {', '.join(disagreements)}")
    if failed:
        parts.append(f"no position from {', '.join(sorted(failed))}")
    return "; ".join(parts) or "advocates agree"


def _summary(record: DebateRecord, rubric: Sequence[Criterion]) -> str:
    lines = ["Advocates disagree; a human decides.", ""]
    for c in rubric:
        verdict = record.criteria[c.name]
        mark = "agree" if verdict.agree else "DISAGREE"
        lines.append(f"- {c.name} ({mark}): " + "; ".join(f"{a}: {v}" for a, v in verdict.values.items()))
    for adv, error in record.failed.items():
        lines.append(f"- {adv}: no position ({error})")
    lines += ["", f"Proposed (approve to accept): the position of {record.proposed_by}."]
    for adv, pos in record.positions.items():
        rationale = _get(pos, "rationale")
        if rationale:
            lines.append(f"- {adv} says: {rationale}")
    return "\n".join(lines)


def _get(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        else:
            value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def debate(
    name: str,
    *,
    advocates: Mapping[str, Advocate],
    rubric: Sequence[Criterion],
    position_model: type[BaseModel],
    into: str,
    next: str,
    prefer: str | None = None,
    approvers: ApprovalPolicy | None = None,
    inputs: Callable[[Any, StepContext], Any] | None = None,
    max_concurrency: int | None = None,
    branch_timeout: timedelta | None = None,
    retry: RetryPolicy | None = None,
    reads: Sequence[str] | None = None,
    description: str = "",
) -> Step:
    """A step where independent advocates take positions and a rubric judges them.

    Args:
        name: the step's name.
        advocates: advocate name -> ``(input, bctx) -> position`` (at least two).
        rubric: the criteria; all must agree for consensus (at least one).
        position_model: the pydantic model every position must fit.
        into: state field for the :class:`DebateRecord`.
        next: where the run continues, on agreement at once, on disagreement
            after approval.
        prefer: whose position is proposed on disagreement (default: the first advocate).
        approvers: approval policy of the disagreement gate.
        inputs: ``(state_view, ctx) -> input`` given (copied) to every advocate;
            default: the state view.
        max_concurrency: default: one slot per advocate.
        branch_timeout, retry: per advocate (statecraft/patterns/parallel.py).
        reads: state fields the step sees (``None``: all).
        description: one line for the docs.

    Returns:
        The step (``next`` = ``[next]``, ``writes`` = ``[into]``).

    Raises:
        ValueError: fewer than two advocates, an empty rubric, or an unknown ``prefer``.
    """
    if len(advocates) < 2:
        raise ValueError(f"debate {name!r} needs at least two advocates")
    if not rubric:
        raise ValueError(f"debate {name!r} needs a rubric (at least one Criterion)")
    prefer = prefer or _first(advocates)
    if prefer not in advocates:
        raise ValueError(f"debate {name!r}: prefer={prefer!r} is not an advocate")
    agent = _DebateAgent(
        name, advocates, rubric, position_model, into, next, prefer, approvers, inputs,
        max_concurrency or len(advocates), branch_timeout, retry,
    )
    return Step(
        name,
        agent,
        next=[next],
        reads=reads,
        writes=[into],
        description=description
        or f"debate: {' vs '.join(advocates)}; rubric {', '.join(c.name for c in rubric)}",
    )


def _first(advocates: Mapping[str, Advocate]) -> str:
    return next(iter(advocates))
