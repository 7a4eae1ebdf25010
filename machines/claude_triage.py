"""Reference machine: support tickets triaged by Claude, behind the controls a production LLM step needs.

The input is a ticket, as a JSON object (``subject``, ``body``, optional
``customer`` and ``plan``) or as plain text (the body). The ``classify``
step asks Claude for a queue and a priority, and routes the run there; each
queue step drafts a holding reply and finishes.

In front of the model (docs/agents.md, "Controls in front of the model"):

- a **rate limit** of 50 requests and 50,000 tokens a minute for the model,
  shared by every run and every worker process on the database;
- a **circuit breaker**: after 5 consecutive failures of the API, calls fail
  fast with ``circuit_open`` for 30 s, and the ticket takes the step's error
  edge to the ``human`` queue at once (``LLMCircuitOpen`` is not retried
  here: a customer waiting is worse than a human triaging) — as do tickets
  whose answer never validates;
- a **canary**: 90 % of the runs use prompt ``triage-v1`` (agent version 1),
  10 % the stricter ``triage-v2`` (agent version 2), chosen from the run id;
  docs/audit.md's q10 compares them;
- a **context budget**: at most 8,000 input tokens a call; a longer ticket
  body is cut, and the cut recorded.

Where the calls go: ``STATECRAFT_LLM_BASE_URL`` (a gateway, a proxy, or the
test suite's loopback stand-in), read when the machine is loaded; unset, the
SDK's own default (``ANTHROPIC_BASE_URL``, else the Anthropic API). The key
is the SDK's ``ANTHROPIC_API_KEY``. Importing this file builds the agents and
sends nothing. Try, against any Messages API endpoint::

    STATECRAFT_LLM_BASE_URL=http://127.0.0.1:8080 ANTHROPIC_API_KEY=... \\
        statecraft start machines/claude_triage.py --input machines/samples/ticket_billing.json
    statecraft audit log --event agent.called --json
"""

# No ``from __future__ import annotations``: this file is loaded by path under
# a synthetic module name, and pydantic must resolve the annotations eagerly.

import os
from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from statecraft import Finish, Goto, Machine, Outcome, RetryPolicy, Step, StepContext
from statecraft.agents.breaker import CircuitBreaker
from statecraft.agents.canary import Canary
from statecraft.agents.claude import ClaudeAgent
from statecraft.agents.context import ContextBudget
from statecraft.agents.limits import RateLimit

MODEL = "claude-haiku-4-5"
BASE_URL = os.environ.get("STATECRAFT_LLM_BASE_URL") or None
QUEUES = ("billing", "technical", "account")


class Ticket(BaseModel):
    """State of a triage run: the ticket, where it goes, and the holding reply."""

    model_config = ConfigDict(frozen=True)

    subject: str = ""
    body: str = ""
    customer: str | None = None
    plan: str | None = None
    queue: str | None = None
    priority: str | None = None
    reason: str | None = None
    reply: str | None = None


class Triage(BaseModel):
    """Where the ticket goes, how urgent it is, and why."""

    queue: Literal["billing", "technical", "account", "other"]
    priority: Literal["low", "normal", "urgent"]
    reason: str


def from_text(text: Any) -> Ticket:
    """A plain-text input is the ticket's body."""
    return Ticket(body=str(text))


def route(state: Any, out: Triage, ctx: StepContext) -> Outcome:
    """Pure deciding: the model's queue, or a human for anything else."""
    queue = out.queue if out.queue in QUEUES else "human"
    return Goto(queue, update={"queue": queue, "priority": out.priority, "reason": out.reason}, reason=out.reason)


SYSTEM = "You triage customer support tickets for a SaaS company."
PROMPTS = {
    "triage-v1": "Pick the queue for the ticket in <task> and how urgent it is.",
    "triage-v2": (
        "Pick the queue for the ticket in <task> and how urgent it is. Locked-out users and outages "
        "are always urgent; when the ticket fits no queue, answer 'other'."
    ),
}

# Shared by both canary arms (one model, one dependency): one bucket, one breaker.
LIMIT = RateLimit(requests_per_minute=50, tokens_per_minute=50_000)
BREAKER = CircuitBreaker(failure_threshold=5, cooldown=timedelta(seconds=30))
BUDGET = ContextBudget(max_input_tokens=8_000, cut=("task", "state.body"))


def classifier(agent_version: str, prompt_version: str) -> ClaudeAgent[Triage]:
    """One version of the classifier, behind the shared controls."""
    return ClaudeAgent(
        agent_name="classify", agent_version=agent_version, prompt_version=prompt_version, model=MODEL,
        system=SYSTEM, prompt=PROMPTS[prompt_version], output=Triage, decide=route, max_tokens=512,
        base_url=BASE_URL, rate_limit=LIMIT, breaker=BREAKER, context_budget=BUDGET,
        timeout=timedelta(seconds=60),
    )


CLASSIFY = Canary(classifier("1", "triage-v1"), classifier("2", "triage-v2"), split=(90, 10))


def holding_reply(state: Any, ctx: StepContext) -> Outcome:
    """Draft the acknowledgement the customer gets while the queue works on it."""
    queue = state.queue or "human"
    when = "within the hour" if state.priority == "urgent" else "within one business day"
    subject = state.subject or state.body[:40]
    return Finish(
        update={"queue": queue, "reply": f"Re: {subject} - our {queue} team will answer {when}."},
        reason=f"queued for {queue}",
    )


RETRY = RetryPolicy(
    max_attempts=2, initial_interval=timedelta(milliseconds=500), jitter=0.2,
    retry_on_invalid_output=True, non_retryable=frozenset({"LLMCircuitOpen"}),
)

machine = Machine(
    "claude-triage",
    "1",
    Ticket,
    initial=from_text,
    description="Support tickets triaged by Claude behind a rate limit, a circuit breaker and a canary.",
    steps=[
        Step("classify", CLASSIFY, next=["billing", "technical", "account", "human"],
             reads=["subject", "body", "plan"], writes=["queue", "priority", "reason"], retry=RETRY,
             timeout=timedelta(seconds=90), on_error="human",
             description="Claude picks the queue; errors, garbage and an open circuit go to a human"),
        *[Step(q, holding_reply, writes=["queue", "reply"], may_finish=True, timeout=timedelta(seconds=5),
               description=f"the {q} queue")
          for q in QUEUES],
        Step("human", holding_reply, writes=["queue", "reply"], may_finish=True, timeout=timedelta(seconds=5),
             description="a person triages what the model could not"),
    ],
)
