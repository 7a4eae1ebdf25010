"""Reference machine: contract review.

The run's task is the document text (Markdown or plain text). It is never
copied into the state: every agent reads it from ``ctx.task`` and checks it
against ``document_sha256`` in the state, so a 50,000-token document is stored
once and each checkpoint only holds the findings.

Steps (each one an agent; the default agents are deterministic Python, with
no network and no key)::

    classify -> detect_clauses -> assess_risk -+-> finalize -> DONE
                                               '-> (gate: WAITING_FOR_APPROVAL) -> finalize

* ``classify`` scores kind signals (contract / policy / terms / other) in the
  title, the opening and the body; writes ``kind`` and ``kind_evidence``.
* ``detect_clauses`` splits the document into sections at its headings
  (Markdown ``#``, HTML headers, bold lead-ins, numbered run-in titles) and
  scores every section for the eleven clause categories of ``CATEGORIES``:
  heading keywords plus body patterns of legal phrasing. Each finding carries
  the heading, an exact quote (the matched sentence, at most 300 characters),
  its character offsets and line, the pattern that matched and a confidence.
* ``assess_risk`` applies the explicit rules of ``RISK_RULES``; any
  high-severity finding asks a human to approve, with a short reviewer summary.
* ``finalize`` writes the structured ``report`` and finishes.

Offsets are Python ``str`` indices (code points) into the task text exactly as
the run received it: ``text[clause.start:clause.end] == clause.quote``.

Long and unusual input (issue #9). A document is refused before any run is
created when it is empty or longer than ``MAX_DOCUMENT_CHARS``: the input
model :class:`DocumentTask` raises a ``pydantic.ValidationError``, which the
engine documents for a bad input and the CLI prints as one line (exit 1), so
the ledger holds no half-made run. The analysis is linear in the text (see
``_contract_rules.py``), and every step declares ``STEP_TIMEOUT``: a step that
still overran it would fail its run (outcome ``timeout``) instead of leaving
it RUNNING. The state keeps three findings per category; ``assess_risk``
judges all of them. One process parses a text once for all its steps
(``_parsed``): the steps of a run read the same text, and a 5 MB text takes
seconds to scan (``bench/bench_long_document.py``).

The risk rules are the table ``RISK_RULES`` in ``_contract_rules.py`` (rule ids
R1a-R9), repeated in ``docs/contract_review.md``.
"""

# No ``from __future__ import annotations``: this file is loaded by path under
# a synthetic module name, and pydantic must resolve the annotations eagerly.

import functools
import hashlib
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from statecraft.loader import load_sibling
from statecraft.machine import Machine, Step
from statecraft.outcomes import Fail, Finish, Goto, Outcome, RequestApproval

if TYPE_CHECKING:
    import _contract_rules as rules
else:
    rules = load_sibling(__file__, "_contract_rules")
CATEGORIES = rules.CATEGORIES
Clause, Risk, Document = rules.Clause, rules.Risk, rules.Document
MAX_DOCUMENT_CHARS = rules.MAX_DOCUMENT_CHARS
AGENT_VERSION = "2"
# Per attempt, on every step. On 5 MB the heaviest step (detect_clauses) took
# 7 s on a loaded 2-core container (bench/README.md); 120 s leaves room for a
# slower machine, so only a runaway agent reaches it, and its run then fails
# with outcome ``timeout`` instead of staying RUNNING.
STEP_TIMEOUT = timedelta(seconds=120)
HighestSeverity = Literal["none", "low", "medium", "high"]


# -- state ------------------------------------------------------------------

class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Report(_Frozen):
    """The structured final report."""

    document_title: str
    kind: rules.Kind
    categories_found: tuple[rules.Category, ...]
    categories_missing: tuple[rules.Category, ...]
    clause_count: int
    high_risks: int
    medium_risks: int
    low_risks: int
    highest_severity: HighestSeverity
    risk_rules: tuple[str, ...] = Field(description="ids of the rules that fired, highest severity first")
    reviewer_summary: str
    approval_required: bool


class ContractReview(_Frozen):
    """State of a contract-review run (the document itself is the run's task)."""

    document_title: str = ""
    document_sha256: str | None = None
    document_chars: int = 0
    kind: rules.Kind | None = None
    kind_evidence: tuple[str, ...] = ()
    clauses: tuple[rules.Clause, ...] = ()
    risks: tuple[rules.Risk, ...] = ()
    report: Report | None = None


