"""The engine against real SQLite files: lifecycle, approvals, illegal outcomes, persistence."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import BaseModel

from statecraft import (
    ApprovalMismatch,
    Engine,
    Finish,
    IllegalTransition,
    Machine,
    MachineMismatch,
    NotAStatecraftDatabase,
    RunError,
    RunNotFound,
    RunStatus,
    Step,
    StoreError,
)
from tests.support.toy import machine as toy

TOY_REF = str(Path(__file__).parent / "support" / "toy.py")


def _events(engine: Engine, run_id: str) -> list[str]:
    return [e.event_type for e in engine.events(run_id)]


def test_a_short_document_runs_to_done_with_one_event_per_transition(engine: Engine) -> None:
    run = engine.start(toy, "two words")
    assert run.status is RunStatus.DONE
    assert run.state["words"] == 2 and run.state["published"] is True
    assert _events(engine, run.run_id) == [
        "run.created",
        "run.started",
        "step.completed",
        "step.completed",
        "run.completed",
    ]
    assert run.run_seq == 5 and run.steps_taken == 3


def test_a_long_document_waits_at_the_gate_with_a_bound_proposal(engine: Engine) -> None:
    run = engine.start(toy, "one two three four five")
    assert run.status is RunStatus.WAITING_FOR_APPROVAL
    assert run.step == "gate"
    assert run.pending is not None
    assert run.pending.resume_at == "publish"
    assert run.pending.reason == "5 words exceed the threshold of 3"
    assert len(run.pending.proposal_digest) == 64
    requested = engine.events(run.run_id)[-1]
    assert requested.event_type == "approval.requested"
    assert run.pending.proposal_digest in (requested.payload_json or "")


def test_approval_names_the_approver_and_references_the_request(engine: Engine) -> None:
    run = engine.start(toy, "one two three four five")
    assert run.pending is not None
    done = engine.approve(run.run_id, by="alice@example.com", comment="fine", digest=run.pending.proposal_digest)
    assert done.status is RunStatus.DONE
    granted = [e for e in engine.events(run.run_id) if e.event_type == "approval.granted"][0]
    assert granted.actor_type == "human" and granted.actor_id == "alice@example.com"
    assert granted.caused_by_event_id == run.pending.requested_event_id
    assert granted.reason == "fine"
    assert run.pending.proposal_digest in (granted.payload_json or "")
    assert (granted.from_status, granted.to_status) == ("WAITING_FOR_APPROVAL", "RUNNING")
    assert (granted.from_step, granted.to_step) == ("gate", "publish")


def test_approving_with_a_stale_digest_is_refused_and_writes_nothing(engine: Engine) -> None:
    run = engine.start(toy, "one two three four five")
    before = len(engine.events())
    with pytest.raises(ApprovalMismatch):
        engine.approve(run.run_id, by="alice", digest="0" * 64)
    assert len(engine.events()) == before
    assert engine.get(run.run_id).status is RunStatus.WAITING_FOR_APPROVAL


def test_approving_a_done_run_is_rejected(engine: Engine) -> None:
    run = engine.start(toy, "short")
    before = len(engine.events())
    with pytest.raises(IllegalTransition) as info:
        engine.approve(run.run_id, by="alice")
    assert info.value.status == "DONE" and info.value.trigger == "approve"
    assert info.value.run_id == run.run_id
    assert len(engine.events()) == before


def test_rejection_fails_the_run_and_retry_asks_again(engine: Engine) -> None:
    run = engine.start(toy, "one two three four five")
    failed = engine.reject(run.run_id, by="bob", reason="too long")
    assert failed.status is RunStatus.FAILED
    assert failed.error_code == "rejected" and failed.reason == "too long"
    again = engine.retry(run.run_id, by="ops")
    # A retry re-runs the gate step: it never bypasses the approval.
    assert again.status is RunStatus.WAITING_FOR_APPROVAL
    assert again.error_code is None
    assert _events(engine, run.run_id)[-3:] == ["approval.denied", "run.retried", "approval.requested"]


def test_decisions_need_a_named_actor_and_a_reason(engine: Engine) -> None:
    run = engine.start(toy, "one two three four five")
    with pytest.raises(RunError):
        engine.approve(run.run_id, by="  ")
    with pytest.raises(RunError):
        engine.reject(run.run_id, by="bob", reason="")


def test_cancel_works_from_idle_running_and_waiting(engine: Engine) -> None:
    idle = engine.create(toy, "x")
    running = engine.start(toy, "x", advance=False)
    waiting = engine.start(toy, "one two three four five")
    for run in (idle, running, waiting):
        cancelled = engine.cancel(run.run_id, by="ops", reason="no longer needed")
        assert cancelled.status is RunStatus.FAILED and cancelled.error_code == "cancelled"
        assert cancelled.pending is None


def test_cancelling_a_done_run_is_illegal(engine: Engine) -> None:
    run = engine.start(toy, "x")
    with pytest.raises(IllegalTransition):
        engine.cancel(run.run_id, by="ops", reason="late")


@pytest.mark.parametrize(
    ("text", "code", "fragment"),
    [
        ("wander", "undeclared_edge", "'nowhere'"),
        ("trespass", "unowned_field", "['published']"),
        ("negative", "schema_violation", "'words'"),
        ("garbage", "not_an_outcome", "not Goto"),
        ("explode", "agent_error", "RuntimeError: the counter exploded"),
    ],
)
def test_a_bad_agent_outcome_fails_the_run_with_the_reason_audited(
    engine: Engine, text: str, code: str, fragment: str
) -> None:
    run = engine.start(toy, text)
    assert run.status is RunStatus.FAILED
    assert run.step == "count"
    assert run.error_code == code
    assert fragment in (run.reason or "")
    last = engine.events(run.run_id)[-1]
    assert last.event_type == "run.failed" and last.error_code == code
    assert fragment in (last.reason or "")
    # The bad update never reached the state.
    assert run.state["words"] == 0 and run.state["published"] is False


def test_unknown_run_ids_raise_run_not_found(engine: Engine) -> None:
    for call in (
        lambda: engine.get("nope"),
        lambda: engine.approve("nope", by="a"),
        lambda: engine.cancel("nope", by="a", reason="r"),
        lambda: engine.retry("nope", by="a"),
    ):
        with pytest.raises(RunNotFound):
            call()


def test_runs_survive_reopening_the_database_and_continue_from_their_checkpoint(db_path: Path) -> None:
    with Engine(db_path) as first:
        run = first.start(toy, "one two three four five", ref=TOY_REF)
    with Engine(db_path) as second:  # a new process would know nothing but the ref
        assert second.get(run.run_id).status is RunStatus.WAITING_FOR_APPROVAL
        done = second.approve(run.run_id, by="alice")
        assert done.status is RunStatus.DONE
        assert [e.event_type for e in second.events(run.run_id)].count("step.completed") == 1


def test_a_changed_machine_definition_is_refused_for_an_existing_run(db_path: Path, tmp_path: Path) -> None:
    source = Path(TOY_REF).read_text()
    copy = tmp_path / "toy_copy.py"
    copy.write_text(source)
    with Engine(db_path) as first:
        from statecraft import load_machine

        run = first.start(load_machine(str(copy)), "one two three four five", ref=str(copy))
    copy.write_text(source.replace('"toy",\n    "1"', '"toy",\n    "2"'))
    with Engine(db_path) as second:
        before = second.events()
        with pytest.raises(MachineMismatch, match="the definition and code changed") as info:
            second.approve(run.run_id, by="alice")
        # The version bump is in the declarations and in the file's text.
        assert (info.value.changed, info.value.files) == ("definition and code", (str(copy.resolve()),))
        # Refused before anything was written (issue #8: it used to approve, then fail).
        assert second.events() == before
        assert second.get(run.run_id).status is RunStatus.WAITING_FOR_APPROVAL


def test_the_task_is_stored_once_however_many_steps_read_it(engine: Engine) -> None:
    text = "word " * 20_000
    run = engine.start(toy, text)
    assert engine.task(run.run_id) == text
    with engine.db.read() as conn:
        from sqlalchemy import text as sql

        copies = conn.execute(
            sql("SELECT count(*) FROM blob WHERE size >= :n"), {"n": len(text)}
        ).scalar_one()
    assert copies == 1


def test_list_filters_by_status_and_machine_newest_first(engine: Engine) -> None:
    a = engine.start(toy, "x")
    b = engine.start(toy, "one two three four five")
    c = engine.start(toy, "y")
    assert [r.run_id for r in engine.list()] == [c.run_id, b.run_id, a.run_id]
    assert [r.run_id for r in engine.list(status="WAITING_FOR_APPROVAL")] == [b.run_id]
    assert engine.list(machine="other") == []


def test_agents_see_only_the_fields_their_step_reads(engine: Engine) -> None:
    seen: list[set[str]] = []

    class S(BaseModel):
        a: int = 1
        b: int = 2

    def look(state: BaseModel, ctx: object) -> Finish:
        seen.append(set(type(state).model_fields))
        return Finish()

    m = Machine("peek", "1", S, [Step("look", look, reads=["a"], may_finish=True)])
    engine.start(m, {})
    assert seen == [{"a"}]


def test_a_closed_engine_refuses_work(db_path: Path) -> None:
    eng = Engine(db_path)
    eng.close()
    with pytest.raises(StoreError, match="closed"):
        eng.list()


def test_a_file_that_is_not_a_statecraft_database_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(NotAStatecraftDatabase, match="no statecraft schema"):
        Engine(other)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(NotAStatecraftDatabase):
        Engine(junk)


@pytest.mark.parametrize("where", [":memory:", "sqlite://", "sqlite:///:memory:", "file:runs?mode=memory&cache=shared"])
def test_an_in_memory_database_is_refused_with_what_to_pass_instead(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each connection to it would be a new, empty database: the writer, the
    # readers and the checkpoint thread would each see a different ledger.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="in-memory SQLite database cannot hold a statecraft ledger.*pass a file path"):
        Engine(where)
    assert list(tmp_path.iterdir()) == []  # and nothing was created under a look-alike name


@pytest.mark.parametrize("url", ["mysql://root@127.0.0.1/test", "duckdb:///x.duckdb", "mssql+pyodbc://h/db"])
def test_a_database_statecraft_does_not_run_on_is_refused_in_one_line(url: str) -> None:
    with pytest.raises(StoreError, match="not a database statecraft runs on; pass a SQLite file path or a postgresql:// URL"):
        Engine(url)


def test_the_audit_table_refuses_update_and_delete(engine: Engine, db_path: Path) -> None:
    engine.start(toy, "x")
    with sqlite3.connect(db_path) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit_event SET actor_id = 'mallory' WHERE seq = 2")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit_event WHERE seq = 2")


def test_run_rows_equal_the_fold_of_their_events(engine: Engine) -> None:
    runs = [engine.start(toy, t) for t in ("x", "one two three four five", "explode")]
    engine.approve(runs[1].run_id, by="alice")
    for run in runs:
        current = engine.get(run.run_id)
        last = engine.events(run.run_id)[-1]
        assert (last.to_status, last.to_step, last.state_sha256, last.run_seq) == (
            current.status.value,
            current.step,
            current.state_sha256,
            current.run_seq,
        )


def test_an_engine_stopped_before_its_first_advance_advances_nothing(db_path: Path) -> None:
    # The step loop is made on first use (issue #9): a stop() that comes first
    # must still hold for every later advance of this engine.
    with Engine(db_path) as stopped:
        stopped.stop()
        run = stopped.start(toy, "two words")
        assert (run.status, run.steps_taken) == (RunStatus.RUNNING, 0)
        assert stopped.advance(run.run_id).steps_taken == 0
    with Engine(db_path, machines=[toy]) as other:  # the stopped engine left no lease behind
        assert other.advance(run.run_id).status is RunStatus.DONE


def test_an_engine_that_only_reads_closes_and_then_refuses_use(db_path: Path) -> None:
    with Engine(db_path) as writer:
        run_id = writer.start(toy, "two words").run_id
    reader = Engine(db_path)
    assert reader.get(run_id).status is RunStatus.DONE
    reader.close()
    with pytest.raises(StoreError, match="closed"):
        reader.get(run_id)
