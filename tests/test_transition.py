"""The step commit hot path: one transaction, one audit event, the checkpoint view, and its shortcuts.

statecraft/transition.py writes every transition; statecraft/runner.py and
statecraft/store/txn.py take shortcuts on the way (a dedicated writer
connection, blobs known to be stored, the run row kept in memory). These
tests pin that the shortcuts change nothing that is stored.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from statecraft import Engine, Finish, Goto, Machine, RunStatus, Step
from statecraft._time import format_utc
from statecraft.audit.chain import (
    DOMAIN,
    HASHED_COLUMNS,
    canonical_json,
    compute_entry_hash,
    new_event_id,
)
from statecraft.runner import _KnownBlobs
from statecraft.store.db import Database
from statecraft.store.txn import _writer, read_one, read_tx, write_tx
from statecraft.transition import RunMoved
from tests.support.reliability import assert_ledger_ok
from tests.support.toy import machine as TOY


class Tally(BaseModel):
    n: int = 0


def _tally_machine(steps: int = 4) -> Machine[Tally]:
    def agent(i: int) -> Any:
        def step(state: Tally, ctx: object) -> object:
            if i == steps - 1:
                return Finish(update={"n": state.n + 1})
            return Goto(f"s{i + 1}", update={"n": state.n + 1} if i % 2 else {})

        step.__qualname__ = f"tally{i}"
        return step

    return Machine(
        "tally", "1", Tally,
        [
            Step(f"s{i}", agent(i), next=[] if i == steps - 1 else [f"s{i + 1}"], writes=["n"],
                 may_finish=i == steps - 1)
            for i in range(steps)
        ],
    )


class _Recorder:
    """Stands in for the writer connection and records each statement executed (triggers excluded)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self.statements.append(sql)
        return self.conn.execute(sql, *args)

    def close(self) -> None:
        self.conn.close()


def _recording(engine: Engine) -> _Recorder:
    writer = _writer(engine.db)
    recorder = _Recorder(writer.connection(engine.db))
    writer.raw = recorder  # type: ignore[assignment]
    return recorder


# -- the checkpoint view ------------------------------------------------------------


def test_checkpoint_is_a_view_with_one_row_per_run_event(engine: Engine) -> None:
    done = engine.start(_tally_machine(), {})
    engine.start(TOY, "four words at least")  # stops at the gate

    with engine.db.read() as conn:
        if engine.db.is_sqlite:
            kind = conn.exec_driver_sql("SELECT type FROM sqlite_master WHERE name = 'checkpoint'").scalar()
        else:
            found = conn.exec_driver_sql(
                "SELECT 1 FROM information_schema.views WHERE table_name = 'checkpoint' "
                "AND table_schema = current_schema()"
            ).scalar()
            kind = "view" if found else None
        checkpoints = conn.exec_driver_sql(
            "SELECT run_id, run_seq, status, step, state_sha256, created_at FROM checkpoint "
            "ORDER BY run_id, run_seq"
        ).all()
        events = conn.exec_driver_sql(
            "SELECT run_id, run_seq, to_status, to_step, state_sha256, occurred_at FROM audit_event "
            "WHERE run_id IS NOT NULL ORDER BY run_id, run_seq"
        ).all()

    assert kind == "view"
    assert [tuple(c) for c in checkpoints] == [tuple(e) for e in events]
    last = [c for c in checkpoints if c[0] == done.run_id][-1]
    assert (last[1], last[2], last[3], last[4]) == (done.run_seq, "DONE", done.step, done.state_sha256)


def test_the_ledger_genesis_and_other_runless_events_have_no_checkpoint(engine: Engine) -> None:
    with engine.db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM checkpoint").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM audit_event").scalar() == 1  # ledger.genesis


# -- one transaction per step --------------------------------------------------------


