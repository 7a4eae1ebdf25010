"""Sequential pipeline with schema contracts: each stage's output is checked before the next runs.

``pipeline([...])`` turns a list of :class:`Stage` into chained steps. A
stage's function returns only its *output* (a mapping, or a pydantic model),
never an outcome: the pattern wires the edges (stage *i* goes to stage
*i + 1*; the last finishes, or goes to ``then``). Two contracts guard every
hand-over, before the next stage can run:

1. the stage's own ``output`` model, if declared (the stage's contract: a
   violation fails the run with ``contract_violation`` naming the stage and field);
2. the machine's state schema and the stage's ``writes`` (``Machine.apply``:
   ``schema_violation`` / ``unowned_field``), as for any step.

Intent propagation: every stage can read the run's original task as
``ctx.task``. It is stored once, by content hash, when the run is created;
it is neither copied into the state nor into any audit event.

Example::

    steps = pipeline([
        Stage("extract", extract, writes=["fields"], output=Extracted),
        Stage("check", check, writes=["problems"]),
        Stage("summarise", summarise, writes=["summary"]),
    ])
    machine = Machine("intake", "1", Intake, steps=steps)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from ..agents.base import StepContext
from ..machine import Step
from ..outcomes import Fail, Finish, Goto, Outcome, RequestApproval
from .parallel import callable_name

if TYPE_CHECKING:
    from .escalation import EscalationRule

__all__ = ["Stage", "pipeline"]


@dataclass(frozen=True)
class Stage:
    """One stage of a pipeline.

    Attributes:
        name: the step's name.
        fn: ``(state_view, ctx) -> output``: a mapping of field -> value, or a
            pydantic model (its ``writes`` fields and the fields it set are the output).
        writes: state fields the stage owns (its output's keys).
        reads: state fields it sees (``None``: all).
        output: optional pydantic model the output must fit (the stage's contract).
        escalate: escalation rules on the hand-over to the next stage (not
            allowed on a stage that finishes the run).
        description: one line for the docs.
    """

    name: str
    fn: Callable[[Any, StepContext], Mapping[str, Any] | BaseModel]
    writes: Sequence[str] = ()
    reads: Sequence[str] | None = None
    output: type[BaseModel] | None = None
    escalate: Sequence[EscalationRule] = ()
    description: str = ""


class _StageAgent:
    def __init__(self, stage: Stage, next_step: str | None) -> None:
        self.stage = stage
        self.next_step = next_step
        self.agent_name = callable_name(stage.fn)
        version = getattr(stage.fn, "agent_version", None)
        if isinstance(version, str):
            self.agent_version = version
        prompt = getattr(stage.fn, "prompt_version", None)
        if isinstance(prompt, str):
            self.prompt_version = prompt

    def __call__(self, state: Any, ctx: StepContext) -> Outcome:
        produced = self.stage.fn(state, ctx)
        if isinstance(produced, (Goto, Finish, Fail, RequestApproval)):
            return Fail(
                f"stage {self.stage.name!r} returned an outcome; a stage returns its output only",
                error_code="contract_violation",
            )
        if isinstance(produced, BaseModel):
            # A model may be the whole state model: fields it did not set and
            # the stage does not write are not part of its output.
            full = produced.model_dump(mode="json")
            keep = set(produced.model_fields_set) | set(self.stage.writes)
            data: Any = {k: v for k, v in full.items() if k in keep}
        else:
            data = dict(produced) if isinstance(produced, Mapping) else produced
        if not isinstance(data, dict):
            return Fail(
                f"stage {self.stage.name!r} returned {type(produced).__name__}, not a mapping",
                error_code="contract_violation",
            )
        if self.stage.output is not None:
            try:
                data = self.stage.output.model_validate(data).model_dump(mode="json")
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"]) or "output"
                return Fail(
                    f"stage {self.stage.name!r} broke its contract {self.stage.output.__name__} "
                    f"at {loc!r}: {first['msg']}",
                    error_code="contract_violation",
                )
        if self.next_step is None:
            return Finish(update=data)
        return Goto(self.next_step, update=data)


def pipeline(stages: Sequence[Stage], *, then: str | None = None) -> list[Step]:
    """Chain ``stages`` into steps: each goes to the next; the last finishes or goes to ``then``.

    Args:
        stages: at least one stage, in order.
        then: a step (declared elsewhere in the machine) after the last
            stage; ``None`` means the last stage finishes the run.

    Returns:
        One :class:`~statecraft.machine.Step` per stage, in order.

    Raises:
        ValueError: no stages, or duplicate stage names.
    """
    if not stages:
        raise ValueError("a pipeline needs at least one stage")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stage names in {names}")
    steps = []
    for i, stage in enumerate(stages):
        nxt = stages[i + 1].name if i + 1 < len(stages) else then
        steps.append(
            Step(
                stage.name,
                _StageAgent(stage, nxt),
                next=[nxt] if nxt is not None else [],
                reads=stage.reads,
                writes=stage.writes,
                may_finish=nxt is None,
                escalate=stage.escalate,
                description=stage.description,
            )
        )
    return steps
