"""Benchmark: the audit ledger at reviewer scale (issue #5).

Builds a ledger of N events (default 1,000,000) shaped like production
traffic, through the engine's own commit path (``transition.write_transition``:
run row UPDATE, audit event, checkpoint, content-addressed blobs), then prints:

- append rate: while building (many events per transaction), and one event
  per transaction with ``synchronous=FULL`` on the full ledger (what a step
  commit pays);
- ``verify_ledger`` rate (events/s, wall and per CPU-second), with and
  without the blob checks, and with an anchor;
- export of one run and ``verify_export`` of the bundle;
- the latency of every reviewer query in docs/audit.md (the SQL is read
  from the document itself, so the figures are for exactly what reviewers
  run), with the index each one uses;
- ``audit log`` listings through the query module (a page of an actor's
  events, one run, a time window).

Traffic shape: runs of 4 machine versions interleaved 50 at a time over
``--days`` days; each run is ``run.created`` (task blob), ``run.started``,
3-8 ``step.completed`` with model usage (state and output blobs), some
``agent.called`` sub-calls, a gate in 20% of runs (granted by one of 40
people, 10% denied, a few self-approvals and a few never decided), and an end
(85% DONE, 7% FAILED, the rest stuck RUNNING).

Usage::

    python bench/bench_ledger.py                          # 1,000,000 events in a temp dir
    python bench/bench_ledger.py --events 200000          # smaller
    python bench/bench_ledger.py --db /tmp/ledger.db --keep   # build once, re-run on it

Not a timed test: figures depend on the machine; quote them with its load.
Targets (issue #5): verify >= 50,000 events/s; each reviewer query < 100 ms
on 1M events.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from statecraft._time import format_utc  # noqa: E402
from statecraft.audit.anchor import take_anchor  # noqa: E402
from statecraft.audit.chain import append_event  # noqa: E402
from statecraft.audit.export import export_bundle, verify_export  # noqa: E402
from statecraft.audit.query import EventFilter, iter_events, run_timeline  # noqa: E402
from statecraft.audit.verify import verify_ledger  # noqa: E402
from statecraft.lifecycle import RunStatus  # noqa: E402
from statecraft.store.db import Database  # noqa: E402
from statecraft.store.txn import write_tx  # noqa: E402
from statecraft.transition import RUN_COLUMNS, write_transition  # noqa: E402

DOC = REPO / "docs" / "audit.md"
MACHINES = [("invoice_approval", "1"), ("invoice_approval", "2"), ("support_router", "3"), ("contract_review", "1")]
MODELS = [("anthropic", "claude-sonnet-4-5"), ("anthropic", "claude-haiku-4-5"), ("anthropic", "claude-opus-4-1")]
PROMPTS = ["p1", "p2", "p3", "p4", "p5", "p6"]
PEOPLE = [f"user:reviewer-{i:02d}" for i in range(40)]
ACTIVE = 50

_INSERT_RUN = (
    "INSERT INTO run (run_id, machine_name, machine_version, machine_digest, machine_ref, status, step, "
    "state_sha256, task_sha256, run_seq, steps_taken, created_at, updated_at, started_by, parent_run_id, "
    "tokens_in, tokens_out, cost_micros) VALUES (:run_id, :mn, :mv, :md, NULL, 'IDLE', 'step0', :ss, :ts, "
    "0, 0, :now, :now, :by, NULL, 0, 0, 0)"
)
_INSERT_BLOB = (
    "INSERT INTO blob (sha256, body, size, media_type, created_at) VALUES (?, ?, ?, 'application/json', ?) "
    "ON CONFLICT (sha256) DO NOTHING"
)


class _Run:
    """A run being generated: its row (as write_transition wants it) and its plan."""

    def __init__(self, row: dict[str, Any], plan: list[str], rng: random.Random) -> None:
        self.row = row
        self.plan = plan
        self.rng = rng
        self.step_no = 0


def _blob(tx: Any, value: Any, now: str) -> str:
    body = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(body).hexdigest()
    assert tx.raw is not None
    tx.raw.execute(_INSERT_BLOB, (digest, body, len(body), now))
    return digest


def _plan(rng: random.Random) -> list[str]:
    steps = ["step"] * rng.randint(3, 8)
    plan = ["start", *steps]
    for i in range(len(plan) - 1, 0, -1):
        if rng.random() < 0.15:
            plan.insert(i, "subcall")
    fate = rng.random()
    if fate < 0.20:
        gate_at = rng.randint(2, len(plan))
        decision = rng.random()
        if decision < 0.85:
            plan[gate_at:gate_at] = ["request", "grant"]
        elif decision < 0.95:
            return [*plan[:gate_at], "request", "deny"]
        else:
            return [*plan[:gate_at], "request"]  # never decided: stuck at the gate
    end = rng.random()
    if end < 0.85:
        plan.append("finish")
    elif end < 0.92:
        plan.append("fail")
    # else: stuck RUNNING (no terminal event)
    return plan


def _new_run(tx: Any, ledger_id: str, n: int, now: str, rng: random.Random) -> _Run:
    name, version = MACHINES[n % len(MACHINES)] if rng.random() < 0.5 else rng.choice(MACHINES)
    run_id = f"run-{n:08d}"
    by = "svc:intake" if rng.random() < 0.6 else rng.choice(PEOPLE)
    task = {"task": f"invoice {n}", "vendor": f"vendor-{n % 997}", "amount_cents": rng.randint(100, 10**7),
            "text": "lorem ipsum dolor sit amet " * rng.randint(2, 12)}
    task_sha = _blob(tx, task, now)
    state_sha = _blob(tx, {"n": 0, "task": task["task"]}, now)
    tx.run(_INSERT_RUN, {"run_id": run_id, "mn": name, "mv": version,
                         "md": hashlib.sha256(f"{name}:{version}".encode()).hexdigest(),
                         "ss": state_sha, "ts": task_sha, "now": now, "by": by})
    row = dict(zip(RUN_COLUMNS, tx.one(f"SELECT {', '.join(RUN_COLUMNS)} FROM run WHERE run_id = :r", {"r": run_id})))
    committed = write_transition(
        tx, ledger_id, row, event_type="run.created", to_status=RunStatus.IDLE, to_step="step0",
        actor_type="service" if by.startswith("svc") else "human", actor_id=by, now=now,
        extra={"input_sha256": task_sha, "decision": "create"},
    )
    return _Run(committed.run, _plan(rng), rng)


def _advance(tx: Any, ledger_id: str, run: _Run, now: str) -> bool:
    """Write the run's next event; False once its plan is exhausted."""
    if not run.plan:
        return False
    kind = run.plan.pop(0)
    row, rng = run.row, run.rng
    common: dict[str, Any] = {"now": now}
    if kind == "start":
        c = write_transition(tx, ledger_id, row, event_type="run.started", to_status=RunStatus.RUNNING,
                             to_step=row["step"], actor_type="service", actor_id="svc:intake",
                             extra={"decision": "start", "outcome": "success"}, **common)
    elif kind in ("step", "subcall"):
        provider, model = rng.choice(MODELS)
        usage = (rng.randint(500, 6000), rng.randint(50, 1200), rng.randint(500, 60_000))
        fields = {"agent_name": f"agent{run.step_no % 4}", "agent_version": "2", "prompt_version": rng.choice(PROMPTS),
                  "model_provider": provider, "model_id": model, "tokens_in": usage[0], "tokens_out": usage[1],
                  "cost_micros": usage[2], "latency_ms": rng.randint(200, 9000), "attempt": 1,
                  "input_sha256": row["state_sha256"], "outcome": "success"}
        fields["output_sha256"] = _blob(tx, {"answer": f"{kind} {run.step_no} of {row['run_id']}",
                                             "score": rng.randint(0, 100)}, now)
        if kind == "subcall":
            c = write_transition(tx, ledger_id, row, event_type="agent.called", to_status=RunStatus(row["status"]),
                                 to_step=row["step"], actor_type="agent", actor_id=fields["agent_name"],
                                 extra={**fields, "decision": "call"}, keep_lease=True, usage=usage, **common)
        else:
            run.step_no += 1
            nxt = f"step{run.step_no}"
            state = _blob(tx, {"n": run.step_no, "run": row["run_id"], "notes": "x" * rng.randint(50, 400)}, now)
            c = write_transition(tx, ledger_id, row, event_type="step.completed", to_status=RunStatus.RUNNING,
                                 to_step=nxt, actor_type="agent", actor_id=fields["agent_name"],
                                 extra={**fields, "decision": f"goto:{nxt}", "reason": "criteria met"},
                                 state_sha256=state, count_step=True, usage=usage, **common)
    elif kind == "request":
        out = _blob(tx, {"outcome": "RequestApproval", "resume_at": row["step"], "reason": "amount over limit"}, now)
        digest = hashlib.sha256(f"proposal:{row['run_id']}".encode()).hexdigest()
        c = write_transition(tx, ledger_id, row, event_type="approval.requested",
                             to_status=RunStatus.WAITING_FOR_APPROVAL, to_step=row["step"], actor_type="agent",
                             actor_id="agent0", extra={"decision": f"request_approval:{row['step']}",
                                                       "outcome": "pending", "reason": "amount over limit",
                                                       "output_sha256": out},
                             payload={"resume_at": row["step"], "proposal_digest": digest},
                             pending={"resume_at": row["step"], "digest": digest, "reason": "amount over limit"},
                             **common)
    elif kind in ("grant", "deny"):
        by = row["started_by"] if (kind == "grant" and rng.random() < 0.03 and row["started_by"].startswith("user:")) \
            else rng.choice(PEOPLE)
        grant = kind == "grant"
        comment = None if grant and rng.random() < 0.1 else ("looks right" if grant else "vendor not approved")
        c = write_transition(tx, ledger_id, row, event_type="approval.granted" if grant else "approval.denied",
                             to_status=RunStatus.RUNNING if grant else RunStatus.FAILED, to_step=row["step"],
                             actor_type="human", actor_id=by,
                             extra={"decision": "approve" if grant else "reject",
                                    "outcome": "success" if grant else "failure", "reason": comment,
                                    "error_code": None if grant else "rejected",
                                    "caused_by_event_id": row["pending_request_event_id"]},
                             payload={"proposal_digest": row["pending_proposal_digest"], "comment": comment},
                             clear_pending=True, **common)
    elif kind == "finish":
        c = write_transition(tx, ledger_id, row, event_type="run.completed", to_status=RunStatus.DONE,
                             to_step=row["step"], actor_type="agent", actor_id="agent0",
                             extra={"decision": "finish", "outcome": "success", "reason": "all checks passed"},
                             **common)
    else:  # fail
        c = write_transition(tx, ledger_id, row, event_type="run.failed", to_status=RunStatus.FAILED,
                             to_step=row["step"], actor_type="system", actor_id="statecraft",
                             extra={"decision": "fail", "outcome": "failure", "error_code": "budget_exceeded",
                                    "reason": "cost budget of 50000 micro-USD exceeded"}, **common)
    run.row = c.run
    return True


