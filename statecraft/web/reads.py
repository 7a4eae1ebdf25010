"""What the reviewer's pages and the JSON API show, composed from statecraft's public reads.

The web app adds no query of its own against the ledger: the inbox is
``Engine.list`` (waiting runs) plus each gate's ``approval.requested`` event
(``audit.query.iter_events``), whose payload holds what ``RunInfo`` does
not carry — the gate's deadline and full approval policy. A timeline is
``audit.query.run_timeline``; the ledger page is ``audit.verify.verify_ledger``
and the ``ledger.anchored`` events. So the pages show exactly what
``statecraft status``, ``audit show`` and ``audit verify`` would, and a
reviewer can check one against the other.

Every value here is data, never markup: the templates escape all of it
(Jinja2 autoescape), whatever an agent, a comment or an actor id contains.
These models are also the JSON API's response shapes (OpenAPI).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..audit.anchor import newest_anchor_seen
from ..audit.query import EventFilter, RunTimeline, iter_events, run_timeline
from ..audit.verify import VerifyReport, verify_ledger
from ..engine import Engine
from ..errors import StatecraftError
from ..lifecycle import RunStatus
from ..outcomes import ApprovalPolicy
from ..views import AuditEvent, RunInfo

__all__ = [
    "AnchorInfo",
    "Body",
    "GateView",
    "GraphLine",
    "GraphView",
    "Inbox",
    "LedgerView",
    "TimelineEvent",
    "TimelineGate",
    "TimelineView",
    "gate_view",
    "inbox",
    "ledger_view",
    "timeline_view",
]

INBOX_LIMIT = 500
"""At most this many waiting runs are read for the inbox (newest first)."""


class GateView(BaseModel):
    """One run waiting at a gate, as the inbox and the run page show it.

    Attributes:
        run_id, machine, version: the run and its machine.
        step: the step that asked; ``resume_at``: where approval continues it.
        started_by: who started the run (may not approve under a policy).
        requested_event_id, requested_at, requested_by: the ``approval.requested`` event.
        kind: ``request`` (an agent or rule asked), ``escalation`` (a failed
            step's error edge tripped a rule), ``error`` (a failed step asks),
            or ``budget`` (a budget ran out; approve with ``--extend`` in the CLI).
        reason: the proposal, as the gate states it; ``summary``: the longer text if any.
        proposal_digest: what an approval must name (``approve --digest``).
        rules: escalation rules that fired (empty if the agent asked by itself).
        policy_tags: labels the inbox filters on: ``rule:NAME``, ``agent``,
            ``four-eyes``, ``group``, ``deadline``, ``budget``, ``error``.
        required, approved_by, still_needed: the quorum and progress (four-eyes).
        approver_group, excluded, allow_self_approval: the approval policy
            (``allow_self_approval`` is ``None`` for a gate without policy).
        who_may_approve: the policy in one sentence.
        deadline_at, on_timeout: the approval deadline (UTC) and what then happens.
        overdue: the deadline has passed; the next ``statecraft worker`` pass
            (or an attempt to decide) applies ``on_timeout``.
        state: the state the approval would let the run continue with.
        may_approve, refusal: for the viewing principal, whether the policy
            lets them approve, and why not (``None`` without a viewer). The
            engine re-checks on approval; this is a hint.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    machine: str
    version: str
    step: str | None
    resume_at: str | None
    started_by: str
    requested_event_id: str
    requested_at: str | None
    requested_by: str | None
    kind: Literal["request", "escalation", "error", "budget"]
    reason: str | None
    summary: str | None
    proposal_digest: str
    rules: tuple[str, ...]
    policy_tags: tuple[str, ...]
    required: int
    approved_by: tuple[str, ...]
    still_needed: int
    approver_group: tuple[str, ...] | None
    excluded: tuple[str, ...]
    allow_self_approval: bool | None
    who_may_approve: str
    deadline_at: str | None
    on_timeout: str | None
    overdue: bool
    state: dict[str, Any]
    may_approve: bool | None = None
    refusal: str | None = None


class Inbox(BaseModel):
    """The waiting runs after filtering, and the filter values on offer."""

    model_config = ConfigDict(frozen=True)

    items: tuple[GateView, ...]
    machines: tuple[str, ...]
    policies: tuple[str, ...]
    truncated: bool


def _request_event(engine: Engine, run_id: str, event_id: str) -> dict[str, Any] | None:
    flt = EventFilter(run_id=run_id, event_types=("approval.requested",))
    return next((e for e in iter_events(engine.db, flt) if e["event_id"] == event_id), None)


def _payload(event: dict[str, Any] | None) -> dict[str, Any]:
    if event is None or not event.get("payload_json"):
        return {}
    try:
        value = json.loads(event["payload_json"])
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _kind(decision: str | None) -> Literal["request", "escalation", "error", "budget"]:
    decision = decision or ""
    if decision.startswith("extend_budget:"):
        return "budget"
    if decision.startswith("escalate:"):
        return "error"
    return "request"


def _who(policy: ApprovalPolicy | None, started_by: str, requested_by: str | None, requester_type: str | None) -> str:
    if policy is None:
        return "any authenticated person; one approval"
    who = f"{policy.required} distinct of {', '.join(sorted(policy.group))}" if policy.group is not None else (
        f"{policy.required} distinct authenticated {'person' if policy.required == 1 else 'people'}"
    )
    limits = []
    if not policy.allow_self_approval:
        limits.append(f"not {started_by}, who started the run")
        if requested_by and requester_type == "human" and requested_by != started_by:
            limits.append(f"not {requested_by}, who requested the gate")
    if policy.excluded:
        limits.append(f"never {', '.join(sorted(policy.excluded))}")
    return who + ("; " + "; ".join(limits) if limits else "")


def gate_view(engine: Engine, info: RunInfo, viewer: str | None = None) -> GateView | None:
    """The gate ``info`` waits at, with its policy, progress and deadline; ``None`` if not waiting. Read-only.

    Args:
        engine: the engine (its database is read).
        info: the run, from ``Engine.get`` or ``Engine.list``.
        viewer: the viewing principal's id, to fill ``may_approve``/``refusal``.
    """
    pending = info.pending
    if info.status != RunStatus.WAITING_FOR_APPROVAL or pending is None:
        return None
    request = _request_event(engine, info.run_id, pending.requested_event_id)
    payload = _payload(request)
    described = payload.get("policy")
    policy = ApprovalPolicy.from_json(described) if isinstance(described, dict) else None
    if policy is None and (pending.required > 1 or pending.approver_group is not None):
        policy = ApprovalPolicy(pending.required, group=pending.approver_group)
    requested_by = None if request is None else request["actor_id"]
    kind = _kind(None if request is None else request["decision"])
    if kind == "request" and payload.get("error"):
        kind = "escalation"  # a failed step's error edge tripped an escalation rule
    deadline_at = payload.get("deadline_at") if isinstance(payload.get("deadline_at"), str) else None
    tags = [f"rule:{r}" for r in pending.rules] or (["agent"] if kind == "request" else [])
    tags += [t for t, on in (("four-eyes", pending.required > 1), ("group", pending.approver_group is not None),
                             ("deadline", deadline_at is not None), ("budget", kind == "budget"),
                             ("error", kind in ("error", "escalation"))) if on]
    may, refusal = None, None
    if viewer is not None:
        refusal = None if policy is None else policy.refusal(
            viewer, approved_by=pending.approved_by, started_by=info.started_by, requested_by=requested_by
        )
        may = refusal is None
    summary = payload.get("summary")
    return GateView(
        run_id=info.run_id,
        machine=info.machine,
        version=info.version,
        step=pending.step,
        resume_at=pending.resume_at,
        started_by=info.started_by,
        requested_event_id=pending.requested_event_id,
        requested_at=None if request is None else request["occurred_at"],
        requested_by=requested_by,
        kind=kind,
        reason=pending.reason,
        summary=summary if isinstance(summary, str) else None,
        proposal_digest=pending.proposal_digest,
        rules=pending.rules,
        policy_tags=tuple(tags),
        required=pending.required,
        approved_by=pending.approved_by,
        still_needed=max(pending.required - len(pending.approved_by), 0),
        approver_group=pending.approver_group,
        excluded=() if policy is None else tuple(sorted(policy.excluded)),
        allow_self_approval=None if policy is None else policy.allow_self_approval,
        who_may_approve=_who(policy, info.started_by, requested_by, None if request is None else request["actor_type"]),
        deadline_at=deadline_at,
        on_timeout=payload.get("on_timeout") if deadline_at else None,
        # Stored times are fixed-width UTC text, so text order is time order.
        overdue=deadline_at is not None and deadline_at <= datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        state=info.state,
        may_approve=may,
        refusal=refusal,
    )


def inbox(
    engine: Engine, *, machine: str | None = None, policy: str | None = None, viewer: str | None = None
) -> Inbox:
    """Runs waiting for approval, newest request first, filtered by machine name and policy tag. Read-only.

    Reads at most :data:`INBOX_LIMIT` waiting runs (``truncated`` says so).
    """
    waiting = engine.list(status=RunStatus.WAITING_FOR_APPROVAL, limit=INBOX_LIMIT + 1)
    truncated = len(waiting) > INBOX_LIMIT
    gates = [g for g in (gate_view(engine, r, viewer) for r in waiting[:INBOX_LIMIT]) if g is not None]
    machines = tuple(sorted({g.machine for g in gates}))
    policies = tuple(sorted({t for g in gates for t in g.policy_tags}))
    chosen = [
        g for g in gates
        if (machine is None or g.machine == machine) and (policy is None or policy in g.policy_tags)
    ]
    chosen.sort(key=lambda g: (g.requested_at or "", g.run_id), reverse=True)
    return Inbox(items=tuple(chosen), machines=machines, policies=policies, truncated=truncated)


# -- one run's timeline -------------------------------------------------------------------


class Body(BaseModel):
    """An input, output or payload body: shown as JSON or text, or marked redacted/missing.

    Attributes:
        sha256: the hash the event records (``None`` for a payload, whose
            hash is the event's ``payload_sha256``).
        kind: ``json`` (``text`` is indented JSON), ``text``, ``redacted``
            (removed lawfully; the hash stays in the chain), ``missing``
            (referenced but not stored) or ``binary`` (not UTF-8).
        text: what to show; ``None`` when redacted or missing.
    """

    model_config = ConfigDict(frozen=True)

    sha256: str | None
    kind: Literal["json", "text", "redacted", "missing", "binary"]
    text: str | None


class Redaction(BaseModel):
    """The ``payload.redacted`` event that authorised removing an event's bodies."""

    model_config = ConfigDict(frozen=True)

    seq: int
    by: str
    reason: str | None
    occurred_at: str


class TimelineEvent(BaseModel):
    """One event of a run with its bodies resolved.

    Attributes:
        event: the event, every column as stored.
        input, output: the blobs it references (``None`` if none).
        payload: its payload (redacted when removed lawfully).
        redaction: the authorising ``payload.redacted`` event, if redacted.
        answers_seq: the seq of the event it answers (``caused_by_event_id``).
    """

    model_config = ConfigDict(frozen=True)

    event: AuditEvent
    input: Body | None
    output: Body | None
    payload: Body | None
    redaction: Redaction | None
    answers_seq: int | None


class TimelineDecision(BaseModel):
    """One answer to a gate: approval (possibly partial), denial or expiry."""

    model_config = ConfigDict(frozen=True)

    seq: int
    event_type: str
    occurred_at: str
    actor_id: str
    comment: str | None
    self_approval: bool


class TimelineGate(BaseModel):
    """One gate of the run: the request and its decisions, in order."""

    model_config = ConfigDict(frozen=True)

    requested_seq: int
    requested_at: str
    requested_by: str
    reason: str | None
    decisions: tuple[TimelineDecision, ...]


class GraphLine(BaseModel):
    """A line of the Mermaid text, and whether it names a step or edge on the run's path."""

    model_config = ConfigDict(frozen=True)

    text: str
    on_path: bool


class GraphView(BaseModel):
    """The machine's Mermaid ``stateDiagram-v2`` with the run's path marked.

    Attributes:
        path: the steps the run went through, in order (``DONE`` last if it finished).
        mermaid: the diagram text: visited steps in class ``s_previous``, the
            current one in ``s_active`` (paste it into any Mermaid renderer),
            and a ``%% path:`` comment.
        lines: the same text line by line, for the page to highlight.
        error: why the diagram is missing (the machine cannot be loaded), else ``None``.
    """

    model_config = ConfigDict(frozen=True)

    path: tuple[str, ...]
    mermaid: str | None
    lines: tuple[GraphLine, ...]
    error: str | None


class TimelineView(BaseModel):
    """Everything about one run for a reviewer (``statecraft audit show``, as a page).

    Attributes:
        run_id: the run.
        run: its current snapshot (``None`` when only events exist).
        gate: the gate it waits at, if any.
        events: every event in ``run_seq`` order, bodies resolved.
        gates: every gate and its decisions.
        totals: ``tokens_in``, ``tokens_out``, ``cost_micros``, ``latency_ms``.
        children: sub-run ids.
        graph: the machine's diagram with the path.
    """

    model_config = ConfigDict(frozen=True)

    run_id: str
    run: RunInfo | None
    gate: GateView | None
    events: tuple[TimelineEvent, ...]
    gates: tuple[TimelineGate, ...]
    totals: dict[str, int]
    children: tuple[str, ...]
    graph: GraphView


def _body(t: RunTimeline, digest: str | None) -> Body | None:
    if digest is None:
        return None
    if digest not in t.blobs:
        return Body(sha256=digest, kind="missing", text=None)
    raw = t.blobs[digest]
    if raw is None:
        return Body(sha256=digest, kind="redacted", text=None)
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Body(sha256=digest, kind="binary", text=f"{len(raw)} bytes, not UTF-8")
    return _text_body(digest, decoded)


def _text_body(digest: str | None, decoded: str) -> Body:
    try:
        value = json.loads(decoded)
    except ValueError:
        return Body(sha256=digest, kind="text", text=decoded)
    return Body(sha256=digest, kind="json", text=json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True))


