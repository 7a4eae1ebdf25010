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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .errors import InvalidActorId
from .identity import normalize_actor, policy_key

__all__ = ["ApprovalPolicy", "Fail", "Finish", "Goto", "Outcome", "RequestApproval"]


@dataclass(frozen=True, slots=True)
class ApprovalPolicy:
    """Who may pass a gate, and how many distinct people must (four-eyes).

    A gate without a policy keeps the simple rule: one approval by any named
    actor. With a policy, the run stays WAITING_FOR_APPROVAL until
    ``required`` distinct, eligible actors have approved; each approval is its
    own ``approval.granted`` event. One eligible rejection fails the gate
    (rejecting is the safe direction, so one voice suffices).

    Separation of duties (NIST SP 800-53 AC-5; the "four-eyes principle" of
    payment controls): by default nobody approves their own request, i.e.
    neither the actor who started the run nor the one who requested the gate.

    Ids are compared after :func:`statecraft.identity.normalize_actor`, and
    the refusing rules (self-approval, excluded, approving twice) compare
    :func:`statecraft.identity.policy_key`, which also folds ``+tag`` and
    look-alike letters: ``Clerk+2@example.com`` cannot approve what
    ``clerk@example.com`` started. Group membership compares normalised ids
    exactly (a look-alike of a member is not a member).

    Attributes:
        required: distinct approvals needed, >= 1.
        group: actor ids allowed to approve (and to reject); ``None`` means
            any named actor. Must hold at least ``required`` distinct ids.
        allow_self_approval: let the run's starter / the gate's requester approve.
        excluded: further actor ids that may not approve (e.g. an invoice's
            submitter named in the state).
        require_signature: every approval must carry an Ed25519 signature
            (``approve --sign-key``) by a key the engine's keyring binds to
            the approver (statecraft/signing.py); the engine refuses, writing
            nothing, an unsigned approval or one it cannot check.

    Raises:
        ValueError: ``required`` < 1, ``group`` smaller than ``required``,
            or an id in ``group``/``excluded`` that is not a valid actor id.
    """

    required: int = 1
    group: frozenset[str] | None = None
    allow_self_approval: bool = False
    excluded: frozenset[str] = frozenset()
    require_signature: bool = False

    def __init__(
        self,
        required: int = 1,
        group: Iterable[str] | None = None,
        allow_self_approval: bool = False,
        excluded: Iterable[str] = (),
        require_signature: bool = False,
    ) -> None:
        if not isinstance(required, int) or isinstance(required, bool) or required < 1:
            raise ValueError(f"ApprovalPolicy.required must be an integer >= 1, got {required!r}")
        frozen_group = None if group is None else _normalized(group, "group")
        if frozen_group is not None and len(frozen_group) < required:
            raise ValueError(
                f"ApprovalPolicy needs {required} approvers but its group has only "
                f"{len(frozen_group)}: {sorted(frozen_group)}"
            )
        object.__setattr__(self, "required", required)
        object.__setattr__(self, "group", frozen_group)
        object.__setattr__(self, "allow_self_approval", bool(allow_self_approval))
        object.__setattr__(self, "excluded", _normalized(excluded, "excluded"))
        object.__setattr__(self, "require_signature", bool(require_signature))

    def describe(self) -> dict[str, Any]:
        """JSON form (sorted lists, no floats), as recorded in the gate's audited output."""
        described: dict[str, Any] = {
            "required": self.required,
            "group": None if self.group is None else sorted(self.group),
            "allow_self_approval": self.allow_self_approval,
            "excluded": sorted(self.excluded),
        }
        if self.require_signature:  # only when set: older records keep their shape
            described["require_signature"] = True
        return described

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ApprovalPolicy:
        """Inverse of :meth:`describe`."""
        return cls(
            required=int(data.get("required", 1)),
            group=data.get("group"),
            allow_self_approval=bool(data.get("allow_self_approval", False)),
            excluded=data.get("excluded") or (),
            require_signature=bool(data.get("require_signature", False)),
        )

    def refusal(
        self,
        by: str,
        *,
        approved_by: Sequence[str],
        started_by: str | None,
        requested_by: str | None,
    ) -> str | None:
        """Why ``by`` may not add an approval now, or ``None`` if they may. Pure.

        Args:
            by: the would-be approver's actor id (normalised here again).
            approved_by: actor ids that already approved this gate, in order.
            started_by: the actor that started the run.
            requested_by: the actor that requested the gate.

        Returns:
            A one-line reason, or ``None``.

        Raises:
            InvalidActorId: ``by`` is not a valid actor id.
        """
        by = normalize_actor(by)
        key = policy_key(by)
        same = [a for a in approved_by if policy_key(a) == key]
        if same:
            return (
                f"{by} has already approved this gate{_as(same[0], by)}; "
                f"{self.required} distinct approvers are needed"
            )
        if self.group is not None and by not in self.group:
            return f"{by} is not in the approver group {sorted(self.group)}"
        if any(policy_key(e) == key for e in self.excluded):
            return f"{by} is excluded from approving this gate"
        if not self.allow_self_approval:
            if started_by is not None and policy_key(started_by) == key:
                return f"{by} started this run{_as(started_by, by)} and may not approve it (no self-approval)"
            if requested_by is not None and policy_key(requested_by) == key:
                return f"{by} requested this gate{_as(requested_by, by)} and may not approve it (no self-approval)"
        return None


def _as(recorded: str, by: str) -> str:
    """`` (as X)`` when the recorded spelling differs from ``by``: says why they are one person."""
    return "" if recorded == by else f" (as {recorded})"


def _normalized(ids: Iterable[str], what: str) -> frozenset[str]:
    if isinstance(ids, str):
        raise ValueError(f"ApprovalPolicy.{what} is a collection of actor ids, not one string {ids!r}")
    try:
        return frozenset(normalize_actor(i) for i in ids)
    except InvalidActorId as exc:
        raise ValueError(f"ApprovalPolicy.{what}: {exc}") from exc


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
        policy: who must approve, and how many (:class:`ApprovalPolicy`);
            ``None`` means one approval by any named actor.
        rules: names of the escalation rules that raised this gate (empty
            when the agent asked by itself); set by ``Machine.apply``.
    """

    reason: str
    resume_at: str
    update: Mapping[str, Any] = field(default_factory=dict)
    summary: str | None = None
    policy: ApprovalPolicy | None = None
    rules: tuple[str, ...] = ()


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