def build(db: Database, events: int, days: int, seed: int, batch: int) -> float:
    """Append ``events`` events (plus the genesis); return the append rate in events/s."""
    rng = random.Random(seed)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    step = timedelta(days=days) / max(events, 1)
    written, n_runs = 0, 0
    active: list[_Run] = []
    started = time.perf_counter()
    while written < events:
        with write_tx(db) as tx:
            assert tx.raw is not None
            tx.raw.execute("PRAGMA cache_size = -262144")  # 256 MiB: the build, not the product
            for _ in range(min(batch, events - written)):
                now = format_utc(t0 + step * written)
                while len(active) < ACTIVE:
                    active.append(_new_run(tx, db.ledger_id, n_runs, now, rng))
                    n_runs += 1
                    written += 1
                    if written >= events:
                        break
                if written >= events:
                    break
                run = active[rng.randrange(len(active))]
                if not _advance(tx, db.ledger_id, run, now):
                    active.remove(run)
                    continue
                written += 1
                if not run.plan:
                    active.remove(run)
    return events / (time.perf_counter() - started)


def append_one_per_transaction(path: Path, count: int) -> float:
    """Append ``count`` ledger events, one transaction each, synchronous=FULL; return events/s."""
    with Database(path, synchronous="FULL") as db:
        started = time.perf_counter()
        for i in range(count):
            with db.write() as conn:
                append_event(conn, ledger_id=db.ledger_id, fields={
                    "event_type": "bench.append", "actor_type": "service", "actor_id": "svc:bench",
                    "occurred_at": format_utc(datetime.now(UTC)), "reason": f"append {i}"})
        return count / (time.perf_counter() - started)


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def doc_queries() -> list[tuple[str, str]]:
    """``(name, sql)`` of every reviewer query in docs/audit.md (```sql blocks opening with ``-- qN``)."""
    found = re.findall(r"```sql\n(-- (q\w+)[^\n]*\n.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    return [(name, sql.strip()) for sql, name in found]


def query_params(conn: sqlite3.Connection, days: float = 1) -> dict[str, Any]:
    """Realistic parameters: a gated run, a busy approver, a window from the middle of the ledger."""
    mid = conn.execute("SELECT occurred_at FROM audit_event WHERE seq = (SELECT MAX(seq) / 2 FROM audit_event)").fetchone()[0]
    mid_dt = datetime.fromisoformat(mid.replace("Z", "+00:00"))
    run_id = conn.execute(
        "SELECT run_id FROM audit_event WHERE event_type = 'approval.granted' AND occurred_at >= ? "
        "ORDER BY occurred_at LIMIT 1", (mid,)).fetchone()[0]
    # q10 compares the versions of one agent's calls (agent.called events).
    called = conn.execute(
        "SELECT agent_name FROM audit_event WHERE event_type = 'agent.called' AND occurred_at >= ? "
        "ORDER BY event_type, occurred_at LIMIT 1", (mid,)).fetchone()
    return {
        "run_id": run_id,
        "agent_name": called[0] if called else "none",
        "actor_id": PEOPLE[7],
        "model_id": MODELS[2][1],
        "prompt_version": PROMPTS[3],
        "since": format_utc(mid_dt),
        "until": format_utc(mid_dt + timedelta(days=days)),
    }


def _median_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    result = fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times), result