def _path(events: Iterable[dict[str, Any]]) -> tuple[list[str], set[tuple[str, str]]]:
    path: list[str] = []
    edges: set[tuple[str, str]] = set()
    for e in events:
        if e["from_step"] and e["to_step"] and e["from_step"] != e["to_step"]:
            edges.add((e["from_step"], e["to_step"]))
        if e["to_step"] and (not path or path[-1] != e["to_step"]):
            path.append(e["to_step"])
        if e["event_type"] == "run.completed" and e["to_step"]:
            edges.add((e["to_step"], "DONE"))
            path.append("DONE")
    return path, edges


def _graph(engine: Engine, run_id: str, events: tuple[dict[str, Any], ...], status: str | None) -> GraphView:
    path, edges = _path(events)
    try:
        source = engine.machine_for(run_id).mermaid()
    except StatecraftError as exc:
        return GraphView(path=tuple(path), mermaid=None, lines=(), error=str(exc))
    visited = set(path)
    current = path[-1] if path else None
    lines: list[GraphLine] = []
    for raw in source.rstrip("\n").split("\n"):
        text, on = raw, False
        words = raw.split()
        if len(words) == 3 and words[0] == "Class":
            # transitions marks the machine's start step active; mark the run's instead.
            state = words[1]
            cls = "s_active" if state == current and status != RunStatus.DONE or (
                state == "DONE" and status == RunStatus.DONE) else "s_previous" if state in visited else "s_default"
            text = raw[: raw.index("Class")] + f"Class {state} {cls}"
            on = state in visited
        elif len(words) >= 3 and words[1] == "-->":
            on = (words[0] == "[*]" and bool(path)) or (words[0], words[2].rstrip(":")) in edges
        elif len(words) >= 4 and words[0] == "state" and words[-2] == "as":
            on = words[-1] in visited
        lines.append(GraphLine(text=text, on_path=on))
    if path:
        lines.append(GraphLine(text="  %% path: " + " → ".join(path), on_path=True))
    return GraphView(
        path=tuple(path), mermaid="\n".join(line.text for line in lines) + "\n", lines=tuple(lines), error=None
    )


