"""Supervisor-worker: decompose, delegate to named specialists, review, converge within bounds.

``supervisor(...)`` returns **two steps** that loop:

``NAME`` (the supervisor)
    round 0: ``plan`` decomposes the task into :class:`Subtask` s for named
    specialists. Later rounds: ``review`` judges each new result, returning
    :class:`Accept`, :class:`Redelegate` (same or another specialist, new
    instruction; same depth), :class:`Split` (child subtasks, one level
    deeper) or :class:`Drop`. When nothing is left to run, or the bounds are
    reached, it **converges**: ``synthesize`` builds the output from the
    accepted results, and the state says explicitly what is missing.
``NAME_specialists``
    runs the pending subtasks concurrently (statecraft/patterns/parallel.py:
    cap, per-call timeout, retry), each specialist seeing only its own
    subtask and the run's task, and returns to the supervisor.

Hard bounds: ``max_rounds`` (specialist rounds; a re-delegation after the
last round is refused and the subtask reported missing) and ``max_depth``
(a :class:`Split` below it is refused). Specialists never call each other:
they receive a :class:`Subtask` and a :class:`~statecraft.patterns.BranchContext`,
which holds no reference to other specialists or results; only the
supervisor delegates. Each round is a committed step, so a crash loses at
most the round in flight.

Audit: ``supervisor.delegated`` (which subtasks went to whom, at what depth),
one ``agent.called`` per specialist attempt, ``supervisor.reviewed`` per
result (``accept`` / ``redelegate`` / ``split`` / ``drop`` / ``refused``,
with the reason), and ``supervisor.converged`` (complete or partial, rounds,
what is missing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..agents.base import RecordedCall, StepContext
from ..machine import Step
from ..outcomes import Fail, Goto, Outcome
from ..policy import RetryPolicy
from .parallel import BranchCall, BranchContext, config_digest, run_parallel

__all__ = [
    "Accept",
    "Drop",
    "Redelegate",
    "Split",
    "Subtask",
    "SubtaskResult",
    "Supervision",
    "default_review",
    "supervisor",
]


class Subtask(BaseModel):
    """One unit of delegated work.

    Attributes:
        id: unique within the run (``parties``, ``parties.r2``, ``clauses.1``).
        specialist: the named specialist that does it.
        instruction: what to do, in words (an LLM specialist's prompt part).
        input: optional JSON input for the specialist.
        parent: the subtask this one refines or splits (``None`` for the plan's).
        depth: delegation depth, 1 for the plan's subtasks, +1 per :class:`Split`.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    specialist: str
    instruction: str = ""
    input: Any = None
    parent: str | None = None
    depth: int = 1


class SubtaskResult(BaseModel):
    """A specialist's result and the supervisor's verdict on it.

    Attributes:
        subtask: what was asked.
        round: the specialist round it ran in (1-based).
        status: the call's final status (``success``, ``failure``, ``timeout``, …).
        output: the structured output when ``success``.
        error: one line otherwise.
        verdict: ``pending`` until reviewed; then ``accepted``, ``redelegated``,
            ``split``, ``dropped`` or ``refused`` (a re-delegation or split
            beyond the bounds).
        note: the reviewer's reason.
    """

    model_config = ConfigDict(frozen=True)

    subtask: Subtask
    round: int
    status: str
    output: Any = None
    error: str | None = None
    verdict: str = "pending"
    note: str | None = None


class Supervision(BaseModel):
    """The supervisor's whole record, kept in one state field (declare it ``Supervision | None``).

    Attributes:
        round: specialist rounds run so far.
        pending: subtasks to run in the next specialist round.
        results: every result so far, in order, with its verdict.
        accepted: subtask id -> accepted output.
        missing: one line per subtask that ended without an accepted result.
        converged: the supervisor has finished.
        complete: converged with nothing missing.
        output: what ``synthesize`` returned.
    """

    model_config = ConfigDict(frozen=True)

    round: int = 0
    pending: list[Subtask] = []
    results: list[SubtaskResult] = []
    accepted: dict[str, Any] = {}
    missing: list[str] = []
    converged: bool = False
    complete: bool = False
    output: Any = None


@dataclass(frozen=True)
class Accept:
    """Accept the result as it is."""

    note: str | None = None


@dataclass(frozen=True)
class Redelegate:
    """Run the subtask again (same depth), with a new instruction and optionally another specialist."""

    instruction: str
    specialist: str | None = None
    input: Any = None
    reason: str = ""


@dataclass(frozen=True)
class Split:
    """Decompose further: child subtasks one level deeper (refused beyond ``max_depth``)."""

    subtasks: Sequence[Subtask]
    reason: str = ""


@dataclass(frozen=True)
class Drop:
    """Give the subtask up; it is reported missing."""

    reason: str


Verdict = Accept | Redelegate | Split | Drop
Specialist = Callable[[Subtask, BranchContext], Any]


def default_review(result: SubtaskResult, state: Any, ctx: StepContext) -> Verdict:
    """Accept what succeeded; drop what failed (the specialists' retry policy already retried)."""
    if result.status == "success":
        return Accept()
    return Drop(f"specialist {result.subtask.specialist} ended with {result.status}: {result.error}")


@dataclass
class _Config:
    name: str
    plan: Callable[[Any, StepContext], Sequence[Subtask]]
    specialists: Mapping[str, Specialist]
    synthesize: Callable[[Any, Supervision, StepContext], Any]
    review: Callable[[SubtaskResult, Any, StepContext], Verdict]
    into: str
    next: str
    max_rounds: int
    max_depth: int
    max_concurrency: int
    branch_timeout: timedelta | None
    retry: RetryPolicy | None
    output_models: Mapping[str, type[BaseModel]] = field(default_factory=dict)

    @property
    def specialists_step(self) -> str:
        return f"{self.name}_specialists"

    def digest(self) -> str:
        return config_digest(
            {
                "plan": self.plan, "specialists": self.specialists, "synthesize": self.synthesize,
                "review": self.review, "max_rounds": self.max_rounds, "max_depth": self.max_depth,
                "max_concurrency": self.max_concurrency, "branch_timeout": self.branch_timeout,
                "retry": self.retry, "output_models": dict(self.output_models),
            }
        )


def _load(value: Any) -> Supervision:
    if value is None:
        return Supervision()
    if isinstance(value, Supervision):
        return value
    return Supervision.model_validate(value)


class _SupervisorAgent:
    """The supervisor step: plan, review, converge. Never calls a specialist itself."""

    def __init__(self, cfg: _Config) -> None:
        self.cfg = cfg
        self.agent_name = f"supervisor:{cfg.name}"
        self.agent_version = cfg.digest()

    def _event(self, ctx: StepContext, event_type: str, decision: str, reason: str | None, payload: Any) -> None:
        ctx.record_call(RecordedCall(
            event_type=event_type, name=self.agent_name, version=self.agent_version,
            decision=decision, reason=reason, payload=payload,
        ))

    def _check(self, subtasks: Sequence[Subtask], known: set[str]) -> str | None:
        for t in subtasks:
            if t.specialist not in self.cfg.specialists:
                return f"subtask {t.id!r} names unknown specialist {t.specialist!r}"
            if t.id in known:
                return f"subtask id {t.id!r} is used twice"
            known.add(t.id)
        return None

    def __call__(self, state: Any, ctx: StepContext) -> Outcome:
        cfg = self.cfg
        sup = _load(getattr(state, cfg.into))
        if sup.converged:
            return Goto(cfg.next, reason="already converged")
        if sup.round == 0 and not sup.results:
            subtasks = [t.model_copy(update={"depth": 1, "parent": None}) for t in cfg.plan(state, ctx)]
            problem = self._check(subtasks, set())
            if problem is not None:
                return Fail(f"supervisor {cfg.name!r} planned badly: {problem}", error_code="bad_plan")
            if not subtasks:
                return self._converge(state, ctx, sup, "the plan has no subtasks")
            self._delegate(ctx, subtasks, 1)
            return Goto(
                cfg.specialists_step,
                update={cfg.into: sup.model_copy(update={"pending": subtasks}).model_dump(mode="json")},
                reason=f"round 1: delegated {len(subtasks)} subtasks",
            )
        known = {r.subtask.id for r in sup.results}
        results, pending = [], []
        accepted = dict(sup.accepted)
        for result in sup.results:
            if result.verdict != "pending":
                results.append(result)
                continue
            verdict = cfg.review(result, state, ctx)
            reviewed, new = self._apply_verdict(result, verdict, sup.round, known)
            if reviewed.verdict == "accepted":
                accepted[result.subtask.id] = result.output
            results.append(reviewed)
            pending.extend(new)
            self._event(
                ctx, "supervisor.reviewed", reviewed.verdict, reviewed.note,
                {"subtask": result.subtask.id, "specialist": result.subtask.specialist,
                 "depth": result.subtask.depth, "round": result.round, "status": result.status,
                 "new_subtasks": [t.id for t in new]},
            )
        sup = sup.model_copy(update={"results": results, "accepted": accepted, "pending": pending})
        if pending:
            self._delegate(ctx, pending, sup.round + 1)
            return Goto(
                cfg.specialists_step,
                update={cfg.into: sup.model_dump(mode="json")},
                reason=f"round {sup.round + 1}: delegated {len(pending)} subtasks",
            )
        return self._converge(state, ctx, sup, None)

    def _apply_verdict(
        self, result: SubtaskResult, verdict: Verdict, round_: int, known: set[str]
    ) -> tuple[SubtaskResult, list[Subtask]]:
        cfg, task = self.cfg, result.subtask
        if isinstance(verdict, Accept):
            return result.model_copy(update={"verdict": "accepted", "note": verdict.note}), []
        if isinstance(verdict, Drop):
            return result.model_copy(update={"verdict": "dropped", "note": verdict.reason}), []
        if round_ >= cfg.max_rounds:
            note = f"refused: max_rounds {cfg.max_rounds} reached ({_verdict_text(verdict)})"
            return result.model_copy(update={"verdict": "refused", "note": note}), []
        if isinstance(verdict, Redelegate):
            specialist = verdict.specialist or task.specialist
            if specialist not in cfg.specialists:
                note = f"refused: unknown specialist {specialist!r}"
                return result.model_copy(update={"verdict": "refused", "note": note}), []
            new_id = _fresh_id(f"{task.id}.r{round_ + 1}", known)
            redo = Subtask(
                id=new_id, specialist=specialist, instruction=verdict.instruction,
                input=task.input if verdict.input is None else verdict.input,
                parent=task.id, depth=task.depth,
            )
            note = verdict.reason or f"re-delegated as {new_id}"
            return result.model_copy(update={"verdict": "redelegated", "note": note}), [redo]
        assert isinstance(verdict, Split)
        if task.depth + 1 > cfg.max_depth:
            note = f"refused: split beyond max_depth {cfg.max_depth}"
            return result.model_copy(update={"verdict": "refused", "note": note}), []
        children = [
            t.model_copy(update={"parent": task.id, "depth": task.depth + 1}) for t in verdict.subtasks
        ]
        problem = self._check(children, known)
        if problem is not None:
            return result.model_copy(update={"verdict": "refused", "note": f"refused: {problem}"}), []
        return result.model_copy(update={"verdict": "split", "note": verdict.reason or None}), children

    def _delegate(self, ctx: StepContext, subtasks: Sequence[Subtask], round_: int) -> None:
        self._event(
            ctx, "supervisor.delegated", f"round:{round_}", None,
            {"round": round_, "subtasks": [
                {"id": t.id, "specialist": t.specialist, "depth": t.depth, "parent": t.parent}
                for t in subtasks
            ]},
        )

    def _converge(self, state: Any, ctx: StepContext, sup: Supervision, why: str | None) -> Outcome:
        cfg = self.cfg
        # A re-delegated or split result is answered by its children, which
        # have results (and verdicts) of their own: only dead ends are missing.
        missing = [
            f"{r.subtask.id} ({r.subtask.specialist}): {r.verdict}: {r.note or r.error or r.status}"
            for r in sup.results
            if r.verdict in ("dropped", "refused")
        ]
        sup = sup.model_copy(update={"missing": missing, "converged": True, "complete": not missing})
        output = cfg.synthesize(state, sup, ctx)
        sup = sup.model_copy(update={"output": output})
        reason = why or (
            f"converged after {sup.round} rounds: complete" if not missing
            else f"converged after {sup.round} rounds with {len(missing)} missing"
        )
        self._event(
            ctx, "supervisor.converged", "complete" if not missing else "partial", reason,
            {"rounds": sup.round, "accepted": sorted(sup.accepted), "missing": missing},
        )
        return Goto(cfg.next, update={cfg.into: sup.model_dump(mode="json")}, reason=reason)


class _SpecialistsAgent:
    """Runs the pending subtasks concurrently; specialists see only their own subtask."""

    def __init__(self, cfg: _Config) -> None:
        self.cfg = cfg
        self.agent_name = f"supervisor:{cfg.name}:specialists"
        self.agent_version = cfg.digest()

    def __call__(self, state: Any, ctx: StepContext) -> Outcome:
        cfg = self.cfg
        sup = _load(getattr(state, cfg.into))
        round_ = sup.round + 1
        calls = [
            BranchCall(
                key=t.id,
                fn=_specialist_call(cfg.specialists[t.specialist]),
                input=t,
                agent_name=t.specialist,
                agent_version=getattr(cfg.specialists[t.specialist], "agent_version", None),
                output_model=cfg.output_models.get(t.specialist),
                payload={"subtask": t.id, "depth": t.depth, "round": round_},
            )
            for t in sup.pending
        ]
        agg = run_parallel(
            ctx, calls, max_concurrency=cfg.max_concurrency, branch_timeout=cfg.branch_timeout,
            retry=cfg.retry, label=self.agent_name,
        )
        new = [
            SubtaskResult(
                subtask=t, round=round_, status=agg.branches[t.id].status,
                output=agg.branches[t.id].output, error=agg.branches[t.id].error,
            )
            for t in sup.pending
        ]
        sup = sup.model_copy(update={"round": round_, "pending": [], "results": [*sup.results, *new]})
        ok = sum(1 for r in new if r.status == "success")
        return Goto(
            cfg.name,
            update={cfg.into: sup.model_dump(mode="json")},
            reason=f"round {round_}: {ok}/{len(new)} specialists succeeded",
        )


def _specialist_call(fn: Specialist) -> Callable[[Any, BranchContext], Any]:
    def call(subtask: Any, bctx: BranchContext) -> Any:
        return fn(subtask, bctx)

    return call


def _fresh_id(candidate: str, known: set[str]) -> str:
    n, new_id = 2, candidate
    while new_id in known:
        new_id, n = f"{candidate}.{n}", n + 1
    known.add(new_id)
    return new_id


def _verdict_text(verdict: Verdict) -> str:
    if isinstance(verdict, Redelegate):
        return f"wanted to re-delegate: {verdict.reason or verdict.instruction}"
    if isinstance(verdict, Split):
        return f"wanted to split: {verdict.reason}"
    return type(verdict).__name__


def supervisor(
    name: str,
    *,
    plan: Callable[[Any, StepContext], Sequence[Subtask]],
    specialists: Mapping[str, Specialist],
    synthesize: Callable[[Any, Supervision, StepContext], Any],
    into: str,
    next: str,
    review: Callable[[SubtaskResult, Any, StepContext], Verdict] | None = None,
    max_rounds: int = 3,
    max_depth: int = 2,
    max_concurrency: int = 4,
    branch_timeout: timedelta | None = None,
    retry: RetryPolicy | None = None,
    output_models: Mapping[str, type[BaseModel]] | None = None,
    reads: Sequence[str] | None = None,
    description: str = "",
) -> list[Step]:
    """The supervisor and specialists steps (a bounded delegation loop); add both to the machine.

    Args:
        name: the supervisor step's name; the specialists step is ``NAME_specialists``.
        plan: ``(state_view, ctx) -> [Subtask]``, the decomposition (round 0).
            Depth and parent are set by the pattern.
        specialists: specialist name -> ``(subtask, bctx) -> structured output``.
        synthesize: ``(state_view, supervision, ctx) -> output`` at convergence;
            ``supervision.accepted`` holds the results, ``supervision.missing``
            what is missing; it must produce an output either way.
        into: state field holding the :class:`Supervision` (declare it
            ``Supervision | None``); both steps write it.
        next: the step after convergence.
        review: ``(result, state_view, ctx) -> Accept | Redelegate | Split | Drop``;
            default :func:`default_review` (accept successes, drop failures).
        max_rounds: hard bound on specialist rounds (>= 1).
        max_depth: hard bound on delegation depth (>= 1; 1 forbids splits).
        max_concurrency, branch_timeout, retry: for each specialist round
            (statecraft/patterns/parallel.py).
        output_models: specialist name -> pydantic model its output must fit.
        reads: state fields both steps see (``None``: all); must include ``into``.
        description: one line for the docs.

    Returns:
        ``[supervisor_step, specialists_step]``.

    Raises:
        ValueError: no specialists, bounds < 1, or ``reads`` omits ``into``.
    """
    if not specialists:
        raise ValueError(f"supervisor {name!r} needs at least one specialist")
    if max_rounds < 1 or max_depth < 1:
        raise ValueError(f"supervisor {name!r}: max_rounds and max_depth must be >= 1")
    if reads is not None and into not in reads:
        raise ValueError(f"supervisor {name!r}: reads must include {into!r}")
    cfg = _Config(
        name, plan, dict(specialists), synthesize, review or default_review, into, next,
        max_rounds, max_depth, max_concurrency, branch_timeout, retry, dict(output_models or {}),
    )
    names = ", ".join(specialists)
    return [
        Step(
            name,
            _SupervisorAgent(cfg),
            next=[cfg.specialists_step, next],
            reads=reads,
            writes=[into],
            description=description
            or f"supervisor: plan, review, converge (max {max_rounds} rounds, depth {max_depth})",
        ),
        Step(
            cfg.specialists_step,
            _SpecialistsAgent(cfg),
            next=[name],
            reads=reads,
            writes=[into],
            description=f"specialists ({names}) run concurrently, cap {max_concurrency}",
        ),
    ]

