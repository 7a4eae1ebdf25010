"""Evaluate the contract-review machine's default agents against human labels.

Runs ``machines/contract_review.py`` on every document listed in the corpus
``MANIFEST.tsv`` and compares the clause categories it finds with
``labels.tsv`` (1 = the document has such a clause, 0 = it has none, ? =
unclear; ``?`` rows are ignored). A category counts as found in a document
when the run's state holds at least one clause finding of that category.

Prints, per category: TP, FP, FN, TN, ignored (?), precision and recall, with
micro-averages; then one line per document (kind, run status, risks) and how
often a true positive's evidence heading agrees with the heading the labeller
quoted. ``--details`` lists every false positive and false negative.

Runs go through ``statecraft.Engine`` on a temporary SQLite file (the real
path: audited, checkpointed). If the engine cannot be imported or used, a small
in-process driver calls the agents and ``Machine.apply`` directly. Runs are
not approved: a run that stops at the approval gate already holds its clauses.

Usage::

    python bench/eval_contract_review.py [--corpus DIR] [--details] [--json]
        [--driver auto|engine|inprocess]

The corpus defaults to ``../shared/corpus`` next to the repository.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / ".." / "shared" / "corpus"
MACHINE_PATH = REPO / "machines" / "contract_review.py"

Run = Callable[[str], tuple[str, dict[str, Any]]]  # text -> (status, state)


def load_machine() -> Any:
    """The machine object of ``machines/contract_review.py``, loaded by path."""
    try:
        from statecraft.loader import load_machine as statecraft_load
    except ImportError:
        spec = importlib.util.spec_from_file_location("contract_review_eval", MACHINE_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module.machine
    return statecraft_load(str(MACHINE_PATH))


def engine_driver(machine: Any, workdir: Path) -> Run:
    """Runs through ``Engine.start`` on a fresh SQLite file; stops at a gate."""
    from statecraft.engine import Engine

    engine = Engine(db=workdir / "eval.db", synchronous="NORMAL")

    def run(text: str) -> tuple[str, dict[str, Any]]:
        info = engine.start(machine, text, by="bench:eval_contract_review")
        return str(info.status), dict(info.state)

    return run


def inprocess_driver(machine: Any) -> Run:
    """Agents called directly, outcomes judged by ``Machine.apply``; no database."""
    from statecraft.agents.base import StepContext
    from statecraft.machine import IllegalOutcome
    from statecraft.outcomes import Fail, Finish, Goto, RequestApproval

    def run(text: str) -> tuple[str, dict[str, Any]]:
        state, step = machine.initial_state(text), machine.start
        for _ in range(machine.max_steps):
            ctx = StepContext(run_id="eval", machine=machine.name, machine_version=machine.version,
                              step=step, attempt=1, started_by="bench", load_task=lambda: text,
                              clock=lambda: datetime.now(UTC))
            outcome = machine.steps[step].agent(machine.view(step, state), ctx)
            applied = machine.apply(step, state, outcome)
            if isinstance(applied, IllegalOutcome):
                return f"FAILED ({applied.error_code})", state.model_dump(mode="json")
            state = applied.state
            if isinstance(outcome, Fail):
                return f"FAILED ({outcome.error_code})", state.model_dump(mode="json")
            if isinstance(outcome, Finish):
                return "DONE", state.model_dump(mode="json")
            if isinstance(outcome, RequestApproval):
                return "WAITING_FOR_APPROVAL", state.model_dump(mode="json")
            assert isinstance(outcome, Goto)
            step = outcome.step
        return "FAILED (max_steps)", state.model_dump(mode="json")

    return run


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def heading_agrees(evidence: str, clauses: list[dict[str, Any]]) -> bool | None:
    """Whether a finding's heading path names a heading the labeller quoted; None if none quoted."""
    quoted = [_norm(q) for q in re.findall(r'"([^"]+)"', evidence) if _norm(q)]
    if not quoted:
        return None
    return any(q in _norm(h) for c in clauses for h in c["heading_path"] for q in quoted)