class DocumentTask(_Frozen):
    """The run's input, checked before a run exists: text that can be reviewed.

    Raises:
        pydantic.ValidationError: with error type ``bad_task`` (not text),
            ``empty_document`` (no text once markup and whitespace are
            removed) or ``document_too_large`` (over ``MAX_DOCUMENT_CHARS``).
    """

    document: str

    @field_validator("document", mode="before")
    @classmethod
    def _reviewable(cls, value: Any) -> str:
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if not isinstance(value, str):
            raise PydanticCustomError(
                "bad_task", "contract_review takes the document text as input (--input FILE), got {got}",
                {"got": type(value).__name__})
        problem = rules.document_problem(value)
        if problem is not None:
            raise PydanticCustomError(problem.code, problem.message)
        return value


# -- agents -----------------------------------------------------------------------

class _Parsed:
    """A parsed text; every finding in it (``rules.detect_findings``) on first use."""

    def __init__(self, sha256: str, doc: "rules.Document") -> None:
        self.sha256 = sha256
        self.doc = doc

    @functools.cached_property
    def findings(self) -> dict[str, list["rules.Clause"]]:
        return rules.detect_findings(self.doc)


_last_parsed: list[_Parsed] = []  # at most one: the text the steps of a run share
_parse_lock = threading.Lock()


def _parsed(text: str, sha256: str) -> _Parsed:
    # The analysis is a pure function of the text, so reusing it changes no
    # outcome; it saves re-parsing a long text at each step of the same run.
    with _parse_lock:
        if _last_parsed and _last_parsed[0].sha256 == sha256:
            return _last_parsed[0]
    parsed = _Parsed(sha256, rules.Document(text))
    with _parse_lock:
        _last_parsed[:] = [parsed]
    return parsed


def _document(state: Any, ctx: Any) -> "_Parsed | Fail":
    task = ctx.task
    if isinstance(task, bytes):
        task = task.decode("utf-8")
    if not isinstance(task, str):
        return Fail(f"contract_review needs the document text as the task, got {type(task).__name__}",
                    error_code="bad_task")
    problem = rules.document_problem(task)
    if problem is not None:
        return Fail(problem.message, error_code=problem.code)
    sha256 = hashlib.sha256(task.encode("utf-8")).hexdigest()
    expected = getattr(state, "document_sha256", None)
    if expected and sha256 != expected:
        return Fail("the task text does not match document_sha256 in the state", error_code="document_mismatch")
    return _parsed(task, sha256)


def _as_json(items: Sequence[BaseModel]) -> list[dict[str, Any]]:
    return [i.model_dump(mode="json") for i in items]


class ClassifyAgent:
    """Step ``classify``: kind of document from title, opening and body signals."""

    agent_name = "contract_review.classify"
    agent_version = AGENT_VERSION

    def __call__(self, state: Any, ctx: Any) -> Outcome:
        parsed = _document(state, ctx)
        if isinstance(parsed, Fail):
            return parsed
        kind, evidence = rules.classify(state.document_title, parsed.doc)
        return Goto("detect_clauses", update={"kind": kind, "kind_evidence": list(evidence)},
                    reason=f"classified as {kind}")


class DetectClausesAgent:
    """Step ``detect_clauses``: clause findings with heading, exact quote and position."""

    agent_name = "contract_review.detect_clauses"
    agent_version = AGENT_VERSION

    def __call__(self, state: Any, ctx: Any) -> Outcome:
        parsed = _document(state, ctx)
        if isinstance(parsed, Fail):
            return parsed
        clauses = rules.detect_clauses(parsed.doc, parsed.findings)
        found = len({c.category for c in clauses})
        total = sum(len(f) for f in parsed.findings.values())
        kept = "" if total == len(clauses) else f" (the strongest {rules.MAX_FINDINGS_PER_CATEGORY} per category of {total})"
        return Goto("assess_risk", update={"clauses": _as_json(clauses)},
                    reason=f"{len(clauses)} findings in {found}/{len(CATEGORIES)} categories{kept}")


