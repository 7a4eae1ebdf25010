"""The one place where the web app hands an authenticated principal to the engine.

Every approval and rejection from a page or from the JSON API goes through
:func:`decide`, so there is exactly one line of code that says who decided,
and it takes the :class:`~statecraft.web.auth.Principal` an authenticator
produced, never a value from the request body. A decision is also bound to
the proposal digest the reviewer saw: the engine refuses an approval whose
digest is not the pending one (``ApprovalMismatch``); for a rejection, whose
engine call takes no digest, the digest is compared here first (rejecting is
the safe direction, so the short window between the check and the write is
harmless: at worst a proposal that changed a moment ago is rejected).

Continuing the run after the quorum is reached is not done here: the caller
decides whether to advance inline, on a background thread, or leave it to a
``statecraft worker`` (statecraft/web/app.py).
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

from ..engine import Engine
from ..errors import ApprovalMismatch, RunError
from ..views import RunInfo
from .auth import Principal

__all__ = ["MAX_COMMENT_CHARS", "Decision", "decide", "web_principal"]

MAX_COMMENT_CHARS = 10_000
"""Longest comment (approval) or reason (rejection) accepted, in characters."""


@dataclass(frozen=True)
class Decision:
    """What a reviewer decided about one gate.

    Attributes:
        action: ``approve`` or ``reject``.
        run_id: the waiting run.
        digest: the proposal digest shown to the reviewer (required).
        comment: the approval's comment, or the rejection's reason (required to reject).
    """

    action: Literal["approve", "reject"]
    run_id: str
    digest: str
    comment: str | None = None


def decide(engine: Engine, principal: Principal, decision: Decision) -> RunInfo:
    """Record ``decision`` as taken by ``principal``. Commits one transaction; does not advance the run.

    Args:
        engine: the engine.
        principal: who decided, as authenticated (statecraft/web/auth.py).
        decision: the decision and the digest it is bound to.

    Returns:
        The run afterwards: RUNNING when the approval reached the quorum,
        WAITING_FOR_APPROVAL while approvals are missing, FAILED when rejected.

    Raises:
        RunError: an empty digest, an over-long comment, or a rejection without reason.
        ApprovalMismatch: the pending proposal's digest is not ``decision.digest``.
        ApprovalRefused: the gate's policy forbids this principal.
        RunNotFound, IllegalTransition: no such run, or it does not wait.
    """
    run_id = decision.run_id
    # Browsers send a textarea's line breaks as CRLF (HTML spec); record plain newlines.
    comment = (decision.comment or "").replace("\r\n", "\n").strip() or None
    if not decision.digest:
        raise RunError(f"run {run_id}: a decision names the proposal digest it was shown", run_id=run_id)
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise RunError(f"run {run_id}: the comment is longer than {MAX_COMMENT_CHARS} characters", run_id=run_id)
    # ------------------------------------------------------------------------------------
    # IDENTITY HAND-OFF. The principal reaches the engine here and nowhere else: as
    # the actor id (``by=``), and, for an engine built with
    # ``authenticate=web_principal`` (``statecraft serve`` builds it so), as the
    # authenticated principal recorded beside it (payload ``identity.principal``).
    # ------------------------------------------------------------------------------------
    by = principal.id
    token = _PRINCIPAL.set(principal.id)
    try:
        if decision.action == "approve":
            return engine.approve(run_id, by=by, comment=comment, digest=decision.digest, advance=False)
        if comment is None:
            raise RunError(f"run {run_id}: a rejection needs a reason", run_id=run_id)
        current = engine.get(run_id)
        pending = current.pending.proposal_digest if current.pending is not None else None
        if pending is not None and pending != decision.digest:
            raise ApprovalMismatch(run_id, decision.digest, pending)
        return engine.reject(run_id, by=by, reason=comment)
    finally:
        _PRINCIPAL.reset(token)


_PRINCIPAL: ContextVar[str | None] = ContextVar("statecraft_web_principal", default=None)


def web_principal(claimed_actor_id: str) -> str | None:
    """``Engine(authenticate=web_principal)``: the principal the current web request authenticated.

    Set by :func:`decide` for the length of the engine call; ``None`` (the
    engine then refuses with ``NotAuthenticated``, writing nothing) for a
    request naming an actor from anywhere else, so an engine serving the web
    app records every human decision with the principal that made it.
    """
    return _PRINCIPAL.get()