def run_queries(path: Path, repeat: int) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    day, week = query_params(conn, 1), query_params(conn, 7)
    print(f"reviewer queries (docs/audit.md): median of {repeat} after a warm-up, ms (rows); window from "
          f"{day['since']}, 1 day and 7 days; run {day['run_id']}, actor {day['actor_id']}, "
          f"model {day['model_id']}, prompt {day['prompt_version']}")
    for name, sql in doc_queries():
        cells = []
        for params in (day, week) if ":since" in sql else (day,):
            used = {k: v for k, v in params.items() if f":{k}" in sql}
            med, worst, rows = _median_ms(lambda: conn.execute(sql, used).fetchall(), repeat)
            cells.append(f"{med:7.1f} (max {worst:6.1f}) {len(rows):6} rows")
        plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", used)]
        indexes = sorted({m for p in plan for m in re.findall(r"USING (?:COVERING )?INDEX (\w+)", p)})
        print(f"  {name:4} {' | '.join(cells):80} {', '.join(indexes)}")
    conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events to build (default 1000000)")
    parser.add_argument("--days", type=int, default=90, help="days the ledger spans (default 90)")
    parser.add_argument("--batch", type=int, default=2000, help="events per build transaction (default 2000)")
    parser.add_argument("--seed", type=int, default=5, help="traffic seed (default 5)")
    parser.add_argument("--db", type=Path, help="database file (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the database file")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each query (default 5)")
    parser.add_argument("--only", choices=["queries", "verify"], help="skip the other phases (with --keep)")
    args = parser.parse_args(argv)

    tmp = None
    path = args.db
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="statecraft-bench-")
        path = Path(tmp.name) / "ledger.db"
    if path.exists() and not args.keep:
        print(f"{path} exists; pass --keep to reuse it", file=sys.stderr)
        return 2
    print(f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f}")
    try:
        with Database(path, synchronous="NORMAL") as db:
            with db.read() as conn:
                head = conn.exec_driver_sql("SELECT MAX(seq) FROM audit_event").scalar() or 0
            if head > 1:
                print(f"reusing {path} ({head:,} events)")
            else:
                rate = build(db, args.events, args.days, args.seed, args.batch)
                print(f"append (build): {args.events:,} events at {rate:,.0f} events/s wall "
                      f"({args.batch} events per transaction, synchronous=NORMAL, engine commit path)")
        print(f"database: {path.stat().st_size / 2**20:,.0f} MiB")
        if args.only != "queries":
            verify_phase(path)
        if args.only != "verify":
            run_queries(path, args.repeat)
            listing_phase(path, args.repeat)
        if args.only is None:
            export_phase(path)
            rate = append_one_per_transaction(path, 500)
            print(f"append (one event per transaction, synchronous=FULL, on the full ledger): {rate:,.0f} events/s")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()


