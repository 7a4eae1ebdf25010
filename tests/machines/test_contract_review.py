"""The contract-review reference machine: its agents, rules and graph.

Agents are called directly with a StepContext built here, and their outcomes
judged by ``Machine.apply`` (the pure half of the engine). One test also runs
the sample through a real Engine on a SQLite file and verifies the ledger.
Corpus tests skip when ../shared/corpus is absent.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from statecraft.agents.base import StepContext
from statecraft.machine import AppliedOutcome, IllegalOutcome, Machine
from statecraft.outcomes import Fail, Finish, Goto, RequestApproval

REPO = Path(__file__).resolve().parents[2]
MACHINE_FILE = REPO / "machines" / "contract_review.py"
SAMPLE = REPO / "machines" / "samples" / "sample_msa.md"
CORPUS = REPO.parent / "shared" / "corpus"


def _load() -> ModuleType:
    # By path, as the CLI does: machines/ is not a package.
    spec = importlib.util.spec_from_file_location("contract_review_under_test", MACHINE_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cr = _load()
machine: Machine[Any] = cr.machine


def _ctx(text: Any, step: str = "classify") -> StepContext:
    return StepContext(
        run_id="test-run", machine=machine.name, machine_version=machine.version, step=step,
        attempt=1, started_by="test", load_task=lambda: text,
        clock=lambda: datetime(2025, 1, 1, tzinfo=UTC),
    )


def _run(text: str) -> tuple[str, Any, list[str]]:
    """Drive the machine in-process: agent(view, ctx) -> Machine.apply, until it stops.

    Returns:
        (``DONE`` / ``WAITING_FOR_APPROVAL`` / ``FAILED``, last state, steps visited).
    """
    state, step, visited = machine.initial_state(text), machine.start, []
    for _ in range(machine.max_steps):
        visited.append(step)
        outcome = machine.steps[step].agent(machine.view(step, state), _ctx(text, step))
        applied = machine.apply(step, state, outcome)
        assert isinstance(applied, AppliedOutcome), applied
        state = applied.state
        if isinstance(outcome, Finish):
            return "DONE", state, visited
        if isinstance(outcome, RequestApproval):
            return "WAITING_FOR_APPROVAL", state, visited
        if isinstance(outcome, Fail):
            return "FAILED", state, visited
        step = outcome.step
    raise AssertionError("no stop within max_steps")


def _clauses(text: str) -> list[Any]:
    return cr.rules.detect_clauses(cr.Document(text))


def _categories(text: str) -> set[str]:
    return {c.category for c in _clauses(text)}


def _risk_ids(text: str, kind: str = "contract") -> set[str]:
    doc = cr.Document(text)
    return {r.rule_id for r in cr.rules.assess_risk(doc, kind, tuple(cr.rules.detect_clauses(doc)))}


def _assert_quotes_are_in_the_text(text: str, clauses: list[Any]) -> None:
    for c in clauses:
        assert text[c.start:c.end] == c.quote, c
        assert 0 < len(cr.rules.strip_markup(c.quote)) <= 300  # text; inline markup is not counted
        assert len(c.quote) <= 1_000
        assert c.line == text.count("\n", 0, c.start) + 1
        assert 0 <= c.confidence <= 100


# One handwritten clause per category, each under a neutral heading so the
# body wording alone must carry the finding.
CLAUSES = {
    "governing_law": "This Agreement is governed by the laws of the State of New York.",
    "limitation_of_liability": "In no event shall the Supplier be liable for any indirect or consequential damages.",
    "indemnification": "The Customer shall indemnify, defend and hold harmless the Supplier from third-party claims.",
    "termination": "Either party may terminate this Agreement for convenience on thirty days' written notice.",
    "auto_renewal": "This Agreement will automatically renew for successive one-year terms.",
    "arbitration_dispute_resolution": "Any dispute shall be finally resolved by binding arbitration in London.",
    "data_transfer_privacy": "The Supplier will process Personal Data only on the Customer's written instructions.",
    "payment_terms": "All invoices are due and payable within thirty (30) days of the invoice date.",
    "confidentiality": "The recipient will hold the discloser's information in strict confidence.",
    "assignment": "Neither party may assign this Agreement without the prior written consent of the other party.",
    "warranty_disclaimer": 'The Software is provided "AS IS", without warranty of any kind.',
}

PLAIN = """# Our garden club

We meet on Tuesdays at six in the community hall. Bring gloves and a trowel.

## Seasonal plans

