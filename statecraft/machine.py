"""Machines: a typed state schema and a graph of steps with declared edges.

A :class:`Machine` is declared as data, validated once when it is built and
then frozen. Every definition error is reported at build time, all at once:
unknown edge targets, unreachable steps, steps with no path to a finish,
duplicate names, reads or writes of fields the state model does not have.
(Model: python-statemachine's validations, Burr's ``_validate_transitions``.)

At run time the same machine judges what agents return
(:meth:`Machine.apply`): an outcome naming an undeclared edge, writing a field
its step does not own, or breaking the state schema is an illegal transition.

Example::

    class Review(BaseModel):
        kind: str | None = None

    def classify(state, ctx):
        return Goto("report", update={"kind": "contract"})

    def report(state, ctx):
        return Finish()

    machine = Machine(
        "review", "1", Review,
        steps=[
            Step("classify", classify, next=["report"], writes=["kind"]),
            Step("report", report, may_finish=True),
        ],
    )
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import rfc8785
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from .agents.base import Agent
from .errors import MachineDefinitionError
from .outcomes import Fail, Finish, Goto, Outcome, RequestApproval
from .policy import Budget, RetryPolicy, ms
from .sources import SourceFile, code_digest, code_files

if TYPE_CHECKING:
    from .patterns.escalation import EscalationRule

__all__ = [
    "AppliedOutcome", "IllegalOutcome", "Machine", "ReadOnlyStateError", "Step", "machine_digest",
]

S = TypeVar("S", bound=BaseModel)

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,99}$")


@dataclass(frozen=True)
class Step:
    """One node of a machine's graph; its agent is the transition function.

    Attributes:
        name: unique within the machine; letters, digits, ``_ . -``.
        agent: callable ``(state_view, ctx) -> Outcome``.
        next: names of the steps this step may move to (its declared edges).
        reads: state fields the agent sees; ``None`` means all of them.
        writes: state fields the agent may update (it owns them).
        may_finish: whether the agent may return ``Finish``.
        on_error: step to go to when the agent fails after its retries
            (an error edge, part of the declared graph); ``None`` fails the run.
        retry: retry policy for this step; ``None`` uses the machine's default.
        timeout: per-attempt timeout; an agent still running then is
            abandoned and the attempt fails with outcome ``timeout``
            (retried per the policy). ``None`` means no timeout.
        description: one line for docs and ``statecraft graph``.
        escalate: "always escalate" rules (``statecraft.patterns.EscalationRule``)
            judged on the state each ``Goto``/``RequestApproval`` proposes; a
            fired rule turns the outcome into a gate (see ``Machine.apply``).
            A step with rules may not be ``may_finish``.
        escalate_on_error: when the agent fails after its retries, ask a
            human (WAITING_FOR_APPROVAL; approval re-runs the step with fresh
            attempts, rejection fails the run) instead of failing the run.
            Exclusive with ``on_error``.
        approval_deadline: how long a gate raised at this step may wait for a
            decision; then the worker applies ``on_approval_timeout`` (audited
            as ``approval.expired``, actor ``system``). ``None``: no deadline.
        on_approval_timeout: ``"fail"`` (default) or ``"approve"``: approve by
            default, which the machine must say explicitly, here. Gates that
            ask for a budget extension, escalate an error, or carry an
            ``ApprovalPolicy`` (they need named people) always fail.
    """

    name: str
    agent: Agent | Callable[..., Outcome]
    next: Sequence[str] = ()
    reads: Sequence[str] | None = None
    writes: Sequence[str] = ()
    may_finish: bool = False
    on_error: str | None = None
    retry: RetryPolicy | None = None
    timeout: timedelta | None = None
    description: str = ""
    escalate: Sequence[EscalationRule] = ()
    escalate_on_error: bool = False
    approval_deadline: timedelta | None = None
    on_approval_timeout: str = "fail"

    def __post_init__(self) -> None:
        # Freeze sequences so a machine cannot be changed after validation.
        object.__setattr__(self, "next", tuple(self.next))
        object.__setattr__(self, "writes", tuple(self.writes))
        object.__setattr__(self, "escalate", tuple(self.escalate))
        if self.reads is not None:
            object.__setattr__(self, "reads", tuple(self.reads))

    @property
    def agent_name(self) -> str:
        """The agent's stable name, as audited (``agent_name``, ``actor_id``).

        Its ``agent_name`` attribute when it has one; else the qualified name
        of a function or class defined at module level (``classify``,
        ``Reviewer``); else — a lambda, or a closure built by a factory, whose
        qualified name (``make.<locals>.agent``) would name every such agent
        alike — the step's name.
        """
        explicit = getattr(self.agent, "agent_name", None)
        if isinstance(explicit, str):
            return explicit
        # The qualified name without the module: one machine file imported by
        # path or as a package module must keep one digest.
        qual = getattr(self.agent, "__qualname__", None)
        if not isinstance(qual, str):
            qual = type(self.agent).__qualname__
        return self.name if "<" in qual else qual

    @property
    def agent_version(self) -> str | None:
        """The agent's ``agent_version`` attribute, if it declares one."""
        version = getattr(self.agent, "agent_version", None)
        return version if isinstance(version, str) else None

    @property
    def prompt_version(self) -> str | None:
        """The agent's ``prompt_version`` attribute, if it declares one."""
        version = getattr(self.agent, "prompt_version", None)
        return version if isinstance(version, str) else None


