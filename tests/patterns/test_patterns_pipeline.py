"""Sequential pipeline: contracts checked between stages; the task reaches every stage, stored once."""

from __future__ import annotations

import sqlite3
from typing import Any

from pydantic import BaseModel

from statecraft import Engine, Machine, RunStatus
from statecraft.patterns import Stage, pipeline


class Doc(BaseModel):
    words: int | None = None
    upper: str | None = None
    verdict: str | None = None


class Counted(BaseModel):
    words: int


SEEN: list[Any] = []


def count(state: Any, ctx: Any) -> dict[str, Any]:
    SEEN.append(ctx.task)
    return {"words": len(ctx.task.split())}


def shout(state: Any, ctx: Any) -> Doc:
    SEEN.append(ctx.task)
    return Doc(upper=ctx.task.upper())


def judge(state: Any, ctx: Any) -> dict[str, Any]:
    SEEN.append(ctx.task)
    return {"verdict": "long" if state.words > 3 else "short"}


def _machine(first: Any = count) -> Machine[Doc]:
    return Machine("pipe", "1", Doc, initial=lambda task: Doc(), steps=pipeline([
        Stage("count", first, writes=["words"], output=Counted),
        Stage("shout", shout, writes=["upper"], reads=["words"]),
        Stage("judge", judge, writes=["verdict"], reads=["words"]),
    ]))


def test_stages_run_in_order_and_every_stage_sees_the_original_task(engine: Engine) -> None:
    SEEN.clear()
    task = "the quick brown fox jumps"
    run = engine.start(_machine(), task)
    assert run.status is RunStatus.DONE
    assert run.state == {"words": 5, "upper": task.upper(), "verdict": "long"}
    assert SEEN == [task, task, task]
    assert [(e.from_step, e.to_step) for e in engine.events(run.run_id) if e.event_type == "step.completed"] == [
        ("count", "shout"), ("shout", "judge")]


def test_the_task_is_stored_once_and_never_copied_into_the_state_or_an_event(engine: Engine, db_path: Any) -> None:
    task = "intent " * 2000
    run = engine.start(_machine(), task)
    with sqlite3.connect(db_path) as conn:
        blobs = [row[0] for row in conn.execute("SELECT body FROM blob")]
        payloads = [row[0] or "" for row in conn.execute("SELECT payload_json FROM audit_event")]
    assert sum(1 for b in blobs if task in b.decode()) == 1
    assert not any("intent intent" in p for p in payloads)
    assert "intent" not in str(run.state)


def test_an_output_that_breaks_the_stage_contract_stops_before_the_next_stage(engine: Engine) -> None:
    SEEN.clear()

    def miscount(state: Any, ctx: Any) -> dict[str, Any]:
        return {"words": "many"}

    run = engine.start(_machine(miscount), "a b c")
    assert run.status is RunStatus.FAILED and run.step == "count"
    assert run.error_code == "contract_violation"
    assert "stage 'count' broke its contract Counted at 'words'" in (run.reason or "")
    assert SEEN == []  # shout never ran


def test_an_output_outside_the_stages_writes_is_refused_by_the_machine(engine: Engine) -> None:
    def overreach(state: Any, ctx: Any) -> dict[str, Any]:
        return {"words": 1, "verdict": "short"}

    m = Machine("pipe2", "1", Doc, initial=lambda t: Doc(), steps=pipeline([
        Stage("count", overreach, writes=["words"]),
    ]))
    run = engine.start(m, "x")
    assert run.status is RunStatus.FAILED and run.error_code == "unowned_field"


def test_the_last_stage_finishes_or_hands_over_to_then() -> None:
    steps = pipeline([Stage("a", count, writes=["words"]), Stage("b", judge, writes=["verdict"])], then="c")
    assert [(s.name, s.next, s.may_finish) for s in steps] == [("a", ("b",), False), ("b", ("c",), False)]
    steps = pipeline([Stage("a", count, writes=["words"])])
    assert steps[0].may_finish and steps[0].next == ()
