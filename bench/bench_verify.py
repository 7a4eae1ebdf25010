"""Benchmark: append rate and ``verify_ledger`` rate on a ledger of N events.

Builds a ledger with ``chain.append_event`` (1,000 events per transaction,
``synchronous=NORMAL`` for build speed), shaped like real traffic: runs of 10
events (start, 8 agent steps with model usage, completion), interleaved 20 at
a time, every event with a small payload, and ``run`` rows kept in step so
that ``check_runs`` has work to do. Then verifies it and prints both rates.

Usage::

    python bench/bench_verify.py                  # 200,000 events in a temp dir
    python bench/bench_verify.py --events 1000000 --db /tmp/big.db --keep

Not a timed test: numbers depend on the machine. Target (issue brief):
verify >= 50,000 events/s at 1M events.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from statecraft._time import format_utc
from statecraft.audit.chain import append_event
from statecraft.audit.verify import verify_ledger
from statecraft.store.blobs import insert_blob
from statecraft.store.db import Database
from statecraft.store.tables import RunRow
from statecraft.store.txn import tx_of

EVENTS_PER_RUN = 10
CONCURRENT_RUNS = 20
_RUNS = RunRow.__table__  # type: ignore[attr-defined]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _event(run_id: str, run_seq: int, at: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields and payload of the ``run_seq``-th event of a 10-event run."""
    last = EVENTS_PER_RUN
    step = f"step{min(run_seq, last - 2)}"
    fields: dict[str, Any] = {
        "run_id": run_id,
        "run_seq": run_seq,
        "machine_name": "bench",
        "machine_version": "1",
        "machine_digest": _sha("bench:1"),
        "occurred_at": format_utc(at),
        "state_sha256": _sha(f"{run_id}:{run_seq}"),
        "to_step": step,
    }
    if run_seq == 1:
        fields.update(event_type="run.started", from_status="IDLE", to_status="RUNNING",
                      actor_type="service", actor_id="svc:bench")
    elif run_seq == last:
        fields.update(event_type="run.completed", from_status="RUNNING", to_status="DONE",
                      actor_type="system", actor_id="statecraft", outcome="success",
                      from_step=step)
    else:
        fields.update(
            event_type="step.completed", from_status="RUNNING", to_status="RUNNING",
            from_step=f"step{run_seq - 1}", actor_type="agent", actor_id="agent:worker",
            agent_name="worker", agent_version="2", prompt_version="p3",
            model_provider="anthropic", model_id="claude-bench", tokens_in=1500 + run_seq,
            tokens_out=400, cost_micros=6_100, latency_ms=900, attempt=1, outcome="success",
            input_sha256=_sha(f"in:{run_id}:{run_seq}"),
            output_sha256=_sha(f"out:{run_id}:{run_seq}"),
        )
    payload = {"note": f"{fields['event_type']} {run_seq}", "items": [run_seq, "ok"]}
    return fields, payload


def _bodies(run_id: str, run_seq: int, fields: dict[str, Any]) -> list[str]:
    """The texts whose SHA-256 are the event's ``state_sha256``, ``input_sha256``, ``output_sha256``."""
    texts = [f"{run_id}:{run_seq}"]
    if "input_sha256" in fields:
        texts += [f"in:{run_id}:{run_seq}", f"out:{run_id}:{run_seq}"]
    return texts