def timeline_view(engine: Engine, run_id: str, viewer: str | None = None) -> TimelineView:
    """The full timeline of one run, its gate, and its machine's diagram with the path. Read-only.

    Raises:
        RunNotFound: no run row and no events with this id.
    """
    t = run_timeline(engine.db, run_id)
    run = engine.get(run_id) if "status" in t.run else None
    seq_of = {e["event_id"]: e["seq"] for e in t.events}
    events = []
    for e in t.events:
        redacted = t.redactions.get(e["event_id"])
        if e["payload_json"] is not None:
            payload: Body | None = _text_body(None, e["payload_json"])
        elif e["payload_sha256"] is not None:
            payload = Body(sha256=None, kind="redacted", text=None)
        else:
            payload = None
        events.append(TimelineEvent(
            event=AuditEvent.model_validate(e),
            input=_body(t, e["input_sha256"]),
            output=_body(t, e["output_sha256"]),
            payload=payload,
            redaction=None if redacted is None else Redaction(
                seq=redacted["seq"], by=redacted["actor_id"], reason=redacted["reason"],
                occurred_at=redacted["occurred_at"],
            ),
            answers_seq=seq_of.get(e["caused_by_event_id"]) if e["caused_by_event_id"] else None,
        ))
    gates = tuple(
        TimelineGate(
            requested_seq=a.request["seq"], requested_at=a.request["occurred_at"],
            requested_by=a.request["actor_id"], reason=a.request["reason"],
            decisions=tuple(
                TimelineDecision(
                    seq=d["seq"], event_type=d["event_type"], occurred_at=d["occurred_at"],
                    actor_id=d["actor_id"], comment=d["reason"],
                    self_approval=d["event_type"] == "approval.granted" and d["actor_id"] in a.self_approved_by,
                )
                for d in a.decisions
            ),
        )
        for a in t.approvals
    )
    return TimelineView(
        run_id=run_id,
        run=run,
        gate=None if run is None else gate_view(engine, run, viewer),
        events=tuple(events),
        gates=gates,
        totals=dict(t.totals),
        children=t.children,
        graph=_graph(engine, run_id, t.events, None if run is None else run.status),
    )


