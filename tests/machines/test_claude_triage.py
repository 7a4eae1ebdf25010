"""machines/claude_triage.py, offline: its Claude calls go to the loopback stand-in through the real SDK.

The machine reads ``STATECRAFT_LLM_BASE_URL`` when it is loaded; the CLI
loads it afresh for every command, so each test points it at its own
stand-in. Nothing here reaches the network (tests/conftest.py's guard).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from statecraft import load_machine
from statecraft.agents.canary import Canary
from tests.support.fake_anthropic import FakeAnthropic, api_error, fake_anthropic, json_message  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
MACHINE = str(REPO / "machines" / "claude_triage.py")
BILLING = str(REPO / "machines" / "samples" / "ticket_billing.json")
MODEL = "claude-haiku-4-5-20251001"


@pytest.fixture
def stand_in(fake_anthropic: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> FakeAnthropic:  # noqa: F811
    monkeypatch.setenv("STATECRAFT_LLM_BASE_URL", fake_anthropic.base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-offline")
    return fake_anthropic


def _events(cli: Any, run_id: str) -> list[dict[str, Any]]:
    result = cli("audit", "log", "--run", run_id, "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _payload(event: dict[str, Any]) -> dict[str, Any]:
    return json.loads(event["payload_json"] or "{}")  # type: ignore[no-any-return]


def test_it_imports_without_the_network_or_its_environment() -> None:
    code = (
        "import os, socket\n"
        "os.environ.pop('STATECRAFT_LLM_BASE_URL', None); os.environ.pop('ANTHROPIC_API_KEY', None)\n"
        "def refuse(*a, **k): raise SystemExit('tried to connect')\n"
        "socket.socket.connect = refuse\n"
        f"from statecraft import load_machine; m = load_machine({MACHINE!r}); print(m.name, len(m.steps))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["claude-triage", "5"]


def test_its_classify_step_is_a_canary_of_two_guarded_claude_agents() -> None:
    m = load_machine(MACHINE)
    canary = m.steps["classify"].agent

    assert isinstance(canary, Canary) and canary.split == (90, 10)
    for arm in (canary.stable, canary.candidate):
        assert arm.rate_limit.requests_per_minute == 50 and arm.breaker.failure_threshold == 5
        assert arm.context_budget.max_input_tokens == 8_000
    assert m.steps["classify"].on_error == "human"


def test_a_ticket_is_triaged_through_the_stand_in_and_every_control_is_audited(stand_in: FakeAnthropic, cli: Any) -> None:
    stand_in.push(json_message({"queue": "billing", "priority": "normal", "reason": "a duplicate charge"}, model=MODEL))

    run = cli.json("start", MACHINE, "--input", BILLING, "--by", "user:support")

    assert run["status"] == "DONE" and run["state"]["queue"] == "billing"
    assert run["state"]["reply"].startswith("Re: Charged twice for March - our billing team")
    assert "Charged twice" in stand_in.last.body["messages"][0]["content"]
    [call] = [e for e in _events(cli, run["run_id"]) if e["event_type"] == "agent.called"]
    detail = _payload(call)
    arm = load_machine(MACHINE).steps["classify"].agent.choose(run["run_id"])[1]
    assert (call["agent_version"], call["prompt_version"]) == (arm.agent_version, arm.prompt_version)
    assert (call["model_id"], detail["model_requested"]) == (MODEL, "claude-haiku-4-5")
    assert detail["rate_limit"] == {"key": "anthropic:claude-haiku-4-5", "waited_ms": 0}
    assert detail["context"]["cuts"] == []
    verified = cli("audit", "verify")
    assert verified.exit_code == 0 and verified.stdout.startswith("OK up to seq")


def test_when_the_api_keeps_failing_the_breaker_opens_and_tickets_go_to_a_human(
    stand_in: FakeAnthropic, cli: Any
) -> None:
    stand_in.push(*[api_error(529, "Overloaded") for _ in range(5)])

    runs = [cli.json("start", MACHINE, "--input", BILLING) for _ in range(4)]

    assert [r["state"]["queue"] for r in runs] == ["human"] * 4  # the error edge: nobody is left waiting
    assert len(stand_in.requests) == 5  # 2 + 2 + 1; then the breaker stopped the calls
    codes = [e["error_code"] for r in runs for e in _events(cli, r["run_id"]) if e["event_type"] == "step.error_edge"]
    assert codes == ["llm_overloaded", "llm_overloaded", "circuit_open", "circuit_open"]
    opened = [json.loads(line) for line in cli("audit", "log", "--event", "circuit.opened", "--json").stdout.splitlines()]
    assert len(opened) == 1 and opened[0]["run_id"] is None
    assert cli("audit", "verify").exit_code == 0


def test_garbage_from_the_model_is_retried_once_then_goes_to_a_human(stand_in: FakeAnthropic, cli: Any) -> None:
    stand_in.push(json_message("Billing, I think.", model=MODEL), json_message({"queue": "sales"}, model=MODEL))

    run = cli.json("start", MACHINE, "--input", BILLING)

    assert run["state"]["queue"] == "human" and len(stand_in.requests) == 2
    edge = [e for e in _events(cli, run["run_id"]) if e["event_type"] == "step.error_edge"]
    assert [e["error_code"] for e in edge] == ["invalid_llm_output"]
