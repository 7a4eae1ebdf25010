"""Reference machine: a compliance debate between a conservative and a precise advocate.

The input is a contract or policy text (the run's task). Steps::

    findings -> debate -+-> report -> DONE              (advocates agree)
                        '-> (gate) -> report -> DONE     (they disagree: a human decides)

* ``findings`` (a pipeline stage): the clause findings and risk findings of
  the contract-review rules (``_contract_rules.py``, shared with
  ``machines/contract_review.py``).
* ``debate``: a :func:`statecraft.patterns.debate`. Two advocates read the
  same findings independently and concurrently, each from its own copy:

  - ``conservative`` treats every medium or high risk as a blocker and
    flags a contract or terms without a liability or governing-law clause;
  - ``precise`` counts only the risks the rules rate high.

  The judge's rubric compares their ``verdict`` (``accept`` / ``escalate``)
  and their set of ``high_risk`` categories. Agreement goes straight to the
  report; disagreement waits for one approver of the compliance group
  (``user:counsel`` or ``user:compliance``; never the one who started the
  run), shown both positions; approving accepts the conservative position.
* ``report`` (stage): the decision, who made it (consensus or a human), the
  positions; finishes.

Try::

    statecraft start machines/compliance_debate.py --input machines/samples/mutual_nda.md     # agree
    statecraft start machines/compliance_debate.py --input machines/samples/vendor_terms.md   # gate
    statecraft approve RUN_ID --by user:counsel --digest DIGEST
"""

# No ``from __future__ import annotations``: this file is loaded by path under
# a synthetic module name, and pydantic must resolve the annotations eagerly.

import hashlib
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from statecraft.agents.base import StepContext
from statecraft.loader import load_sibling
from statecraft.machine import Machine
from statecraft.outcomes import ApprovalPolicy
from statecraft.patterns import (
    BranchContext,
    Criterion,
    DebateRecord,
    Stage,
    debate,
    pipeline,
)

if TYPE_CHECKING:
    import _contract_rules as rules
else:
    rules = load_sibling(__file__, "_contract_rules")

VERSION = "1"
COMPLIANCE_GROUP = ("user:counsel", "user:compliance")
PROTECTIVE = ("limitation_of_liability", "governing_law")


class Finding(BaseModel):
    """A clause finding, reduced to what the advocates need."""

    model_config = ConfigDict(frozen=True)

    category: str
    heading: str
    quote: str
    line: int


class RiskFinding(BaseModel):
    """A risk finding of the contract-review rules."""

    model_config = ConfigDict(frozen=True)

    rule_id: str
    severity: str
    category: str
    title: str


