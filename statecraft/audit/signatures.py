"""Checking signed approvals in the ledger against a keyring (``audit verify --keyring DIR``).

Why a separate pass: the hash chain proves the rows were not altered
after they were written; it cannot say that the approver named in
``actor_id`` is the person who approved, because whoever wrote the row
chose that value. A signature by a key the keyring binds to that id can
(statecraft/signing.py). This pass re-checks, for every
``approval.granted`` event, in ``seq`` order:

1. the approval answers a request (``caused_by_event_id``) and names the
   digest that request recorded;
2. if the gate required signatures (its recorded ``ApprovalPolicy`` has
   ``require_signature``), the approval carries one;
3. a recorded signature verifies over the run id, that digest and the
   event's ``actor_id``, and the keyring binds its key to that actor id.

The first event breaking a rule is reported by its ``seq``. Approvals
whose payload was lawfully redacted cannot be checked and are counted as
such (verify lists the redaction itself). What a passing check proves is
stated in docs/audit.md ("Signed approvals"): the keyring is the trust
root, so it is only as good as the place it is kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from ..signing import ApprovalSignature, Keyring, signature_problem
from ..store.audit_reads import approvals_with_requests
from ..store.blobs import get_blob

__all__ = ["SignatureCheck", "check_signatures"]



@dataclass(frozen=True)
class SignatureCheck:
    """What :func:`check_signatures` found.

    Attributes:
        signed: approvals whose signature verified and is bound by the keyring.
        unsigned: approvals without a signature whose gate did not require one.
        unreadable: approvals whose payload was redacted (nothing to check).
        first_bad_seq: the first approval breaking a rule, or ``None``.
        reason: one line: the seq, the approver and the rule broken.
    """

    signed: int
    unsigned: int
    unreadable: int
    first_bad_seq: int | None = None
    reason: str | None = None


def check_signatures(conn: Connection, keyring: Keyring) -> SignatureCheck:
    """Check every ``approval.granted`` event's signature against ``keyring`` (module docstring).

    Read-only, inside the caller's read transaction; stops at the first bad
    approval.

    Args:
        conn: a connection in a read transaction.
        keyring: the keyring to trust.

    Returns:
        The counts, and the first bad approval if any.
    """
    signed = unsigned = unreadable = 0
    for seq, run_id, actor, body, req_seq, req_type, req_body, req_output in approvals_with_requests(conn):
        if body is None:
            unreadable += 1
            continue
        payload = _json(body)
        if req_seq is None or req_type != "approval.requested":
            return _bad(signed, unsigned, unreadable, seq, f"the approval by {actor} answers no approval.requested event")
        request = _json(req_body) if req_body is not None else {}
        digest = payload.get("proposal_digest")
        asked = request.get("proposal_digest", digest)
        if not isinstance(digest, str) or digest != asked:
            return _bad(signed, unsigned, unreadable, seq,
                        f"the approval by {actor} names digest {digest!r}, but its request (seq {req_seq}) "
                        f"asked {asked!r}")
        raw_signature = payload.get("signature")
        if raw_signature is None:
            if _requires_signature(conn, request, req_output):
                return _bad(signed, unsigned, unreadable, seq,
                            f"the approval by {actor} is unsigned, but its gate (seq {req_seq}) requires a signature")
            unsigned += 1
            continue
        try:
            signature = ApprovalSignature.from_json(raw_signature if isinstance(raw_signature, dict) else {})
        except ValueError as exc:
            return _bad(signed, unsigned, unreadable, seq, f"the approval by {actor} has a malformed signature: {exc}")
        problem = signature_problem(signature, run_id=run_id, proposal_digest=digest, approver_id=actor) or (
            keyring.binding_problem(signature, approver_id=actor)
        )
        if problem is not None:
            return _bad(signed, unsigned, unreadable, seq, f"the approval by {actor}: {problem}")
        signed += 1
    return SignatureCheck(signed, unsigned, unreadable)


def _requires_signature(conn: Connection, request: dict[str, Any], output_sha256: str | None) -> bool:
    """Whether the gate's recorded policy requires signatures (payload, else the proposal blob)."""
    policy = request.get("policy")
    if policy is None and output_sha256:
        body = get_blob(conn, output_sha256)
        policy = _json(body).get("policy") if body is not None else None
    return isinstance(policy, dict) and bool(policy.get("require_signature"))


def _json(body: Any) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _bad(signed: int, unsigned: int, unreadable: int, seq: int, reason: str) -> SignatureCheck:
    return SignatureCheck(signed, unsigned, unreadable, first_bad_seq=int(seq), reason=f"seq {seq}: {reason}")
