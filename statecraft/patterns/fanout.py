"""Parallel fan-out with aggregation: one step, N branches, a completion policy.

``fan_out(...)`` returns a :class:`~statecraft.machine.Step` whose agent runs
the branches concurrently (at most ``max_concurrency`` at once, each attempt
under ``branch_timeout``, retried per ``retry``) and writes a
:class:`FanOutResult` into the state field ``into``. Failed or timed-out
branches are *flagged* in that aggregate; they fail the step only when the
completion policy is not satisfied (``All(strict=True)``, an unreachable
``Quorum(n)``, a ``min_success`` not met). Then the step goes to
``on_failure`` if declared, else the run fails with ``fan_out_unsatisfied``.

Every branch attempt is its own ``agent.called`` audit event and the step
adds one ``fanout.completed`` event (statecraft/patterns/parallel.py).

Example::

    class Research(BaseModel):
        question: str
        findings: FanOutResult | None = None

    research = fan_out(
        "research",
        branches={"glossary": glossary, "faq": faq, "archive": archive},
        into="findings", next="report",
        max_concurrency=4, branch_timeout=timedelta(milliseconds=250),
        retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=10)),
        completion=Deadline(timedelta(milliseconds=400), min_success=2),
    )
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..agents.base import StepContext
from ..machine import Step
from ..outcomes import Fail, Finish, Goto, Outcome
from ..policy import RetryPolicy
from .parallel import (
    All,
    BranchCall,
    BranchFn,
    Completion,
    callable_name,
    config_digest,
    run_parallel,
)

if TYPE_CHECKING:
    from .escalation import EscalationRule

__all__ = ["fan_out"]


class _FanOutAgent:
    """The fan-out step's agent (a callable object so it carries its audit identity)."""

    def __init__(
        self,
        name: str,
        branches: Mapping[str, BranchFn],
        inputs: Callable[[Any, StepContext], Mapping[str, Any]] | None,
        into: str,
        next_step: str | None,
        on_failure: str | None,
        max_concurrency: int,
        branch_timeout: timedelta | None,
        retry: RetryPolicy | None,
        completion: Completion,
        output_model: type[BaseModel] | Mapping[str, type[BaseModel]] | None,
    ) -> None:
        self.branches = dict(branches)
        self.inputs = inputs
        self.into = into
        self.next_step = next_step
        self.on_failure = on_failure
        self.max_concurrency = max_concurrency
        self.branch_timeout = branch_timeout
        self.retry = retry
        self.completion = completion
        self.output_model = output_model
        self.agent_name = f"fan_out:{name}"
        self.agent_version = config_digest(
            {
                "branches": self.branches,
                "inputs": inputs,
                "max_concurrency": max_concurrency,
                "branch_timeout": branch_timeout,
                "retry": retry,
                "completion": completion,
                "output_model": output_model,
            }
        )

    def _model_for(self, key: str) -> type[BaseModel] | None:
        if self.output_model is None or isinstance(self.output_model, type):
            return self.output_model
        return self.output_model.get(key)

    def __call__(self, state: Any, ctx: StepContext) -> Outcome:
        given = dict(self.inputs(state, ctx)) if self.inputs is not None else {}
        unknown = sorted(set(given) - set(self.branches))
        if unknown:
            return Fail(f"fan-out inputs name unknown branches {unknown}", error_code="fan_out_inputs")
        calls = [
            BranchCall(
                key=key,
                fn=fn,
                input=given.get(key, state),
                agent_name=callable_name(fn) if getattr(fn, "agent_name", None) else key,
                agent_version=getattr(fn, "agent_version", None),
                output_model=self._model_for(key),
            )
            for key, fn in self.branches.items()
        ]
        result = run_parallel(
            ctx,
            calls,
            max_concurrency=self.max_concurrency,
            branch_timeout=self.branch_timeout,
            retry=self.retry,
            completion=self.completion,
            label=self.agent_name,
        )
        update = {self.into: result.model_dump(mode="json")}
        flagged = sorted(result.flagged)
        reason = f"{len(result.outputs)}/{len(result.branches)} branches succeeded ({result.policy}, {result.stopped})"
        if flagged:
            reason += f"; flagged: {', '.join(f'{k}={result.branches[k].status}' for k in flagged)}"
        if not result.satisfied:
            if self.on_failure is not None:
                return Goto(self.on_failure, update=update, reason=f"completion policy not satisfied: {reason}")
            return Fail(f"completion policy not satisfied: {reason}", error_code="fan_out_unsatisfied")
        if self.next_step is None:
            return Finish(update=update, reason=reason)
        return Goto(self.next_step, update=update, reason=reason)


def fan_out(
    name: str,
    *,
    branches: Mapping[str, BranchFn],
    into: str,
    next: str | None = None,
    inputs: Callable[[Any, StepContext], Mapping[str, Any]] | None = None,
    max_concurrency: int = 4,
    branch_timeout: timedelta | None = None,
    retry: RetryPolicy | None = None,
    completion: Completion | None = None,
    on_failure: str | None = None,
    output_model: type[BaseModel] | Mapping[str, type[BaseModel]] | None = None,
    reads: Sequence[str] | None = None,
    escalate: Sequence[EscalationRule] = (),
    description: str = "",
) -> Step:
    """A step that runs ``branches`` concurrently and writes their aggregate into ``into``.

    Args:
        name: the step's name.
        branches: branch name -> ``(input, bctx) -> output``. Output is
            JSON-compatible or a pydantic model; ``bctx`` is a
            :class:`~statecraft.patterns.BranchContext` (task, clock,
            usage, idempotency keys, ``cancelled``).
        into: state field receiving the :class:`FanOutResult` (as its JSON
            form; declare it ``FanOutResult | None``).
        next: step to go to when the policy is satisfied; ``None`` finishes the run.
        inputs: ``(state_view, ctx) -> {branch: input}``; branches it omits
            receive the state view. Default: every branch gets the state view.
        max_concurrency: cap on simultaneous attempts (>= 1).
        branch_timeout: per-attempt timeout; an attempt over it is abandoned
            (its thread runs on: see statecraft/patterns/parallel.py) and
            flagged ``timeout``.
        retry: per-branch retry policy (default none). Distinct from the
            step's own ``retry``, which would re-run the whole fan-out.
        completion: ``All()`` (default), ``Quorum(n)`` or ``Deadline(after)``.
        on_failure: step to go to (with the partial aggregate) when the policy
            is not satisfied; ``None`` fails the run with ``fan_out_unsatisfied``.
        output_model: structured-output contract, for every branch or per branch name.
        reads: state fields the step sees (``None``: all).
        escalate: escalation rules on the step's outcome (needs ``next``).
        description: one line for the docs.

    Returns:
        The step, with ``next`` = ``[next, on_failure]`` (those given) and
        ``writes`` = ``[into]``.

    Raises:
        ValueError: no branches, or ``max_concurrency`` < 1.
    """
    if not branches:
        raise ValueError(f"fan_out {name!r} needs at least one branch")
    if max_concurrency < 1:
        raise ValueError(f"fan_out {name!r}: max_concurrency must be >= 1")
    agent = _FanOutAgent(
        name, branches, inputs, into, next, on_failure, max_concurrency, branch_timeout,
        retry, completion or All(), output_model,
    )
    return Step(
        name,
        agent,
        next=[s for s in (next, on_failure) if s is not None],
        reads=reads,
        writes=[into],
        may_finish=next is None,
        escalate=escalate,
        description=description
        or f"fan out to {', '.join(branches)} (cap {max_concurrency}, {agent.completion.describe()})",
    )
