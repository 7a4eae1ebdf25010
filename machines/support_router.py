"""Reference machine: router-worker for support tickets (billing / technical / account / fallback).

The input is a ticket, as a JSON object (``subject``, ``body``, optional
``customer`` and ``plan``) or as plain text (the body). The ``triage`` step
is a :func:`statecraft.patterns.router`:

1. deterministic rules, in priority order: account-security words first
   (a locked-out user must never wait in a billing queue), then billing,
   then technical; one predicate rule sends any enterprise ticket that
   mentions "down" to technical at once;
2. for tickets no rule settles, a stand-in for an LLM classifier
   (``weak_signal_classifier``: deterministic weak-word scores, reporting
   token usage as an LLM agent would);
3. the mandatory ``human_queue`` fallback for everything else.

Each worker step drafts a reply and finishes the run. Try::

    statecraft start machines/support_router.py --input machines/samples/ticket_billing.json
    statecraft start machines/support_router.py --input machines/samples/ticket_unclear.txt
    statecraft audit log --json | grep route.decided
"""

# No ``from __future__ import annotations``: this file is loaded by path under
# a synthetic module name, and pydantic must resolve the annotations eagerly.

import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from statecraft.agents.base import StepContext, Usage
from statecraft.machine import Machine, Step
from statecraft.outcomes import Finish, Outcome
from statecraft.patterns import BranchContext, RouteDecision, Rule, router

ENTERPRISE_PLANS = ("enterprise",)


class Ticket(BaseModel):
    """State of a support run: the ticket, the routing decision, the drafted reply."""

    model_config = ConfigDict(frozen=True)

    subject: str = ""
    body: str = ""
    customer: str | None = None
    plan: str | None = None
    route: RouteDecision | None = None
    queue: str | None = None
    reply: str | None = None


def ticket_text(state: Any, ctx: StepContext) -> str:
    """The text the keyword rules read: subject and body."""
    return f"{state.subject}\n{state.body}"


RULES = [
    Rule(
        "account_security",
        route="account",
        keywords=["password", "locked out", "log in", "login", "sign in", "2fa",
                  "two-factor", "account deletion", "delete my account", "username"],
    ),
    Rule(
        "billing_words",
        route="billing",
        keywords=["invoice", "refund", "charged", "charge", "billing", "payment",
                  "receipt", "credit card", "subscription fee", "overcharged"],
    ),
    Rule(
        "enterprise_outage",
        route="technical",
        keywords=["down"],
        when=lambda state: (state.plan or "").lower() in ENTERPRISE_PLANS,
    ),
    Rule(
        "technical_words",
        route="technical",
        keywords=["error", "bug", "crash", "crashes", "outage", "timeout", "api",
                  "exception", "stack trace", "not working", "broken", "500", "502"],
    ),
]

_WEAK = {
    "billing": ("price", "cost", "money", "plan", "upgrade", "downgrade", "tax", "vat"),
    "technical": ("slow", "app", "integration", "webhook", "sync", "deploy", "latency"),
    "account": ("profile", "settings", "email", "team", "member", "permissions", "sso"),
}


def weak_signal_classifier(state: Any, bctx: BranchContext) -> str | None:
    """Stand-in for an LLM classifier: scores weak words; ``None`` when nothing stands out.

    Reports usage the way an LLM agent would (tokens ~ words), so the
    ``agent.called`` event shows what a real classifier would cost.
    """
    words = re.findall(r"[a-z0-9']+", f"{state.subject} {state.body}".lower())
    bctx.record_usage(Usage(tokens_in=len(words) + 40, tokens_out=3, model_provider="statecraft",
                            model_id="weak-signal-classifier-v1", prompt_version="triage-1"))
    scores = {route: sum(words.count(w) for w in vocab) for route, vocab in _WEAK.items()}
    best = max(scores.values())
    winners = [r for r, s in scores.items() if s == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


weak_signal_classifier.agent_version = "1"  # type: ignore[attr-defined]

_REPLIES = {
    "billing": "Thanks for reaching out about billing. We have opened a billing case and will "
               "reply within one business day with the invoice details and any refund due.",
    "technical": "Thanks for the report. Our engineers are looking at it; please send the request "
                 "id and time of the error if you have them.",
    "account": "For your security we have sent a verification link to the account's address; "
               "follow it to restore access. We never ask for your password.",
    "human_queue": "Thanks for writing. A member of our team will read your message and reply "
                   "personally.",
}


def _worker(queue: str) -> Any:
    def draft(state: Any, ctx: StepContext) -> Outcome:
        name = state.customer or "there"
        return Finish(update={"queue": queue, "reply": f"Hi {name}, {_REPLIES[queue]}"},
                      reason=f"reply drafted by the {queue} queue")

    draft.__qualname__ = f"{queue}_worker"
    draft.agent_version = "1"  # type: ignore[attr-defined]
    return draft


def initial_state(task: Any) -> Ticket:
    """Plain text is the ticket's body; its first line doubles as the subject."""
    text = str(task or "").strip()
    return Ticket(subject=text.splitlines()[0][:120] if text else "", body=text)


_READS = ["subject", "body", "customer", "plan"]

# Every step has a per-attempt timeout (issue #9): a runaway step fails its run
# (outcome ``timeout``) instead of leaving it RUNNING. These steps take milliseconds.
STEP_TIMEOUT = timedelta(seconds=30)

machine: Machine[Ticket] = Machine(
    "support_router", "1", Ticket,
    steps=[
        replace(router(
            "triage",
            rules=RULES,
            routes={"billing": "billing", "technical": "technical", "account": "account"},
            fallback="human_queue",
            agent=weak_signal_classifier,
            text=ticket_text,
            into="route",
            reads=_READS,
            description="rules first, then a classifier agent, else the human queue",
        ), timeout=STEP_TIMEOUT),
        Step("billing", _worker("billing"), may_finish=True, reads=_READS, writes=["queue", "reply"],
             timeout=STEP_TIMEOUT, description="billing worker"),
        Step("technical", _worker("technical"), may_finish=True, reads=_READS, writes=["queue", "reply"],
             timeout=STEP_TIMEOUT, description="technical worker"),
        Step("account", _worker("account"), may_finish=True, reads=_READS, writes=["queue", "reply"],
             timeout=STEP_TIMEOUT, description="account worker"),
        Step("human_queue", _worker("human_queue"), may_finish=True, reads=_READS,
             writes=["queue", "reply"], timeout=STEP_TIMEOUT, description="mandatory fallback: a person reads it"),
    ],
    initial=initial_state,
    description="Route a support ticket to billing, technical or account; nothing is dropped.",
)
