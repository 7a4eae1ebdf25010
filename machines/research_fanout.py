"""Reference machine: parallel research fan-out with aggregation and degradation.

The input is a question (plain text, or ``{"question": ...}``). Steps::

    plan -> research (fan-out) -> report -> DONE

* ``plan`` picks the search terms (a :func:`statecraft.patterns.pipeline` stage).
* ``research`` asks six offline sources at once (cap 4): three built-in
  knowledge bases, a search over ``machines/samples/*.md``, a ``flaky_index``
  that fails its first attempt (retried), and a ``slow_archive`` that never
  answers in time (timed out twice, then flagged). The completion policy is
  ``Deadline(600 ms, min_success=2)``: the run goes on with partial results,
  and fails only if fewer than two sources answered.
* ``report`` writes the answer from what came back and names the gaps.

Every source attempt is its own ``agent.called`` event; ``fanout.completed``
records the policy, why it stopped and each source's final status. Try::

    statecraft start machines/research_fanout.py --input machines/samples/research_question.txt
"""

# No ``from __future__ import annotations``: this file is loaded by path under
# a synthetic module name, and pydantic must resolve the annotations eagerly.

import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from statecraft.agents.base import StepContext
from statecraft.machine import Machine
from statecraft.patterns import (
    BranchContext,
    Deadline,
    FanOutResult,
    Stage,
    fan_out,
    pipeline,
)
from statecraft.policy import RetryPolicy

SAMPLES = Path(__file__).resolve().parent / "samples"

_STOP = frozenset(
    "a an and are as at be by can do does for from how i in is it of on or should "
    "that the this to we what when where which who why with our your you".split()
)


class Research(BaseModel):
    """State of a research run."""

    model_config = ConfigDict(frozen=True)

    question: str
    terms: list[str] = []
    findings: FanOutResult | None = None
    answer: str | None = None
    sources_used: list[str] = []
    gaps: list[str] = []


# -- sources (branches) -------------------------------------------------------------

GLOSSARY = {
    "idempotency": "Idempotency: repeating an operation has the same effect as doing it once; "
                   "payment APIs take an idempotency key to deduplicate retries.",
    "retry": "Retry: re-running a failed call after a delay, usually with exponential backoff "
             "and jitter so that clients do not retry in lockstep.",
    "backoff": "Exponential backoff: each retry waits longer (e.g. 1s, 2s, 4s), up to a cap.",
    "timeout": "Timeout: the longest a caller waits; a timed-out call may still have succeeded "
               "remotely, which is why retries need idempotency keys.",
    "audit": "Audit log: an append-only record of who did what and when, kept for reviewers.",
}

HANDBOOK = [
    "Never retry a non-idempotent call without an idempotency key: a timeout does not mean "
    "the payment failed.",
    "Cap retries (three to five attempts) and add jitter; unbounded retries turn an outage "
    "into an overload.",
    "Record every attempt with its outcome and latency so incidents can be reconstructed.",
    "Treat a 4xx response as permanent unless it is 408 or 429; retry 5xx and network errors.",
]

FAQ = {
    "payment": "Q: Can a retried payment charge twice? A: Not if each payment carries an "
               "idempotency key that the provider deduplicates for at least 24 hours.",
    "webhook": "Q: Should webhook handlers be idempotent? A: Yes; providers deliver at least once.",
    "approval": "Q: Who may approve large payments? A: Two finance approvers, never the requester.",
}


def _matches(text: str, terms: list[str]) -> bool:
    low = text.lower()
    return any(t in low for t in terms)


def glossary(query: Any, bctx: BranchContext) -> dict[str, Any]:
    """Built-in glossary: entries whose term or text mentions a search term."""
    hits = [v for k, v in GLOSSARY.items() if any(t.startswith(k[:5]) or k in t for t in query["terms"])]
    return {"source": "glossary", "passages": hits}


def handbook(query: Any, bctx: BranchContext) -> dict[str, Any]:
    """Built-in engineering handbook: rules mentioning a search term."""
    return {"source": "handbook", "passages": [p for p in HANDBOOK if _matches(p, query["terms"])]}


def faq(query: Any, bctx: BranchContext) -> dict[str, Any]:
    """Built-in FAQ: answers whose topic is a search term."""
    return {"source": "faq", "passages": [v for k, v in FAQ.items() if any(k in t for t in query["terms"])]}


