"""Frozen, read-only views handed to callers: ``RunInfo``, ``PendingApproval``, ``AuditEvent``.

Table models stay private (statecraft/store/tables.py); these are what the
engine returns and what ``--json`` prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from .lifecycle import RunStatus

__all__ = ["AuditEvent", "PendingApproval", "RunInfo", "StepReport"]


class PendingApproval(BaseModel):
    """The proposal a run waiting at a gate asks a human to approve.

    Attributes:
        requested_event_id: the ``approval.requested`` audit event.
        step: the step that asked.
        resume_at: where the run continues when approved.
        reason: why approval is needed.
        proposal_digest: SHA-256 binding run, state and ``resume_at``;
            ``approve --digest`` must match it.
        required: distinct approvals the gate needs (its ``ApprovalPolicy``; 1 without one).
        approved_by: actor ids that approved so far, in order.
        approver_group: who may approve; ``None`` means any named actor.
        rules: escalation rules that raised the gate (empty if the agent asked).
    """

    model_config = ConfigDict(frozen=True)

    requested_event_id: str
    step: str | None
    resume_at: str | None
    reason: str | None
    proposal_digest: str
    required: int = 1
    approved_by: tuple[str, ...] = ()
    approver_group: tuple[str, ...] | None = None
    rules: tuple[str, ...] = ()


class RunInfo(BaseModel):
    """A snapshot of one run. Read-only; fetch again for a newer one.

    Times are UTC ISO-8601 strings; cost is integer micro-USD.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    machine: str
    version: str
    machine_digest: str
    machine_ref: str | None
    status: RunStatus
    step: str | None
    state: dict[str, Any]
    state_sha256: str
    run_seq: int
    steps_taken: int
    created_at: str
    updated_at: str
    started_by: str
    parent_run_id: str | None = None
    pending: PendingApproval | None = None
    error_code: str | None = None
    reason: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost_micros: int = 0
    lease_owner: str | None = None
    lease_expires_at: str | None = None


class AuditEvent(BaseModel):
    """One audit event, exactly as stored (AUDIT.md, "The table")."""

    model_config = ConfigDict(frozen=True)

    seq: int
    ledger_id: str
    prev_hash: str
    entry_hash: str
    hash_alg: str
    schema_version: int
    event_id: str
    run_id: str | None = None
    run_seq: int | None = None
    parent_run_id: str | None = None
    machine_name: str | None = None
    machine_version: str | None = None
    machine_digest: str | None = None
    event_type: str
    from_status: str | None = None
    to_status: str | None = None
    from_step: str | None = None
    to_step: str | None = None
    occurred_at: str
    recorded_at: str
    actor_type: str
    actor_id: str
    agent_name: str | None = None
    agent_version: str | None = None
    prompt_version: str | None = None
    decision: str | None = None
    outcome: str | None = None
    reason: str | None = None
    error_code: str | None = None
    model_provider: str | None = None
    model_id: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost_micros: int | None = None
    latency_ms: int | None = None
    attempt: int | None = None
    input_sha256: str | None = None
    output_sha256: str | None = None
    state_sha256: str | None = None
    caused_by_event_id: str | None = None
    payload_json: str | None = None
    payload_sha256: str | None = None


@dataclass(frozen=True)
class StepReport:
    """What ``on_event`` callbacks receive after each committed transition.

    Attributes:
        run_id: the run.
        event_type: e.g. ``step.completed``, ``approval.requested``.
        from_step, to_step: the step before and after.
        status: the run status after the transition.
        latency_ms: the agent call's wall time (0 for operator actions).
        reason: the recorded reason, if any.
    """

    run_id: str
    event_type: str
    from_step: str | None
    to_step: str | None
    status: RunStatus
    latency_ms: int
    reason: str | None