def build(db: Database, events: int, batch: int) -> float:
    """Append ``events`` events after the genesis; return the append rate (events/s)."""
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    started = time.perf_counter()
    written = 0
    next_run = 0
    active: list[list[Any]] = []  # [run_id, run_seq_done]
    usage: dict[str, list[int]] = {}  # run_id -> [tokens_in, tokens_out, cost_micros] so far
    created: dict[str, str] = {}  # run_id -> its first event's time, until its row is inserted
    while written < events:
        with db.write() as conn:
            changed: dict[str, dict[str, Any]] = {}
            new: set[str] = set()
            for _ in range(min(batch, events - written)):
                while len(active) < CONCURRENT_RUNS:
                    active.append([f"run-{next_run:08d}", 0])
                    next_run += 1
                slot = active[written % len(active)]
                slot[1] += 1
                run_id, run_seq = slot
                fields, payload = _event(run_id, run_seq, t0 + timedelta(milliseconds=written))
                row = append_event(conn, ledger_id=db.ledger_id, fields=fields, payload=payload)
                # Every hash an event names is a stored body (verify checks that by default).
                tx = tx_of(conn)
                for text in _bodies(run_id, run_seq, fields):
                    insert_blob(tx, _sha(text), text.encode(), created_at=fields["occurred_at"])
                if run_seq == 1:
                    new.add(run_id)
                # The run row folds the ledger (verify checks it): usage totals too.
                totals = usage.setdefault(run_id, [0, 0, 0])
                for i, column in enumerate(("tokens_in", "tokens_out", "cost_micros")):
                    totals[i] += fields.get(column) or 0
                changed[run_id] = {
                    "status": fields["to_status"], "step": fields["to_step"],
                    "state_sha256": fields["state_sha256"], "run_seq": run_seq,
                    "updated_at": fields["occurred_at"], "last_event_id": row["event_id"],
                    "tokens_in": totals[0], "tokens_out": totals[1], "cost_micros": totals[2],
                }
                if run_seq == 1:
                    created[run_id] = fields["occurred_at"]
                if run_seq == EVENTS_PER_RUN:
                    active.remove(slot)
                written += 1
            for run_id, values in changed.items():
                if run_id in new:
                    conn.execute(insert(_RUNS), {
                        "run_id": run_id, "machine_name": "bench", "machine_version": "1",
                        "machine_digest": _sha("bench:1"), "task_sha256": _sha(run_id),
                        "created_at": created.pop(run_id), "started_by": "svc:bench", **values,
                    })
                else:
                    conn.execute(update(_RUNS).where(_RUNS.c.run_id == run_id), values)
    return events / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events to append (default 200000)")
    parser.add_argument("--batch", type=int, default=1000, help="events per transaction (default 1000)")
    parser.add_argument("--db", type=Path, help="database file (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the database file")
    parser.add_argument("--no-runs", action="store_true", help="verify without check_runs")
    args = parser.parse_args(argv)

    tmp = None
    path = args.db
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="statecraft-bench-")
        path = Path(tmp.name) / "bench.db"
    if path.exists() and not args.keep:
        print(f"{path} exists; pass --keep to reuse it", file=sys.stderr)
        return 2
    try:
        with Database(path, synchronous="NORMAL") as db:
            if path.exists() and db.ledger_id and args.keep and _head(db) > 1:
                print(f"reusing {path} ({_head(db)} events)", file=sys.stderr)
            else:
                rate = build(db, args.events, args.batch)
                print(f"append: {args.events:,} events at {rate:,.0f} events/s wall "
                      f"(batches of {args.batch}, synchronous=NORMAL)")
            started, cpu_started = time.perf_counter(), time.process_time()
            report = verify_ledger(db, check_runs=not args.no_runs)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
        n = report.events_checked
        # CPU time too: on a shared machine wall time measures the neighbours.
        print(f"verify: {n:,} events in {elapsed:.2f} s wall = {n / elapsed:,.0f} events/s; "
              f"{cpu:.2f} s CPU = {n / cpu:,.0f} events/CPU-s "
              f"(ok={report.ok}, last_seq={report.last_seq}, check_runs={not args.no_runs})")
        if not report.ok:
            print(f"verify failed: {report.reason}", file=sys.stderr)
            return 1
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


def _head(db: Database) -> int:
    with db.read() as conn:
        return int(conn.exec_driver_sql("SELECT COALESCE(MAX(seq), 0) FROM audit_event").scalar())


if __name__ == "__main__":
    sys.exit(main())
