"""Benchmark: the contract-review machine on 0.5, 1 and 5 MB documents, through the real engine and CLI.

Issue #9 measured the machine before its fix: risk assessment was quadratic
on text without sentence breaks (1 MB: 299 s; 5.8 MB: killed after 900 s,
run left RUNNING), and the verdict on a clause changed with the length of the
document around it. The suite proves linearity by counting
(tests/machines/test_contract_review_long_input.py); this script prints the
wall-clock figures. Not a timed test: numbers depend on the machine and its load.

Two shapes of document, both built in memory from the shared corpus
(``../shared/corpus``, never copied into the repository):

- ``contract``: a "Master Agreement" made of real agreements (Common Paper
  Cloud Service Agreement, GitHub Terms of Service, GitHub Data Protection
  Agreement, repeated to the size) around the GitHub Sponsors terms, whose
  3.1 Term renews automatically with no notice window (rule R2a, high). The
  test of the same name builds it the same way.
- ``flat``: the same text with no sentence break at all: newlines become
  spaces, ``. ! ?`` become ``;`` and heading marks become spaces (text
  pasted from a PDF), so every match's sentence would be the whole text.
- ``flat-policy``: GitHub's cookie statement, repeated and flattened the
  same way: many "may ... change / update" matches that the change-at-will
  rule (R4b) reads and rejects one by one; before the fix each one re-read
  the whole text, the quadratic case issue #9 timed.

Each document runs twice, in fresh SQLite files:

- ``engine``: ``Engine.start`` in a child process (so a run over
  ``--timeout`` can be killed and reported), with each step's audited
  ``latency_ms``;
- ``cli``: ``statecraft start MACHINE --input FILE --json`` as a subprocess,
  then ``statecraft audit verify`` on its database.

A last row feeds the CLI a document one character over ``MAX_DOCUMENT_CHARS``
and shows the one-line refusal.

Usage::

    python bench/bench_long_document.py                        # 0.5, 1, 5 MB; both shapes; engine and CLI
    python bench/bench_long_document.py --sizes 0.5,1 --shapes flat --paths cli
    python bench/bench_long_document.py --machine OTHER/machines/contract_review.py --timeout 300

``--machine`` runs another version of the machine file (e.g. main's before
the fix) on the same documents. Sizes are in millions of characters.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / ".." / "shared" / "corpus"
DEFAULT_MACHINE = REPO / "machines" / "contract_review.py"
CLAUSE_DOC = "github-sponsors-additional-terms.md"
PADDING = ("common-paper-cloud-service-agreement.md", "github-terms-of-service.md",
           "github-data-protection-agreement.md")
POLICIES = ("github-cookies.md",)


def contract_around_the_clause(corpus: Path, chars: int) -> str:
    """A contract of exactly ``chars`` characters: real agreements around the Sponsors terms."""
    clause = (corpus / CLAUSE_DOC).read_text(encoding="utf-8")
    padding = "\n\n".join((corpus / name).read_text(encoding="utf-8") for name in PADDING)
    head = "# Master Agreement\n\n"
    rest = chars - len(head) - len(clause) - 4
    filler = padding * (rest // len(padding) + 2)
    return head + filler[:rest // 2] + "\n\n" + clause + "\n\n" + filler[:rest - rest // 2]


def policy_statements(corpus: Path, chars: int) -> str:
    """GitHub's cookie statement, repeated to exactly ``chars`` characters."""
    body = "\n\n".join((corpus / name).read_text(encoding="utf-8") for name in POLICIES)
    head = "# Cookie Statement\n\n"
    return head + (body * ((chars - len(head)) // len(body) + 1))[:chars - len(head)]


def build(corpus: Path, shape: str, chars: int) -> str:
    """The document of ``shape`` (see the module docstring), exactly ``chars`` characters long."""
    text = (policy_statements if shape == "flat-policy" else contract_around_the_clause)(corpus, chars)
    if shape.startswith("flat"):  # every replacement keeps the length
        head, body = text.split("\n\n", 1)
        body = re.sub(r"(?m)^[ \t]*#+", lambda m: " " * len(m.group(0)), body)
        text = head + "\n\n" + re.sub(r"[.!?\n]", lambda m: " " if m.group(0) == "\n" else ";", body)
    assert len(text) == chars, (shape, chars, len(text))
    return text


def engine_child(machine_path: str, input_path: str, db: str) -> None:
    """Run one document through ``Engine.start``; print a JSON line (child process)."""
    from statecraft import Engine, load_machine

    machine = load_machine(machine_path)
    text = Path(input_path).read_text(encoding="utf-8")
    started = time.perf_counter()
    with Engine(db) as engine:
        info = engine.start(machine, text, by="bench:long_document")
        seconds = time.perf_counter() - started
        steps = {e.from_step: e.latency_ms for e in engine.events(info.run_id) if e.latency_ms is not None}
    print(json.dumps({"seconds": seconds, "status": str(info.status), "steps": steps,
                      "risks": [r["rule_id"] for r in info.state.get("risks") or []],
                      "high": [r["rule_id"] for r in info.state.get("risks") or [] if r["severity"] == "high"]}))


def run_engine(machine: Path, doc: Path, db: Path, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--engine-child", str(doc), "--machine", str(machine), "--db", str(db)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"seconds": time.perf_counter() - started, "status": f"killed after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"seconds": time.perf_counter() - started, "status": f"exit {proc.returncode}",
                "error": proc.stderr.strip().splitlines()[-1:] or [""]}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _statecraft() -> list[str]:
    exe = shutil.which("statecraft", path=str(Path(sys.executable).parent)) or shutil.which("statecraft")
    return [exe] if exe else [sys.executable, "-m", "statecraft"]


def run_cli(machine: Path, doc: Path, db: Path, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "STATECRAFT_DB": str(db)}
    started = time.perf_counter()
    try:
        proc = subprocess.run([*_statecraft(), "start", str(machine), "--input", str(doc), "--json"],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"seconds": time.perf_counter() - started, "status": f"killed after {timeout:.0f} s"}
    seconds = time.perf_counter() - started
    verify = subprocess.run([*_statecraft(), "audit", "verify"], capture_output=True, text=True, env=env)
    result: dict[str, Any] = {"seconds": seconds, "exit": proc.returncode,
                              "verify": (verify.stdout or verify.stderr).strip()}
    if proc.returncode == 0:
        run = json.loads(proc.stdout)
        risks = run["state"].get("risks") or []
        result.update(status=run["status"], risks=[r["rule_id"] for r in risks],
                      high=[r["rule_id"] for r in risks if r["severity"] == "high"])
    else:
        result.update(status=f"exit {proc.returncode}", error=proc.stderr.strip())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--machine", type=Path, default=DEFAULT_MACHINE, help="the machine file to run")
    parser.add_argument("--sizes", default="0.5,1,5", help="millions of characters, comma-separated")
    parser.add_argument("--shapes", default="contract,flat,flat-policy")
    parser.add_argument("--paths", default="engine,cli")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a run is killed")
    parser.add_argument("--engine-child", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine_child:
        engine_child(str(args.machine), args.engine_child, args.db)
        return 0
    corpus = args.corpus.resolve()
    if not (corpus / "MANIFEST.tsv").is_file():
        print(f"error: no corpus at {corpus} (need MANIFEST.tsv); pass --corpus DIR", file=sys.stderr)
        return 2
    with (corpus / "MANIFEST.tsv").open(newline="", encoding="utf-8") as f:
        listed = {row["file"] for row in csv.DictReader(f, delimiter="\t")}
    missing = {CLAUSE_DOC, *PADDING, *POLICIES} - listed
    if missing:
        print(f"error: the corpus lacks {sorted(missing)}", file=sys.stderr)
        return 2
    console = Console(width=160)
    table = Table(title=f"contract_review on long documents: {args.machine}")
    for col in ("shape", "size", "path", "seconds", "status", "high risks", "all risks", "step latency (ms)", "verify"):
        table.add_column(col, justify="right" if col in ("size", "seconds") else "left")
    refusal = None
    with tempfile.TemporaryDirectory(prefix="statecraft-long-") as tmp:
        for shape in args.shapes.split(","):
            for size in args.sizes.split(","):
                chars = int(float(size) * 1_000_000)
                doc = Path(tmp) / f"{shape}-{size}.md"
                doc.write_text(build(corpus, shape, chars), encoding="utf-8")
                for path in args.paths.split(","):
                    db = Path(tmp) / f"{shape}-{size}-{path}.db"
                    run = (run_engine if path == "engine" else run_cli)(args.machine, doc, db, args.timeout)
                    steps = " ".join(f"{v}" for v in run.get("steps", {}).values())
                    verify = run.get("verify", "")
                    table.add_row(shape, f"{chars / 1e6:g} MB", path, f"{run['seconds']:.1f}", run["status"],
                                  " ".join(run.get("high", [])) or "-", " ".join(run.get("risks", [])) or "-",
                                  steps or "-", "OK" if verify.startswith("OK") else (verify or "-"))
                doc.unlink()
        limit = _max_document_chars(args.machine)
        if "cli" in args.paths.split(",") and limit is not None:
            over = Path(tmp) / "over.md"
            over.write_text("# Agreement\n\n" + "x" * (limit - len("# Agreement\n\n") + 1), encoding="utf-8")
            refusal = (limit + 1, run_cli(args.machine, over, Path(tmp) / "over.db", args.timeout))
    console.print(table)
    console.print("step latency: classify, detect_clauses, assess_risk, finalize (audited latency_ms of the "
                  "engine run); verify: statecraft audit verify on the CLI run's database")
    if refusal is not None:
        chars, run = refusal
        console.print(f"over the limit ({chars:,} characters), CLI: exit {run['exit']} in {run['seconds']:.1f} s; "
                      f"stderr: {run.get('error', '')}; audit verify: {run['verify']}", highlight=False)
    return 0


def _max_document_chars(machine: Path) -> int | None:
    """The machine's ``MAX_DOCUMENT_CHARS``, or ``None`` if it declares none (the code before issue #9)."""
    from statecraft.loader import load_sibling

    try:
        value = getattr(load_sibling(str(machine), "_contract_rules"), "MAX_DOCUMENT_CHARS", None)
    except ImportError:
        return None
    return value if isinstance(value, int) else None


if __name__ == "__main__":
    sys.exit(main())
