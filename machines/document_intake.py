"""Reference machine: document intake by a supervisor and its specialists.

The input is a document's text (Markdown or plain text); it is the run's task,
stored once by hash and read by every agent through ``ctx.task`` (intent
propagation), never copied into the state. Steps::

    classify -> intake <-> intake_specialists -> validate -> assemble -> DONE

* ``classify`` (a pipeline stage): kind of document (contract / terms /
  policy / other), with the classifier of ``_contract_rules.py`` that the
  contract-review machine uses.
* ``intake`` / ``intake_specialists``: a :func:`statecraft.patterns.supervisor`.
  The supervisor's plan depends on the kind: contracts and terms go to all
  five specialists (``parties``, ``dates``, ``amounts``, ``clauses``,
  ``metadata``), policies skip parties and amounts, other documents get
  clauses and metadata. Its review re-delegates a ``parties`` search that
  found nothing in the preamble to a whole-document search, and drops
  results that still have nothing. At most 2 rounds, depth 1 (no splits);
  what is still missing then is stated in the record, not hidden.
* ``validate`` (stage): the kind's required findings are present.
* ``assemble`` (stage): the structured :class:`IntakeRecord`; finishes.

Specialists see only their subtask and the document; they never call each
other. Try::

    statecraft start machines/document_intake.py --input ../shared/corpus/github-terms-of-service.md
"""

# No ``from __future__ import annotations``: this file is loaded by path under
# a synthetic module name, and pydantic must resolve the annotations eagerly.

import hashlib
import re
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from statecraft.agents.base import StepContext
from statecraft.loader import load_sibling
from statecraft.machine import Machine
from statecraft.patterns import (
    Accept,
    BranchContext,
    Drop,
    Redelegate,
    Stage,
    Subtask,
    SubtaskResult,
    Supervision,
    pipeline,
    supervisor,
)

if TYPE_CHECKING:
    import _contract_rules as rules
else:
    rules = load_sibling(__file__, "_contract_rules")

VERSION = "1"
PREAMBLE_CHARS = 4000


# -- structured outputs of the specialists --------------------------------------------

