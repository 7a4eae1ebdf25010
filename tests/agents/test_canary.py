"""Canary agent versions: a deterministic traffic split by run id, recorded on every call."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statecraft import AsyncEngine, DefinitionError, Engine, Finish, RunStatus, StepContext
from statecraft.agents.canary import AsyncCanary, Canary, canary_bucket
from tests.agents.claude_machines import CONTRACT, SONNET, TASK, agent, counter, machine
from tests.support.fake_anthropic import FakeAnthropic, api_error, json_message

# With salt "triage", run-2, run-5, run-6, run-9 and run-10 fall below 50 (see the first test).
CANDIDATE_RUNS = {"run-2", "run-5", "run-6", "run-9", "run-10"}


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    with Engine(db_path, new_id=counter("run")) as eng:
        yield eng


def _arms(fake: FakeAnthropic, *, split: tuple[int, int] = (50, 50), asynchronous: bool = False) -> Canary:
    stable = agent(fake, agent_version="2", prompt_version="triage-v1", asynchronous=asynchronous)
    candidate = agent(fake, agent_version="3", prompt_version="triage-v2", asynchronous=asynchronous,
                      system="You triage incoming business documents. Cite the clause you relied on.")
    return Canary(stable, candidate, split=split)


def test_the_version_is_chosen_from_the_run_id_by_the_declared_split() -> None:
    buckets = {f"run-{i}": canary_bucket("triage", f"run-{i}") for i in range(1, 11)}
    expected = int.from_bytes(hashlib.sha256(b"triage\x00run-2").digest()[:8], "big") % 100

    assert buckets["run-2"] == expected == 13  # recomputable by a reviewer, from the run id alone
    assert {r for r, b in buckets.items() if b < 50} == CANDIDATE_RUNS
    share = sum(canary_bucket("triage", f"r{i}") < 10 for i in range(10_000)) / 10_000
    assert 0.09 < share < 0.11  # a 90/10 split sends about a tenth of the runs to the candidate


def test_each_call_and_the_step_event_record_the_version_that_acted(
    fake_anthropic: FakeAnthropic, engine: Engine
) -> None:
    fake_anthropic.push(*[json_message(CONTRACT, model=SONNET) for _ in range(10)])
    canary = _arms(fake_anthropic)
    runs = [engine.start(machine(canary), TASK) for _ in range(10)]

    for run in runs:
        want = ("3", "triage-v2") if run.run_id in CANDIDATE_RUNS else ("2", "triage-v1")
        [call] = [e for e in engine.events(run.run_id) if e.event_type == "agent.called"]
        step = next(e for e in engine.events(run.run_id) if e.event_type == "step.completed" and e.from_step == "triage")
        assert (call.agent_version, call.prompt_version) == want, run.run_id
        assert (step.agent_name, step.agent_version, step.prompt_version) == ("triage", *want), run.run_id
    sent = [r.body["system"] for r in fake_anthropic.requests]
    assert sum("Cite the clause" in s for s in sent) == len(CANDIDATE_RUNS)


def test_a_run_keeps_its_version_across_retries(fake_anthropic: FakeAnthropic, engine: Engine) -> None:
    from tests.agents.claude_machines import quick_retries

    fake_anthropic.push(api_error(529, "Overloaded"), json_message(CONTRACT, model=SONNET))
    run = engine.start(machine(_arms(fake_anthropic), retry=quick_retries(2)), TASK)  # run-1: stable

    versions = [e.agent_version for e in engine.events(run.run_id) if e.event_type == "agent.called"]
    assert run.status is RunStatus.DONE and versions == ["2", "2"]


def test_the_split_and_both_versions_are_part_of_the_machine_digest(fake_anthropic: FakeAnthropic) -> None:
    ninety = machine(_arms(fake_anthropic, split=(90, 10)))
    eighty = machine(_arms(fake_anthropic, split=(80, 20)))

    assert ninety.steps["triage"].agent_version == "2|3@90/10"
    assert ninety.describe()["steps"][0]["prompt_version"] == "triage-v1|triage-v2"
    assert ninety.digest != eighty.digest


def test_two_async_agents_make_an_async_canary_the_engines_await(
    fake_anthropic: FakeAnthropic, db_path: Path
) -> None:
    fake_anthropic.push(*[json_message(CONTRACT, model=SONNET) for _ in range(2)])
    canary = _arms(fake_anthropic, asynchronous=True)
    assert isinstance(canary, AsyncCanary)

    async def main() -> list[str | None]:
        async with AsyncEngine(db_path, new_id=counter("run")) as engine:
            runs = [await engine.start(machine(canary), TASK) for _ in range(2)]
            events = [e for r in runs for e in await engine.events(r.run_id)]
        return [e.agent_version for e in events if e.event_type == "agent.called"]

    assert asyncio.run(main()) == ["2", "3"]  # run-1 stable, run-2 candidate


def _plain(version: str) -> Any:
    def act(state: Any, ctx: StepContext) -> Finish:
        return Finish()

    act.agent_version = version  # type: ignore[attr-defined]
    return act


async def _async_act(state: Any, ctx: StepContext) -> Finish:
    return Finish()


_async_act.agent_version = "9"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("arms", "kwargs", "fragment"), [
    ((_plain("1"), _plain("1")), {}, "both agents have agent_version '1'"),
    ((_plain("1"), _plain("2")), {"split": (90, 20)}, "summing to 100"),
    ((_plain("1"), lambda s, c: Finish()), {}, "candidate agent needs an agent_version"),
    ((_plain("1"), _async_act), {}, "both be sync or both be async"),
])
def test_a_bad_canary_is_refused_when_declared(arms: tuple[Any, Any], kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(DefinitionError, match=None) as raised:
        Canary(*arms, **kwargs)
    assert fragment in str(raised.value)
