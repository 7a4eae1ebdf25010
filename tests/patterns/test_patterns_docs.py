"""docs/patterns.md stays true: its graphs are the machines' own, its example runs.

Each ``<!-- graph: SOURCE -->`` marker is followed by a Mermaid block that
must equal ``Machine.mermaid()`` of SOURCE: ``machines/NAME.py`` (loaded by
path) or ``example:NAME`` (the ``machine`` defined by the doc's Python
example). Regenerate every block with::

    python tests/patterns/test_patterns_docs.py --write
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "patterns.md"
_BLOCK = re.compile(r"(<!-- graph: (?P<source>[^ ]+) -->\n```mermaid\n)(?P<body>.*?)(```)", re.S)


def _example_source(text: str) -> str:
    return text.split("```python\n", 1)[1].split("\n```", 1)[0]


def _run_example(text: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "patterns_doc_example"}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # the example writes summary.db in the working directory
        try:
            exec(compile(_example_source(text), f"{DOC}:example", "exec"), namespace)
        finally:
            os.chdir(cwd)
    return namespace


def _graph(source: str, example: dict[str, Any]) -> str:
    if source.startswith("example:"):
        return str(example["machine"].mermaid()).rstrip("\n")
    from statecraft import load_machine

    return str(load_machine(str(REPO / source)).mermaid()).rstrip("\n")


def _rendered(text: str) -> str:
    example = _run_example(text)
    return _BLOCK.sub(
        lambda m: f"{m.group(1)}{_graph(m.group('source'), example)}\n{m.group(4)}", text
    )


def test_every_graph_in_docs_patterns_is_generated_from_its_machine() -> None:
    text = DOC.read_text(encoding="utf-8")
    sources = [m.group("source") for m in _BLOCK.finditer(text)]
    assert sources == [
        "example:summary",
        "machines/support_router.py",
        "machines/research_fanout.py",
        "machines/document_intake.py",
        "machines/compliance_debate.py",
        "machines/invoice_approval.py",
    ]
    assert text == _rendered(text), "stale graph: run python tests/patterns/test_patterns_docs.py --write"


def test_the_docs_example_runs_as_written() -> None:
    namespace = _run_example(DOC.read_text(encoding="utf-8"))
    assert namespace["run"].state == {"words": 6, "headline": "Statecraft runs agents"}


def test_every_reference_machine_has_a_sample_input_named_in_the_docs() -> None:
    text = DOC.read_text(encoding="utf-8")
    for sample in re.findall(r"--input (machines/samples/[\w-]+\.\w+)", text):
        assert (REPO / sample).is_file(), sample


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        sys.path.insert(0, str(REPO))
        DOC.write_text(_rendered(DOC.read_text(encoding="utf-8")), encoding="utf-8")
        print(f"regenerated the graphs in {DOC.relative_to(REPO)}")
    else:
        print(__doc__)