class ReadOnlyStateError(AttributeError):
    """An agent assigned to (or deleted) a field of the state view it was handed.

    Agents change state only through ``update=`` of the outcome they return,
    which the machine validates against the step's ``writes`` (DESIGN.md
    invariant 1). Views are read-only copies, so an in-place write could
    never reach the checkpoint anyway; it is refused loudly rather than
    lost silently. The engine fails the run with the illegal outcome
    ``state_mutation`` (never retried: the same code would do it again).

    Attributes:
        step: the step whose agent tried it.
        field: the field it tried to set or delete.
    """

    error_code = "state_mutation"
    non_retryable = True

    def __init__(self, step: str, field: str) -> None:
        self.step = step
        self.field = field
        super().__init__(
            f"step {step!r} assigned state.{field} in place; the state view is read-only: "
            f"return the change as update={{{field!r}: ...}} (the step must declare it in writes)"
        )


class _ReadOnly:
    """Mixin of every state view: refuses attribute assignment and deletion."""

    __statecraft_step__: ClassVar[str] = "?"

    def __setattr__(self, name: str, value: Any) -> None:
        raise ReadOnlyStateError(type(self).__statecraft_step__, name)

    def __delattr__(self, name: str) -> None:
        raise ReadOnlyStateError(type(self).__statecraft_step__, name)


class _ReadOnlyView(_ReadOnly, BaseModel):
    model_config = ConfigDict(frozen=True)


@dataclass(frozen=True)
class IllegalOutcome:
    """Why an agent's outcome was refused; the engine fails the run with it.

    Attributes:
        error_code: ``undeclared_edge``, ``unowned_field``, ``state_mutation``, ``schema_violation``,
            ``not_allowed_to_finish`` or ``not_an_outcome``.
        reason: one line naming the step, the offending value and what was declared.
    """

    error_code: str
    reason: str


@dataclass(frozen=True)
class AppliedOutcome(Generic[S]):
    """A legal outcome, resolved against the machine: what the engine commits.

    Attributes:
        outcome: the agent's outcome.
        state: the full new state (the old state with the update applied).
        next_step: the step the run is at afterwards (``None`` when finished).
    """

    outcome: Outcome
    state: S
    next_step: str | None


@dataclass(frozen=True)
class _Graph:
    edges: tuple[tuple[str, str, str], ...] = field(default=())  # (source, dest, kind)