# -- the ledger ---------------------------------------------------------------------------


class AnchorInfo(BaseModel):
    """An anchor of the ledger head: where it is recorded, its seq, hash and time.

    Attributes:
        source: ``ledger.anchored event`` (the ledger's own record of an
            anchor taken) or ``remembered`` (the newest anchor this database
            has seen, in ``statecraft_meta``).
        seq, entry_hash, time: the anchored head.
        by: who took it (for a ledger.anchored event).
    """

    model_config = ConfigDict(frozen=True)

    source: str
    seq: int
    entry_hash: str
    time: str
    by: str | None = None


class LedgerView(BaseModel):
    """``statecraft audit verify`` as a page.

    Attributes:
        report: the verifier's verdict.
        summary: the one line ``audit verify`` prints.
        last_anchor: the newest ``ledger.anchored`` event, if any.
        remembered_anchor: the newest anchor the database remembers, if any.
    """

    model_config = ConfigDict(frozen=True)

    report: VerifyReport
    summary: str
    last_anchor: AnchorInfo | None
    remembered_anchor: AnchorInfo | None


def ledger_view(engine: Engine) -> LedgerView:
    """Verify the whole ledger and find its anchors. Read-only; reads every event (seconds on a large ledger).

    Raises:
        LedgerError: the ledger cannot be queried at all.
    """
    report = verify_ledger(engine.db)
    if not report.ok:
        summary = (
            f"FAILED: {report.reason}" if report.first_bad_seq is None
            else f"FAILED at seq {report.first_bad_seq}: {report.reason}"
        )
    else:
        summary = (
            f"OK up to seq {report.last_seq} ({report.events_checked} events; "
            "internally consistent, no anchor checked)"
        )
    last = None
    for e in iter_events(engine.db, EventFilter(event_types=("ledger.anchored",))):
        last = AnchorInfo(source="ledger.anchored event", seq=e["seq"], entry_hash=e["entry_hash"],
                          time=e["occurred_at"], by=e["actor_id"])
    with engine.db.read() as conn:
        seen = newest_anchor_seen(conn)
    remembered = None if seen is None else AnchorInfo(
        source="remembered", seq=seen.seq, entry_hash=seen.entry_hash, time=seen.time
    )
    return LedgerView(report=report, summary=summary, last_anchor=last, remembered_anchor=remembered)