In spring we plant tomatoes and beans; in autumn we collect seeds and share them.
Everyone is welcome, and tea is served after each meeting.
"""


@pytest.mark.parametrize("category", sorted(CLAUSES))
def test_each_category_is_detected_from_its_wording_with_an_exact_quote(category: str) -> None:
    text = f"# Agreement\n\n## Section 4\n\nThe parties met in March. {CLAUSES[category]} Nothing else applies.\n"
    found = [c for c in _clauses(text) if c.category == category]
    assert found, f"{category} not detected"
    _assert_quotes_are_in_the_text(text, found)
    assert CLAUSES[category] in found[0].quote
    assert found[0].heading == "Section 4"
    assert found[0].rule.startswith(category + ".")


def test_a_plain_text_without_clauses_yields_no_findings() -> None:
    assert _clauses(PLAIN) == []


def test_a_heading_alone_is_not_a_finding_without_supporting_wording() -> None:
    text = "# Notes\n\n## Termination\n\nThe garden opens at nine and closes at five.\n"
    assert "termination" not in _categories(text)


def test_a_heading_with_a_cue_word_is_a_finding_with_lower_confidence() -> None:
    text = "# Notes\n\n## Termination\n\nAccess ends when the club is dissolved or cancelled.\n"
    found = [c for c in _clauses(text) if c.category == "termination"]
    assert found and found[0].confidence < 80 and "heading" in found[0].signals


def test_negated_indemnity_is_not_an_indemnification_clause() -> None:
    text = "# Safe harbor\n\nWe cannot and will not defend, indemnify or hold you harmless from third-party claims.\n"
    assert "indemnification" not in _categories(text)


def test_a_cross_reference_to_a_disclaimer_is_not_a_disclaimer() -> None:
    text = "# Survival\n\nSection 7 (Disclaimer of Warranties) and Section 9 survive termination.\n"
    assert "warranty_disclaimer" not in _categories(text)


def test_forum_selection_alone_is_not_arbitration() -> None:
    text = "# Venue\n\nThe courts of San Francisco have exclusive jurisdiction over any dispute.\n"
    assert "arbitration_dispute_resolution" not in _categories(text)


def test_quotes_inside_html_and_emphasis_markup_are_exact_substrings() -> None:
    text = ('1. <span class="header_2" id="12">General</span>\n'
            '    1. <span class="header_3" id="12.1">Law.</span>  The <span class="x">Agreement</span> '
            "is **governed by** the laws of Ontario.\n")
    found = [c for c in _clauses(text) if c.category == "governing_law"]
    assert found
    _assert_quotes_are_in_the_text(text, found)
    assert found[0].heading_path == ("12 General", "12.1 Law")


def test_long_sentences_are_trimmed_to_300_characters_around_the_match() -> None:
    filler = "the parties acknowledge many things about the services " * 12
    text = f"# Terms\n\nWhereas {filler}, this Agreement is governed by the laws of Texas, and {filler}.\n"
    (c,) = [c for c in _clauses(text) if c.category == "governing_law"]
    _assert_quotes_are_in_the_text(text, [c])
    assert "governed by the laws of Texas" in c.quote


def test_mandatory_arbitration_and_class_action_waiver_are_high_risks() -> None:
    text = ("# Terms\n\n## Disputes\n\nAll disputes shall be resolved by binding arbitration. "
            "You waive any right to participate in a class action.\n")
    assert {"R3a", "R3b"} <= _risk_ids(text)


def test_optional_arbitration_is_not_mandatory() -> None:
    text = "# Privacy\n\n## Complaints\n\nYou may choose to invoke binding arbitration for unresolved complaints.\n"
    assert "R3a" not in _risk_ids(text, kind="policy")


def test_auto_renewal_without_a_notice_window_is_high_and_with_one_is_low() -> None:
    bare = "# Terms\n\n## Renewal\n\nThis Agreement automatically renews for additional one-year terms.\n"
    window = bare.replace(".\n", " unless either party gives notice of non-renewal at least 60 days before the end of the term.\n")
    assert "R2a" in _risk_ids(bare) and "R2b" not in _risk_ids(bare)
    assert "R2b" in _risk_ids(window) and "R2a" not in _risk_ids(window)


def test_one_sided_liability_and_broad_customer_indemnity_are_flagged() -> None:
    text = ("# Terms\n\n## Liability\n\nIn no event shall the Company be liable for lost profits.\n\n"
            "## Indemnity\n\nYou agree to indemnify and hold the Company harmless from any and all claims "
            "arising out of your use of the service.\n")
    assert {"R1b", "R5"} <= _risk_ids(text)


def test_mutual_wording_clears_the_one_sided_rules() -> None:
    text = ("# Terms\n\n## Liability\n\nIn no event shall either party be liable for lost profits.\n\n"
            "## Indemnity\n\nEach party will indemnify and defend the other against any claims arising from its breach.\n")
    assert not {"R1b", "R5"} & _risk_ids(text)


def test_termination_at_will_without_notice_is_flagged_but_a_customer_right_is_not() -> None:
    provider = "# Terms\n\n## Ending\n\nThe Company may terminate your account at any time without notice.\n"
    customer = "# Terms\n\n## Ending\n\nYou may cancel your account at any time without notice.\n"
    assert "R4a" in _risk_ids(provider)
    assert "R4a" not in _risk_ids(customer)


def test_international_transfer_needs_a_safeguard() -> None:
    bare = "# Privacy\n\n## Data\n\nWe may transfer personal data to other countries for processing.\n"
    safe = bare.replace("processing.", "processing under the Standard Contractual Clauses.")
    assert "R6" in _risk_ids(bare, kind="policy")
    assert "R6" not in _risk_ids(safe, kind="policy")


def test_missing_governing_law_is_a_risk_only_for_contracts_and_terms() -> None:
    text = "# Agreement\n\n## Fees\n\nCustomer will pay the fees within 30 days of the invoice date.\n"
    assert "R7" in _risk_ids(text, kind="contract")
    assert "R7" not in _risk_ids(text, kind="policy")


def test_the_risk_rules_table_in_the_docs_matches_the_code() -> None:
    doc = (REPO / "docs" / "contract_review.md").read_text(encoding="utf-8")
    section = doc.split("## Risk rules", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:4] for line in section.splitlines() if line.startswith("| R")]
    documented = [tuple(cell.strip() for cell in row) for row in rows]
    assert documented == [(r.id, r.severity, r.category) for r in cr.rules.RISK_RULES]


def test_the_initial_state_takes_the_title_from_the_first_heading_and_hashes_the_text() -> None:
    text = "Preamble line\n\n## My *Agreement*\n\nBody.\n"
    state = machine.initial_state(text)
    assert state.document_title == "My Agreement"
    assert state.document_sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert state.clauses == () and state.report is None


def test_the_document_text_is_not_in_the_state() -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    _, state, _ = _run(text)
    strings: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)
        elif isinstance(value, list):
            for v in value:
                collect(v)

    collect(state.model_dump(mode="json"))
    assert max(len(s) for s in strings) <= 300  # quotes and labels, never the document
    assert any("conflict of laws principles" in s for s in strings)


def test_the_state_holds_no_floats() -> None:
    def walk(value: Any) -> None:
        assert not isinstance(value, float), value
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    _, state, _ = _run(SAMPLE.read_text(encoding="utf-8"))
    walk(state.model_dump(mode="json"))


def test_every_agent_declares_a_version_and_a_stable_name() -> None:
    for step in machine.steps.values():
        assert step.agent_version == "2"  # 2: risks judged over every finding (issue #9)
        assert step.agent_name == f"contract_review.{step.name}"


def test_steps_declare_exactly_what_they_read_and_write() -> None:
    decl = {s.name: (set(s.reads or ()), set(s.writes), set(s.next)) for s in machine.steps.values()}
    assert decl["classify"] == ({"document_title", "document_sha256"}, {"kind", "kind_evidence"}, {"detect_clauses"})
    assert decl["detect_clauses"] == ({"document_sha256"}, {"clauses"}, {"assess_risk"})
    assert decl["assess_risk"][1:] == ({"risks"}, {"finalize"})
    assert decl["finalize"][1:] == ({"report"}, set())
    assert machine.steps["finalize"].may_finish


def test_the_sample_stops_for_approval_then_finishes_with_a_report() -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    status, state, visited = _run(text)
    assert status == "WAITING_FOR_APPROVAL"
    assert visited == ["classify", "detect_clauses", "assess_risk"]
    assert state.kind == "contract"
    assert {r.rule_id for r in state.risks if r.severity == "high"} >= {"R3a"}
    _assert_quotes_are_in_the_text(text, list(state.clauses))
    # The approver said yes: the run resumes at finalize.
    outcome = machine.steps["finalize"].agent(machine.view("finalize", state), _ctx(text, "finalize"))
    applied = machine.apply("finalize", state, outcome)
    assert isinstance(outcome, Finish) and isinstance(applied, AppliedOutcome)
    report = applied.state.report
    assert report.approval_required and report.highest_severity == "high"
    assert set(report.categories_found) == set(cr.CATEGORIES) and report.categories_missing == ()
    assert "R3a" in report.reviewer_summary


def test_a_document_without_high_risks_goes_straight_to_finalize() -> None:
    text = "# Supply Agreement\n\n## Law\n\nThis Agreement is governed by the laws of Ontario.\n"
    status, state, visited = _run(text)
    assert status == "DONE" and visited[-1] == "finalize"
    assert state.report is not None and not state.report.approval_required


def test_a_task_that_does_not_match_the_state_hash_fails_the_step() -> None:
    state = machine.initial_state("# A\n\nGoverned by the laws of Ohio.\n")
    outcome = machine.steps["detect_clauses"].agent(machine.view("detect_clauses", state), _ctx("# B\n"))
    assert isinstance(outcome, Fail) and outcome.error_code == "document_mismatch"


def test_a_task_that_is_not_text_fails_the_step() -> None:
    outcome = machine.steps["classify"].agent(machine.view("classify", cr.ContractReview()), _ctx({"a": 1}))
    assert isinstance(outcome, Fail) and outcome.error_code == "bad_task"


def test_writing_a_field_the_step_does_not_own_is_illegal() -> None:
    state = machine.initial_state("# A\n")
    applied = machine.apply("classify", state, Goto("detect_clauses", update={"risks": []}))
    assert isinstance(applied, IllegalOutcome) and applied.error_code == "unowned_field"


def test_the_sample_runs_through_the_engine_and_the_ledger_verifies(tmp_path: Path) -> None:
    from statecraft.audit.verify import verify_ledger
    from statecraft.engine import Engine

    with Engine(tmp_path / "review.db") as engine:
        info = engine.start(machine, SAMPLE.read_text(encoding="utf-8"), by="test")
        assert str(info.status) == "WAITING_FOR_APPROVAL"
        info = engine.approve(info.run_id, by="reviewer@example.com", comment="accepted risk")
        assert str(info.status) == "DONE"
        assert info.state["report"]["approval_required"] is True
        assert verify_ledger(engine.db).ok


# -- the shared corpus -----------------------------------------------------------

def _corpus_files() -> list[str]:
    manifest = CORPUS / "MANIFEST.tsv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="", encoding="utf-8") as f:
        return [row["file"] for row in csv.DictReader(f, delimiter="\t")]


needs_corpus = pytest.mark.skipif(
    not (CORPUS / "MANIFEST.tsv").is_file(),
    reason=f"the shared corpus is absent ({CORPUS}); these tests need real documents",
)


@needs_corpus
@pytest.mark.parametrize("name", _corpus_files() or ["(none)"])
def test_every_corpus_document_reaches_finish_or_approval_with_exact_quotes(name: str) -> None:
    text = (CORPUS / name).read_text(encoding="utf-8")
    status, state, _ = _run(text)
    assert status in ("DONE", "WAITING_FOR_APPROVAL")
    assert state.kind in ("contract", "policy", "terms", "other")
    _assert_quotes_are_in_the_text(text, list(state.clauses))
    for risk in state.risks:
        if risk.quote is not None:
            assert text[risk.start:risk.end] == risk.quote
    if status == "WAITING_FOR_APPROVAL":
        assert any(r.severity == "high" for r in state.risks)


@needs_corpus
def test_labelled_clauses_are_found_in_most_corpus_documents() -> None:
    # A floor, not a target: bench/eval_contract_review.py prints the real figures.
    with (CORPUS / "labels.tsv").open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f, delimiter="\t") if r["label"] in ("0", "1")]
    found = {name: _categories((CORPUS / name).read_text(encoding="utf-8")) for name in {r["file"] for r in rows}}
    tp = sum(1 for r in rows if r["label"] == "1" and r["category"] in found[r["file"]])
    fp = sum(1 for r in rows if r["label"] == "0" and r["category"] in found[r["file"]])
    positives = sum(1 for r in rows if r["label"] == "1")
    assert tp / positives >= 0.8
    assert tp / (tp + fp) >= 0.8


@needs_corpus
def test_the_cli_reviews_every_corpus_document_and_the_ledger_verifies(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from statecraft.cli import main

    runner, db = CliRunner(), str(tmp_path / "corpus.db")
    for name in _corpus_files():
        path = CORPUS / name
        result = runner.invoke(main, ["start", str(MACHINE_FILE), "--input", str(path), "--db", db, "--json"],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        run = json.loads(result.stdout)
        assert run["status"] in ("DONE", "WAITING_FOR_APPROVAL"), (name, run["status"], run.get("reason"))
        text = path.read_text(encoding="utf-8")
        for clause in run["state"]["clauses"]:
            assert text[clause["start"]:clause["end"]] == clause["quote"], (name, clause)
        if run["status"] == "DONE":
            report = run["state"]["report"]
            assert set(report["categories_found"]) == {c["category"] for c in run["state"]["clauses"]}
    verify = runner.invoke(main, ["audit", "verify", "--db", db, "--json"], catch_exceptions=False)
    assert verify.exit_code == 0, verify.output
    assert json.loads(verify.stdout)["ok"] is True
