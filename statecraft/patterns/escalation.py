"""Escalation gates: declarative "always escalate" rules, judged by the machine, not the agent.

A rule is a pure predicate over the state a step *proposes* (the current
state with the agent's update applied). Rules are declared on a step
(``Step(..., escalate=[...])``) and evaluated by ``Machine.apply``, the pure
judge of outcomes: when an agent returns a legal ``Goto`` (or its own
``RequestApproval``) and any rule fires on the resulting state, the outcome
becomes a ``RequestApproval`` that resumes where the agent wanted to go, with
the fired rule as the audited reason. The agent's own judgement cannot skip
a rule: deciding apart from doing (STYLE.md; Temporal's workflow/activity split).

Why a ``Finish`` cannot be gated: approval resumes the run *at a step*; a
step that may finish would, after approval, run again and trip the same rule
forever. A step with rules therefore may not be declared ``may_finish`` (a
definition error at build time): route the risky action through a later
step (e.g. ``review -> pay -> DONE``, with rules on ``review``).

Rules never see floats in the audit: the reason they report is text, and
thresholds are integers (money in cents or micros, confidence in percent).

Example::

    from statecraft.patterns import amount_above, missing_fields

    Step("review", review, next=["pay"], writes=["decision"], escalate=[
        amount_above("amount_cents", 1_000_000,
                     approvers=ApprovalPolicy(2, group={"user:cfo", "user:controller"})),
        missing_fields(["po_number"]),
    ])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..outcomes import ApprovalPolicy, Goto, RequestApproval

__all__ = [
    "EscalationRule",
    "amount_above",
    "escalate",
    "flagged_terms",
    "low_confidence",
    "missing_fields",
]

_MISSING = object()


@dataclass(frozen=True)
class EscalationRule:
    """One "always escalate" rule: a pure predicate over the proposed state.

    Attributes:
        name: stable identifier, unique within its step; recorded as the
            gate's reason and in the machine digest.
        when: ``state -> bool | str | None``; a truthy result fires the rule.
            A string result is the detail recorded with the reason (e.g.
            ``"amount_cents 1250000 > 1000000"``). Must be pure and fast: it
            runs inside the judge. An exception counts as *fired* (fail
            closed: a rule that cannot be evaluated sends the run to a human).
        description: one line for the docs and the digest ("amount above $10,000").
        approvers: the approval policy of the gate this rule raises; ``None``
            means one approval by any named actor.
    """

    name: str
    when: Callable[[Any], bool | str | None]
    description: str = ""
    approvers: ApprovalPolicy | None = None

    def check(self, state: Any) -> str | None:
        """The detail of why the rule fires on ``state``, or ``None`` if it does not.

        Never raises: a predicate error fires the rule with the error as detail.
        """
        try:
            result = self.when(state)
        except Exception as exc:  # fail closed: an unevaluable rule escalates
            return f"could not be evaluated ({type(exc).__name__}: {exc}); escalating to be safe"
        if not result:
            return None
        return result if isinstance(result, str) else (self.description or "fired")

    def describe(self) -> dict[str, Any]:
        """JSON form for ``Machine.describe`` (and so the machine digest)."""
        return {
            "name": self.name,
            "description": self.description,
            "approvers": None if self.approvers is None else self.approvers.describe(),
        }


def escalate(
    rules: Sequence[EscalationRule], state: Any, outcome: Goto | RequestApproval
) -> RequestApproval | None:
    """Apply ``rules`` to a proposed transition. Pure; called by ``Machine.apply``.

    Args:
        rules: the step's rules, in declaration order.
        state: the proposed state (after the agent's update).
        outcome: the agent's legal ``Goto`` or ``RequestApproval``.

    Returns:
        ``None`` when no rule fires. Otherwise the gate: a ``RequestApproval``
        resuming at the agent's target, carrying the agent's update, a reason
        naming every fired rule (``escalation rule 'NAME': DETAIL; …``), the
        names in ``rules``, and the approval policy of the fired rule that
        requires the most approvers (declaration order breaks ties; when the
        agent itself asked with a stricter policy, the agent's is kept).
    """
    fired = [(rule, detail) for rule in rules if (detail := rule.check(state)) is not None]
    if not fired:
        return None
    reason = "; ".join(f"escalation rule {rule.name!r}: {detail}" for rule, detail in fired)
    policies = [rule.approvers for rule, _ in fired if rule.approvers is not None]
    if isinstance(outcome, RequestApproval) and outcome.policy is not None:
        policies.append(outcome.policy)
    policy = max(policies, key=lambda p: p.required) if policies else None
    summary: str | None
    if isinstance(outcome, Goto):
        resume_at = outcome.step
        proposed = f"The agent proposed to continue to {outcome.step!r}"
        proposed += f" ({outcome.reason})." if outcome.reason else "."
        summary = f"{proposed} Escalated by rule, independent of the agent's judgement: {reason}."
        names = tuple(rule.name for rule, _ in fired)
    else:
        resume_at = outcome.resume_at
        reason = f"{reason}; agent: {outcome.reason}"
        summary = outcome.summary
        names = tuple(dict.fromkeys((*outcome.rules, *(rule.name for rule, _ in fired))))
    return RequestApproval(
        reason=reason,
        resume_at=resume_at,
        update=outcome.update,
        summary=summary,
        policy=policy,
        rules=names,
    )


# -- built-in rules ---------------------------------------------------------------


def _get(state: Any, path: str) -> Any:
    value: Any = state
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        else:
            value = getattr(value, part, _MISSING)
        if value is _MISSING or value is None:
            return None
    return value


def amount_above(
    field: str,
    threshold: int,
    *,
    name: str | None = None,
    approvers: ApprovalPolicy | None = None,
    description: str | None = None,
) -> EscalationRule:
    """Escalate when the number at ``field`` exceeds ``threshold``.

    Args:
        field: state field, dotted for nested values (``invoice.amount_cents``).
        threshold: integer, in the field's unit (keep money in integer cents or
            micros: no floats in audited data, AUDIT.md).
        name: rule name (default ``FIELD_above_THRESHOLD``).
        approvers: approval policy of the gate.
        description: one line (default ``FIELD > THRESHOLD``).

    A missing (``None``) value does not fire; pair it with :func:`missing_fields`.
    """

    def when(state: Any) -> str | None:
        value = _get(state, field)
        if value is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        return f"{field} {value} > {threshold}" if value > threshold else None

    return EscalationRule(
        name or f"{field.replace('.', '_')}_above_{threshold}",
        when,
        description or f"{field} > {threshold}",
        approvers,
    )


def flagged_terms(
    fields: str | Sequence[str],
    terms: Iterable[str],
    *,
    name: str = "flagged_terms",
    approvers: ApprovalPolicy | None = None,
    description: str | None = None,
) -> EscalationRule:
    """Escalate when any of ``terms`` occurs, as whole words and case-insensitively, in ``fields``.

    Text is gathered from strings, lists of strings and mappings' values at
    each field. Phrases (``"wire transfer"``) match across any whitespace.
    """
    field_list = [fields] if isinstance(fields, str) else list(fields)
    term_list = sorted({t.strip() for t in terms if t.strip()})
    if not term_list:
        raise ValueError("flagged_terms needs at least one term")
    pattern = re.compile(
        r"\b(" + "|".join(r"\s+".join(map(re.escape, t.split())) for t in term_list) + r")\b",
        re.IGNORECASE,
    )

    def when(state: Any) -> str | None:
        hits: dict[str, None] = {}
        for f in field_list:
            for text in _texts(_get(state, f)):
                for m in pattern.finditer(text):
                    hits[" ".join(m.group(0).lower().split())] = None
        return f"flagged terms {sorted(hits)} in {field_list}" if hits else None

    return EscalationRule(
        name, when, description or f"any of {term_list} in {field_list}", approvers
    )


def _texts(value: Any) -> Iterable[str]:
    if value is None:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _texts(v)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            yield from _texts(v)
    elif hasattr(value, "model_dump"):
        yield from _texts(value.model_dump())


def missing_fields(
    fields: Sequence[str],
    *,
    name: str = "missing_required_fields",
    approvers: ApprovalPolicy | None = None,
    description: str | None = None,
) -> EscalationRule:
    """Escalate when any of ``fields`` is missing, ``None``, blank, or an empty collection."""
    field_list = list(fields)

    def when(state: Any) -> str | None:
        missing = []
        for f in field_list:
            value = _get(state, f)
            if value is None or (isinstance(value, (str, list, tuple, dict, set)) and not (
                value.strip() if isinstance(value, str) else value
            )):
                missing.append(f)
        return f"required fields missing: {missing}" if missing else None

    return EscalationRule(name, when, description or f"any of {field_list} missing", approvers)


def low_confidence(
    field: str,
    below: int,
    *,
    name: str = "low_confidence",
    approvers: ApprovalPolicy | None = None,
    description: str | None = None,
) -> EscalationRule:
    """Escalate when the confidence an agent reported at ``field`` is under ``below``.

    Args:
        field: state field holding the confidence, as an integer percent 0..100
            (no floats in audited data); dotted for nested values.
        below: threshold percent; ``confidence < below`` fires.

    A missing confidence fires too: an agent that did not say how sure it is
    is treated as unsure (fail closed).
    """

    def when(state: Any) -> str | None:
        value = _get(state, field)
        if value is None:
            return f"{field} not reported (treated as low confidence)"
        return f"{field} {value} < {below}" if value < below else None

    return EscalationRule(name, when, description or f"{field} < {below}", approvers)
