"""docs/agents.md: its examples run, and its error table is the code's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from statecraft import Engine, RunStatus
from statecraft.agents import errors as agent_errors
from tests.support.fake_anthropic import FakeAnthropic, json_message, usage

DOC = Path(__file__).resolve().parents[2] / "docs" / "agents.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_examples_run_in_order_and_the_machine_runs_against_the_stand_in(
    fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-doc")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_anthropic.base_url)
    namespace: dict[str, Any] = {"__name__": "docs_agents"}
    for block in _blocks():
        exec(compile(block, str(DOC), "exec", dont_inherit=True), namespace)

    namespace["test_triage_routes_a_contract_to_legal"](fake_anthropic)

    fake_anthropic.push(json_message({"kind": "invoice", "confidence": 80, "reason": "a total due"}))
    with Engine(tmp_path / "doc.db") as engine:
        run = engine.start(namespace["machine"], "Invoice 42 from Acme, total due EUR 1,200")
    assert run.status is RunStatus.DONE
    assert run.state["kind"] == "invoice" and run.state["done"] is True
    fake_anthropic.assert_all_used()


def test_the_error_table_matches_the_mapping_in_the_code() -> None:
    text = DOC.read_text()
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (yes|no) \| [^|]* \| (.*) \|$", text, flags=re.M)
    assert rows, "error table not found in docs/agents.md"
    documented: dict[str, str] = {}
    for ours_name, code, retryable, sdk_names in rows:
        ours = getattr(agent_errors, ours_name)
        assert ours.error_code == code, ours_name
        assert ours.non_retryable is (retryable == "no"), ours_name
        for sdk_name in re.findall(r"`([\w.]+)`", sdk_names):
            assert sdk_name not in documented, f"{sdk_name} is listed twice"
            documented[sdk_name] = ours_name
    in_code = {name: ours.__name__ for name, ours in agent_errors._BY_NAME.items()}
    in_code["json.JSONDecodeError"] = agent_errors._mapping()[__import__("json").JSONDecodeError].__name__
    assert documented == in_code