def verify_phase(path: Path) -> None:
    with Database(path, create=False) as db:
        cases: tuple[tuple[str, dict[str, Any]], ...] = (
            ("default: chain + runs + blobs", {}),
            ("chain + runs", {"check_blobs": False}),
            ("--blob-refs: + every referenced blob stored", {"check_blob_refs": True}),
        )
        for label, kwargs in cases:
            report, wall, cpu = timed(lambda: verify_ledger(db, **kwargs))
            n = report.events_checked
            print(f"verify ({label}): {n:,} events in {wall:.2f} s wall = {n / wall:,.0f} events/s; "
                  f"{cpu:.2f} s CPU = {n / cpu:,.0f} events/CPU-s (ok={report.ok})")
            if not report.ok:
                print(f"  FAILED: {report.reason}")


def listing_phase(path: Path, repeat: int) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    params = query_params(conn, 1)
    hour = query_params(conn, 1 / 24)
    conn.close()
    print(f"CLI listings through statecraft.audit.query, median of {repeat} after a warm-up:")
    with Database(path, create=False) as db:
        cases = {
            "audit log --run RUN": EventFilter(run_id=params["run_id"]),
            "audit log --actor A --limit 100": EventFilter(actor=params["actor_id"], limit=100),
            "audit log --since T --until T+1h": EventFilter(since=hour["since"], until=hour["until"]),
            "audit log --event approval.* --since T --until T+1d --limit 201": EventFilter(
                event_types=("approval.*",), since=params["since"], until=params["until"], limit=201),
            "audit log --model M --limit 201 (a third of all calls)": EventFilter(model=params["model_id"], limit=201),
            "audit log --limit 201 --after 500000": EventFilter(after_seq=500_000, limit=201),
        }
        for label, flt in cases.items():
            med, worst, rows = _median_ms(lambda: list(iter_events(db, flt)), repeat)
            print(f"  {label:58} {med:7.1f} ms (max {worst:6.1f}) {len(rows):6} events")
        med, worst, timeline = _median_ms(lambda: run_timeline(db, params["run_id"]), repeat)
        print(f"  {'audit show RUN (timeline, blobs, sub-runs)':58} {med:7.1f} ms (max {worst:6.1f}) "
              f"{len(timeline.events):6} events")


def export_phase(path: Path) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    params = query_params(conn, 1)
    conn.close()
    with Database(path, create=False) as db:
        anchor = take_anchor(db, by="svc:bench")
        report, wall, _ = timed(lambda: verify_ledger(db, anchors=[anchor]))
        print(f"verify --anchor (seq {anchor.seq}): {wall:.2f} s, ok={report.ok}, anchored_seq={report.anchored_seq}")
        buf = io.StringIO()
        summary, wall, _ = timed(lambda: export_bundle(db, buf, runs=[params["run_id"]]))
        print(f"export --run RUN: {summary.events} events, {summary.context} context rows, {summary.blobs} blobs, "
              f"{len(buf.getvalue()) / 1024:,.0f} KiB in {wall * 1000:.0f} ms")
        checked, wall, _ = timed(lambda: verify_export(io.StringIO(buf.getvalue())))
        print(f"verify-export: ok={checked.ok} in {wall * 1000:.0f} ms")


if __name__ == "__main__":
    sys.exit(main())