class Machine(Generic[S]):
    """A named, versioned workflow definition, validated once and frozen.

    Args:
        name: the machine's name (letters, digits, ``_ . -``).
        version: the definition's version, recorded in every audit event.
        state: the pydantic model of the run's state. Runs start from
            ``state.model_validate(input)`` when the input is a mapping, else
            from ``initial(input)`` if given, else from ``state()``.
        steps: the steps; the first one is the start unless ``start`` is given.
        start: name of the first step.
        initial: optional ``input -> state`` factory, for text inputs.
        retry: default retry policy for steps that declare none
            (default: no retries, ``RetryPolicy.none()``).
        max_steps: hard bound on committed steps per run (DESIGN.md invariant 6);
            error edges count as steps, so error loops are bounded too.
        budget: further per-run bounds (visits per step, tokens, cost, wall
            time) and what crossing one does; ``None`` means none beyond
            ``max_steps`` (which ``budget.on_exceeded`` also governs).
        description: one paragraph for docs.

    Attributes:
        definition_digest: SHA-256 of the canonical description
            (:meth:`describe`: graph, schema, agent identities, policies).
        code_digest: SHA-256 over the contents of the machine's source
            files (``code_files``; statecraft/sources.py says which).
        digest: :func:`machine_digest` of both: what a run records
            (``machine_digest``) and must find again to continue.

    Raises:
        MachineDefinitionError: listing every problem found (all at once).
    """

    def __init__(
        self,
        name: str,
        version: str,
        state: type[S],
        steps: Sequence[Step],
        *,
        start: str | None = None,
        initial: Callable[[Any], S] | None = None,
        retry: RetryPolicy | None = None,
        max_steps: int = 100,
        budget: Budget | None = None,
        description: str = "",
    ) -> None:
        self.name = name
        self.version = version
        self.state_model = state
        self.steps: Mapping[str, Step] = {}
        self.start = start if start is not None else (steps[0].name if steps else "")
        self.initial = initial
        self.retry = retry if retry is not None else RetryPolicy.none()
        self.max_steps = max_steps
        self.budget = budget if budget is not None else Budget()
        self.description = description
        problems = self._validate(steps)
        if problems:
            raise MachineDefinitionError(name if isinstance(name, str) else repr(name), problems)
        self.steps = {s.name: s for s in steps}
        self._views: dict[str, tuple[type[BaseModel], set[str] | None]] = {
            s.name: self._view_model(s) for s in steps
        }
        # Identity = declarations + code (statecraft/sources.py): a run
        # continues only on the machine it started with, agents' code included.
        self.definition_digest = hashlib.sha256(rfc8785.dumps(self.describe())).hexdigest()
        module_file, module_globals = _builder_module()
        self.code_files: tuple[SourceFile, ...] = code_files(
            module_file, module_globals,
            [self.state_model, self.initial, *(s.agent for s in steps), *(s.escalate for s in steps)],
        )
        self.code_digest = code_digest(self.code_files)
        self.digest = machine_digest(self.definition_digest, self.code_digest)

    # -- definition ---------------------------------------------------------

    def _validate(self, steps: Sequence[Step]) -> list[str]:
        problems: list[str] = []
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            problems.append(f"name {self.name!r} must match {_NAME.pattern}")
        if not isinstance(self.version, str) or not self.version.strip():
            problems.append("version must be a non-empty string")
        if not (isinstance(self.state_model, type) and issubclass(self.state_model, BaseModel)):
            problems.append("state must be a pydantic BaseModel subclass")
            return problems
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            problems.append(f"max_steps must be a positive integer, got {self.max_steps!r}")
        if not isinstance(self.retry, RetryPolicy):
            problems.append(f"retry must be a RetryPolicy, got {self.retry!r}")
        if not isinstance(self.budget, Budget):
            problems.append(f"budget must be a Budget, got {self.budget!r}")
        if not steps:
            problems.append("a machine needs at least one step")
            return problems
        fields = set(self.state_model.model_fields)
        names = [s.name for s in steps]
        seen: set[str] = set()
        for n in names:
            if n in seen:
                problems.append(f"duplicate step name {n!r}")
            seen.add(n)
        for s in steps:
            if not isinstance(s, Step):
                problems.append(f"{s!r} is not a Step")
                continue
            if not _NAME.match(s.name):
                problems.append(f"step name {s.name!r} must match {_NAME.pattern}")
            if not callable(s.agent):
                problems.append(f"step {s.name!r}: agent {s.agent!r} is not callable")
            for target in s.next:
                if target not in seen:
                    problems.append(f"step {s.name!r}: next step {target!r} does not exist")
            if s.on_error is not None and s.on_error not in seen:
                problems.append(f"step {s.name!r}: on_error step {s.on_error!r} does not exist")
            for f in s.writes:
                if f not in fields:
                    problems.append(
                        f"step {s.name!r} writes {f!r}, which {self.state_model.__name__} does not have"
                    )
            for f in s.reads or ():
                if f not in fields:
                    problems.append(
                        f"step {s.name!r} reads {f!r}, which {self.state_model.__name__} does not have"
                    )
            problems.extend(_reliability_problems(s))
            problems.extend(_escalation_problems(s))
        if self.start not in seen:
            problems.append(f"start step {self.start!r} does not exist")
        if problems:
            return problems
        by_name = {s.name: s for s in steps}
        succ = {s.name: set(s.next) | ({s.on_error} if s.on_error else set()) for s in steps}
        reachable = _closure({self.start}, succ)
        for n in names:
            if n not in reachable:
                problems.append(f"step {n!r} is unreachable from start step {self.start!r}")
        pred: dict[str, set[str]] = {n: set() for n in names}
        for src, dests in succ.items():
            for d in dests:
                pred[d].add(src)
        can_finish = _closure({n for n in names if by_name[n].may_finish}, pred)
        for n in names:
            if n not in can_finish:
                problems.append(f"step {n!r} has no path to a step that may finish")
        return problems

    def _view_model(self, step: Step) -> tuple[type[BaseModel], set[str] | None]:
        """The read-only model of ``step``'s view, and the fields it holds (``None``: all)."""
        suffix = step.name.replace("-", "_").replace(".", "_")
        view: type[BaseModel]
        if step.reads is None:
            # A read-only subclass of the state model itself, so agents keep its
            # methods, properties and isinstance() while unable to write to it.
            base = self.state_model
            view = type(
                f"ReadOnly{base.__name__}_{suffix}",
                (_ReadOnly, base),
                {"model_config": ConfigDict(**{**base.model_config, "frozen": True}),
                 "__module__": base.__module__},
            )
            fields: set[str] | None = None
        else:
            model_fields = self.state_model.model_fields
            definitions: dict[str, Any] = {
                f: (model_fields[f].annotation, model_fields[f]) for f in step.reads
            }
            view = create_model(
                f"{self.state_model.__name__}View_{suffix}", __base__=_ReadOnlyView, **definitions
            )
            fields = set(step.reads)
        view.__statecraft_step__ = step.name  # type: ignore[attr-defined]
        return view, fields

    def describe(self) -> dict[str, Any]:
        """The canonical description hashed into ``digest``: graph, schema and agent identities.

        Returns:
            A JSON-compatible dict (strings, integers, lists, dicts; no floats).
        """
        steps = []
        for s in self.steps.values():
            item: dict[str, Any] = {
                "name": s.name,
                "agent": s.agent_name,
                "next": list(s.next),
                "reads": None if s.reads is None else list(s.reads),
                "writes": list(s.writes),
                "may_finish": s.may_finish,
                "on_error": s.on_error,
            }
            if s.agent_version is not None:
                item["agent_version"] = s.agent_version
            if s.prompt_version is not None:
                item["prompt_version"] = s.prompt_version
            if s.escalate:
                # Only when present, so machines without rules keep their digest.
                item["escalate"] = [rule.describe() for rule in s.escalate]
            # Reliability declarations, likewise only when set: they change how
            # a run behaves, so they are part of the definition's identity.
            if s.retry is not None:
                item["retry"] = s.retry.describe()
            if s.timeout is not None:
                item["timeout_ms"] = ms(s.timeout)
            if s.escalate_on_error:
                item["escalate_on_error"] = True
            if s.approval_deadline is not None:
                item["approval_deadline_ms"] = ms(s.approval_deadline)
                item["on_approval_timeout"] = s.on_approval_timeout
            steps.append(item)
        described: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "start": self.start,
            "max_steps": self.max_steps,
            "state_schema": _strip_floats(self.state_model.model_json_schema()),
            "steps": steps,
        }
        if self.retry != RetryPolicy.none():
            described["retry"] = self.retry.describe()
        if self.budget != Budget():
            described["budget"] = self.budget.describe()
        return described

    def edges(self) -> list[tuple[str, str, str]]:
        """Every declared edge as ``(source, destination, kind)``.

        ``kind`` is ``next``, ``error`` (an ``on_error`` edge) or ``finish``
        (destination ``DONE``).
        """
        out: list[tuple[str, str, str]] = []
        for s in self.steps.values():
            out.extend((s.name, d, "next") for d in s.next)
            if s.on_error:
                out.append((s.name, s.on_error, "error"))
            if s.may_finish:
                out.append((s.name, "DONE", "finish"))
        return out

    def mermaid(self) -> str:
        """The step graph as a Mermaid ``stateDiagram-v2``, rendered by ``transitions``."""
        from transitions.extensions import GraphMachine

        class _Model:
            pass

        states = [*self.steps, "DONE"]
        transitions = [
            {"trigger": kind if kind != "next" else f"to_{dest}", "source": src, "dest": dest}
            for src, dest, kind in self.edges()
        ]
        model = _Model()
        GraphMachine(
            model=model,
            states=states,
            transitions=transitions,
            initial=self.start,
            graph_engine="mermaid",
            title=f"{self.name} v{self.version}",
            auto_transitions=False,
        )
        return str(model.get_graph().draw(None))  # type: ignore[attr-defined]

    # -- run time -----------------------------------------------------------

    def initial_state(self, task: Any) -> S:
        """Build a run's first state from its input.

        Raises:
            pydantic.ValidationError: the input does not fit the state model.
        """
        if isinstance(task, Mapping):
            return self.state_model.model_validate(dict(task))
        if self.initial is not None:
            return self.initial(task)
        return self.state_model()

    def view(self, step: str, state: S) -> BaseModel:
        """A fresh read-only copy of ``state`` for ``step``'s agent: the fields it ``reads`` (all if ``None``).

        Built anew for every attempt from a dump of ``state``, so nothing the
        agent does to it — assigning a field (refused with
        :class:`ReadOnlyStateError`) or mutating a nested list, dict or model
        in place — can reach ``state``: the engine computes the next state
        only from the checkpoint and the validated ``update``
        (:meth:`apply`; docs/reliability.md, "What an agent can change").
        With ``reads=None`` the view is an instance of a read-only subclass
        of the state model.
        """
        view_model, fields = self._views[step]
        return view_model.model_validate(state.model_dump(include=fields))

    def mutated_fields(self, step: str, view: BaseModel, state: S) -> list[str]:
        """Fields of ``view`` (from :meth:`view`) whose content no longer equals ``state``'s. Pure.

        An agent that mutated a nested container of its view in place
        believes it changed the state; it did not, and the engine fails the
        run (``state_mutation``) instead of losing the write silently.
        """
        _, fields = self._views[step]
        before = state.model_dump(include=fields)
        after = view.model_dump(include=fields)
        return sorted(f for f in before if before[f] != after.get(f))

    def apply(self, step: str, state: S, outcome: object) -> AppliedOutcome[S] | IllegalOutcome:
        """Judge an agent's outcome for ``step`` and compute the next state. Pure.

        Returns:
            ``AppliedOutcome`` for a legal outcome; ``IllegalOutcome`` naming the
            broken rule otherwise (DESIGN.md invariant 1). ``Fail`` outcomes are
            always legal and leave the state unchanged.
        """
        decl = self.steps[step]
        if isinstance(outcome, Fail):
            return AppliedOutcome(outcome, state, step)
        if not isinstance(outcome, (Goto, Finish, RequestApproval)):
            return IllegalOutcome(
                "not_an_outcome",
                f"step {step!r} returned {_short(outcome)}, not Goto/Finish/RequestApproval/Fail",
            )
        if isinstance(outcome, Goto) and outcome.step not in decl.next:
            return IllegalOutcome(
                "undeclared_edge",
                f"step {step!r} tried to go to {outcome.step!r}; declared: {list(decl.next)}",
            )
        if isinstance(outcome, RequestApproval) and outcome.resume_at not in decl.next:
            return IllegalOutcome(
                "undeclared_edge",
                f"step {step!r} asked approval to resume at {outcome.resume_at!r}; "
                f"declared: {list(decl.next)}",
            )
        if isinstance(outcome, Finish) and not decl.may_finish:
            return IllegalOutcome(
                "not_allowed_to_finish",
                f"step {step!r} returned Finish but is not declared may_finish",
            )
        update = outcome.update
        if not isinstance(update, Mapping):
            return IllegalOutcome("schema_violation", f"step {step!r}: update is not a mapping")
        unowned = sorted(set(update) - set(decl.writes))
        if unowned:
            return IllegalOutcome(
                "unowned_field",
                f"step {step!r} wrote {unowned}, but owns only {list(decl.writes)}",
            )
        if update:
            merged = state.model_dump()
            merged.update(update)
            try:
                new_state = self.state_model.model_validate(merged)
            except ValidationError as exc:
                first = exc.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                return IllegalOutcome(
                    "schema_violation",
                    f"step {step!r} broke the state schema at {loc!r}: {first['msg']}",
                )
        else:
            new_state = state
        if decl.escalate and isinstance(outcome, (Goto, RequestApproval)):
            from .patterns.escalation import escalate

            # The machine, not the agent, decides whether this move needs a
            # human: a fired rule turns the legal move into a gate that
            # resumes where the agent wanted to go (DESIGN.md invariant 1).
            gate = escalate(decl.escalate, new_state, outcome)
            if gate is not None:
                return AppliedOutcome(gate, new_state, step)
        if isinstance(outcome, Goto):
            next_step: str | None = outcome.step
        elif isinstance(outcome, RequestApproval):
            next_step = step
        else:
            next_step = step
        return AppliedOutcome(outcome, new_state, next_step)

    def error_edge(self, step: str, state: S) -> Goto | RequestApproval:
        """Judge the error edge of ``step`` (its ``on_error``) on ``state``. Pure.

        An error edge leaves the step exactly like a ``Goto`` does, so the
        step's escalation rules are judged on it too: an agent that raises
        must not carry the run past a rule its success would have tripped
        (issue #8: a failing review must not pay 9,999,999 without a human).
        Rules fail closed (a rule that cannot be evaluated fires).

        Returns:
            ``Goto(on_error)`` when no rule fires; otherwise the gate, a
            ``RequestApproval`` resuming at ``on_error`` whose reason names
            the fired rules.

        Raises:
            ValueError: ``step`` declares no ``on_error``.
        """
        decl = self.steps[step]
        if decl.on_error is None:
            raise ValueError(f"step {step!r} declares no on_error edge")
        edge = Goto(decl.on_error, reason=f"error edge of step {step!r}")
        if not decl.escalate:
            return edge
        from .patterns.escalation import escalate

        return escalate(decl.escalate, state, edge) or edge

    def __repr__(self) -> str:
        return f"<Machine {self.name} v{self.version} steps={list(self.steps)}>"