class Position(BaseModel):
    """An advocate's structured position (what the rubric compares)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    verdict: Literal["accept", "escalate"]
    high_risk: list[str]
    rationale: str
    confidence: int = Field(ge=0, le=100)


class ComplianceReport(BaseModel):
    model_config = ConfigDict(frozen=True)

    title: str
    verdict: str
    decided_by: str
    high_risk: list[str]
    disagreements: list[str]
    positions: dict[str, Position]


class ComplianceReview(BaseModel):
    """State of a compliance-debate run (the document itself is the run's task)."""

    model_config = ConfigDict(frozen=True)

    title: str = ""
    document_sha256: str | None = None
    kind: str | None = None
    findings: list[Finding] = []
    risks: list[RiskFinding] = []
    debate: DebateRecord | None = None
    report: ComplianceReport | None = None


# -- steps and advocates ---------------------------------------------------------------

def findings(state: Any, ctx: StepContext) -> dict[str, Any]:
    """Clause and risk findings of the shared contract-review rules."""
    text = ctx.task
    if not isinstance(text, str):
        raise TypeError(f"compliance_debate needs the document text as the task, got {type(text).__name__}")
    doc = rules.Document(text)
    kind, _ = rules.classify(state.title, doc)
    clauses = rules.detect_clauses(doc)
    risks = rules.assess_risk(doc, kind, tuple(clauses))
    return {
        "kind": kind,
        "findings": [Finding(category=c.category, heading=c.heading, quote=c.quote, line=c.line).model_dump()
                     for c in clauses],
        "risks": [RiskFinding(rule_id=r.rule_id, severity=r.severity, category=r.category, title=r.title).model_dump()
                  for r in risks],
    }


def advocate_input(state: Any, ctx: StepContext) -> dict[str, Any]:
    """What both advocates see: the kind and the findings, nothing else."""
    return {
        "kind": state.kind,
        "findings": [f.model_dump() for f in state.findings],
        "risks": [r.model_dump() for r in state.risks],
    }


def conservative(case: dict[str, Any], bctx: BranchContext) -> Position:
    """Every medium or high risk blocks; a contract without protective clauses blocks too."""
    flagged = {r["category"] for r in case["risks"] if r["severity"] in ("medium", "high")}
    present = {f["category"] for f in case["findings"]}
    if case["kind"] in ("contract", "terms"):
        flagged |= {c for c in PROTECTIVE if c not in present}
    high = sorted(flagged)
    why = (f"blocking categories: {', '.join(high)}" if high
           else "no medium or high risk, protective clauses present")
    return Position(verdict="escalate" if high else "accept", high_risk=high, rationale=why, confidence=70)


def precise(case: dict[str, Any], bctx: BranchContext) -> Position:
    """Only what the rules rate high blocks; medium risks are negotiable."""
    high = sorted({r["category"] for r in case["risks"] if r["severity"] == "high"})
    mediums = sorted({r["rule_id"] for r in case["risks"] if r["severity"] == "medium"})
    why = (f"high-severity rules fired in: {', '.join(high)}" if high
           else "no high-severity rule fired" + (f" (negotiable: {', '.join(mediums)})" if mediums else ""))
    return Position(verdict="escalate" if high else "accept", high_risk=high, rationale=why, confidence=85)


def report(state: Any, ctx: StepContext) -> dict[str, Any]:
    """The decision the run continues with, and who made it."""
    record = state.debate
    resolution = Position.model_validate(record.resolution)
    return {"report": ComplianceReport(
        title=state.title, verdict=resolution.verdict, decided_by=record.resolved_by,
        high_risk=resolution.high_risk, disagreements=list(record.disagreements),
        positions={k: Position.model_validate(v) for k, v in record.positions.items()},
    ).model_dump(mode="json")}


for _fn in (findings, advocate_input, conservative, precise, report):
    _fn.agent_version = VERSION  # type: ignore[attr-defined]


def initial_state(task: Any) -> ComplianceReview:
    """Title and hash of the document text.

    Raises:
        TypeError: the task is not text.
    """
    if not isinstance(task, str):
        raise TypeError(f"compliance_debate takes the document text as input, got {type(task).__name__}")
    first_line = next((ln for ln in (rules.strip_markup(x) for x in task.splitlines()) if ln), "")
    return ComplianceReview(title=(rules.first_heading(task) or first_line[:120]) or "(untitled)",
                            document_sha256=hashlib.sha256(task.encode("utf-8")).hexdigest())


# Every step has a per-attempt timeout (issue #9): a runaway step fails its run
# (outcome ``timeout``) instead of leaving it RUNNING. The findings step runs the
# contract-review rules, linear in the text (bench/bench_long_document.py).
STEP_TIMEOUT = timedelta(seconds=120)

machine: Machine[ComplianceReview] = Machine(
    "compliance_debate", VERSION, ComplianceReview,
    steps=[replace(step, timeout=STEP_TIMEOUT) for step in [
        *pipeline([Stage("findings", findings, reads=["title"], writes=["kind", "findings", "risks"],
                         description="clause and risk findings (contract-review rules)")],
                  then="debate"),
        debate(
            "debate",
            advocates={"conservative": conservative, "precise": precise},
            rubric=[
                Criterion("verdict", description="accept or escalate"),
                Criterion("high_risk", compare="same_set", description="the blocking categories"),
            ],
            position_model=Position,
            inputs=advocate_input,
            into="debate",
            next="report",
            prefer="conservative",
            approvers=ApprovalPolicy(1, group=COMPLIANCE_GROUP),
            reads=["kind", "findings", "risks"],
            description="conservative vs precise advocate; rubric: verdict, high-risk set",
        ),
        *pipeline([Stage("report", report, reads=["title", "debate"], writes=["report"],
                         description="the decision and who made it")]),
    ]],
    initial=initial_state,
    description="Two advocates judge a document's clause findings; disagreement goes to a human.",
)