def evaluate(corpus: Path, run: Run, categories: tuple[str, ...]) -> dict[str, Any]:
    files = [row["file"] for row in read_tsv(corpus / "MANIFEST.tsv")]
    labels = {(r["file"], r["category"]): r for r in read_tsv(corpus / "labels.tsv")}
    counts = {c: {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "ignored": 0} for c in categories}
    docs, errors, agree, agree_total = [], [], 0, 0
    for name in files:
        text = (corpus / name).read_text(encoding="utf-8")
        started = time.perf_counter()
        status, state = run(text)
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        found: dict[str, list[dict[str, Any]]] = {}
        for clause in state.get("clauses") or []:
            found.setdefault(clause["category"], []).append(clause)
        risks = state.get("risks") or []
        docs.append({"file": name, "kind": state.get("kind"), "status": status, "ms": elapsed_ms,
                     "found": len(found), "risks": [r["rule_id"] for r in risks]})
        for category in categories:
            label = labels.get((name, category))
            if label is None or label["label"] == "?":
                counts[category]["ignored"] += 1
                continue
            got, truth = category in found, label["label"] == "1"
            key = {(True, True): "tp", (True, False): "fp", (False, True): "fn", (False, False): "tn"}[(got, truth)]
            counts[category][key] += 1
            if key == "tp":
                verdict = heading_agrees(label["evidence"], found[category])
                if verdict is not None:
                    agree_total += 1
                    agree += verdict
            if key in ("fp", "fn"):
                errors.append({"kind": key.upper(), "file": name, "category": category,
                               "label_evidence": label["evidence"],
                               "findings": [{"heading": c["heading"], "line": c["line"], "rule": c["rule"],
                                             "quote": c["quote"]} for c in found.get(category, [])]})
    total = {k: sum(c[k] for c in counts.values()) for k in ("tp", "fp", "fn", "tn", "ignored")}
    return {"categories": counts, "micro": total, "documents": docs, "errors": errors,
            "heading_agreement": {"agree": agree, "of": agree_total}}


def _ratio(num: int, den: int) -> str:
    return f"{num / den:.2f}" if den else "—"


def render(result: dict[str, Any], console: Console, details: bool) -> None:
    table = Table(title="contract_review default agents vs labels.tsv ('?' ignored)")
    for col in ("category", "TP", "FP", "FN", "TN", "?", "precision", "recall"):
        table.add_column(col, justify="left" if col == "category" else "right")
    rows = list(result["categories"].items()) + [("micro-average", result["micro"])]
    for i, (name, c) in enumerate(rows):
        table.add_row(name, *(str(c[k]) for k in ("tp", "fp", "fn", "tn", "ignored")),
                      _ratio(c["tp"], c["tp"] + c["fp"]), _ratio(c["tp"], c["tp"] + c["fn"]),
                      end_section=i == len(rows) - 2)
    console.print(table)
    docs = Table(title="runs")
    for col in ("document", "kind", "status", "categories", "risk rules", "ms"):
        docs.add_column(col)
    for d in result["documents"]:
        docs.add_row(d["file"], str(d["kind"]), d["status"], str(d["found"]), " ".join(d["risks"]) or "—", str(d["ms"]))
    console.print(docs)
    ha = result["heading_agreement"]
    console.print(f"evidence heading agrees with the labeller's quoted heading in {ha['agree']}/{ha['of']} "
                  "true positives (where the label quotes a heading)")
    if details:
        for e in result["errors"]:
            console.print(f"[bold]{e['kind']}[/bold] {e['file']} {e['category']}: label: {e['label_evidence']}")
            for f in e["findings"]:
                console.print(f"    found: line {f['line']} [{f['heading']}] {f['rule']}: {f['quote'][:160]!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="folder with MANIFEST.tsv and labels.tsv")
    parser.add_argument("--driver", choices=("auto", "engine", "inprocess"), default="auto")
    parser.add_argument("--details", action="store_true", help="list every false positive and false negative")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    corpus = args.corpus.resolve()
    if not (corpus / "MANIFEST.tsv").is_file() or not (corpus / "labels.tsv").is_file():
        print(f"error: no corpus at {corpus} (need MANIFEST.tsv and labels.tsv); pass --corpus DIR",
              file=sys.stderr)
        return 2
    machine = load_machine()
    categories = tuple(machine.state_model.model_fields["clauses"].annotation.__args__[0]
                       .model_fields["category"].annotation.__args__)
    with tempfile.TemporaryDirectory(prefix="statecraft-eval-") as tmp:
        run, driver = None, args.driver
        if driver in ("auto", "engine"):
            try:
                run = engine_driver(machine, Path(tmp))
                driver = "engine"
            except Exception as exc:  # noqa: BLE001 - any engine problem falls back, loudly
                if args.driver == "engine":
                    raise
                print(f"note: Engine unavailable ({type(exc).__name__}: {exc}); using the in-process driver",
                      file=sys.stderr)
        if run is None:
            run, driver = inprocess_driver(machine), "inprocess"
        started = time.perf_counter()
        result = evaluate(corpus, run, categories)
    result["driver"] = driver
    result["seconds"] = round(time.perf_counter() - started, 2)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        console = Console()
        render(result, console, args.details)
        console.print(f"{len(result['documents'])} documents, driver: {driver}, {result['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