def machine_digest(definition_digest: str, code_digest: str) -> str:
    """The machine's identity: SHA-256 over its definition digest and its code digest. Pure.

    ``SHA-256(b"statecraft.machine.v2\\x00" + JCS({"code": …, "definition": …}))``
    (docs/audit.md, "The machine digest").
    """
    body = rfc8785.dumps({"definition": definition_digest, "code": code_digest})
    return hashlib.sha256(b"statecraft.machine.v2\x00" + body).hexdigest()


def _builder_module() -> tuple[str | None, dict[str, Any] | None]:
    """The file and globals of the first caller of ``Machine(...)`` outside statecraft."""
    frame = sys._getframe(1)
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if name != "statecraft" and not name.startswith("statecraft."):
            file = frame.f_globals.get("__file__")
            return (file if isinstance(file, str) else None), frame.f_globals
        frame = frame.f_back  # type: ignore[assignment]
    return None, None


def _reliability_problems(step: Step) -> list[str]:
    """Problems with a step's retry, timeout, error-path and approval-deadline declarations."""
    problems: list[str] = []
    name = step.name
    if step.retry is not None and not isinstance(step.retry, RetryPolicy):
        problems.append(f"step {name!r}: retry must be a RetryPolicy, got {step.retry!r}")
    if step.timeout is not None and (
        not isinstance(step.timeout, timedelta) or step.timeout <= timedelta(0)
    ):
        problems.append(f"step {name!r}: timeout must be a positive timedelta")
    if step.escalate_on_error and step.on_error is not None:
        problems.append(
            f"step {name!r}: on_error and escalate_on_error are exclusive "
            "(an error either takes the edge or asks a human)"
        )
    if step.approval_deadline is not None and (
        not isinstance(step.approval_deadline, timedelta) or step.approval_deadline <= timedelta(0)
    ):
        problems.append(f"step {name!r}: approval_deadline must be a positive timedelta")
    if step.on_approval_timeout not in ("fail", "approve"):
        problems.append(f"step {name!r}: on_approval_timeout must be 'fail' or 'approve'")
    elif step.on_approval_timeout == "approve" and step.approval_deadline is None:
        problems.append(f"step {name!r}: on_approval_timeout='approve' needs an approval_deadline")
    return problems


