"""docs/audit.md's examples run, and its formats match the code."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from pathlib import Path

import pytest

from statecraft.audit.anchor import ANCHOR_MAGIC, parse_anchor
from statecraft.cli import main
from statecraft.store.db import Database

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
TEXT = DOC.read_text(encoding="utf-8")
audit = main.commands["audit"]


def test_the_recompute_a_hash_yourself_snippet_runs(tmp_path, monkeypatch) -> None:
    snippet = re.search(r"```python\n(.*?)```", TEXT, re.S).group(1)  # type: ignore[union-attr]
    from tests.audit.invoices import build_reviewed

    build_reviewed(tmp_path / "statecraft.db")
    monkeypatch.chdir(tmp_path)

    exec(compile(snippet, str(DOC), "exec"), {})


def test_an_anchor_written_by_hand_as_documented_is_accepted(tmp_path) -> None:
    with Database(tmp_path / "s.db") as db:
        ledger_id = db.ledger_id
    conn = sqlite3.connect(tmp_path / "s.db")
    seq, entry_hash = conn.execute("SELECT seq, entry_hash FROM audit_event ORDER BY seq DESC LIMIT 1").fetchone()
    conn.close()
    body = (
        f"{ANCHOR_MAGIC}\nledger_id {ledger_id}\nseq {seq}\nentry_hash {entry_hash}\n"
        "time 2025-06-30T23:00:00.000000Z\n"
    )
    text = body + f"sha256 {hashlib.sha256(body.encode()).hexdigest()}\n"  # `sha256sum` of the five lines

    anchor = parse_anchor(text)

    assert (anchor.seq, anchor.entry_hash, anchor.ledger_id) == (seq, entry_hash, ledger_id)
    documented = re.search(r"```\n(statecraft-anchor v1\n.*?)```", TEXT, re.S).group(1)  # type: ignore[union-attr]
    assert [line.split()[0] for line in documented.splitlines()][1:] == [
        line.split()[0] for line in text.splitlines()
    ][1:]


@pytest.mark.parametrize("name", sorted(audit.commands))  # type: ignore[attr-defined]
def test_every_audit_command_is_documented_and_its_help_has_an_example(name) -> None:
    command = audit.commands[name]  # type: ignore[attr-defined]

    assert "Example:" in (command.help or ""), name
    assert f"audit {name}" in TEXT, name
