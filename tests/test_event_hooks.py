"""``Engine(on_event=…)`` and ``Worker(on_event=…)``: a service learns of transitions without polling."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

from statecraft import Engine, RunStatus, StepReport, Worker
from statecraft.loader import load_machine
from tests.support.toy import machine as toy

REPO = Path(__file__).resolve().parents[1]
TOY = str(REPO / "tests" / "support" / "toy.py")


def test_the_engine_reports_every_transition_it_commits_after_the_commit(db_url: str) -> None:
    seen: list[StepReport] = []
    committed_when_told: list[bool] = []

    def listener(report: StepReport) -> None:
        seen.append(report)
        # Told after the commit: another connection already sees the transition.
        with Engine(db_url) as other:
            committed_when_told.append(report.event_type in {e.event_type for e in other.events(report.run_id)})

    with Engine(db_url, on_event=listener) as engine:
        run = engine.start(toy, "one two three four five")
        assert run.status is RunStatus.WAITING_FOR_APPROVAL
        assert [r.event_type for r in seen] == [
            "run.created", "run.started", "step.completed", "approval.requested"
        ]
        assert seen[-1].status is RunStatus.WAITING_FOR_APPROVAL  # the gate, without polling
        engine.approve(run.run_id, by="alice@example.com", digest=run.pending.proposal_digest)
        assert [r.event_type for r in seen][-2:] == ["approval.granted", "run.completed"]
    assert all(committed_when_told)


def test_a_listener_that_raises_does_not_undo_or_stop_anything(db_url: str) -> None:
    def broken(report: StepReport) -> None:
        raise RuntimeError("listener down")

    with Engine(db_url, on_event=broken) as engine:
        run = engine.start(toy, "two words")
        assert run.status is RunStatus.DONE


def test_a_worker_reports_the_transitions_of_the_runs_it_advances(db_url: str) -> None:
    seen: list[StepReport] = []
    lock = threading.Lock()

    def listener(report: StepReport) -> None:
        with lock:
            seen.append(report)

    machine = load_machine(TOY)
    with Engine(db_url, machines=[machine]) as engine:
        run = engine.start(machine, "two words", ref=TOY, advance=False)
        Worker(engine, poll=timedelta(milliseconds=20), on_event=listener).run(until_idle=True)
        assert engine.get(run.run_id).status is RunStatus.DONE
    assert [r.event_type for r in seen if r.run_id == run.run_id][-1] == "run.completed"