def test_a_step_commits_its_run_row_and_exactly_one_audit_event_in_one_transaction(db_path: Path) -> None:
    machine = _tally_machine()
    with Engine(db_path, machines=[machine]) as engine:
        run = engine.start(machine, {}, advance=False)
        recorder = _recording(engine)
        engine.advance(run.run_id)

    transactions: list[list[str]] = []
    for sql in recorder.statements:
        if sql.startswith("BEGIN"):
            transactions.append([])
        elif sql != "COMMIT" and transactions:
            transactions[-1].append(sql)
    steps = [t for t in transactions if any(s.startswith("INSERT INTO audit_event") for s in t)]
    assert len(steps) == 4  # three step.completed and one run.completed
    for statements_of_one in steps:
        assert sum(s.startswith("INSERT INTO audit_event") for s in statements_of_one) == 1
        assert sum(s.startswith("UPDATE run") for s in statements_of_one) == 1
        assert not any("checkpoint" in s for s in statements_of_one)
    assert sum(s.startswith("BEGIN") for s in recorder.statements) == recorder.statements.count("COMMIT")


def _fan_machine(branches: int) -> Machine[Any]:
    from statecraft.agents.base import Usage
    from statecraft.patterns import FanOutResult, fan_out

    class Fan(BaseModel):
        results: FanOutResult | None = None

    def branch(i: int) -> Any:
        def call(inp: Any, bctx: Any) -> int:
            bctx.record_usage(Usage(tokens_in=10 * i, tokens_out=i, cost_micros=100 * i))
            return i
        return call

    return Machine("fan_sub_calls", "1", Fan, [
        fan_out("fan", branches={f"b{i}": branch(i) for i in range(branches)}, into="results", max_concurrency=branches),
    ])


def _transactions(statements: list[str]) -> list[list[str]]:
    out: list[list[str]] = []
    for sql in statements:
        if sql.startswith("BEGIN"):
            out.append([])
        elif sql != "COMMIT" and out:
            out[-1].append(sql)
    return out


def test_a_steps_sub_call_events_update_the_run_row_once_not_once_each(db_path: Path) -> None:
    # Issue #11: a fan-out of 8 branches appends 8 agent.called events and a
    # fanout.completed before its step's own event; the run row is written
    # once for all of them, and the ledger head read once, not once per event.
    machine = _fan_machine(8)
    with Engine(db_path, machines=[machine]) as engine:
        run = engine.start(machine, {}, advance=False)
        recorder = _recording(engine)
        done = engine.advance(run.run_id)
        events = engine.events(run.run_id)
        assert_ledger_ok(engine)  # the run row folds from the events: run_seq, usage totals, last event

    step = [t for t in _transactions(recorder.statements) if sum(s.startswith("INSERT INTO audit_event") for s in t) > 1]
    assert len(step) == 1
    assert sum(s.startswith("INSERT INTO audit_event") for s in step[0]) == 10  # 8 branches, fanout.completed, run.completed
    assert sum(s.startswith("UPDATE run") for s in step[0]) == 2  # the sub-calls', then the step's
    assert sum(s.startswith("SELECT seq, entry_hash FROM audit_event") for s in step[0]) == 2
    assert done.status is RunStatus.DONE
    called = [e for e in events if e.event_type == "agent.called"]
    assert len(called) == 8
    assert [e.run_seq for e in events] == list(range(1, len(events) + 1))
    assert (done.tokens_in, done.tokens_out, done.cost_micros) == (280, 28, 2800)  # sum over i < 8 of 10i, i, 100i


def test_sub_calls_of_a_stale_writer_are_refused_and_write_nothing(db_path: Path) -> None:
    from statecraft.store.runs import load_run
    from statecraft.transition import SubCall, write_sub_calls

    with Engine(db_path) as engine:
        run = engine.start(TOY, {}, advance=False)
        db = engine.db
        with read_tx(db) as tx:
            row = load_run(tx, run.run_id)
            before = tx.one("SELECT COUNT(*) FROM audit_event")
        assert row is not None
        stale = {**row, "run_seq": row["run_seq"] - 1}  # another writer moved the run on since
        call = SubCall("agent.called", "a", {"agent_name": "a", "outcome": "success"}, None, (1, 1, 1))
        with pytest.raises(RunMoved), write_tx(db) as tx:
            write_sub_calls(tx, db.ledger_id, stale, [call, call], now=format_utc(datetime.now(UTC)), fence_owner=None)  # type: ignore[arg-type]
        with read_tx(db) as tx:
            assert tx.one("SELECT COUNT(*) FROM audit_event") == before
            assert load_run(tx, run.run_id) == row
        assert_ledger_ok(engine)


