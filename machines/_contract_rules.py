"""Deterministic analysis behind the contract-review machine: rules, not guesses.

Loaded by ``machines/contract_review.py`` from the same folder (by path, like
the machine itself). Everything here is pure: a :class:`Document` is parsed
from the text once per agent call, and the functions return findings.

* :class:`Document` — the text, a markup-free copy mapped back to it
  character by character, its sections (heading path and offsets) and
  sentence boundaries. Headings: Markdown ``#``, HTML ``<hN>`` / header spans,
  bold lead-ins (``**7. Disclaimer.**``) and numbered run-in titles
  (``5.5 Disclaimer of Warranties. All aspects ...``).
* :data:`RULES` and :func:`detect_clauses` — per clause category, heading
  keywords and body patterns of legal phrasing, scored per section
  (see :class:`CategoryRules`).
* :func:`classify` — kind of document from weighted signals.
* :data:`RISK_RULES` and :func:`assess_risk` — the explicit risk rules.

Risk rules (``RISK_RULES`` below is the executable form of this table):

====  ========  ==============================  =============================================
id    severity  category                        fires when
====  ========  ==============================  =============================================
R1a   high      limitation_of_liability         liability is expressly unlimited / uncapped
R1b   medium    limitation_of_liability         liability exclusions protect one side only
R1c   medium    limitation_of_liability         a contract or terms has no liability clause
R2a   high      auto_renewal                    automatic renewal, no notice window stated
R2b   low       auto_renewal                    automatic renewal with a notice window
R3a   high      arbitration_dispute_resolution  mandatory (binding) arbitration
R3b   high      arbitration_dispute_resolution  class-action waiver
R3c   medium    arbitration_dispute_resolution  jury-trial waiver
R4a   medium    termination                     one party may terminate/suspend at will, no notice
R4b   medium    termination                     one party may change the terms at will, no notice
R5    medium    indemnification                 broad customer indemnity, nothing in return
R6    high      data_transfer_privacy           international transfer, no SCC-like safeguard
R7    medium    governing_law                   a contract or terms names no governing law
R8    low       warranty_disclaimer             service provided "AS IS" / warranties disclaimed
R9    low       payment_terms                   late-payment interest or non-refundable fees
====  ========  ==============================  =============================================

Why the analysis is shaped for long input (issue #9):

* **Linear work.** Every pattern runs once over the text, and everything done
  per match reads a bounded window: :meth:`Document.sentence` stops at
  :data:`SENTENCE_REACH` characters either side of the match when the text
  has no sentence break nearer (a flattened PDF, a page of minified HTML),
  instead of taking the whole document as "the sentence" and re-reading it
  for every match, which made risk assessment quadratic (1 MB: 299 s). The
  offset map and the markup scan are linear too (an unclosed ``<!--`` is
  searched for its end once, not once per ``<!--``).
* **Verdicts that do not depend on length.** The state keeps the
  :data:`MAX_FINDINGS_PER_CATEGORY` strongest findings per category (it is
  checkpointed after every step, so it must stay small), but
  :func:`assess_risk` judges every finding of :func:`detect_findings`: a
  no-notice auto-renewal clause outranked by twenty others still fires R2a.
* **Bounded input.** :func:`document_problem` refuses a document above
  :data:`MAX_DOCUMENT_CHARS` characters, or one with no text at all, before
  any analysis; the machine turns that into a one-line error.
"""

# No ``from __future__ import annotations``: this file is loaded by path under
# a synthetic module name, and pydantic must resolve the annotations eagerly.

import bisect
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field

CATEGORIES: "tuple[Category, ...]" = (
    "governing_law", "limitation_of_liability", "indemnification", "termination",
    "auto_renewal", "arbitration_dispute_resolution", "data_transfer_privacy",
    "payment_terms", "confidentiality", "assignment", "warranty_disclaimer",
)
Category = Literal[
    "governing_law", "limitation_of_liability", "indemnification", "termination",
    "auto_renewal", "arbitration_dispute_resolution", "data_transfer_privacy",
    "payment_terms", "confidentiality", "assignment", "warranty_disclaimer",
]
Kind = Literal["contract", "policy", "terms", "other"]
Severity = Literal["low", "medium", "high"]
Percent = Annotated[int, Field(ge=0, le=100)]
MAX_QUOTE = 300  # characters of text in a quote; markup inside it is not counted
MAX_QUOTE_SPAN = 1_000  # characters of the original a quote may span, markup included
MAX_FINDINGS_PER_CATEGORY = 3  # kept in the state; risk rules judge every finding
MAX_DOCUMENT_CHARS = 6_000_000  # the largest document reviewed (docs/contract_review.md, "Limits")
SENTENCE_REACH = 2_000  # characters a sentence may reach from its match when no break is nearer


# -- findings -----------------------------------------------------------------

class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Clause(_Frozen):
    """One clause finding; ``text[start:end] == quote`` in the run's task."""

    category: Category
    heading: str = Field(description="innermost heading of the section; '' before the first heading")
    heading_path: tuple[str, ...] = ()
    quote: str = Field(description="exact substring of the document: at most 300 characters of text "
                                   "(markup not counted), 1,000 in all")
    start: int = Field(ge=0, description="character offset of the quote (str index)")
    end: int = Field(ge=0)
    line: int = Field(ge=1, description="1-based line of the quote's start")
    rule: str = Field(description="the pattern whose match is quoted, e.g. governing_law.governed_by_laws")
    signals: tuple[str, ...] = Field(default=(), description="every signal that scored the section")
    confidence: Percent


class Risk(_Frozen):
    """One risk finding produced by a rule of ``RISK_RULES``."""

    rule_id: str
    severity: Severity
    category: Category
    title: str
    explanation: str
    quote: str | None = None
    start: int | None = None
    end: int | None = None
    line: int | None = None


# -- document model: markup-free view, headings, sentences ---------------------

_MARKUP = re.compile(
    r"<!--"  # an HTML comment's opening: _markup_spans finds where it ends
    r"|<[A-Za-z/][^<>\n]{0,300}>"  # HTML tags
    r"|\]\([^()\s]{0,2000}(?:\([^()\s]{0,2000}\)[^()\s]{0,2000})*\)|(?<![\w\]])\[(?=[^\[\]\n]{1,300}\]\()"  # link syntax
    r"|\*\*|__|(?<![\w*])[*_](?=\w)|(?<=\w)[*_](?![\w*])",  # emphasis markers
)
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
_HTML_HEADER = re.compile(
    r'<(?:h([1-6])|span class="head(?:er|ing)_?([1-6])"(?: id="([^"]{1,20})")?)[^<>]{0,300}>([^<\n]{1,200})</(?:h[1-6]|span)>'
)
# The title may hold inline HTML (``**<span id="8.1">Fees</span>.**``): its
# length is checked on the text without markup, so the raw match may be longer.
_BOLD_LEAD = re.compile(
    r"^[ \t>]*(?:[-*+][ \t]+|(\d+(?:\.\d+)*[.)])[ \t]+)?\*\*(?![\"“'‘])([^*\n]{2,300}?)\*\*[ \t]*\.?(?=[ \t]|$)", re.M
)
_BOLD_TITLE_MAX = 90
_QUOTE_MARKS = "\"“”'‘’"
_NUMBER = re.compile(r"(?:\d+(?:\.\d+)*\.?|[A-Z]\d*(?:[.-]\d+)*\.|\([a-z0-9]{1,4}\))\s")
_WORD = r"(?:[A-Z][\w’'&/-]*|of|and|or|the|to|for|on|in|by|a|an|with)"
_RUN_IN = re.compile(
    r"^[ \t]*(?:\*\*)?(\d+(?:\.\d+)*\.?|[A-Z]\d*(?:[.-]\d+)*\.|\([a-z0-9]{1,4}\))(?:\*\*)?[ \t]+"
    rf"([A-Z][\w’'&/-]*(?:[ \t]+{_WORD}){{0,7}})\.(?:[ \t]+(?=[A-Z“\"(])|[ \t]*$)",
    re.M,
)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"”’')\]]*[ \t]+(?=[\"“‘'(\[]?[A-Z0-9])|\n")
_LIST_MARKER = re.compile(r"(?:\d+(?:\.\d+)*\.?|\([a-z0-9]{1,4}\)|[a-z]\.)[ \t]+")
_ABBREVIATIONS = {"e.g", "i.e", "inc", "ltd", "co", "no", "nos", "sec", "u.s", "etc", "vs", "mr", "ms",
                  "dr", "st", "cf", "art", "para", "corp", "llc", "b.v", "s.a", "n.v", "u.k", "jr"}
