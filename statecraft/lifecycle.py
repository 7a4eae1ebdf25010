"""The run lifecycle: ``RunStatus``, the legal-edge table, and its ``transitions`` machine.

The table below is the single source of truth (DESIGN.md, "The run
lifecycle"). It is handed to the ``transitions`` package, which answers every
legality question; the docs render it with ``lifecycle_mermaid()`` and the
Hypothesis tests check the engine against ``LEGAL_EDGES``.

=====================  ==========  =====================
from                   trigger     to
=====================  ==========  =====================
IDLE                   start       RUNNING
RUNNING                step        RUNNING
RUNNING                request     WAITING_FOR_APPROVAL
WAITING_FOR_APPROVAL   approve     RUNNING
WAITING_FOR_APPROVAL   reject      FAILED
WAITING_FOR_APPROVAL   expire      FAILED
RUNNING                finish      DONE
RUNNING                fail        FAILED
IDLE/RUNNING/WAITING   cancel      FAILED
FAILED                 retry       RUNNING
=====================  ==========  =====================

``DONE`` is absorbing: no row has it as a source.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

from transitions import Machine as _TransitionsMachine

from .errors import IllegalTransition

__all__ = [
    "LEGAL_EDGES",
    "TERMINAL_STATUSES",
    "RunStatus",
    "Trigger",
    "check_transition",
    "lifecycle_mermaid",
]


class RunStatus(StrEnum):
    """A run's lifecycle status (DESIGN.md vocabulary)."""

    IDLE = "IDLE"
    RUNNING = "RUNNING"
    WAITING_FOR_APPROVAL = "WAITING_FOR_APPROVAL"
    FAILED = "FAILED"
    DONE = "DONE"


class Trigger(StrEnum):
    """What asks for a lifecycle transition; the column ``trigger`` of the table."""

    START = "start"
    STEP = "step"
    REQUEST_APPROVAL = "request_approval"
    APPROVE = "approve"
    REJECT = "reject"
    EXPIRE = "expire"
    FINISH = "finish"
    FAIL = "fail"
    CANCEL = "cancel"
    RETRY = "retry"


_I, _R, _W, _F, _D = (
    RunStatus.IDLE,
    RunStatus.RUNNING,
    RunStatus.WAITING_FOR_APPROVAL,
    RunStatus.FAILED,
    RunStatus.DONE,
)

#: (from, trigger, to): every legal lifecycle edge, and nothing else.
LEGAL_EDGES: Final[tuple[tuple[RunStatus, Trigger, RunStatus], ...]] = (
    (_I, Trigger.START, _R),
    (_R, Trigger.STEP, _R),
    (_R, Trigger.REQUEST_APPROVAL, _W),
    (_W, Trigger.APPROVE, _R),
    (_W, Trigger.REJECT, _F),
    (_W, Trigger.EXPIRE, _F),
    (_R, Trigger.FINISH, _D),
    (_R, Trigger.FAIL, _F),
    (_I, Trigger.CANCEL, _F),
    (_R, Trigger.CANCEL, _F),
    (_W, Trigger.CANCEL, _F),
    (_F, Trigger.RETRY, _R),
)

TERMINAL_STATUSES: Final[frozenset[RunStatus]] = frozenset({_D})
"""Statuses that accept no trigger at all. FAILED is not terminal: it accepts retry."""


def _build_machine(graph: bool = False) -> _TransitionsMachine:
    kwargs: dict[str, Any] = {
        "model": None,
        "states": [s.value for s in RunStatus],
        "transitions": [
            {"trigger": t.value, "source": src.value, "dest": dst.value}
            for src, t, dst in LEGAL_EDGES
        ],
        "initial": _I.value,
        # auto transitions (to_DONE() …) would add edges the table does not declare.
        "auto_transitions": False,
    }
    if graph:
        from transitions.extensions import GraphMachine

        return GraphMachine(graph_engine="mermaid", title="run lifecycle", **kwargs)
    return _TransitionsMachine(**kwargs)


_MACHINE: Final = _build_machine()

# Answering from a dict keeps the hot path free of transitions' event machinery;
# the dict is *derived from* the transitions machine, never written by hand.
_DEST: Final[dict[tuple[str, str], RunStatus]] = {}
for _event_name, _event in _MACHINE.events.items():
    for _source, _transitions in _event.transitions.items():
        for _t in _transitions:
            _DEST[(_source, _event_name)] = RunStatus(str(_t.dest))


def check_transition(
    status: RunStatus | str,
    trigger: Trigger | str,
    *,
    run_id: str | None = None,
) -> RunStatus:
    """Return the status that ``trigger`` leads to from ``status``.

    Pure and read-only: it decides, it does not change anything.

    Args:
        status: the run's current status.
        trigger: the requested trigger.
        run_id: for the error message only.

    Returns:
        The destination status.

    Raises:
        IllegalTransition: the lifecycle table has no such edge (DESIGN.md,
            "The run lifecycle"); carries ``run_id``, ``status`` and ``trigger``.
    """
    src = str(RunStatus(status))
    trig = str(Trigger(trigger))
    try:
        return _DEST[(src, trig)]
    except KeyError:
        hint = _operator_hint(src)
        who = f"run {run_id}: " if run_id else ""
        raise IllegalTransition(
            f"{who}cannot {trig} a run that is {src} ({hint})",
            run_id=run_id,
            status=src,
            trigger=trig,
        ) from None


#: Triggers an operator asks for by name (CLI commands, Engine methods); the
#: rest (step, request_approval, finish, fail, expire) only the engine fires.
OPERATOR_TRIGGERS: Final[frozenset[Trigger]] = frozenset(
    {Trigger.START, Trigger.APPROVE, Trigger.REJECT, Trigger.CANCEL, Trigger.RETRY}
)


def _operator_hint(status: str) -> str:
    """What an operator may do with a run in ``status``, in the CLI's words, for a refusal."""
    if status in TERMINAL_STATUSES:
        return f"{status} is terminal"
    actions = sorted(t for (s, t) in _DEST if s == status and Trigger(t) in OPERATOR_TRIGGERS)
    if status == RunStatus.RUNNING:
        actions.append("resume (if the process advancing it died)")
    return f"what an operator can do now: {', '.join(actions)}"


def lifecycle_mermaid() -> str:
    """Render the lifecycle table as a Mermaid ``stateDiagram-v2`` (via ``transitions``)."""

    class _Model:
        pass

    model = _Model()
    graph_machine = _build_machine(graph=True)
    graph_machine.add_model(model)
    return str(model.get_graph().draw(None))  # type: ignore[attr-defined]