def test_blobs_already_stored_are_not_written_again(db_path: Path) -> None:
    machine = _tally_machine()
    with Engine(db_path, machines=[machine]) as engine:
        engine.start(machine, {})  # stores every output and state once
        run = engine.start(machine, {}, advance=False)
        recorder = _recording(engine)
        done = engine.advance(run.run_id)
        with engine.db.read() as reader:
            missing = reader.exec_driver_sql(
                "SELECT count(*) FROM audit_event e WHERE e.run_id = ? AND ("
                " (e.output_sha256 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM blob b WHERE b.sha256 = e.output_sha256))"
                " OR NOT EXISTS (SELECT 1 FROM blob b WHERE b.sha256 = e.state_sha256))",
                (run.run_id,),
            ).scalar()

    assert done.status is RunStatus.DONE
    assert not [s for s in recorder.statements if s.startswith("INSERT INTO blob")]
    assert missing == 0


def test_blobs_of_a_rolled_back_commit_are_not_remembered_as_stored(engine: Engine) -> None:
    runner = engine.runner

    def write(tx: Any, blobs: list[str]) -> Any:
        runner._blob(tx, b'{"never":"committed"}', "2026-01-01T00:00:00.000000Z", blobs)
        raise RunMoved("moved", run_id="r")

    assert runner._commit(write) is None
    digest = hashlib.sha256(b'{"never":"committed"}').hexdigest()
    assert digest not in runner._known_blobs
    with engine.db.read() as conn:
        from sqlalchemy import text

        assert conn.execute(text("SELECT count(*) FROM blob WHERE sha256 = :h"), {"h": digest}).scalar() == 0


def test_the_known_blob_cache_forgets_the_least_recently_used_hash_first() -> None:
    known = _KnownBlobs(3)
    known.add(["a", "b", "c"])
    assert "a" in known  # now the most recent
    known.add(["d"])

    assert "b" not in known
    assert all(h in known for h in ("a", "c", "d"))


def test_a_run_whose_state_changes_resumes_from_its_last_committed_state(db_path: Path) -> None:
    machine = _tally_machine(6)
    with Engine(db_path, machines=[machine]) as engine:
        run = engine.start(machine, {}, advance=False)
        engine.advance(run.run_id, max_transitions=3)
    with Engine(db_path, machines=[machine]) as engine:
        done = engine.advance(run.run_id)

    assert done.status is RunStatus.DONE
    assert done.state == {"n": 3}  # odd steps and the last one count
    assert done.steps_taken == 6


# -- the writer connection -------------------------------------------------------------


def test_closing_the_database_closes_its_writer_connection(db_path: Path) -> None:
    machine = _tally_machine()
    with Engine(db_path, machines=[machine]) as engine:
        engine.start(machine, {})
        assert Path(f"{db_path}-wal").exists()

    # SQLite removes the WAL when its last connection closes: none was left open.
    assert not Path(f"{db_path}-wal").exists()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT count(*) FROM run WHERE status = 'DONE'").fetchone() == (1,)


def test_a_failed_write_rolls_back_and_the_next_write_works(db_path: Path) -> None:
    db = Database(db_path)
    try:
        with pytest.raises(ZeroDivisionError), write_tx(db) as tx:
            tx.run("INSERT INTO statecraft_meta (key, value) VALUES (:k, :v)", {"k": "lost", "v": "1"})
            _ = 1 / 0
        with write_tx(db) as tx:
            tx.run("INSERT INTO statecraft_meta (key, value) VALUES (:k, :v)", {"k": "kept", "v": "2"})

        assert read_one(db, "SELECT value FROM statecraft_meta WHERE key = :k", {"k": "lost"}) is None
        with read_tx(db) as tx:
            assert tx.one("SELECT value FROM statecraft_meta WHERE key = :k", {"k": "kept"}) == ("2",)
    finally:
        db.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_through_a_connection_of_its_own(db_path: Path) -> None:
    db = Database(db_path)
    try:
        with write_tx(db) as tx:
            tx.run("INSERT INTO statecraft_meta (key, value) VALUES ('parent', '1')")
        parent_conn = _writer(db).raw
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            try:
                with write_tx(db) as tx:
                    tx.run("INSERT INTO statecraft_meta (key, value) VALUES ('child', '1')")
                os._exit(0 if _writer(db).raw is not parent_conn else 3)
            except BaseException:  # noqa: BLE001 - anything at all must end the child
                os._exit(2)
        _, status = os.waitpid(pid, 0)

        assert os.waitstatus_to_exitcode(status) == 0
        assert _writer(db).raw is parent_conn
        with write_tx(db) as tx:
            assert tx.one("SELECT count(*) FROM statecraft_meta WHERE key IN ('parent', 'child')") == (2,)
    finally:
        db.close()