class AssessRiskAgent:
    """Step ``assess_risk``: the rules of ``RISK_RULES`` over every finding; a high risk asks for approval."""

    agent_name = "contract_review.assess_risk"
    agent_version = AGENT_VERSION

    def __call__(self, state: Any, ctx: Any) -> Outcome:
        parsed = _document(state, ctx)
        if isinstance(parsed, Fail):
            return parsed
        risks = rules.assess_risk(parsed.doc, state.kind, state.clauses, parsed.findings)
        update = {"risks": _as_json(risks)}
        summary = rules.reviewer_summary(state.document_title, state.kind, state.clauses, risks)
        if any(r.severity == "high" for r in risks):
            details = "\n".join(f"- **{r.rule_id}** ({r.severity}) {r.title}: {r.explanation}"
                                + (f' — line {r.line}: "{r.quote}"' if r.quote else "") for r in risks)
            return RequestApproval(reason=summary, resume_at="finalize", update=update, summary=details)
        return Goto("finalize", update=update, reason=summary)


class FinalizeAgent:
    """Step ``finalize``: the structured report; finishes the run."""

    agent_name = "contract_review.finalize"
    agent_version = AGENT_VERSION

    def __call__(self, state: Any, ctx: Any) -> Outcome:
        found = sorted({c.category for c in state.clauses}, key=CATEGORIES.index)
        counts = {s: sum(1 for r in state.risks if r.severity == s) for s in ("high", "medium", "low")}
        highest = cast(HighestSeverity, next((s for s in ("high", "medium", "low") if counts[s]), "none"))
        report = Report(
            document_title=state.document_title, kind=state.kind or "other",
            categories_found=tuple(found), categories_missing=tuple(c for c in CATEGORIES if c not in found),
            clause_count=len(state.clauses), high_risks=counts["high"], medium_risks=counts["medium"],
            low_risks=counts["low"], highest_severity=highest,
            risk_rules=tuple(r.rule_id for r in state.risks),
            reviewer_summary=rules.reviewer_summary(state.document_title, state.kind, state.clauses, state.risks),
            approval_required=counts["high"] > 0,
        )
        return Finish(update={"report": report.model_dump(mode="json")}, reason=report.reviewer_summary)


# -- the machine --------------------------------------------------------------------

def initial_state(task: Any) -> ContractReview:
    """First state from the document text: title (first Markdown heading), hash, length.

    Args:
        task: the document, ``str`` or UTF-8 ``bytes``.

    Raises:
        pydantic.ValidationError: the task is not text, is empty, or is over
            ``MAX_DOCUMENT_CHARS`` characters (:class:`DocumentTask`); no run
            is created.
    """
    task = DocumentTask.model_validate({"document": task}).document
    heading = rules.first_heading(task)
    first_line = next((ln for ln in (rules.strip_markup(x) for x in task.splitlines()) if ln), "")
    title = heading if heading else first_line[:120]
    return ContractReview(document_title=title or "(untitled)",
                          document_sha256=hashlib.sha256(task.encode("utf-8")).hexdigest(),
                          document_chars=len(task))


machine: Machine[ContractReview] = Machine(
    "contract_review", "1", ContractReview,
    steps=[
        Step("classify", ClassifyAgent(), next=["detect_clauses"],
             reads=["document_title", "document_sha256"], writes=["kind", "kind_evidence"],
             timeout=STEP_TIMEOUT, description="kind of document: contract, policy, terms or other"),
        Step("detect_clauses", DetectClausesAgent(), next=["assess_risk"],
             reads=["document_sha256"], writes=["clauses"],
             timeout=STEP_TIMEOUT, description="clause findings with heading, exact quote and position"),
        Step("assess_risk", AssessRiskAgent(), next=["finalize"],
             reads=["document_title", "document_sha256", "kind", "clauses"], writes=["risks"],
             timeout=STEP_TIMEOUT, description="explicit risk rules over every finding; a high risk waits for approval"),
        Step("finalize", FinalizeAgent(), may_finish=True,
             reads=["document_title", "kind", "clauses", "risks"], writes=["report"],
             timeout=STEP_TIMEOUT, description="structured report"),
    ],
    initial=initial_state,
    description="Review a legal or policy document: kind, clauses with evidence, risks, report.",
)