def sample_documents(query: Any, bctx: BranchContext) -> dict[str, Any]:
    """Sentences of machines/samples/*.md that mention a search term (at most five)."""
    found: list[str] = []
    for path in sorted(SAMPLES.glob("*.md")):
        for sentence in re.split(r"(?<=[.!?])\s+", path.read_text(encoding="utf-8")):
            flat = " ".join(sentence.split())
            if 20 < len(flat) < 400 and _matches(flat, query["terms"]):
                found.append(f"{path.name}: {flat}")
            if len(found) >= 5:
                return {"source": "samples", "passages": found}
    return {"source": "samples", "passages": found}


def flaky_index(query: Any, bctx: BranchContext) -> dict[str, Any]:
    """A search index that fails its first attempt (a transient error), then answers."""
    if bctx.attempt == 1:
        raise ConnectionError("index shard unavailable (simulated transient failure)")
    return {"source": "index", "passages": [f"index: {len(query['terms'])} terms matched 3 documents"]}


def slow_archive(query: Any, bctx: BranchContext) -> dict[str, Any]:
    """A remote archive that takes 2 s: always over the 250 ms timeout.

    Waits on ``bctx.cancelled`` rather than sleeping, so an abandoned attempt
    ends as soon as the fan-out gives up on it.
    """
    bctx.cancelled.wait(2.0)
    return {"source": "archive", "passages": ["archive: nothing new"]}


for _fn in (glossary, handbook, faq, sample_documents, flaky_index, slow_archive):
    _fn.agent_version = "1"  # type: ignore[attr-defined]


# -- steps ---------------------------------------------------------------------------


def plan(state: Any, ctx: StepContext) -> dict[str, Any]:
    """Search terms: the question's content words (lower case, de-duplicated)."""
    words = re.findall(r"[a-z][a-z0-9-]+", state.question.lower())
    terms = list(dict.fromkeys(w for w in words if w not in _STOP and len(w) > 2))
    return {"terms": terms[:12]}


def queries(state: Any, ctx: StepContext) -> dict[str, Any]:
    """Every source gets the same query (and nothing else)."""
    query = {"question": state.question, "terms": list(state.terms)}
    return {name: query for name in SOURCES}


def report(state: Any, ctx: StepContext) -> dict[str, Any]:
    """The answer from the sources that answered; the gaps from those that did not."""
    findings = state.findings
    passages = [p for out in findings.outputs.values() for p in out["passages"]]
    used = sorted(k for k, out in findings.outputs.items() if out["passages"])
    gaps = [f"{k}: {r.status} ({r.error})" for k, r in findings.flagged.items()]
    answer = "\n".join(f"- {p}" for p in dict.fromkeys(passages)) or "No source had anything on this."
    if gaps:
        answer += "\n\nNot consulted (degraded): " + "; ".join(gaps)
    return {"answer": answer, "sources_used": used, "gaps": gaps}


SOURCES = {
    "glossary": glossary,
    "handbook": handbook,
    "faq": faq,
    "samples": sample_documents,
    "flaky_index": flaky_index,
    "slow_archive": slow_archive,
}


def initial_state(task: Any) -> Research:
    """Plain text is the question."""
    return Research(question=str(task or "").strip())


_plan, _report = pipeline([Stage("plan", plan, reads=["question"], writes=["terms"],
                                 description="choose search terms")],
                          then="research"), pipeline(
    [Stage("report", report, reads=["question", "findings"], writes=["answer", "sources_used", "gaps"],
           description="answer from what came back; name the gaps")])

# Every step has a per-attempt timeout (issue #9): a runaway step fails its run
# (outcome ``timeout``) instead of leaving it RUNNING. The fan-out itself
# ends by its 600 ms completion deadline; the other steps take milliseconds.
STEP_TIMEOUT = timedelta(seconds=30)

machine: Machine[Research] = Machine(
    "research_fanout", "1", Research,
    steps=[replace(step, timeout=STEP_TIMEOUT) for step in [
        *_plan,
        fan_out(
            "research",
            branches=SOURCES,
            inputs=queries,
            into="findings",
            next="report",
            max_concurrency=4,
            branch_timeout=timedelta(milliseconds=250),
            retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(milliseconds=20)),
            completion=Deadline(timedelta(milliseconds=600), min_success=2),
            reads=["question", "terms"],
        ),
        *_report,
    ]],
    initial=initial_state,
    description="Ask six sources at once, go on with what answers in time, report the gaps.",
)