def test_writing_to_a_closed_database_raises_store_error(db_path: Path) -> None:
    from statecraft.errors import StoreError

    db = Database(db_path)
    db.close()
    with pytest.raises(StoreError), write_tx(db):
        pass
    with pytest.raises(StoreError):
        read_one(db, "SELECT 1")


# -- values computed on the hot path -----------------------------------------------------

plain = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1),
)
anything = st.one_of(
    plain,
    st.booleans(),
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from(list(RunStatus)),
)


def _rows(values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({c: values for c in HASHED_COLUMNS})


def _general_path(row: dict[str, Any]) -> str | type[Exception]:
    try:
        return hashlib.sha256(DOMAIN + canonical_json({c: row.get(c) for c in HASHED_COLUMNS})).hexdigest()
    except (TypeError, ValueError) as exc:
        return TypeError if isinstance(exc, TypeError) else ValueError


def _hot_path(row: dict[str, Any]) -> str | type[Exception]:
    try:
        return compute_entry_hash(row)
    except (TypeError, ValueError) as exc:
        return TypeError if isinstance(exc, TypeError) else ValueError


@settings(max_examples=200)
@given(_rows(plain))
def test_the_entry_hash_of_a_plain_row_is_sha256_of_its_rfc8785_envelope(row: dict[str, Any]) -> None:
    try:
        envelope = rfc8785.dumps({c: row[c] for c in HASHED_COLUMNS})
    except rfc8785.CanonicalizationError:  # lone surrogates: refused both ways
        with pytest.raises(ValueError):
            compute_entry_hash(row)
        return
    assert compute_entry_hash(row) == hashlib.sha256(DOMAIN + envelope).hexdigest()


@settings(max_examples=300)
@given(_rows(anything))
def test_the_entry_hash_takes_the_general_path_for_anything_but_plain_values(row: dict[str, Any]) -> None:
    assert _hot_path(row) == _general_path(row)


def test_event_ids_are_uuid7_strings_unique_and_ordered_by_their_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(1000)]
    after = time.time_ns() // 1_000_000

    assert len(set(ids)) == 1000
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert str(parsed) == event_id
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # the 48-bit Unix milliseconds
    # Time-ordered across milliseconds (the index locality it exists for);
    # within one millisecond the 74 random bits decide.
    millis = [uuid.UUID(i).int >> 80 for i in ids]
    assert millis == sorted(millis)
    time.sleep(0.002)
    assert new_event_id() > ids[-1]


def test_every_event_of_a_run_gets_a_uuid7_id(db_path: Path) -> None:
    # Through the engine, not just the generator: the genesis and the run's events.
    class N(BaseModel):
        n: int = 0

    m = Machine("ids", "1", N, [Step("s", lambda s, c: Finish(update={"n": 1}), writes=["n"], may_finish=True)])
    with Engine(db_path) as engine:
        run = engine.start(m, {})
    with sqlite3.connect(db_path) as conn:
        ids = [r[0] for r in conn.execute("SELECT event_id FROM audit_event ORDER BY seq")]
    assert len(ids) >= 4 and all(uuid.UUID(i).version == 7 for i in ids), ids
    assert uuid.UUID(run.run_id).version == 4  # run ids stay random: operators type their prefixes


offsets = st.builds(timezone, st.timedeltas(min_value=-timedelta(hours=23), max_value=timedelta(hours=23)))


@given(st.datetimes(min_value=datetime(1001, 1, 1), max_value=datetime(9998, 12, 31), timezones=offsets))
def test_stored_times_are_formatted_as_strftime_did(moment: datetime) -> None:
    assert format_utc(moment) == moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_stored_times_keep_four_digit_years_and_refuse_naive_times() -> None:
    assert format_utc(datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "0999-01-02T03:04:05.000006Z"
    with pytest.raises(ValueError, match="naive"):
        format_utc(datetime(2026, 1, 1))