class _Out(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Found(_Out):
    """One extracted item with its position (1-based line)."""

    text: str
    line: int
    value: str | None = None  # normalised: ISO date, amount digits, …


class Parties(_Out):
    """Named organisations and the party roles the document defines."""

    scope: str
    organisations: list[str]
    roles: list[str]


class Dates(_Out):
    dates: list[Found]


class Amounts(_Out):
    money: list[Found]
    percentages: list[Found]
    periods: list[Found]


class ClauseFinding(_Out):
    heading: str
    quote: str
    line: int
    confidence: int


class Clauses(_Out):
    found: dict[str, ClauseFinding]
    missing: list[str]


class Metadata(_Out):
    title: str
    words: int
    sections: int
    top_headings: list[str]
    sha256: str


class IntakeRecord(_Out):
    """The assembled record: what was found, and what is missing and why."""

    title: str
    kind: str
    parties: Parties | None
    dates: list[Found]
    amounts: Amounts | None
    clauses: Clauses | None
    metadata: Metadata | None
    missing: list[str]
    problems: list[str]
    complete: bool


class Assembled(_Out):
    """The ``assemble`` stage's output contract (checked before the run finishes)."""

    record: IntakeRecord


class Intake(BaseModel):
    """State of a document-intake run (the document itself is the run's task)."""

    model_config = ConfigDict(frozen=True)

    title: str = ""
    document_sha256: str | None = None
    chars: int = 0
    kind: str | None = None
    kind_evidence: list[str] = []
    supervision: Supervision | None = None
    problems: list[str] = []
    record: IntakeRecord | None = None


# -- helpers ---------------------------------------------------------------------------

def _text(ctx: Any) -> str:
    task = ctx.task
    if not isinstance(task, str):
        raise TypeError(f"document_intake needs the document text as the task, got {type(task).__name__}")
    return task


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _unique(items: list[Found], limit: int = 10) -> list[Found]:
    seen: dict[str, Found] = {}
    for item in items:
        seen.setdefault(item.value or item.text, item)
    return list(seen.values())[:limit]


# -- specialists (each: (subtask, bctx) -> structured output) ------------------------------

_ORG = re.compile(
    r"\b((?:[A-Z][A-Za-z0-9&'’.-]*\s){0,3}[A-Z][A-Za-z0-9&'’.-]*,?\s"
    r"(?:Inc|LLC|L\.L\.C|Ltd|Limited|B\.V|GmbH|Corp|Corporation|S\.A|N\.V|PBC)\b\.?)"
)
_ROLES = ("Customer", "Provider", "Licensee", "Licensor", "Developer", "Sponsor", "Vendor",
          "Supplier", "Subscriber", "Partner", "Controller", "Processor", "Member")


def parties(subtask: Subtask, bctx: BranchContext) -> Parties:
    """Organisations (``X, Inc.``) and capitalised party roles used at least three times."""
    text = rules.strip_markup(_text(bctx))
    scope = (subtask.input or {}).get("scope", "preamble")
    window = text[:PREAMBLE_CHARS] if scope == "preamble" else text
    orgs = list(dict.fromkeys(" ".join(m.group(1).split()).rstrip(",") for m in _ORG.finditer(window)))
    min_uses = 1 if scope == "preamble" else 3
    roles = [r for r in _ROLES if len(re.findall(rf"\b{r}s?\b", window)) >= min_uses]
    return Parties(scope=scope, organisations=orgs[:8], roles=roles)


_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
_DATE_PATTERNS = (
    (re.compile(rf"\b(?:{_MONTHS})\s+\d{{1,2}},\s+\d{{4}}\b"), "%B %d, %Y"),
    (re.compile(rf"\b\d{{1,2}}\s+(?:{_MONTHS})\s+\d{{4}}\b"), "%d %B %Y"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}\b"), "%Y-%m-%d"),
)


def dates(subtask: Subtask, bctx: BranchContext) -> Dates:
    """Calendar dates (three spellings), normalised to ISO, first ten distinct."""
    text = _text(bctx)
    found = []
    for pattern, fmt in _DATE_PATTERNS:
        for m in pattern.finditer(text):
            try:
                iso = datetime.strptime(" ".join(m.group(0).split()), fmt).date().isoformat()
            except ValueError:
                continue
            found.append((m.start(), Found(text=m.group(0), line=_line(text, m.start()), value=iso)))
    return Dates(dates=_unique([f for _, f in sorted(found, key=lambda x: x[0])]))


_MONEY = re.compile(
    r"(?:[$€£]\s?\d(?:[\d,]*\d)?(?:\.\d+)?(?:\s(?:million|thousand|billion))?"
    r"|\b(?:USD|EUR|GBP)\s?\d(?:[\d,]*\d)?(?:\.\d+)?)"
)
_PERCENT = re.compile(r"\b\d+(?:\.\d+)?\s?%|\b\d+(?:\.\d+)?\s(?:percent|per cent)\b")
_PERIOD = re.compile(r"\b(?:\d+|[a-z]+ \(\d+\))\s(?:business\s)?(?:days|months|years)\b", re.I)


def amounts(subtask: Subtask, bctx: BranchContext) -> Amounts:
    """Money amounts, percentages and periods (first ten distinct of each)."""
    text = _text(bctx)

    def grab(pattern: re.Pattern[str]) -> list[Found]:
        return _unique([Found(text=m.group(0), line=_line(text, m.start()),
                              value=re.sub(r"[^\d.]", "", m.group(0)) or None)
                        for m in pattern.finditer(text)])

    return Amounts(money=grab(_MONEY), percentages=grab(_PERCENT), periods=grab(_PERIOD))


def clauses(subtask: Subtask, bctx: BranchContext) -> Clauses:
    """Clause categories found, with the best finding of each (contract_review's rules)."""
    findings = rules.detect_clauses(rules.Document(_text(bctx)))
    best: dict[str, Any] = {}
    for c in findings:
        if c.category not in best or c.confidence > best[c.category].confidence:
            best[c.category] = c
    found = {cat: ClauseFinding(heading=c.heading, quote=c.quote, line=c.line, confidence=c.confidence)
             for cat, c in sorted(best.items(), key=lambda kv: rules.CATEGORIES.index(kv[0]))}
    return Clauses(found=found, missing=[c for c in rules.CATEGORIES if c not in found])


def metadata(subtask: Subtask, bctx: BranchContext) -> Metadata:
    """Title, size, section count and top-level headings."""
    text = _text(bctx)
    doc = rules.Document(text)
    depths = sorted({len(s.path) for s in doc.sections if s.path})
    # Under a single title heading, the top level is the one below it.
    level = depths[0] if depths else 0
    if sum(1 for s in doc.sections if len(s.path) == level) == 1 and len(depths) > 1:
        level = depths[1]
    top = [s.title for s in doc.sections if s.path and len(s.path) == level][:10]
    return Metadata(title=rules.first_heading(text) or "(untitled)", words=len(text.split()),
                    sections=max(0, len(doc.sections) - 1), top_headings=top,
                    sha256=hashlib.sha256(text.encode("utf-8")).hexdigest())


SPECIALISTS = {"parties": parties, "dates": dates, "amounts": amounts, "clauses": clauses,
               "metadata": metadata}
OUTPUT_MODELS = {"parties": Parties, "dates": Dates, "amounts": Amounts, "clauses": Clauses,
                 "metadata": Metadata}
for _fn in SPECIALISTS.values():
    _fn.agent_version = VERSION  # type: ignore[attr-defined]

PLANS = {
    "contract": ("parties", "dates", "amounts", "clauses", "metadata"),
    "terms": ("parties", "dates", "amounts", "clauses", "metadata"),
    "policy": ("dates", "clauses", "metadata"),
    "other": ("clauses", "metadata"),
}
REQUIRED = {"contract": ("parties", "clauses"), "terms": ("parties", "clauses")}

_INSTRUCTIONS = {
    "parties": "name the parties (organisations and defined roles) from the preamble",
    "dates": "list calendar dates, normalised to ISO 8601",
    "amounts": "list money amounts, percentages and periods",
    "clauses": "find the clause categories, with the best evidence of each",
    "metadata": "title, size, sections and top-level headings",
}


# -- the supervisor's decisions ----------------------------------------------------------

def plan(state: Any, ctx: StepContext) -> list[Subtask]:
    """Decompose by kind of document (``PLANS``)."""
    return [
        Subtask(id=name, specialist=name, instruction=_INSTRUCTIONS[name],
                input={"scope": "preamble"} if name == "parties" else None)
        for name in PLANS.get(state.kind or "other", PLANS["other"])
    ]


def review(result: SubtaskResult, state: Any, ctx: StepContext) -> Any:
    """Accept useful results; widen an empty preamble search once; drop the rest, saying why."""
    if result.status != "success":
        if result.subtask.parent is None:
            return Redelegate(result.subtask.instruction, reason=f"retry after {result.status}")
        return Drop(f"failed twice: {result.error}")
    out = result.output or {}
    if result.subtask.specialist == "parties" and not (out.get("organisations") or out.get("roles")):
        if out.get("scope") == "preamble":
            return Redelegate("search the whole document for the parties", input={"scope": "all"},
                              reason="no parties in the preamble; widening to the whole document")
        return Drop("no parties named anywhere in the document")
    if result.subtask.specialist == "clauses" and not out.get("found"):
        return Drop("no clause category recognised")
    return Accept()


def synthesize(state: Any, sup: Supervision, ctx: StepContext) -> dict[str, Any]:
    """The accepted result of each specialist (the latest, if re-delegated)."""
    by_specialist: dict[str, Any] = {}
    for r in sup.results:
        if r.verdict == "accepted":
            by_specialist[r.subtask.specialist] = r.output
    return by_specialist


# -- stages ------------------------------------------------------------------------------

def classify(state: Any, ctx: StepContext) -> dict[str, Any]:
    """Kind of document, from the same signals contract_review uses."""
    text = _text(ctx)
    if state.document_sha256 and hashlib.sha256(text.encode("utf-8")).hexdigest() != state.document_sha256:
        raise ValueError("the task text does not match document_sha256 in the state")
    kind, evidence = rules.classify(state.title, rules.Document(text))
    return {"kind": kind, "kind_evidence": list(evidence)}


def validate(state: Any, ctx: StepContext) -> dict[str, Any]:
    """The kind's required findings are present (``REQUIRED``); every specialist answered."""
    out = (state.supervision.output or {}) if state.supervision else {}
    problems = [f"{name} is required for a {state.kind} and was not found"
                for name in REQUIRED.get(state.kind or "", ()) if name not in out]
    if "metadata" not in out:
        problems.append("metadata is missing")
    return {"problems": problems}


def assemble(state: Any, ctx: StepContext) -> dict[str, Any]:
    """The structured record; ``complete`` only if nothing is missing and nothing failed validation."""
    sup = state.supervision
    out = sup.output or {}
    record = IntakeRecord(
        title=state.title, kind=state.kind or "other",
        parties=out.get("parties"), dates=(out.get("dates") or {}).get("dates", []),
        amounts=out.get("amounts"), clauses=out.get("clauses"), metadata=out.get("metadata"),
        missing=list(sup.missing), problems=list(state.problems),
        complete=sup.complete and not state.problems,
    )
    return {"record": record.model_dump(mode="json")}


for _fn in (classify, validate, assemble, plan, review, synthesize):
    _fn.agent_version = VERSION  # type: ignore[attr-defined]


def initial_state(task: Any) -> Intake:
    """Title (first heading or first line), hash and length of the document text.

    Raises:
        TypeError: the task is not text.
    """
    if not isinstance(task, str):
        raise TypeError(f"document_intake takes the document text as input, got {type(task).__name__}")
    first_line = next((ln for ln in (rules.strip_markup(x) for x in task.splitlines()) if ln), "")
    return Intake(title=(rules.first_heading(task) or first_line[:120]) or "(untitled)",
                  document_sha256=hashlib.sha256(task.encode("utf-8")).hexdigest(), chars=len(task))


# Every step has a per-attempt timeout (issue #9): a runaway step fails its run
# (outcome ``timeout``) instead of leaving it RUNNING. The specialists run the
# contract-review rules, linear in the text (bench/bench_long_document.py).
STEP_TIMEOUT = timedelta(seconds=120)

machine: Machine[Intake] = Machine(
    "document_intake", VERSION, Intake,
    steps=[replace(step, timeout=STEP_TIMEOUT) for step in [
        *pipeline([Stage("classify", classify, reads=["title", "document_sha256"],
                         writes=["kind", "kind_evidence"], description="kind of document")],
                  then="intake"),
        *supervisor(
            "intake",
            plan=plan,
            specialists=SPECIALISTS,
            review=review,
            synthesize=synthesize,
            into="supervision",
            next="validate",
            max_rounds=2,
            max_depth=1,
            max_concurrency=5,
            output_models=OUTPUT_MODELS,
            reads=["kind", "supervision"],
        ),
        *pipeline([
            Stage("validate", validate, reads=["kind", "supervision"], writes=["problems"],
                  description="the kind's required findings are present"),
            Stage("assemble", assemble, reads=["title", "kind", "supervision", "problems"],
                  writes=["record"], output=Assembled, description="the structured intake record"),
        ]),
    ]],
    initial=initial_state,
    description="Classify a document, delegate extraction to specialists, validate, assemble.",
)
