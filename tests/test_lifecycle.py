"""The lifecycle table: exactly the edges of DESIGN.md, nothing else."""

from __future__ import annotations

import itertools

import pytest

from statecraft import LEGAL_EDGES, IllegalTransition, RunStatus, Trigger
from statecraft.lifecycle import check_transition, lifecycle_mermaid

DESIGN_TABLE = {
    ("IDLE", "start"): "RUNNING",
    ("RUNNING", "step"): "RUNNING",
    ("RUNNING", "request_approval"): "WAITING_FOR_APPROVAL",
    ("WAITING_FOR_APPROVAL", "approve"): "RUNNING",
    ("WAITING_FOR_APPROVAL", "reject"): "FAILED",
    ("WAITING_FOR_APPROVAL", "expire"): "FAILED",
    ("RUNNING", "finish"): "DONE",
    ("RUNNING", "fail"): "FAILED",
    ("IDLE", "cancel"): "FAILED",
    ("RUNNING", "cancel"): "FAILED",
    ("WAITING_FOR_APPROVAL", "cancel"): "FAILED",
    ("FAILED", "retry"): "RUNNING",
}


def test_the_table_is_exactly_the_design() -> None:
    assert {(s.value, t.value): d.value for s, t, d in LEGAL_EDGES} == DESIGN_TABLE


@pytest.mark.parametrize(("status", "trigger"), list(itertools.product(RunStatus, Trigger)))
def test_every_status_trigger_pair_is_decided_by_the_table(status: RunStatus, trigger: Trigger) -> None:
    expected = DESIGN_TABLE.get((status.value, trigger.value))
    if expected is None:
        with pytest.raises(IllegalTransition) as info:
            check_transition(status, trigger, run_id="r")
        assert (info.value.status, info.value.trigger, info.value.run_id) == (status.value, trigger.value, "r")
    else:
        assert check_transition(status, trigger) == expected


def test_done_accepts_no_trigger() -> None:
    for trigger in Trigger:
        with pytest.raises(IllegalTransition, match="DONE is terminal"):
            check_transition(RunStatus.DONE, trigger)


def test_the_lifecycle_renders_as_mermaid() -> None:
    text = lifecycle_mermaid()
    assert "IDLE --> RUNNING: start" in text
    assert "FAILED --> RUNNING: retry" in text
    assert "DONE -->" not in text
