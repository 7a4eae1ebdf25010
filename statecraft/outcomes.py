"""What an agent returns: the four outcomes of DESIGN.md's vocabulary.

An agent never moves a run itself. It returns one of these values and the
engine checks it against the machine's declared graph and the step's owned
fields before committing anything (DESIGN.md, "How a step executes", step 4).

=================  ==============================  ======================
outcome            run status afterwards           declared by the step
=================  ==============================  ======================
``Goto``           RUNNING at ``step``             ``next`` contains it
``Finish``         DONE                            ``may_finish=True``
``RequestApproval`` WAITING_FOR_APPROVAL           ``next`` contains ``resume_at``
``Fail``           FAILED                          always allowed
=================  ==============================  ======================

``update`` maps state field names to new values; every key must be in the
step's ``writes`` and the merged state must validate against the machine's
state model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = ["Fail", "Finish", "Goto", "Outcome", "RequestApproval"]



@dataclass(frozen=True, slots=True)
class Goto:
    """Move to the declared next step ``step`` after applying ``update``.

    Attributes:
        step: name of a step in the current step's ``next``.
        update: state field -> new value; keys must be owned (``writes``) by the step.
        reason: optional short explanation, recorded in the audit event.
    """

    step: str
    update: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """Finish the run (status DONE) after applying ``update``.

    Only steps declared with ``may_finish=True`` may return it.
    """

    update: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RequestApproval:
    """Stop at a gate: the run waits in WAITING_FOR_APPROVAL for a named human.

    Attributes:
        reason: why a human must decide; shown to the approver and audited
            (EU AI Act Art. 86: every decision records a reason).
        resume_at: the declared next step the run continues at when approved.
        update: state changes proposed together with the gate; they are part of
            the proposal the approver sees and are committed at the gate.
        summary: optional longer reviewer summary (Markdown allowed).
    """

    reason: str
    resume_at: str
    update: Mapping[str, Any] = field(default_factory=dict)
    summary: str | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """Fail the run (status FAILED) with a reason.

    Attributes:
        reason: human-readable reason, audited.
        error_code: stable machine-readable code (``snake_case``).
    """

    reason: str
    error_code: str = "agent_failed"


Outcome: TypeAlias = Goto | Finish | RequestApproval | Fail
