"""What a gate binds and what an outcome looks like once stored: the proposal digest and outcome JSON.

Shared by the engine (operator requests) and the step loop (agents' outcomes),
so both compute a gate's digest and store an outcome the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from .canonical import canonical_json
from .outcomes import Fail, Finish, Goto, RequestApproval
from .store.blobs import sha256_hex

__all__ = ["jsonable", "outcome_json", "proposal_digest"]


def proposal_digest(
    run_id: str, state_sha256: str, step: str, resume_at: str, reason: str | None, *, after_seq: int
) -> str:
    """SHA-256 binding an approval to exactly what was proposed, in exactly this request.

    Covers the run, the state at the gate, the step that asked, where the run
    resumes, the stated reason and ``after_seq``, the run's position
    (``run_seq``) when the step that asked was judged. Any change gives a
    new digest, so ``approve --digest`` refuses a proposal the approver did
    not see, and the same proposal asked again (after reject and retry) has
    a new digest: an approval, or a signature, of the old request cannot
    pass the new one. Pure.
    """
    body = canonical_json(
        {
            "run_id": run_id,
            "state_sha256": state_sha256,
            "step": step,
            "resume_at": resume_at,
            "reason": reason,
            "after_seq": after_seq,
        }
    )
    return sha256_hex(b"statecraft.proposal.v2\x00" + body)


def outcome_json(outcome: Goto | Finish | RequestApproval | Fail) -> dict[str, Any]:
    """An outcome as stored (the output blob of the event that commits it). Pure.

    For a ``RequestApproval`` it holds the gate's approval policy and the
    rules that fired: ``Engine.approve`` reads the policy back from this blob,
    which the ``approval.requested`` event binds into the chain by its hash.
    """
    kind = type(outcome).__name__
    data: dict[str, Any] = {"outcome": kind}
    if isinstance(outcome, Goto):
        data["step"] = outcome.step
    if isinstance(outcome, RequestApproval):
        data.update(resume_at=outcome.resume_at, summary=outcome.summary)
        # Engine.approve reads the policy back from here: this blob is bound
        # into the chain by the approval.requested event's output_sha256.
        if outcome.policy is not None:
            data["policy"] = outcome.policy.describe()
        if outcome.rules:
            data["rules"] = list(outcome.rules)
    if isinstance(outcome, Fail):
        data["error_code"] = outcome.error_code
    data["reason"] = outcome.reason
    update = getattr(outcome, "update", None)
    if update:
        data["update"] = jsonable(update)
    return data


def jsonable(value: Any) -> Any:
    """``value`` as JSON-compatible data (pydantic models dumped; unknown objects by ``repr``). Pure."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)