# Markup a quote may take in at its edges, so that it opens or closes what it
# cuts through (``<span class="x">Customer</span> will ...``), not a dangling tag.
_OPENING_MARKUP = re.compile(r"(?:<[A-Za-z][^<>]*>|\*\*|__|[*_]|\[)+")
_CLOSING_MARKUP = re.compile(r"(?:</[A-Za-z][^<>]*>|\*\*|__|[*_]|\]\([^\s]*\))+")
_EDGE_MARKUP_MAX = 200
_WORD_CHAR = re.compile(r"\w")
_ANY_WORD = re.compile(r"[A-Za-z][\w’'-]*")
_TITLE_WORD = re.compile(r"[A-Z][a-z][\w’'-]*")  # Title Case; ALL CAPS is emphasis, not a name


def _markup_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every markup run of ``text``, in order, never overlapping.

    A comment runs to the first ``-->`` after its ``<!--``; an unclosed
    ``<!--`` is text. Once no ``-->`` is left, later openings are not searched
    again: a regex ``<!--.*?-->`` re-reads the rest of the text for each of
    them, which is quadratic on a text with many unclosed comments.
    """
    pos, closable = 0, True
    while (m := _MARKUP.search(text, pos)) is not None:
        if m.group(0) == "<!--":
            close = text.find("-->", m.end()) if closable else -1
            if close == -1:
                closable = False
                pos = m.end()
                continue
            yield m.start(), close + 3
            pos = close + 3
        else:
            yield m.span()
            pos = m.end()


def first_heading(text: str) -> str | None:
    """The first Markdown (``#``) heading of ``text``, without markup; ``None`` if none."""
    m = _ATX.search(text)
    return strip_markup(m.group(2)) if m else None


def strip_markup(text: str) -> str:
    """Text without HTML tags, link targets and emphasis markers, whitespace collapsed."""
    parts, pos = [], 0
    for a, b in _markup_spans(text):
        parts.append(text[pos:a])
        pos = b
    parts.append(text[pos:])
    return " ".join("".join(parts).split())


def _has_text(text: str) -> bool:
    """Whether any word character lies outside markup; stops at the first one."""
    pos = 0
    for a, b in _markup_spans(text):
        if _WORD_CHAR.search(text, pos, a):
            return True
        pos = b
    return _WORD_CHAR.search(text, pos) is not None


@dataclass(frozen=True)
class DocumentProblem:
    """Why a text cannot be reviewed; ``code`` is the run's ``error_code``."""

    code: Literal["empty_document", "document_too_large"]
    message: str


def document_problem(text: str) -> DocumentProblem | None:
    """Whether ``text`` can be reviewed at all: not empty, not above :data:`MAX_DOCUMENT_CHARS`.

    Args:
        text: the document as the run received it.

    Returns:
        ``None`` when it can be reviewed, else the problem. Reads at most the
        whole text once (the size check comes first, so an oversized text is
        refused without being scanned).
    """
    if len(text) > MAX_DOCUMENT_CHARS:
        return DocumentProblem(
            "document_too_large",
            f"the document has {len(text):,} characters; contract_review reviews at most "
            f"{MAX_DOCUMENT_CHARS:,} (MAX_DOCUMENT_CHARS): split it into parts",
        )
    if not _has_text(text):
        return DocumentProblem(
            "empty_document",
            "the document is empty: it has no text to review (only whitespace or markup)",
        )
    return None


@dataclass(frozen=True)
class Section:
    title: str  # cleaned heading title; '' for the preamble
    path: tuple[str, ...]
    start: int  # original offsets: heading start .. next heading start
    body_start: int
    end: int


class Document:
    """A parsed document: the original text, a markup-free copy mapped back to
    it, its sections and its sentences. Pure; built once per agent call, in
    time linear in the text."""

    def __init__(self, text: str) -> None:
        self.text = text
        kept: list[tuple[int, int]] = []  # original spans of the text between markup runs
        pos = 0
        for a, b in _markup_spans(text):
            if a > pos:
                kept.append((pos, a))
            pos = b
        if pos < len(text):
            kept.append((pos, len(text)))
        self.clean = "".join(text[a:b] for a, b in kept)
        # One entry per kept segment, not one per character: a 5 MB text would
        # otherwise hold five million ints to map offsets.
        self._seg_clean: list[int] = []  # clean offset where each segment starts
        self._seg_orig: list[int] = []  # original offset where it starts
        self._seg_orig_end: list[int] = []
        offset = 0
        for a, b in kept:
            self._seg_clean.append(offset)
            self._seg_orig.append(a)
            self._seg_orig_end.append(b)
            offset += b - a
        self._newlines = [m.start() for m in re.finditer("\n", text)]
        self.sections = self._sections()
        self._section_starts = [s.start for s in self.sections]
        self._breaks = [(m.start(), m.end()) for m in _SENTENCE_BREAK.finditer(self.clean)
                        if not self._abbreviation_before(m.start())]
        self._break_starts = [b[0] for b in self._breaks]

    # coordinates
    def _orig(self, index: int) -> int:
        """Original offset of the clean character at ``index``."""
        k = bisect.bisect_right(self._seg_clean, index) - 1
        return self._seg_orig[k] + (index - self._seg_clean[k])

    def to_clean(self, offset: int) -> int:
        """Clean index of the first clean character at or after original ``offset``."""
        k = bisect.bisect_right(self._seg_orig, offset) - 1
        if k < 0:
            return 0
        if offset < self._seg_orig_end[k]:
            return self._seg_clean[k] + (offset - self._seg_orig[k])
        return self._seg_clean[k] + (self._seg_orig_end[k] - self._seg_orig[k])

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Clean span -> original span (end exclusive)."""
        return self._orig(start), self._orig(end - 1) + 1

    def line_of(self, offset: int) -> int:
        return bisect.bisect_left(self._newlines, offset) + 1

    def section_at(self, offset: int) -> Section:
        return self.sections[max(0, bisect.bisect_right(self._section_starts, offset) - 1)]

    # structure
    def _line_start(self, offset: int) -> int:
        i = bisect.bisect_left(self._newlines, offset)
        return self._newlines[i - 1] + 1 if i else 0

    def _headings(self) -> list[tuple[int, int, int, str]]:
        """(start, body_start, level, title) for every heading, in text order."""
        found: dict[int, tuple[int, int, int, str]] = {}
        for m in _ATX.finditer(self.text):
            found[m.start()] = (m.start(), m.end(), len(m.group(1)), strip_markup(m.group(2)))
        for m in _HTML_HEADER.finditer(self.text):
            line_start = self._line_start(m.start())
            title = strip_markup(m.group(4))
            if m.group(3):
                title = f"{m.group(3)} {title}"
            found.setdefault(line_start, (line_start, m.end(), int(m.group(1) or m.group(2)), title))
        for m in _BOLD_LEAD.finditer(self.text):
            title = strip_markup(m.group(2))
            if (m.start() in found or title.endswith(":") or not re.search(r"[A-Za-z]{2}", title)
                    or len(title.split()) > 12 or len(title) > _BOLD_TITLE_MAX
                    or title[0] in _QUOTE_MARKS  # "**<span>“Affiliate”</span>**": a defined term
                    or self._continues_a_sentence(m.end())):
                continue
            if m.group(1):  # "8. **Disclaimer**.": the list number belongs to the title
                title = f"{m.group(1)} {title}"
            number = _NUMBER.match(title)
            depth = number.group(0).strip(" .").count(".") if number else 2
            found[m.start()] = (m.start(), m.end(), 7 + depth, title)
        for m in _RUN_IN.finditer(self.text):
            if m.start() not in found:
                marker = m.group(1).strip("*")
                title = f"{marker} {strip_markup(m.group(2))}"
                found[m.start()] = (m.start(), m.end(2) + 1, 7 + marker.strip(".").count("."), title)
        return [found[k] for k in sorted(found)]

    def _continues_a_sentence(self, offset: int) -> bool:
        """Whether the line goes on, after bold text ending at ``offset``, as the same sentence.

        ``* **GitHub Enterprise Cloud** users may ...`` starts a body in bold; a
        heading is alone on its line or followed by a new sentence
        (``**Fees.** Customer will pay ...``, ``**Payment Terms** Our pricing ...``).
        """
        rest = strip_markup(self.text[offset:offset + 80].split("\n", 1)[0])
        return bool(rest) and (rest[0].islower() or rest[0] in ",;)")

    def _sections(self) -> list[Section]:
        headings = self._headings()
        sections = [Section("", (), 0, 0, headings[0][0] if headings else len(self.text))]
        stack: list[tuple[int, str]] = []
        for i, (start, body_start, level, title) in enumerate(headings):
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title.rstrip(".:").strip()))
            end = headings[i + 1][0] if i + 1 < len(headings) else len(self.text)
            sections.append(Section(stack[-1][1], tuple(t for _, t in stack), start, body_start, end))
        return sections

    def _abbreviation_before(self, pos: int) -> bool:
        if pos == 0 or self.clean[pos - 1] != ".":
            return False
        word = re.search(r"([\w.]+)\.$", self.clean[max(0, pos - 12):pos])
        return word is not None and (word.group(1).lower() in _ABBREVIATIONS or len(word.group(1)) == 1)

    # evidence
    def sentence(self, start: int, end: int, floor: int = 0) -> tuple[int, int]:
        """The sentence around clean span [start, end), in clean coordinates.

        Never more than :data:`SENTENCE_REACH` characters before ``start`` or
        after ``end`` (cut at a space), so whatever reads a match's sentence
        does bounded work per match even where the text has no sentence break.
        """
        i = bisect.bisect_right(self._break_starts, start) - 1
        s_start = self._breaks[i][1] if i >= 0 else 0
        if s_start > start:  # the match begins inside a break's whitespace
            s_start = start
        j = bisect.bisect_left(self._break_starts, end)
        s_end = self._breaks[j][0] if j < len(self._breaks) else len(self.clean)
        if start - s_start > SENTENCE_REACH:
            space = self.clean.find(" ", start - SENTENCE_REACH, start)
            s_start = space + 1 if space != -1 else start - SENTENCE_REACH
        if s_end - end > SENTENCE_REACH:
            space = self.clean.rfind(" ", end, end + SENTENCE_REACH)
            s_end = space if space != -1 else end + SENTENCE_REACH
        return max(s_start, floor), max(s_end, end)

    def names_a_term(self, start: int, end: int) -> bool:
        """Whether clean span [start, end) is part of a capitalised name, such as a defined term.

        "Uncapped Claims" or "Unlimited Liability Amount" name a kind of claim
        or amount; "uncapped liability" says something. A name: every word of
        the span is in Title Case, and the span has two words, or the next
        word is in Title Case too, or it opens with a quotation mark.
        """
        words = _ANY_WORD.findall(self.clean[start:end])
        if not words or not all(_TITLE_WORD.fullmatch(w) for w in words):
            return False
        following = re.match(r"[ \t]+([A-Za-z][\w’'-]*)", self.clean[end:end + 40])
        quoted = self.clean[max(0, start - 1):start] in ("\"", "“")
        return len(words) >= 2 or quoted or bool(following and _TITLE_WORD.fullmatch(following.group(1)))

    def _excess(self, start: int, end: int) -> int:
        """How far clean span [start, end) is over a quote's budget (<= 0: within it)."""
        o_start, o_end = self.to_original(start, end)
        return max(end - start - MAX_QUOTE, o_end - o_start - MAX_QUOTE_SPAN)

    def quote(self, start: int, end: int, floor: int = 0) -> tuple[str, int, int]:
        """An exact quote of the sentence around clean span [start, end).

        The quote holds at most :data:`MAX_QUOTE` characters of text; markup
        inside it (inline HTML, link targets, emphasis) is not counted, so an
        HTML-heavy sentence is not cut short of its operative words, but the
        whole quote spans at most :data:`MAX_QUOTE_SPAN` characters.

        Returns:
            (quote, original start, original end) with ``text[start:end] == quote``.
        """
        s, e = self.sentence(start, end, floor)
        while s < e and self.clean[s] in " \t\n*+->|#":
            s += 1
        marker = _LIST_MARKER.match(self.clean, s, e)
        if marker and marker.end() <= start:
            s = marker.end()  # "9.1 ", "(b) ": numbering, not part of the sentence
        while e > s and self.clean[e - 1] in " \t\n|":
            e -= 1
        if e <= s:
            s, e = start, end
        while (excess := self._excess(s, e)) > 0:
            # Shrink from the side farther from the match, at a word boundary.
            if (start - s) >= (e - end) and s < start:
                nxt = self.clean.find(" ", s + max(1, excess // 2), start)
                s = nxt + 1 if nxt != -1 else start
            elif e > end:
                prv = self.clean.rfind(" ", end, e - max(1, excess // 2))
                e = prv if prv != -1 else end
            else:  # the match itself is too long: keep its head
                e = s + 1
                while e < end and self._excess(s, e + 1) <= 0:
                    e += 1
                break
        o_start, o_end = self._with_edge_markup(*self.to_original(s, e))
        return self.text[o_start:o_end].strip(), *self._trimmed(o_start, o_end)

    def _with_edge_markup(self, o_start: int, o_end: int) -> tuple[int, int]:
        """Widen an original span over the markup that opens its first word and closes its last."""
        k = bisect.bisect_right(self._seg_orig, o_start) - 1
        if self._seg_orig[k] == o_start:
            gap_start = self._seg_orig_end[k - 1] if k > 0 else 0
            gap = self.text[gap_start:o_start]
            if (gap and len(gap) <= _EDGE_MARKUP_MAX and _OPENING_MARKUP.fullmatch(gap)
                    and o_end - gap_start <= MAX_QUOTE_SPAN):
                o_start = gap_start
        k = bisect.bisect_right(self._seg_orig, o_end - 1) - 1
        if self._seg_orig_end[k] == o_end:
            gap_end = self._seg_orig[k + 1] if k + 1 < len(self._seg_orig) else len(self.text)
            gap = self.text[o_end:gap_end]
            if (gap and len(gap) <= _EDGE_MARKUP_MAX and _CLOSING_MARKUP.fullmatch(gap)
                    and gap_end - o_start <= MAX_QUOTE_SPAN):
                o_end = gap_end
        return o_start, o_end

    def _trimmed(self, o_start: int, o_end: int) -> tuple[int, int]:
        chunk = self.text[o_start:o_end]
        lead = len(chunk) - len(chunk.lstrip())
        return o_start + lead, o_start + len(chunk.rstrip())


# -- clause patterns ----------------------------------------------------------

@dataclass(frozen=True)
class CategoryRules:
    """How one category is recognised. Scores per section: own heading match 2,
    ancestor heading 1, each distinct strong pattern 3, moderate pattern 2,
    a cue word 1 (counted only under a matching heading). A section is a
    finding at score >= 3 with at least one body match."""

    heading: str
    patterns: tuple[tuple[str, int, str], ...]  # (name, weight, regex)
    cue: str
    reject: str | None = None  # a sentence matching this is not evidence (negations)


_CUSTOMER = r"(?:you|customer|licensee|subscriber|user|client|developer|partner|sponsor|attendee|education\s+partner)"
_EVERY = r"(?:either|neither|each|both|any)\s+part(?:y|ies)"

RULES: dict[str, CategoryRules] = {
    "governing_law": CategoryRules(
        r"\b(?:governing|applicable|choice\s+of)\s+laws?\b|\blaw\s+and\s+(?:venue|jurisdiction|forum)\b",
        (("governed_by_laws", 3, r"\b(?:governed|construed|interpreted|enforced)\b[^.;]{0,80}?\b(?:in\s+accordance\s+with|under|by),?\s+(?:the\s+)?(?:\w+\s+){0,2}laws?\s+of\b"),
         ("laws_of_x_govern", 3, r"\blaws?\s+of\s+(?:the\s+)?(?:state\s+of\s+)?[A-Z][\w .]{1,40}?\s+(?:will|shall)\s+govern"),
         ("named_law_governs", 3, r"(?-i:\b[A-Z][a-z]+(?:\s[A-Z][a-z]+)?\s+law)\s+(?:will\s+|shall\s+)?governs?\b"),
         ("conflict_of_laws", 2, r"\b(?:without\s+(?:regard|reference|giving\s+effect)\s+to|excluding)\b[^.]{0,40}\b(?:conflicts?|choice)[\s-]+of[\s-]+laws?")),
        r"\blaws?\s+of\b|\bjurisdiction\b|\bgovern",
    ),
    "limitation_of_liability": CategoryRules(
        r"\blimitation(?:s)?\s+(?:of|on)\s+liability\b|\bliability\b|\bdamages\b",
        (("in_no_event_liable", 3, r"\b(?:in\s+no\s+event|under\s+no\s+circumstances?)\b[^.]{0,200}?\b(?:liable|liability|responsible)\b"),
         ("not_liable_for_damages", 3, r"\bnot\s+(?:be\s+)?liable\b[^.]{0,160}?\b(?:indirect|incidental|special|consequential|punitive|exemplary|lost\s+profits?|loss\s+of\s+(?:profits?|data|revenue))"),
         ("liability_cap", 3, r"\b(?:aggregate|total|maximum|entire|cumulative)\s+liability\b[^.]{0,250}?\b(?:exceed|limited\s+to|greater\s+of|lesser\s+of)"),
         ("damages_waiver", 2, r"\bwaive[sd]?\b[^.]{0,80}\b(?:consequential|indirect|punitive|special)\s+damages"),
         ("release_of_claims", 2, r"\breleases?\b[^.]{0,80}\bfrom\s+(?:any\s+and\s+)?(?:all\s+)?(?:claims|liabilit)")),
        r"\bliab(?:le|ility)\b|\bdamages\b",
    ),
    "indemnification": CategoryRules(
        r"\bindemni|\bdefen[cs]e\s+of\s+(?:third[\s-]party\s+)?claims\b|\bhold\s+harmless\b",
        (("indemnify_defend", 3, r"\b(?:indemnify|defend)\b[^.]{0,40}?\b(?:defend|indemnify|hold\s+(?:\w+\s+){0,4}harmless)\b"),
         ("hold_harmless", 3, r"\bhold\s+(?:\w+\s+){0,4}harmless\b"),
         ("will_indemnify", 3, r"\b(?:shall|will|agrees?\s+to|must)\s+(?:\w+\s+){0,2}indemnify\b"),
         ("defend_claims", 2, r"\bdefend\b[^.]{0,80}\b(?:against|from)\b[^.]{0,40}\b(?:claims?|suits?|actions?)")),
        r"\bindemni|\bharmless\b",
        reject=r"\b(?:no|not|never|cannot|can[’\']t|won[’\']t)\b[^.]{0,60}\b(?:defend|indemnif)",
    ),
    "termination": CategoryRules(
        r"\bterminat|\bcancell?ation\b",
        (("may_terminate", 3, r"\bmay\s+(?:immediately\s+)?(?:suspend\s+or\s+)?terminat\w*\b[^.]{0,80}?\b(?:agreement|terms|order|subscription|account|access|participation|license|relationship|contract|services?)\b|\bmay\s+terminate\s+(?:this|the)\s+(?-i:[A-Z]{2,6})\b"),
         ("terminate_agreement", 3, r"\bterminat\w*\s+(?:this|these|the)\s+(?:agreement|terms|contract|order\s+form|dpa|addendum)\b"),
         ("for_convenience_or_cause", 3, r"\bterminat\w*\b[^.]{0,60}\b(?:for\s+convenience|for\s+cause|material(?:ly)?\s+breach|without\s+cause|upon\s+(?:\w+\s+){0,2}days)"),
         ("effect_of_termination", 2, r"\b(?:upon|after|following|on)\s+(?:any\s+)?(?:the\s+)?(?:termination|expiration|expiry|cancellation)\b"),
         ("cancel_account", 2, r"\bcancel\s+(?:your\s+|its\s+)?(?:account|subscription)\b")),
        r"\bterminat|\bcancel",
    ),
    "auto_renewal": CategoryRules(
        r"\b(?:auto(?:matic)?[\s-]?)?renewal\b",
        (("automatic_renewal", 3, r"\b(?:automatically|auto[\s-]?)\s*renew\w*|\brenew\w*\s+automatically\b"),
         ("successive_terms", 3, r"\brenew\w*\s+for\s+(?:\w+\s+)?(?:successive|additional|subsequent|further)\b"),
         ("evergreen", 2, r"\bevergreen\b"),
         ("non_renewal_notice", 2, r"\bnotice\s+of\s+non-?renewal\b|\bnon-?renewal\s+notice\b")),
        r"\brenew",
    ),
    "arbitration_dispute_resolution": CategoryRules(
        r"\barbitrat|\bmediation\b|\bdispute\s+resolution\b|\bresol\w+\s+(?:of\s+)?disputes\b|^\W*(?:[\w.]+\s+)?disputes?\W*$",
        (("binding_arbitration", 3, r"\b(?:binding|mandatory|final)\s+(?:and\s+binding\s+)?arbitration\b"),
         ("resolved_by_arbitration", 3, r"\b(?:resolved|settled|determined|submitted)\s+(?:\w+\s+){0,3}(?:by|to|through|in)\s+(?:\w+\s+){0,3}arbitration\b"),
         ("class_action_waiver", 3, r"\bclass[\s-]action\b[^.]{0,60}\bwaive|\bwaive\w*\b[^.]{0,80}\bclass[\s-](?:action|arbitration|wide)"),
         ("arbitration_rules", 2, r"(?-i:\b(?:AAA|JAMS|ICC|LCIA|ICDR|UNCITRAL)\b)|\barbitration\s+rules\b"),
         ("mediation", 2, r"\bmediat(?:ion|or)\b"),
         ("dispute_resolution", 2, r"\bdispute\s+resolution\b"),
         ("jury_waiver", 2, r"\bwaive\w*\b[^.]{0,40}\bjury\s+trial|\bjury\s+trial\s+waiver")),
        r"\barbitrat|\bmediat",
    ),
    "data_transfer_privacy": CategoryRules(
        r"\bprivacy\b|\bpersonal\s+(?:data|information)\b|\bdata\s+(?:protection|transfers?|processing|security|retention|collection|location|usage)\b|\bcookies?\b|\bsub-?processors?\b|\bgdpr\b|\bcross-border\b",
        (("personal_data", 3, r"\bpersonal(?:ly)?\s+(?:data|information|identifiable)\b"),
         ("standard_contractual_clauses", 3, r"\bstandard\s+contractual\s+clauses\b|(?-i:\bSCCs?\b)"),
         ("international_transfer", 3, r"\b(?:international|cross-border|transborder)\s+(?:data\s+)?transfers?\b|\btransfer\w*\s+(?:of\s+)?(?:personal\s+)?data\b[^.]{0,60}\b(?:outside|countr|abroad|international)"),
         ("data_protection_law", 3, r"(?-i:\bGDPR\b|\bCCPA\b)|\bgeneral\s+data\s+protection\s+regulation\b|\bdata\s+protection\s+(?:laws?|legislation|agreement|addendum|requirements)\b"),
         ("privacy_statement", 2, r"\bprivacy\s+(?:statement|policy|notice|requirements)\b"),
         ("cookies", 2, r"\bcookies?\b"),
         ("subprocessors", 2, r"\bsub-?processors?\b")),
        r"\bdata\b|\bprivacy\b",
    ),
    "payment_terms": CategoryRules(
        r"\bpayments?\b|\bfees?\b|\bbilling\b|\bpric(?:e|es|ing)\b|\binvoic|\bfinancial\s+terms\b|\btaxes\b|\brefunds?\b",
        (("due_within_days", 3, r"\b(?:due|payable|paid)\b[^.]{0,60}?\bwithin\s+(?:\w+\s+)?(?:\(\d+\)\s+)?(?:calendar\s+)?days\b"),
         ("invoice", 2, r"\binvoic(?:e[sd]?|ing)\b"),
         ("pay_fees", 3, r"\b(?:will|shall|must|agrees?\s+to|responsible\s+for\s+paying)\s+(?:promptly\s+)?pay\s+(?:all\s+|any\s+|the\s+)?(?:applicable\s+)?(?:fees|charges|amounts\s+due|subscription\s+fees|prices?)\b"),
         ("late_payment", 3, r"\blate\s+(?:payment|fees?|charges?)\b|\binterest\s+(?:at|of)\s+(?:the\s+)?(?:rate|lesser|\d)"),
         ("billing_basis", 2, r"\bbill(?:ed|ing)\s+(?:\w+\s+){0,2}(?:monthly|annually|yearly|in\s+advance|in\s+arrears|on\s+a\s+\w+\s+basis)"),
         ("fees_exclusive_of_taxes", 3, r"\b(?:fees|prices?|amounts)\b[^.]{0,60}\b(?:exclusive\s+of|do\s+not\s+include|excluding|plus)\s+(?:all\s+|any\s+)?(?:applicable\s+)?taxes\b"),
         ("non_refundable", 2, r"\bnon-?refundable\b|\bno\s+refunds?\b")),
        r"\bfees?\b|\bpay(?:ment|able|s)?\b|\bprice|\bcharge",
    ),
    "confidentiality": CategoryRules(
        r"\bconfidential(?:ity)?\b|\bnon-?disclosure\b",
        (("confidential_information", 2, r"\bconfidential\s+information\b"),
         ("keep_confidential", 3, r"\b(?:keep|hold|maintain|treat)\w*\b[^.]{0,60}\b(?:in\s+(?:strict\s+)?confidence|(?:as\s+)?(?:strictly\s+)?confidential(?!\s+information))\b"),
         ("confidentiality_obligation", 3, r"\b(?:obligations?|duty|duties|commitments?|bound)\s+(?:of|to|by)\s+(?:\w+\s+){0,2}confidential(?:ity)?\b|\bconfidentiality\s+(?:obligations?|agreements?|commitments?|terms)\b"),
         ("non_disclosure", 2, r"\b(?:not|never)\s+(?:to\s+)?(?:disclose|divulge)\b|\bnon-?disclosure\b")),
        r"\bconfidential|\bdisclos",
    ),
    "assignment": CategoryRules(
        r"\bassign(?:ment|ability)?\b|\bnon-?assign|\btransfer\s+of\s+(?:rights|the\s+agreement)\b",
        (("may_not_assign", 3, r"\b(?:may|shall|will|must)\s+not\b[^.]{0,40}?\b(?:assign|transfer|delegate)\w*\s+(?:\w+\s+){0,6}?(?:(?:this|these|the)\s+(?:agreement|terms)|(?:any|its|their|your|all)\s+(?:of\s+)?(?:its\s+|their\s+|your\s+)?(?:rights|obligations))\b"),
         ("assign_without_consent", 3, r"\bassign\w*\b[^.]{0,150}\bwithout\b[^.]{0,30}\bconsent\b"),
         ("assign_agreement", 3, r"\b(?:assign|transfer)\w*\s+(?:\w+\s+(?:or\s+)?){0,3}(?:this|these|the)\s+(?:agreement|terms)\b|\b(?:assign|transfer)\s+(?:any\s+of\s+)?(?:its|their|your)\s+rights\b"),
         ("successors_and_assigns", 2, r"\bsuccessors\s+and\s+(?:permitted\s+)?assigns\b"),
         ("change_of_control", 2, r"\bchange\s+of\s+control\b|\b(?:merger|acquisition|reorganization)\b")),
        r"\bassign|\btransfer",
    ),
    "warranty_disclaimer": CategoryRules(
        r"\bdisclaim|\bno\s+warrant|\bas[\s-]is\b|\bwithout\s+warrant",
        (("as_is", 3, r"(?-i:\bAS[\s-]IS\b)|[\"“'‘]as[\s-]is\b|\b(?:provided|offered|made\s+available|supplied)\s+(?:to\s+you\s+)?(?:on\s+an?\s+)?[\"“'‘]?as[\s-]is\b"),
         ("disclaims_warranties", 3, r"\bdisclaim\w*\b[^.]{0,80}\b(?:warrant(?:y|ies)|merchantability|conditions)\b"),
         ("no_warranty", 3, r"\b(?:without|makes?\s+no|gives?\s+no|provides?\s+no|no)\s+(?:\w+\s+){0,3}warrant(?:y|ies)\b"),
         ("merchantability", 2, r"\bmerchantability\b|\bfitness\s+for\s+a\s+particular\s+purpose\b|\bnon-?infringement\b"),
         ("with_all_faults", 2, r"\bwith\s+all\s+faults\b|\bas\s+available\b")),
        r"\bwarrant",
    ),
}
_COMPILED = {
    c: (re.compile(r.heading, re.I),
        tuple((f"{c}.{n}", w, re.compile(p, re.I)) for n, w, p in r.patterns),
        re.compile(r.cue, re.I),
        re.compile(r.reject, re.I) if r.reject else None)
    for c, r in RULES.items()
}


_CROSS_REFERENCE = re.compile(r"\b(?:sections?|clauses?|§)\s*[\w.()-]*\s*\([^()]*$", re.I)


def detect_findings(doc: Document) -> dict[str, list[Clause]]:
    """Every finding: each section that scores for a category, strongest first.

    Args:
        doc: the parsed document.

    Returns:
        Category -> its findings, ordered by score, then own-heading match,
        then position. Every category of :data:`CATEGORIES` is a key. Pure;
        linear in the text (each pattern runs once; each match reads a
        bounded window).
    """
    by_section: dict[tuple[str, int], dict[str, Any]] = {}
    for category, (heading_re, patterns, cue_re, reject_re) in _COMPILED.items():
        for name, weight, regex in (*patterns, (f"{category}.cue", 1, cue_re)):
            for m in regex.finditer(doc.clean):
                section = doc.section_at(doc.to_original(m.start(), m.end())[0])
                if doc.to_clean(section.body_start) > m.start():
                    continue  # inside the heading itself: scored as a heading
                if reject_re and reject_re.search(doc.clean, *doc.sentence(m.start(), m.end())):
                    continue
                if _CROSS_REFERENCE.search(doc.clean, max(0, m.start() - 60), m.start()):
                    continue  # "Section 7 (Disclaimer of Warranties)" names a clause, it is not one
                hit = by_section.setdefault((category, section.start), {"section": section, "hits": {}})
                hit["hits"].setdefault(name, (weight, m.start(), m.end()))
    candidates: dict[str, list[tuple[int, int, Clause]]] = {c: [] for c in CATEGORIES}
    for (category, _), entry in by_section.items():
        sec: Section = entry["section"]
        heading_re = _COMPILED[category][0]
        own = bool(sec.title and heading_re.search(sec.title))
        ancestor = any(heading_re.search(t) for t in sec.path[:-1])
        hits: dict[str, tuple[int, int, int]] = entry["hits"]
        signals = (["heading"] if own else []) + (["ancestor_heading"] if ancestor else [])
        score = 2 * own + ancestor
        for name, (weight, _, _) in hits.items():
            if weight > 1:
                score += weight
                signals.append(name)
        if (own or ancestor) and f"{category}.cue" in hits:
            score += 1
            signals.append(f"{category}.cue")
        body_hits = [(-w, s, e, n) for n, (w, s, e) in hits.items() if w > 1 or own or ancestor]
        if score < 3 or not body_hits:
            continue
        _, start, end, rule = min(body_hits)
        quote, o_start, o_end = doc.quote(start, end, floor=doc.to_clean(sec.body_start))
        candidates[category].append((-score, -own, Clause(
            category=cast(Category, category), heading=sec.title, heading_path=sec.path, quote=quote,
            start=o_start, end=o_end, line=doc.line_of(o_start), rule=rule,
            signals=tuple(signals), confidence=min(95, 30 + 10 * score),
        )))
    return {category: [c for *_, c in sorted(candidates[category], key=lambda t: (t[0], t[1], t[2].start))]
            for category in CATEGORIES}


def detect_clauses(doc: Document, findings: dict[str, list[Clause]] | None = None) -> list[Clause]:
    """The strongest :data:`MAX_FINDINGS_PER_CATEGORY` findings per category, in text order per category.

    Args:
        doc: the parsed document.
        findings: :func:`detect_findings` of ``doc``, if already computed.

    Returns:
        What the state keeps: a bounded list, whatever the document's length.
    """
    ranked = detect_findings(doc) if findings is None else findings
    kept: list[Clause] = []
    for category in CATEGORIES:
        kept.extend(sorted(ranked[category][:MAX_FINDINGS_PER_CATEGORY], key=lambda c: c.start))
    return kept


# -- classification -------------------------------------------------------------

# (kind, signal, regex, where): "title" signals count 6 in the title only;
# "all" signals count 6 in the title, 2 in the opening, and 1 per occurrence
# in the body (at most 5).
_KIND_SIGNALS: tuple[tuple[str, str, str, str], ...] = (
    ("contract", "agreement", r"\bagreements?\b", "all"),
    ("contract", "addendum", r"\baddendum\b", "all"),
    ("contract", "contract", r"\bcontracts?\b", "title"),
    ("contract", "the parties", r"\b(?:the|both|each|either|neither)\s+part(?:y|ies)\b", "all"),
    ("contract", "enter into", r"\benter(?:s|ed|ing)?\s+into\b", "all"),
    ("contract", "order form", r"\border\s+forms?\b", "all"),
    ("terms", "terms of service", r"\bterms\s+(?:of\s+(?:service|use)|and\s+conditions)\b", "all"),
    ("terms", "terms", r"\bterms\b", "title"),
    ("terms", "by using", r"\bby\s+(?:using|accessing|attending|rsvp\W?ing|clicking|enrolling|participating)\b", "all"),
    ("terms", "you agree", r"\byou\s+(?:agree|accept)\b", "all"),
    ("policy", "policy", r"\bpolic(?:y|ies)\b", "all"),
    ("policy", "statement", r"\b(?:statement|notice|guide)\b", "title"),
    ("policy", "we collect", r"\bwe\s+(?:collect|use|share|process|publish|disclose)\b", "all"),
    ("policy", "cookies", r"\bcookies?\b", "title"),
)
_KIND_COMPILED = tuple((k, s, re.compile(p, re.I), w) for k, s, p, w in _KIND_SIGNALS)
_KIND_THRESHOLD = 6


def classify(title: str, doc: Document) -> tuple[Kind, tuple[str, ...]]:
    """Kind of the document and the signals behind it (strongest first)."""
    opening, body = doc.clean[:1500], doc.clean[1500:]
    scores = {"contract": 0, "terms": 0, "policy": 0}
    evidence: list[tuple[int, str]] = []
    for kind, _, regex, where in _KIND_COMPILED:
        m = regex.search(title)
        if m:
            scores[kind] += 6
            evidence.append((6, f'{kind}: title has "{m.group(0)}"'))
        if where == "title":
            continue
        m = regex.search(opening)
        if m:
            scores[kind] += 2
            evidence.append((2, f'{kind}: opening has "{m.group(0)}"'))
        count = min(5, sum(1 for _ in regex.finditer(body)))
        if count:
            scores[kind] += count
            evidence.append((count, f'{kind}: body has "{regex.search(body).group(0)}" x{count}'))  # type: ignore[union-attr]
    best = max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
    if scores[best] < _KIND_THRESHOLD:
        return "other", (f"no kind reaches {_KIND_THRESHOLD} points: {scores}",)
    ranked = [e for _, e in sorted(evidence, key=lambda e: -e[0]) if e.startswith(best)]
    return best, (f"scores {scores}", *ranked[:5])  # type: ignore[return-value]


# -- risk rules -------------------------------------------------------------------

_MUTUAL = r"\b(?:either|neither|each|both)\s+part(?:y|ies)\b|\bmutual(?:ly)?\b"
_NOTICE_WINDOW = (
    r"\b(?:\d+|[a-z]+(?:[\s-][a-z]+)?)\s*(?:\(\d+\)\s*)?(?:calendar\s+|business\s+)?days?['’]?\s+(?:(?:prior|advance|advanced)\s+)?(?:written\s+)?notice\b"
    r"|\bnotice\b[^.]{0,80}\b(?:at\s+least|no\s+later\s+than|not\s+less\s+than|no\s+less\s+than|prior\s+to|before)\b"
    r"|\bdays?\s+(?:before|prior\s+to)\s+(?:the\s+)?(?:end|expiration|expiry)\b|\bnon-?renewal\s+notice\s+date\b"
)
_NOTICE_WINDOW_RE = re.compile(_NOTICE_WINDOW, re.I)
_SAFEGUARDS = (
    r"\bstandard\s+contractual\s+clauses\b|(?-i:\bSCCs?\b)|\badequacy\s+decision|\bbinding\s+corporate\s+rules\b"
    r"|\bdata\s+privacy\s+framework\b|\bprivacy\s+shield\b|\barticle\s+46\b|\bIDTA\b|\bappropriate\s+safeguards\b"
)
_UNILATERAL = r"\b(?:may|can|reserves?\s+the\s+right\s+to)\s+(?:\w+\s+){{0,4}}(?:{verbs})\w*\b"
_AT_WILL = r"\bwithout\s+(?:prior\s+|advance\s+)?notice\b|\bfor\s+any\s+(?:or\s+no\s+)?reason\b|\bfor\s+no\s+reason\b|\bsole\s+discretion\b|\bat\s+any\s+time\b"


@dataclass(frozen=True)
class Hit:
    explanation: str
    span: tuple[int, int] | None = None  # clean span to quote, or None


@dataclass(frozen=True)
class RiskInput:
    """What the risk rules judge: the document, its kind and every finding (not only those kept)."""

    doc: Document
    kind: str | None
    clauses: tuple[Clause, ...]

    def of(self, category: str) -> list[Clause]:
        return [c for c in self.clauses if c.category == category]

    def spans(self, category: str) -> list[tuple[int, int]]:
        """Clean spans of the sections holding this category's findings, each once."""
        out: dict[tuple[int, int], None] = {}
        for c in sorted(self.of(category), key=lambda c: (-c.confidence, c.start)):
            s = self.doc.section_at(c.start)
            out.setdefault((self.doc.to_clean(s.body_start), self.doc.to_clean(s.end)), None)
        return list(out)  # strongest finding's section first

    def sentences(self, pattern: str, spans: Sequence[tuple[int, int]] | None = None) -> Iterator[tuple[str, tuple[int, int]]]:
        """(sentence text, its clean span) for each match of ``pattern``."""
        regex = re.compile(pattern, re.I)
        if spans is None:  # every section body: headings name clauses, they are not clauses
            spans = [(self.doc.to_clean(s.body_start), self.doc.to_clean(s.end)) for s in self.doc.sections]
        for a, b in spans:
            for m in regex.finditer(self.doc.clean, a, b):
                s, e = self.doc.sentence(m.start(), m.end())
                yield self.doc.clean[s:e], (m.start(), m.end())

    def next_sentence(self, span: tuple[int, int]) -> str:
        _, e = self.doc.sentence(*span)
        s2, e2 = self.doc.sentence(min(e + 1, len(self.doc.clean) - 1), min(e + 2, len(self.doc.clean)))
        return self.doc.clean[s2:e2]


def _one_sided_liability(r: RiskInput) -> list[Hit]:
    spans = r.spans("limitation_of_liability")
    if not spans or any(True for _ in r.sentences(_MUTUAL, spans)):
        return []
    for _, span in r.sentences(r"\bin\s+no\s+event\b|\bnot\s+(?:be\s+)?liable\b|\bliability\b[^.]{0,80}\bexceed", spans):
        return [Hit("liability exclusions protect one side: the liability section has no "
                    "'either party' / 'neither party' / mutual wording", span)]
    return []


def _unilateral(verbs: str, what: str, about: str | None = None) -> Callable[[RiskInput], list[Hit]]:
    def check(r: RiskInput) -> list[Hit]:
        for sentence, span in r.sentences(_UNILATERAL.format(verbs=verbs)):
            if about and not re.search(about, sentence, re.I):
                continue
            if re.search(r"^\W*(?:if|in\s+the\s+event|where|upon)\b|\bbreach|\bviolat", sentence, re.I):
                continue  # conditioned on a breach: for cause, not at will
            before = r.doc.clean[max(0, span[0] - 40):span[0]]
            if re.search(rf"\b{_CUSTOMER}\s*$|{_EVERY}\s*$|\b(?:we|i)\s*$", before, re.I) and not re.search(r"\bwe\s*$", before, re.I):
                continue  # the customer's own right, or a mutual one
            if not re.search(_AT_WILL, sentence, re.I):
                continue
            without = re.search(r"\bwithout\s+(?:prior\s+|advance\s+)?notice\b", sentence, re.I)
            if not without and re.search(r"\bnoti(?:ce|fy|fication)|\b\d+\s*days\b", sentence + " " + r.next_sentence(span), re.I):
                continue
            return [Hit(f"one party may {what} at will, with no notice period stated", span)]
        return []
    return check


def _broad_customer_indemnity(r: RiskInput) -> list[Hit]:
    reciprocal = re.compile(
        rf"(?:{_EVERY}|\bwe|\b(?-i:[A-Z][A-Za-z]+))\s+(?:shall|will|agrees?\s+to)\s+(?:\w+\s+){{0,3}}(?:indemnify|defend)\b", re.I)
    for m in reciprocal.finditer(r.doc.clean):
        subject = m.group(0).split()[0]
        if not re.fullmatch(_CUSTOMER, subject, re.I) and not re.search(r"\bnot\b", m.group(0), re.I):
            return []
    for sentence, span in r.sentences(rf"\b{_CUSTOMER}\s+(?:shall|will|agrees?\s+to|must)\s+(?:\w+\s+){{0,3}}(?:indemnify|defend)\b"):
        if re.search(r"\bany\s+and\s+all\b|\ball\s+claims\b|\bany\s+claims?\b|\barising\s+(?:out\s+of|from)\b[^.]{0,60}\b(?:use|access)\b", sentence, re.I):
            return [Hit("the customer indemnifies broadly and the other party gives no indemnity in return", span)]
    return []


def _auto_renewal(with_window: bool) -> Callable[[RiskInput], list[Hit]]:
    def check(r: RiskInput) -> list[Hit]:
        windows: dict[bool, tuple[int, int]] = {}
        seen: set[int] = set()
        for clause in sorted(r.of("auto_renewal"), key=lambda c: c.start):
            section = r.doc.section_at(clause.start)
            if section.start in seen:
                continue  # each section is read once, however many findings it holds
            seen.add(section.start)
            window = _NOTICE_WINDOW_RE.search(r.doc.clean, r.doc.to_clean(section.start), r.doc.to_clean(section.end))
            c = r.doc.to_clean(clause.start)
            windows.setdefault(window is not None, (c, c + 1))  # the first such clause in the text
        if False in windows and not with_window:
            return [Hit("automatic renewal with no notice window to stop it", windows[False])]
        if with_window and windows and False not in windows:
            return [Hit("automatic renewal with a notice window for non-renewal", windows[True])]
        return []
    return check


def _international_transfer(r: RiskInput) -> list[Hit]:
    if re.search(_SAFEGUARDS, r.doc.clean, re.I):
        return []
    for _, span in r.sentences(
            r"\b(?:transfer|store|process|access)\w*\b[^.]{0,100}\b(?:outside\s+(?:of\s+)?(?:the\s+)?(?:EU|EEA|European|United\s+Kingdom|UK|United\s+States|country|jurisdiction|region)"
            r"|(?:in|to)\s+(?:other|third|any|different)\s+countr|internationally|cross-border|across\s+borders)"):
        return [Hit("personal data may leave its country, and no SCC / adequacy / DPF-like safeguard is named", span)]
    return []


def _pattern(pattern: str, explanation: str, within: str | None = None,
             names_are_not_statements: bool = False) -> Callable[[RiskInput], list[Hit]]:
    """A rule that fires on the first sentence matching ``pattern``.

    Args:
        pattern: the regex (case-insensitive).
        explanation: the finding's explanation.
        within: only in the sections holding findings of this category.
        names_are_not_statements: skip a match that is part of a capitalised
            name (:meth:`Document.names_a_term`): a defined term such as
            "Uncapped Claims" names claims, it does not uncap liability.
    """
    def check(r: RiskInput) -> list[Hit]:
        spans = r.spans(within) if within else None
        if within and not spans:
            return []
        for _, span in r.sentences(pattern, spans):
            if names_are_not_statements and r.doc.names_a_term(*span):
                continue
            return [Hit(explanation, span)]
        return []
    return check


_MANDATORY = re.compile(
    r"\bbinding\b|\bmandatory\b|\bfinal\b|\bexclusively\b"
    r"|\b(?:shall|will|must)\s+be\s+(?:finally\s+)?(?:resolved|settled|submitted|determined)\b", re.I)
# Arbitration offered, not imposed: a permission or choice governs it, before
# ("you may choose to invoke binding arbitration") or after the word
# ("binding arbitration is available", "arbitration at the claimant's option").
_OPTIONAL_ARBITRATION = re.compile(
    r"\b(?:may|can|might|could|optional(?:ly)?|option|elect|choose|possibility|voluntar(?:y|ily))\b[^.]{0,60}\barbitrat"
    r"|\barbitrat\w*\b[^.]{0,60}?\b(?:is|are|remains?|will\s+be|shall\s+be|becomes?)\s+(?:also\s+|then\s+|only\s+)?"
    r"(?:available|optional|voluntary|an?\s+(?:option|alternative|possibility))\b"
    r"|\barbitrat\w*\b[^.]{0,60}?\b(?:at\s+(?:the\s+|its\s+|your\s+|their\s+)?(?:\w+['’]s?\s+)?(?:sole\s+)?(?:option|election|discretion)"
    r"|if\s+(?:you|the\s+parties|both\s+parties|each\s+party)\s+(?:so\s+)?(?:choose|chooses|elect|elects|agree|agrees))\b",
    re.I)


def _mandatory_arbitration(r: RiskInput) -> list[Hit]:
    for sentence, span in r.sentences(r"\barbitrat\w*"):
        if _MANDATORY.search(sentence) and not _OPTIONAL_ARBITRATION.search(sentence):
            return [Hit("disputes must go to binding arbitration, not to court", span)]
    return []


def _missing(category: str, explanation: str) -> Callable[[RiskInput], list[Hit]]:
    def check(r: RiskInput) -> list[Hit]:
        return [Hit(explanation)] if r.kind in ("contract", "terms") and not r.of(category) else []
    return check


@dataclass(frozen=True)
class RiskRule:
    id: str
    severity: Severity
    category: Category
    title: str
    check: Callable[[RiskInput], list[Hit]]


RISK_RULES: tuple[RiskRule, ...] = (
    RiskRule("R1a", "high", "limitation_of_liability", "uncapped liability", _pattern(
        r"\bunlimited\s+liability\b|\buncapped\b|\bliability\b[^.]{0,60}\b(?:shall|will)\s+(?:not|in\s+no\s+way)\s+be\s+(?:limited|capped)\b"
        r"|\bwithout\s+(?:any\s+)?(?:limit(?:ation)?|cap)\s+(?:on|to|of)\s+(?:its\s+|their\s+|your\s+)?liability\b",
        "liability is expressly unlimited", names_are_not_statements=True)),
    RiskRule("R1b", "medium", "limitation_of_liability", "one-sided liability limits", _one_sided_liability),
    RiskRule("R1c", "medium", "limitation_of_liability", "no limitation of liability",
             _missing("limitation_of_liability", "no limitation-of-liability clause: exposure is uncapped for both sides")),
    RiskRule("R2a", "high", "auto_renewal", "auto-renewal without notice window", _auto_renewal(False)),
    RiskRule("R2b", "low", "auto_renewal", "auto-renewal with notice window", _auto_renewal(True)),
    RiskRule("R3a", "high", "arbitration_dispute_resolution", "mandatory arbitration", _mandatory_arbitration),
    RiskRule("R3b", "high", "arbitration_dispute_resolution", "class-action waiver", _pattern(
        r"\bclass[\s-]action\b[^.]{0,60}\bwaive|\bwaive\w*\b[^.]{0,80}\bclass[\s-](?:action|arbitration|wide)"
        r"|\b(?:not|no)\s+(?:\w+\s+){0,4}(?:class|representative|collective)\s+(?:action|proceeding|arbitration)s?\b",
        "claims may not be brought as a class or representative action")),
    RiskRule("R3c", "medium", "arbitration_dispute_resolution", "jury-trial waiver", _pattern(
        r"\bwaive\w*\b[^.]{0,60}\bjury\b|\bjury\s+trial\s+waiver\b", "the parties waive a jury trial")),
    RiskRule("R4a", "medium", "termination", "termination at will without notice",
             _unilateral("terminat|suspend|revoke|cancel|discontinu", "terminate or suspend")),
    RiskRule("R4b", "medium", "termination", "changes at will without notice",
             _unilateral(r"modif|chang|amend|updat|revis", "change the terms",
                         about=r"\b(?:these|this|the|our|its)\s+(?:terms|agreement|polic(?:y|ies))\b|\b(?:fees|prices|pricing)\b")),
    RiskRule("R5", "medium", "indemnification", "broad one-way customer indemnity", _broad_customer_indemnity),
    RiskRule("R6", "high", "data_transfer_privacy", "international transfer without safeguards", _international_transfer),
    RiskRule("R7", "medium", "governing_law", "no governing law",
             _missing("governing_law", "no governing-law clause in a contract or terms")),
    RiskRule("R8", "low", "warranty_disclaimer", "broad warranty disclaimer", _pattern(
        r"(?-i:\bAS[\s-]IS\b)|\bdisclaim\w*\b[^.]{0,80}\bwarrant", "the service is provided as is; warranties are disclaimed",
        within="warranty_disclaimer")),
    RiskRule("R9", "low", "payment_terms", "late interest or non-refundable fees", _pattern(
        r"\blate\s+(?:payment|fees?|charges?)\b|\binterest\s+(?:at|of)\s+(?:the\s+)?(?:rate|lesser|\d)|\bnon-?refundable\b|\bno\s+refunds?\b",
        "late payments bear interest or fees are non-refundable", within="payment_terms")),
)
_SEVERITY_RANK = {"high": 3, "medium": 2, "low": 1}


def assess_risk(doc: Document, kind: str | None, clauses: Sequence[Clause] = (),
                findings: dict[str, list[Clause]] | None = None) -> list[Risk]:
    """Apply every rule of ``RISK_RULES``; at most one finding per rule, highest severity first.

    The rules judge ``clauses`` together with every finding of
    :func:`detect_findings`, not only the few a state keeps per category: the
    verdict on a clause must not depend on how many similar clauses surround it.

    Args:
        doc: the parsed document.
        kind: its kind (``contract``, ``terms``, ``policy``, ``other``).
        clauses: findings from an earlier step (e.g. the state's), judged too.
        findings: :func:`detect_findings` of ``doc``, if already computed.

    Returns:
        The risks, highest severity first. Pure; linear in the text.
    """
    ranked = detect_findings(doc) if findings is None else findings
    judged = dict.fromkeys([*clauses, *(c for category in CATEGORIES for c in ranked[category])])
    inputs = RiskInput(doc, kind, tuple(judged))
    risks = []
    for rule in RISK_RULES:
        for hit in rule.check(inputs)[:1]:
            quote: dict[str, Any] = {}
            if hit.span is not None:
                text, start, end = doc.quote(*hit.span)
                quote = {"quote": text, "start": start, "end": end, "line": doc.line_of(start)}
            risks.append(Risk(rule_id=rule.id, severity=rule.severity, category=rule.category,
                              title=rule.title, explanation=hit.explanation, **quote))
    return sorted(risks, key=lambda r: -_SEVERITY_RANK[r.severity])


def reviewer_summary(title: str, kind: str | None, clauses: Sequence[Clause], risks: Sequence[Risk]) -> str:
    """One short paragraph for the approver (<= 300 characters where possible)."""
    found = sorted({c.category for c in clauses}, key=CATEGORIES.index)
    counts = {s: sum(1 for r in risks if r.severity == s) for s in ("high", "medium", "low")}
    high = [f"{r.rule_id} {r.title}" + (f" (line {r.line})" if r.line else "") for r in risks if r.severity == "high"]
    head = f"{kind or 'document'} '{title[:60]}': {len(found)}/{len(CATEGORIES)} clause categories; " \
           f"risks {counts['high']} high, {counts['medium']} medium, {counts['low']} low"
    return head + (". High: " + "; ".join(high) if high else ". No high-risk findings") + "."
