"""Python examples in the docs are executed, so they cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("page", ["embedding.md"])
def test_every_python_block_of_the_page_runs(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.+?)```", (DOCS / page).read_text(), re.S)
    assert blocks, f"{page} has no python examples"
    namespace: dict[str, object] = {"__file__": str(tmp_path / "docs_example.py")}
    for block in blocks:
        exec(compile(block, str(DOCS / page), "exec"), namespace)
