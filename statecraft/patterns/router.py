"""Router-worker: deterministic rules first, an optional agent for the rest, a mandatory fallback.

``router(...)`` returns a step that picks one route and moves to that route's
worker step. The decision is taken in this order, and the first that
settles it wins:

1. **rules**, in declaration order: a :class:`Rule` matches on keywords in
   the routed text (whole words, case-insensitive), on a predicate over the
   state, or both; the first matching rule decides;
2. the optional **agent** (e.g. an LLM classifier) for what no rule
   matched; its answer must name a declared route;
3. the **fallback** step, which every router must declare: no input is dropped,
   including when the agent fails or names an unknown route.

Every decision is audited as one ``route.decided`` event: ``decision`` is the
route, ``reason`` says who decided and why, and the payload records the rule
(or ``null``), ``decided_by`` (``rule`` / ``agent`` / ``fallback``), every
rule that matched (so conflicts are visible) and the features the rules
looked at (keyword hits, text length and hash). An agent call is its own
``agent.called`` event before it, with its usage.

Example::

    triage = router(
        "triage",
        rules=[
            Rule("refund_words", route="billing", keywords=["refund", "invoice", "charge"]),
            Rule("outage_words", route="technical", keywords=["error", "outage", "500"]),
        ],
        routes={"billing": "billing", "technical": "technical"},
        fallback="human_queue",
        into="route",
    )
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ..agents.base import RecordedCall, StepContext
from ..machine import Step
from ..outcomes import Goto, Outcome
from .parallel import BranchContext, callable_name, config_digest

if TYPE_CHECKING:
    from .escalation import EscalationRule

__all__ = ["RouteDecision", "Rule", "router"]


@dataclass(frozen=True)
class Rule:
    """A deterministic routing rule.

    A rule matches when every condition it declares holds: at least
    ``min_hits`` distinct ``keywords`` occur in the routed text (whole words
    or phrases, case-insensitive), and ``when(state)`` is true. A rule must
    declare at least one of the two.

    Attributes:
        name: stable identifier, audited as the deciding rule.
        route: the route it selects (a key of the router's ``routes``).
        keywords: words or phrases to look for.
        when: optional pure predicate over the step's state view.
        min_hits: distinct keywords needed (>= 1).
    """

    name: str
    route: str
    keywords: Sequence[str] = ()
    when: Callable[[Any], bool] | None = None
    min_hits: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "keywords", tuple(k for k in self.keywords if k.strip()))
        if not self.keywords and self.when is None:
            raise ValueError(f"rule {self.name!r} needs keywords or a predicate")
        if self.min_hits < 1:
            raise ValueError(f"rule {self.name!r}: min_hits must be >= 1")
        pattern = None
        if self.keywords:
            alternatives = "|".join(r"\s+".join(map(re.escape, k.split())) for k in self.keywords)
            pattern = re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)
        object.__setattr__(self, "_pattern", pattern)

    def hits(self, text: str) -> list[str]:
        """The distinct keywords found in ``text``, lower-cased, in order of first occurrence."""
        pattern: re.Pattern[str] | None = getattr(self, "_pattern")
        if pattern is None:
            return []
        found: dict[str, None] = {}
        for m in pattern.finditer(text):
            found[" ".join(m.group(0).lower().split())] = None
        return list(found)

    def matches(self, state: Any, text: str) -> tuple[bool, list[str]]:
        """Whether the rule matches, and the keyword hits it saw (for the audit)."""
        hits = self.hits(text)
        if self.keywords and len(hits) < self.min_hits:
            return False, hits
        if self.when is not None and not self.when(state):
            return False, hits
        return True, hits

    def describe(self) -> dict[str, Any]:
        """JSON form for the pattern's configuration digest."""
        return {
            "name": self.name,
            "route": self.route,
            "keywords": list(self.keywords),
            "when": None if self.when is None else callable_name(self.when),
            "min_hits": self.min_hits,
        }


class RouteDecision(BaseModel):
    """What a router decided; written to the router's ``into`` field when given.

    Attributes:
        route: the chosen route (``fallback`` when nothing else settled it).
        step: the worker step the run moved to.
        decided_by: ``rule``, ``agent`` or ``fallback``.
        rule: the deciding rule's name, if a rule decided.
        matched_rules: every rule that matched, in declaration order.
    """

    model_config = ConfigDict(frozen=True)

    route: str
    step: str
    decided_by: str
    rule: str | None = None
    matched_rules: list[str] = []


FALLBACK = "fallback"
"""The route name recorded when the fallback step is chosen."""


class _RouterAgent:
    def __init__(
        self,
        name: str,
        rules: Sequence[Rule],
        routes: Mapping[str, str],
        fallback: str,
        text: Callable[[Any, StepContext], str] | None,
        agent: Callable[[Any, BranchContext], str | None] | None,
        into: str | None,
    ) -> None:
        self.name = name
        self.rules = tuple(rules)
        self.routes = dict(routes)
        self.fallback = fallback
        self.text = text
        self.agent = agent
        self.into = into
        self.agent_name = f"router:{name}"
        self.agent_version = config_digest(
            {
                "rules": [r.describe() for r in self.rules],
                "routes": self.routes,
                "fallback": fallback,
                "text": text,
                "agent": agent,
            }
        )

    def _text(self, state: Any, ctx: StepContext) -> str:
        if self.text is not None:
            return self.text(state, ctx)
        task = ctx.task
        if isinstance(task, str):
            return task
        if isinstance(task, Mapping):
            return "\n".join(str(v) for v in task.values() if isinstance(v, (str, int)))
        return "" if task is None else str(task)

    def __call__(self, state: Any, ctx: StepContext) -> Outcome:
        text = self._text(state, ctx)
        matched: list[Rule] = []
        keyword_hits: dict[str, list[str]] = {}
        for rule in self.rules:
            ok, hits = rule.matches(state, text)
            if hits:
                keyword_hits[rule.name] = hits
            if ok:
                matched.append(rule)
        features: dict[str, Any] = {
            "text_chars": len(text),
            "text_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "keyword_hits": keyword_hits,
        }
        route: str | None = None
        decided_by, rule_name = FALLBACK, None
        if matched:
            route, decided_by, rule_name = matched[0].route, "rule", matched[0].name
            why = f"rule {rule_name!r} matched" + (
                f" (keywords {keyword_hits[rule_name]})" if keyword_hits.get(rule_name) else ""
            )
        elif self.agent is not None:
            route, why = self._ask_agent(state, ctx)
            decided_by = "agent" if route is not None else FALLBACK
        else:
            why = "no rule matched and no agent is configured"
        if route is None:
            route, step = FALLBACK, self.fallback
            why = f"fallback: {why}"
        else:
            step = self.routes[route]
        ctx.record_call(
            RecordedCall(
                event_type="route.decided",
                name=self.agent_name,
                version=self.agent_version,
                decision=route,
                reason=why,
                payload={
                    "rule": rule_name,
                    "decided_by": decided_by,
                    "step": step,
                    "matched_rules": [r.name for r in matched],
                    "features": features,
                },
            )
        )
        update: dict[str, Any] = {}
        if self.into is not None:
            update[self.into] = RouteDecision(
                route=route, step=step, decided_by=decided_by, rule=rule_name,
                matched_rules=[r.name for r in matched],
            ).model_dump(mode="json")
        return Goto(step, update=update, reason=f"route {route!r}: {why}")

    def _ask_agent(self, state: Any, ctx: StepContext) -> tuple[str | None, str]:
        assert self.agent is not None
        name = callable_name(self.agent)
        bctx = BranchContext(ctx, name, 1, threading.Lock())
        started = time.perf_counter()
        answer: Any = None
        try:
            answer = self.agent(state, bctx)
        except Exception as exc:  # the fallback step catches what the agent cannot settle
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            ctx.record_call(RecordedCall(
                event_type="agent.called", name=name, version=getattr(self.agent, "agent_version", None),
                outcome="failure", reason=error, error_code="branch_error",
                latency_ms=int((time.perf_counter() - started) * 1000), usage=bctx.usage,
                payload={"step": ctx.step, "role": "router_fallback_agent"},
            ))
            return None, f"router agent failed ({error})"
        ctx.record_call(RecordedCall(
            event_type="agent.called", name=name, version=getattr(self.agent, "agent_version", None),
            outcome="success", decision=None if answer is None else str(answer),
            latency_ms=int((time.perf_counter() - started) * 1000), usage=bctx.usage,
            output=json.loads(json.dumps(answer, default=str)),
            payload={"step": ctx.step, "role": "router_fallback_agent"},
        ))
        if answer is None:
            return None, "no rule matched and the agent did not choose a route"
        if answer not in self.routes:
            return None, f"no rule matched and the agent named unknown route {answer!r}"
        return str(answer), f"no rule matched; agent {name!r} chose {answer!r}"


def router(
    name: str,
    *,
    rules: Sequence[Rule],
    routes: Mapping[str, str],
    fallback: str,
    agent: Callable[[Any, BranchContext], str | None] | None = None,
    text: Callable[[Any, StepContext], str] | None = None,
    into: str | None = None,
    reads: Sequence[str] | None = None,
    escalate: Sequence[EscalationRule] = (),
    description: str = "",
) -> Step:
    """A step that routes the run to one worker step; nothing is ever dropped.

    Args:
        name: the step's name.
        rules: deterministic rules, tried in order; the first match decides.
        routes: route name -> worker step name.
        fallback: the step taking everything no rule or agent settled
            (mandatory); recorded as route ``fallback``.
        agent: optional ``(state_view, bctx) -> route | None`` for inputs no
            rule matched (e.g. an LLM classifier; report its usage with
            ``bctx.record_usage``). ``None``, an unknown route or an
            exception sends the input to ``fallback``.
        text: ``(state_view, ctx) -> str``, the text keyword rules look at;
            default: the run's task (intent propagation), or its string
            values when the task is a JSON object.
        into: optional state field for the :class:`RouteDecision`
            (declare it ``RouteDecision | None``).
        reads: state fields the step sees (``None``: all).
        escalate: escalation rules on the chosen transition.
        description: one line for the docs.

    Returns:
        The router step; ``next`` = every route's step plus ``fallback``.

    Raises:
        ValueError: a rule names an undeclared route, a route is named
            ``fallback``, or rule names repeat.
    """
    problems = [f"rule {r.name!r} selects undeclared route {r.route!r}" for r in rules if r.route not in routes]
    if FALLBACK in routes:
        problems.append(f"route name {FALLBACK!r} is reserved for the fallback step")
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        problems.append(f"duplicate rule names in {names}")
    if problems:
        raise ValueError(f"router {name!r}: " + "; ".join(problems))
    targets = list(dict.fromkeys([*routes.values(), fallback]))
    return Step(
        name,
        _RouterAgent(name, rules, routes, fallback, text, agent, into),
        next=targets,
        reads=reads,
        writes=[into] if into is not None else [],
        escalate=escalate,
        description=description or f"route to {', '.join(routes)} (fallback {fallback})",
    )