def _escalation_problems(step: Step) -> list[str]:
    if not step.escalate:
        return []
    from .patterns.escalation import EscalationRule

    problems: list[str] = []
    if step.may_finish:
        problems.append(
            f"step {step.name!r} declares escalation rules but may finish: a finish cannot be "
            "gated (approval resumes at a step); move the finish to a later step"
        )
    seen: set[str] = set()
    for rule in step.escalate:
        if not isinstance(rule, EscalationRule):
            problems.append(f"step {step.name!r}: escalate entry {rule!r} is not an EscalationRule")
            continue
        if rule.name in seen:
            problems.append(f"step {step.name!r}: duplicate escalation rule {rule.name!r}")
        seen.add(rule.name)
        if rule.approvers is not None and getattr(step, "on_approval_timeout", "fail") == "approve":
            # A deadline that approves by itself would pass a four-eyes gate with no eyes.
            problems.append(
                f"step {step.name!r}: escalation rule {rule.name!r} names approvers, so its gate "
                "cannot be approved by a timeout (on_approval_timeout='approve')"
            )
    return problems


def _closure(start: Iterable[str], succ: Mapping[str, set[str]]) -> set[str]:
    seen = set(start)
    todo = list(seen)
    while todo:
        for nxt in succ.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _strip_floats(value: Any) -> Any:
    # JSON schemas may carry float bounds; hashed data holds no floats (AUDIT.md),
    # so floats are written as their repr string.
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return {k: _strip_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_floats(v) for v in value]
    return value


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
