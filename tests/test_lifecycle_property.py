"""The run lifecycle, checked against a plain reference model (DESIGN.md invariants 1–3).

One flat Hypothesis ``RuleBasedStateMachine`` drives random sequences of
create, start, start_created, scripted agent steps, approve (right, absent and
wrong digest; one approver or a four-eyes quorum), reject, cancel, retry,
time passing with approval deadlines, and reopening the database, against a
real SQLite file (one temporary directory per test case).

The scripted machine has four steps, each declaring a different reliability
path, so one agent exception exercises all of them:

- ``draft``: an exception is retried once (``max_attempts=2``), then takes
  the error edge to ``review`` — unless the step's escalation rule
  (``too_many_drafts``: ``drafts >= 3``) fires on the state, which it judges
  on every edge leaving the step, its error edge included: then a human
  decides (issue #8); a gate raised here expires after 10 minutes into FAILED;
- ``review``: an exception asks a human (``escalate_on_error``); a gate the
  agent raised here is approved by silence after 10 minutes
  (``on_approval_timeout="approve"``), an error gate or a four-eyes gate is not;
- ``publish``: an exception takes the error edge to ``review``; its gates
  never expire;
- ``archive``: an exception fails the run; it cannot gate (no next step).

Agent outcomes are legal (goto, finish, request approval), a decision (Fail),
or illegal (an undeclared next step or ``resume_at``, a field the step does not
own, a schema violation, ``Finish`` from a step that may not finish, garbage
like ``None`` or ``42``, an in-place write to the state view it was handed —
a field assigned, or the unowned ``notes`` list appended to): an illegal one
fails the run, audited, and the in-place write never reaches the state.

Every request the model deems illegal must raise and write nothing: the
ledger length and the full ``RunInfo`` are compared before and after. Every
legal request must write exactly the audit events the model expects.

After every rule the ``@invariant``\\ s check that:

- every run's status, step, state (and its hash), error code and pending
  approval equal the reference model (``run_id -> ModelRun``; the lifecycle
  table in it is copied by hand from DESIGN.md, not taken from the engine);
- each run's audit events are contiguous (``run_seq`` 1..n, n == the row's
  ``run_seq``), chain ``from_*`` to the previous ``to_*``, move the status only
  along ``LEGAL_EDGES`` and the step only along declared edges;
- folding the events gives the run row (status, step, state hash), both here
  and through ``statecraft.audit.verify.fold_runs``; ``verify_ledger`` is ok;
- DONE runs accept nothing: every operator request raises
  ``IllegalTransition`` and the ledger does not grow.

Agents are scripted: the rule puts the planned outcome in ``SCRIPT`` and then
calls ``engine.advance(run_id, max_transitions=1)``; the agent returns (or
raises) it. Run ids and the clock are deterministic (time moves only when a
rule says so), so the machine is derandomize-friendly.

Model: HypothesisWorks/hypothesis ``docs/stateful.rst`` and
``tests/nocover/test_database_agreement.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import rfc8785
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text

from statecraft import (
    LEGAL_EDGES,
    ApprovalExpired,
    ApprovalMismatch,
    Engine,
    Fail,
    Finish,
    Goto,
    IllegalTransition,
    InvalidActorId,
    Machine,
    RequestApproval,
    RetryPolicy,
    RunError,
    RunInfo,
    RunNotFound,
    RunStatus,
    Step,
    StepContext,
    Trigger,
)
from statecraft.audit.verify import fold_runs, verify_ledger
from statecraft.errors import ApprovalRefused
from statecraft.outcomes import ApprovalPolicy
from statecraft.patterns import EscalationRule

I, R, W, F, D = (
    RunStatus.IDLE,
    RunStatus.RUNNING,
    RunStatus.WAITING_FOR_APPROVAL,
    RunStatus.FAILED,
    RunStatus.DONE,
)

# -- the reference lifecycle: DESIGN.md's table, copied by hand -------------------

#: (from, trigger) -> to, exactly as DESIGN.md "The run lifecycle" states it.
DESIGN_TABLE: dict[tuple[RunStatus, str], RunStatus] = {
    (I, "start"): R,
    (R, "step"): R,
    (R, "request_approval"): W,
    (W, "approve"): R,
    (W, "reject"): F,
    (W, "expire"): F,
    (R, "finish"): D,
    (R, "fail"): F,
    (I, "cancel"): F,
    (R, "cancel"): F,
    (W, "cancel"): F,
    (F, "retry"): R,
}

#: The operator requests, by the trigger they ask for.
OPERATOR_TRIGGERS = ("start", "approve", "reject", "cancel", "retry")

#: What each operator request writes when it is legal.
OPERATOR_EVENT = {
    "start": "run.started",
    "approve": "approval.granted",
    "reject": "approval.denied",
    "cancel": "run.cancelled",
    "retry": "run.retried",
}

#: Events whose agent may have changed the state (an update committed with them).
STATE_CHANGING_EVENTS = frozenset({"step.completed", "approval.requested", "run.completed"})


def event_trigger(event: Any) -> Trigger | None:
    """The lifecycle trigger an audit event records; ``None`` for a sub-event.

    Sub-events (agent sub-calls, failed attempts that will be retried, lease
    take-overs, approvals short of a quorum) must leave status, step and
    state as they were.
    """
    kind = event.event_type
    if kind == "approval.granted":
        return Trigger.APPROVE if event.to_status != W else None  # else: short of a quorum
    if kind == "approval.expired":
        # on_approval_timeout="approve": the machine's declared default decision.
        return Trigger.APPROVE if event.decision == "approve_by_default" else Trigger.EXPIRE
    return {
        "run.started": Trigger.START,
        "step.completed": Trigger.STEP,
        "step.error_edge": Trigger.STEP,
        "approval.requested": Trigger.REQUEST_APPROVAL,
        "approval.denied": Trigger.REJECT,
        "run.completed": Trigger.FINISH,
        "run.failed": Trigger.FAIL,
        "run.cancelled": Trigger.CANCEL,
        "run.retried": Trigger.RETRY,
    }.get(kind)


# -- the scripted machine -------------------------------------------------------------


class Doc(BaseModel):
    """The scripted machine's state; each field is owned by one step."""

    model_config = ConfigDict(frozen=True)

    drafts: int = Field(default=0, ge=0)
    summary: str = Field(default="", max_length=40)
    verdict: Literal["", "ok", "hold"] = ""
    notes: list[str] = Field(default_factory=list)  # owned by no step: agents may only read it


START_STEP = "draft"
#: step -> its declared next steps; ``archive`` has none.
NEXT: dict[str, tuple[str, ...]] = {
    "draft": ("review",),
    "review": ("draft", "publish"),
    "publish": ("archive",),
    "archive": (),
}
WRITES: dict[str, tuple[str, ...]] = {
    "draft": ("drafts",),
    "review": ("summary",),
    "publish": ("verdict",),
    "archive": (),
}
MAY_FINISH = frozenset({"publish", "archive"})
#: What happens when a step's agent raises (see the module docstring).
ESCALATE_ON_ERROR = frozenset({"review"})
MAX_ATTEMPTS = {"draft": 2}
ON_ERROR = {"draft": "review", "publish": "review"}
#: ``draft``'s escalation rule: fires on the state an edge out of ``draft`` would carry.
DRAFT_LIMIT = 3
#: Approval deadlines: step -> on_approval_timeout.
DEADLINE = timedelta(minutes=10)
ON_TIMEOUT = {"draft": "fail", "review": "approve"}
STEPS = tuple(NEXT)
FIELDS = tuple(Doc.model_fields)
STARTED_BY = "svc"

_FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in "abcdefghijklmnopqrstuvwxyz"}
_CYRILLIC_TWINS = {"a": "\u0430", "c": "\u0441", "e": "\u0435", "i": "\u0456", "o": "\u043e",
                   "p": "\u0440", "s": "\u0455", "v": "\u0475", "l": "\u04cf", "b": "\u044c",
                   "d": "\u0501"}

#: Ways one person's id can be spelled (issue #8), each a function of the id.
SPELLINGS: dict[str, Callable[[str], str]] = {
    "upper case": str.upper,
    "surrounding spaces": lambda a: f"  {a} ",
    "+tag": lambda a: f"{a}+again",
    "full-width letters": lambda a: "".join(_FULLWIDTH.get(c, c) for c in a),
    "one look-alike letter": lambda a: _CYRILLIC_TWINS.get(a[0], a[0]) + a[1:],
    "all look-alike letters": lambda a: "".join(_CYRILLIC_TWINS.get(c, c) for c in a),
    "zero-width space": lambda a: f"{a[:1]}\u200b{a[1:]}",
    "bidi override": lambda a: f"\u202e{a}",
    "NUL byte": lambda a: f"{a}\x00",
}
#: The spellings that are refused as ids whatever the gate.
NOT_AN_ID = frozenset({"one look-alike letter", "zero-width space", "bidi override", "NUL byte"})
#: A four-eyes gate: two distinct approvers, neither the run's starter.
FOUR_EYES = ApprovalPolicy(required=2)

_NO_PLAN = object()


@dataclass(frozen=True)
class Mutating:
    """A plan: the agent writes to its state view in place, then returns ``then``."""

    how: Literal["assign", "nested"]
    then: object

    def apply(self, view: Any) -> None:
        if self.how == "assign":
            view.drafts = 99  # refused: the view is read-only
        else:
            view.notes.append("written in place")  # a copy: detected, never committed


@dataclass
class Script:
    """What the next agent call returns (or raises); set by a rule just before ``advance``."""

    plan: object = _NO_PLAN
    calls: list[str] = field(default_factory=list)

    def set(self, plan: object) -> None:
        self.plan = plan
        self.calls.clear()

    def clear(self) -> None:
        self.set(_NO_PLAN)

    def take(self, step: str) -> object:
        plan, self.plan = self.plan, _NO_PLAN
        self.calls.append(step)
        if plan is _NO_PLAN:
            return Fail("the scripted agent was called without a plan", error_code="unplanned")
        if isinstance(plan, BaseException):
            raise plan
        return plan


SCRIPT = Script()


def _scripted_agent(step: str) -> Callable[[Doc, StepContext], Any]:
    def agent(state: Doc, ctx: StepContext) -> Any:
        # The engine must call the agent of the run's current step, and no other.
        assert ctx.step == step, (ctx.step, step)
        plan = SCRIPT.take(step)
        if isinstance(plan, Mutating):
            plan.apply(state)
            return plan.then
        return plan

    agent.__qualname__ = agent.__name__ = f"scripted_{step}"
    agent.agent_name = f"scripted.{step}"  # type: ignore[attr-defined]
    return agent


TOO_MANY_DRAFTS = EscalationRule(
    "too_many_drafts",
    lambda state: f"drafts {state.drafts} >= {DRAFT_LIMIT}" if state.drafts >= DRAFT_LIMIT else None,
)


def build_machine() -> Machine[Doc]:
    """A fresh ``Machine`` object; every build has the same digest."""
    return Machine(
        "scripted",
        "1",
        Doc,
        steps=[
            Step(
                name,
                _scripted_agent(name),
                next=NEXT[name],
                writes=WRITES[name],
                may_finish=name in MAY_FINISH,
                on_error=ON_ERROR.get(name),
                escalate_on_error=name in ESCALATE_ON_ERROR,
                retry=(
                    RetryPolicy(max_attempts=MAX_ATTEMPTS[name], initial_interval=timedelta(0),
                                max_interval=timedelta(0))
                    if name in MAX_ATTEMPTS else None
                ),
                approval_deadline=DEADLINE if name in ON_TIMEOUT else None,
                on_approval_timeout=ON_TIMEOUT.get(name, "fail"),
                escalate=[TOO_MANY_DRAFTS] if name == "draft" else (),
            )
            for name in STEPS
        ],
        start=START_STEP,
        max_steps=1_000,  # budgets are not under test here
    )


class FakeClock:
    """A deterministic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


# -- the reference model ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelRun:
    """What the reference model says one run is.

    ``attempts``, ``deadline``, ``auto_approve`` are the model's own
    bookkeeping: the engine's behaviour (event types, expiries) shows them.
    """

    status: RunStatus
    step: str
    state: dict[str, Any]
    error_code: str | None = None
    resume_at: str | None = None
    approved_by: tuple[str, ...] = ()
    required: int = 1
    attempts: int = 0
    deadline: datetime | None = None
    auto_approve: bool = False

    def moved(self, status: RunStatus, step: str | None = None, **kw: Any) -> ModelRun:
        """The run after a transition: the gate and the attempt count are reset."""
        base = {
            "status": status, "step": self.step if step is None else step, "error_code": None,
            "resume_at": None, "approved_by": (), "required": 1, "attempts": 0,
            "deadline": None, "auto_approve": False,
        }
        return replace(self, **{**base, **kw})

    def failed(self, code: str) -> ModelRun:
        return self.moved(F, error_code=code)

    def gate(
        self, resume_at: str, now: datetime, *, required: int = 1, by_agent: bool = True
    ) -> ModelRun:
        on_timeout = ON_TIMEOUT.get(self.step)
        return self.moved(
            W,
            resume_at=resume_at,
            required=required,
            deadline=now + DEADLINE if on_timeout else None,
            # Silence approves only plain gates the agent asked for: never an
            # error gate, never a gate with an approval policy (four-eyes).
            auto_approve=on_timeout == "approve" and by_agent and required == 1,
        )

    def overdue(self, now: datetime) -> bool:
        return self.status is W and self.deadline is not None and self.deadline <= now

    def expired(self) -> ModelRun:
        assert self.resume_at is not None
        if self.auto_approve:
            return self.moved(R, self.resume_at)
        return self.failed("approval_expired")


@dataclass(frozen=True)
class Expect:
    """What one agent step should do: the run afterwards and the event type written."""

    run: ModelRun
    event: str


def initial_state(drafts: int) -> dict[str, Any]:
    return {"drafts": drafts, "summary": "", "verdict": "", "notes": []}


def rule_fires(step: str, state: dict[str, Any]) -> bool:
    """Whether ``step``'s escalation rule fires on ``state`` (judged independently of the engine)."""
    return step == "draft" and state["drafts"] >= DRAFT_LIMIT


def state_sha256(state: dict[str, Any]) -> str:
    """The state hash the engine must record: SHA-256 of the RFC 8785 JSON of the state."""
    return hashlib.sha256(rfc8785.dumps(state)).hexdigest()


def legal_update(step: str, pick: int) -> dict[str, Any]:
    """A valid value for each field ``step`` owns (none when ``pick`` is 0)."""
    if pick == 0:
        return {}
    values = {"drafts": pick, "summary": f"summary {pick}", "verdict": ("ok", "hold")[pick % 2]}
    return {f: values[f] for f in WRITES[step]}


INVALID_VALUES: dict[str, Any] = {"drafts": -1, "summary": "x" * 41, "verdict": "maybe"}
GARBAGE: tuple[object, ...] = (None, 42, "review", {"step": "review"}, [Finish()])

LEGAL_KINDS = ("goto", "finish", "request_approval")
BAD_KINDS = (
    "fail",
    "raise",  # three times: each step has its own error path to cover
    "raise",
    "raise",
    "garbage",
    "undeclared_goto",
    "undeclared_resume_at",
    "unowned_write",
    "schema_violation",
    "mutate_assign",
    "mutate_nested",
)


def plan_step(run: ModelRun, kind: str, pick: int, now: datetime) -> tuple[object, Expect]:
    """The agent's planned outcome for ``kind``, and what the model expects of it.

    The expectation is judged from the declarations (``NEXT``, ``WRITES``,
    ``MAY_FINISH``, the error paths, ``Doc``'s constraints), independently of
    the engine.
    """
    step, nxt = run.step, NEXT[run.step]
    update = legal_update(step, pick)
    merged = {**run.state, **update}

    def failed(code: str) -> Expect:
        return Expect(run.failed(code), "run.failed")

    def base(update: dict[str, Any]) -> object:
        # A legal move for the step, to carry a bad update.
        return Goto(nxt[0], update=update) if nxt else Finish(update=update)

    if kind == "happy":
        # The legal move a well-behaved agent makes: onwards, towards a finish.
        if step == "review" and pick % 2:
            return plan_step(run, "request_approval", 1, now)  # resume at publish
        if step in MAY_FINISH and (pick % 2 or not nxt):
            return plan_step(run, "finish", pick, now)
        return plan_step(run, "goto", len(nxt) - 1, now)
    if kind == "goto":
        target = nxt[pick % len(nxt)] if nxt else START_STEP
        plan: object = Goto(target, update=update, reason=f"go to {target}")
        if target not in nxt:
            return plan, failed("undeclared_edge")
        if rule_fires(step, merged):
            gate = run.gate(target, now, by_agent=False)
            return plan, Expect(replace(gate, state=merged), "approval.requested")
        return plan, Expect(replace(run.moved(R, target), state=merged), "step.completed")
    if kind == "finish":
        plan = Finish(update=update, reason="finished")
        if step not in MAY_FINISH:
            return plan, failed("not_allowed_to_finish")
        return plan, Expect(replace(run.moved(D), state=merged), "run.completed")
    if kind == "request_approval":
        resume_at = nxt[pick % len(nxt)] if nxt else START_STEP
        four_eyes = pick >= 2  # two distinct approvers, neither the run's starter
        plan = RequestApproval(
            f"please check {step}", resume_at=resume_at, update=update,
            policy=FOUR_EYES if four_eyes else None,
        )
        if resume_at not in nxt:
            return plan, failed("undeclared_edge")
        gate = run.gate(resume_at, now, required=2 if four_eyes else 1)
        return plan, Expect(replace(gate, state=merged), "approval.requested")
    if kind == "fail":
        return Fail(f"scripted failure at {step}", error_code="scripted_failure"), failed(
            "scripted_failure"
        )
    if kind == "raise":
        plan = RuntimeError(f"agent at {step} crashed")
        if run.attempts + 1 < MAX_ATTEMPTS.get(step, 1):
            return plan, Expect(replace(run, attempts=run.attempts + 1), "step.attempt_failed")
        if step in ON_ERROR:
            if rule_fires(step, run.state):
                # The error edge leaves the step too: the rule is judged on it.
                return plan, Expect(run.gate(ON_ERROR[step], now, by_agent=False), "approval.requested")
            return plan, Expect(run.moved(R, ON_ERROR[step]), "step.error_edge")
        if step in ESCALATE_ON_ERROR:
            return plan, Expect(run.gate(step, now, by_agent=False), "approval.requested")
        return plan, failed("agent_error")
    if kind == "garbage":
        return GARBAGE[pick % len(GARBAGE)], failed("not_an_outcome")
    if kind == "undeclared_goto":
        targets = sorted((set(STEPS) | {"nowhere"}) - set(nxt))
        return Goto(targets[pick % len(targets)], update=update), failed("undeclared_edge")
    if kind == "undeclared_resume_at":
        targets = sorted((set(STEPS) | {"nowhere"}) - set(nxt))
        plan = RequestApproval("gate", resume_at=targets[pick % len(targets)])
        return plan, failed("undeclared_edge")
    if kind in ("mutate_assign", "mutate_nested"):
        # An otherwise legal move, after writing to the view in place.
        how: Literal["assign", "nested"] = "assign" if kind == "mutate_assign" else "nested"
        return Mutating(how, base(update)), failed("state_mutation")
    if kind == "unowned_write":
        unowned = [f for f in FIELDS if f not in WRITES[step]]
        name = unowned[pick % len(unowned)]
        value = {"drafts": 7, "summary": "stolen", "verdict": "ok", "notes": ["stolen"]}[name]
        return base({name: value}), failed("unowned_field")
    if kind == "schema_violation":
        if WRITES[step]:
            name = WRITES[step][pick % len(WRITES[step])]
            return base({name: INVALID_VALUES[name]}), failed("schema_violation")
        # A step that owns nothing cannot break the schema without trespassing.
        return base({"drafts": -1}), failed("unowned_field")
    raise AssertionError(kind)


# -- helpers shared by the state machine and the example tests -------------------------------


def ledger_head(engine: Engine) -> int:
    """The highest audit seq (the ledger is contiguous, so also its length)."""
    with engine.db.read() as conn:
        return int(conn.execute(text("SELECT COALESCE(MAX(seq), 0) FROM audit_event")).scalar_one())


def events_after(engine: Engine, seq: int) -> list[tuple[str, str | None]]:
    """(event_type, run_id) of every audit event after ``seq``, in order."""
    with engine.db.read() as conn:
        rows = conn.execute(
            text("SELECT event_type, run_id FROM audit_event WHERE seq > :s ORDER BY seq"), {"s": seq}
        ).all()
    return [(r[0], r[1]) for r in rows]


def _snapshot(engine: Engine, run_id: str) -> RunInfo | None:
    try:
        return engine.get(run_id)
    except RunNotFound:
        return None


def assert_refused(
    engine: Engine, run_id: str, request: Callable[[], object], error: type[Exception]
) -> Exception:
    """``request`` raises ``error``, runs no agent and writes nothing (ledger and run unchanged)."""
    head, before = ledger_head(engine), _snapshot(engine, run_id)
    SCRIPT.clear()
    with pytest.raises(error) as info:
        request()
    assert not SCRIPT.calls, f"a refused request ran an agent: {SCRIPT.calls}"
    assert events_after(engine, head) == [], "a refused request wrote audit events"
    assert _snapshot(engine, run_id) == before, "a refused request changed the run"
    return info.value


def operator_request(
    engine: Engine, run_id: str, trigger: str, *, by: str = "alice", digest: str | None = None
) -> Callable[[], RunInfo]:
    """The engine call an operator makes for ``trigger`` (never advancing inline)."""
    if trigger == "start":
        return lambda: engine.start_created(run_id, advance=False)
    if trigger == "approve":
        return lambda: engine.approve(run_id, by=by, digest=digest, advance=False)
    if trigger == "reject":
        return lambda: engine.reject(run_id, by=by, reason="not good enough")
    if trigger == "cancel":
        return lambda: engine.cancel(run_id, by="olga", reason="no longer needed")
    if trigger == "retry":
        return lambda: engine.retry(run_id, by="olga", reason="try again", advance=False)
    raise AssertionError(trigger)


def check_run_events(events: list[Any], run_id: str) -> tuple[str | None, str | None, str | None]:
    """Check one run's audit events in order; return their fold (status, step, state hash).

    Every event records the run *after* it (``to_status``, ``to_step``,
    ``state_sha256``) and the run before it (``from_status``, ``from_step``);
    status moves only along ``LEGAL_EDGES``, the step only along declared
    edges, the state only with an agent's committed outcome.
    """
    legal = set(LEGAL_EDGES)
    assert events, f"run {run_id} has no audit events"
    assert [e.run_seq for e in events] == list(range(1, len(events) + 1)), (
        f"run {run_id}: run_seq not contiguous from 1: {[e.run_seq for e in events]}"
    )
    first = events[0]
    assert first.event_type == "run.created", first.event_type
    assert (first.from_status, first.to_status, first.to_step) == (None, I, START_STEP)
    status, step, state = first.to_status, first.to_step, first.state_sha256
    for e in events[1:]:
        where = f"run {run_id} run_seq {e.run_seq} ({e.event_type})"
        assert (e.from_status, e.from_step) == (status, step), (
            f"{where}: from ({e.from_status}, {e.from_step}) but the run was ({status}, {step})"
        )
        trigger = event_trigger(e)
        if trigger is None:
            assert (e.to_status, e.to_step, e.state_sha256) == (status, step, state), (
                f"{where}: a sub-event changed the run"
            )
        else:
            edge = (RunStatus(e.from_status), trigger, RunStatus(e.to_status))
            assert edge in legal, f"{where}: {edge} is not in LEGAL_EDGES"
            if e.event_type == "step.error_edge":
                assert e.to_step == ON_ERROR.get(step), f"{where}: undeclared error edge"
            elif trigger is Trigger.STEP:
                assert e.to_step in NEXT[step], f"{where}: {step} -> {e.to_step} is not declared"
            elif trigger is Trigger.APPROVE:
                # An error gate resumes at its own step (the step runs again).
                assert e.to_step in (*NEXT[step], step), f"{where}: resumes at {e.to_step}"
            else:
                assert e.to_step == step, f"{where}: moved the step {step} -> {e.to_step}"
            if trigger is Trigger.FINISH:
                assert step in MAY_FINISH, f"{where}: {step} may not finish"
            if e.event_type not in STATE_CHANGING_EVENTS:
                assert e.state_sha256 == state, f"{where}: changed the state"
        status, step, state = e.to_status, e.to_step, e.state_sha256
    return status, step, state


# -- the state machine -------------------------------------------------------------------


class LifecycleMachine(RuleBasedStateMachine):
    """Random operator and agent requests against one real SQLite file."""

    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="statecraft-lifecycle-"))
        self.path = self.tmp / "statecraft.db"
        self.clock = FakeClock()
        self.ids = itertools.count(1)
        self.machine = build_machine()
        self.engine = self._open()
        self.model: dict[str, ModelRun] = {}
        SCRIPT.clear()

    def _open(self) -> Engine:
        return Engine(
            self.path,
            synchronous="NORMAL",  # durability is not under test here
            machines=[self.machine],
            clock=self.clock,
            new_id=lambda: f"run-{next(self.ids):03d}",
        )

    def teardown(self) -> None:
        SCRIPT.clear()
        try:
            self.engine.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ---------------------------------------------------------------

    def _ids(self, *statuses: RunStatus) -> list[str]:
        return sorted(r for r, m in self.model.items() if m.status in statuses)

    def _has(self, *statuses: RunStatus) -> bool:
        return any(m.status in statuses for m in self.model.values())

    def _check_info(self, info: RunInfo) -> None:
        want = self.model[info.run_id]
        pending = info.pending
        got = (
            info.status, info.step, dict(info.state), info.error_code,
            pending.resume_at if pending else None,
            tuple(pending.approved_by) if pending else (),
            pending.required if pending else 1,
        )
        expected = (
            want.status, want.step, want.state, want.error_code, want.resume_at,
            want.approved_by, want.required,
        )
        assert got == expected, f"run {info.run_id}: engine says {got}, model says {expected}"

    def _commit(
        self, run_id: str, request: Callable[[], RunInfo], expected: ModelRun, events: list[str]
    ) -> None:
        """A request the model deems legal: exactly ``events`` written, and the expected run."""
        head = ledger_head(self.engine)
        info = request()
        self.model[run_id] = expected
        self._check_info(info)
        assert events_after(self.engine, head) == [(e, run_id) for e in events]

    def _operator(
        self, run_id: str, trigger: str, *, by: str = "alice", digest: str | None = None
    ) -> None:
        """Send an operator request; legal per DESIGN_TABLE (and the gate's policy), else refused."""
        run = self.model[run_id]
        request = operator_request(self.engine, run_id, trigger, by=by, digest=digest)
        to = DESIGN_TABLE.get((run.status, trigger))
        if to is None:
            assert_refused(self.engine, run_id, request, IllegalTransition)
            return
        if trigger in ("approve", "reject") and run.overdue(self.clock.now):
            # Issue #8: past its deadline a gate is decided by its on-timeout
            # action (the worker's approval.expired), never by a late decision,
            # and the refusal writes nothing (it used to write the expiry, then raise).
            assert_refused(self.engine, run_id, request, ApprovalExpired)
            return
        if trigger == "approve":
            pending = self.engine.get(run_id).pending
            assert pending is not None, f"waiting run {run_id} has no pending proposal"
            if digest is not None and digest != pending.proposal_digest:
                assert_refused(self.engine, run_id, request, ApprovalMismatch)
                return
            if run.required > 1 and (by in run.approved_by or by == STARTED_BY):
                assert_refused(self.engine, run_id, request, ApprovalRefused)
                return
            approved = (*run.approved_by, by)
            if len(approved) < run.required:
                expected = replace(run, approved_by=approved)  # short of the quorum: still waiting
            else:
                assert run.resume_at is not None
                expected = run.moved(R, run.resume_at)
        else:
            code = {"reject": "rejected", "cancel": "cancelled"}.get(trigger)
            expected = run.moved(to, error_code=code)
        self._commit(run_id, request, expected, [OPERATOR_EVENT[trigger]])

    def _step(self, run_id: str, kind: str, pick: int) -> None:
        run = self.model[run_id]
        assert run.status is R
        plan, expect = plan_step(run, kind, pick, self.clock.now)
        SCRIPT.set(plan)
        self._commit(
            run_id, lambda: self.engine.advance(run_id, max_transitions=1), expect.run, [expect.event]
        )
        assert SCRIPT.calls == [run.step], f"agents called: {SCRIPT.calls}, expected [{run.step}]"
        SCRIPT.clear()

    def _approve(self, run_id: str, how: str, by: str) -> None:
        digest = None
        if how == "wrong":
            digest = "f" * 64
        elif how == "pending" and self.model[run_id].status is W:
            pending = self.engine.get(run_id).pending
            assert pending is not None, f"waiting run {run_id} has no pending proposal"
            digest = pending.proposal_digest
        self._operator(run_id, "approve", by=by, digest=digest)

    # -- creating runs -----------------------------------------------------------

    @initialize(target=runs, drafts=st.integers(0, 3))
    def first_run(self, drafts: int) -> str:
        return self._start(drafts)

    @rule(target=runs, drafts=st.integers(0, 3))
    def create(self, drafts: int) -> str:
        head = ledger_head(self.engine)
        info = self.engine.create(self.machine, {"drafts": drafts}, by=STARTED_BY)
        self.model[info.run_id] = ModelRun(I, START_STEP, initial_state(drafts))
        self._check_info(info)
        assert events_after(self.engine, head) == [("run.created", info.run_id)]
        return info.run_id

    @rule(target=runs, drafts=st.integers(0, 3))
    def start(self, drafts: int) -> str:
        return self._start(drafts)

    def _start(self, drafts: int) -> str:
        head = ledger_head(self.engine)
        SCRIPT.clear()
        info = self.engine.start(self.machine, {"drafts": drafts}, by=STARTED_BY, advance=False)
        assert not SCRIPT.calls, "start(advance=False) ran an agent"
        self.model[info.run_id] = ModelRun(R, START_STEP, initial_state(drafts))
        self._check_info(info)
        assert events_after(self.engine, head) == [
            ("run.created", info.run_id), ("run.started", info.run_id)
        ]
        return info.run_id

    # -- agent steps ---------------------------------------------------------------

    @precondition(lambda self: self._has(R))
    @rule(index=st.integers(0, 7), kind=st.sampled_from(LEGAL_KINDS), pick=st.integers(0, 3))
    def agent_step(self, index: int, kind: str, pick: int) -> None:
        running = self._ids(R)
        self._step(running[index % len(running)], kind, pick)

    @precondition(lambda self: self._has(R, W))
    @rule(
        index=st.integers(0, 7),
        picks=st.lists(st.integers(0, 3), min_size=1, max_size=5),
        then=st.sampled_from(("nothing", *BAD_KINDS)),
    )
    def a_run_moves_along_the_happy_path(self, index: int, picks: list[int], then: str) -> None:
        # Per pick, one advance(max_transitions=1) of a RUNNING run, or one
        # approval (alice, then bob) of a waiting one: reaches gates, quorums
        # and DONE far more often than independent single requests. ``then``:
        # the agent misbehaves at the step reached (each step's error path).
        movable = self._ids(R, W)
        run_id = movable[index % len(movable)]
        approvers = iter(["alice", "bob", "carol"])
        for pick in picks:
            status = self.model[run_id].status
            if status is R:
                self._step(run_id, "happy", pick)
            elif status is W:
                how = ("pending", "none", "pending", "wrong")[pick]  # wrong: refused, retried next pick
                self._approve(run_id, how, next(approvers, "dave"))
            else:
                break
        if then != "nothing" and self.model[run_id].status is R:
            self._step(run_id, then, picks[-1])

    @precondition(lambda self: self._has(R))
    @rule(index=st.integers(0, 7), kind=st.sampled_from(BAD_KINDS), pick=st.integers(0, 4))
    def agent_step_that_fails_or_misbehaves(self, index: int, kind: str, pick: int) -> None:
        running = self._ids(R)
        self._step(running[index % len(running)], kind, pick)

    @precondition(lambda self: self._has(R))
    @rule(index=st.integers(0, 7), how=st.sampled_from(["mutate_assign", "mutate_nested"]), pick=st.integers(0, 3))
    def an_agent_writes_to_its_state_view_in_place(self, index: int, how: str, pick: int) -> None:
        # Issue #8: an in-place write never reaches the checkpoint; the run fails, audited.
        running = self._ids(R)
        self._step(running[index % len(running)], how, pick)

    @precondition(lambda self: any(m.status is R and m.step == "draft" for m in self.model.values()))
    @rule(index=st.integers(0, 7))
    def an_agent_raises_until_its_error_edge_leaves_an_escalating_step(self, index: int) -> None:
        # Issue #8: the error edge out of ``draft`` is judged by its escalation
        # rule; with drafts >= DRAFT_LIMIT a human decides, else the edge is taken.
        at_draft = sorted(r for r, m in self.model.items() if m.status is R and m.step == "draft")
        run_id = at_draft[index % len(at_draft)]
        while self.model[run_id].status is R and self.model[run_id].step == "draft":
            self._step(run_id, "raise", 0)

    @rule(run_id=runs)
    def advance_any_run(self, run_id: str) -> None:
        run = self.model[run_id]
        if run.status is R:
            self._step(run_id, "goto", 1)
            return
        # Not RUNNING: advance returns the run unchanged, calls no agent, writes nothing.
        head, before = ledger_head(self.engine), _snapshot(self.engine, run_id)
        SCRIPT.clear()
        info = self.engine.advance(run_id, max_transitions=1)
        assert not SCRIPT.calls, f"advancing a {run.status} run called {SCRIPT.calls}"
        self._check_info(info)
        assert events_after(self.engine, head) == []
        assert _snapshot(self.engine, run_id) == before

    # -- operator requests, on any run (legal or not) ----------------------------------

    @rule(run_id=runs)
    def start_created(self, run_id: str) -> None:
        self._operator(run_id, "start")

    @rule(
        run_id=runs,
        how=st.sampled_from(["pending", "none", "wrong"]),
        by=st.sampled_from(["alice", "bob", STARTED_BY]),
    )
    def approve(self, run_id: str, how: str, by: str) -> None:
        self._approve(run_id, how, by)

    @rule(run_id=runs)
    def reject(self, run_id: str) -> None:
        self._operator(run_id, "reject")

    @rule(run_id=runs)
    def cancel(self, run_id: str) -> None:
        self._operator(run_id, "cancel")

    @rule(run_id=runs)
    def retry(self, run_id: str) -> None:
        self._operator(run_id, "retry")

    # -- operator requests aimed at runs where they may be legal -----------------------------

    @precondition(lambda self: self._has(W))
    @rule(
        index=st.integers(0, 7),
        decision=st.sampled_from(
            ["approve:pending", "approve:none", "approve:wrong", "reject", "cancel"]
        ),
        by=st.lists(st.sampled_from(["alice", "bob", STARTED_BY]), min_size=1, max_size=3),
    )
    def decide_a_waiting_run(self, index: int, decision: str, by: list[str]) -> None:
        # Approvals are sent by each of ``by`` in turn (a quorum, a repeated
        # approver, the run's own starter); reject and cancel by the first.
        waiting = self._ids(W)
        run_id = waiting[index % len(waiting)]
        if not decision.startswith("approve:"):
            self._operator(run_id, decision, by=by[0])
            return
        for approver in by:
            self._approve(run_id, decision.split(":", 1)[1], approver)

    @precondition(lambda self: self._has(F))
    @rule(index=st.integers(0, 7))
    def retry_a_failed_run(self, index: int) -> None:
        failed = self._ids(F)
        self._operator(failed[index % len(failed)], "retry")

    @precondition(lambda self: self._has(I))
    @rule(index=st.integers(0, 7), trigger=st.sampled_from(["start", "cancel"]))
    def start_or_cancel_an_idle_run(self, index: int, trigger: str) -> None:
        idle = self._ids(I)
        self._operator(idle[index % len(idle)], trigger)

    @rule(run_id=runs)
    def resume(self, run_id: str) -> None:
        # resume continues only a RUNNING run (until it stops: here the agent
        # decides to fail); anything else is refused and writes nothing.
        if self.model[run_id].status is not R:
            assert_refused(self.engine, run_id, lambda: self.engine.resume(run_id), IllegalTransition)
            return
        plan, expect = plan_step(self.model[run_id], "fail", 0, self.clock.now)
        step = self.model[run_id].step
        SCRIPT.set(plan)
        self._commit(run_id, lambda: self.engine.resume(run_id), expect.run, [expect.event])
        assert SCRIPT.calls == [step]

    # -- time and approval deadlines ---------------------------------------------------------

    @rule(minutes=st.sampled_from([1, 4, 11]))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(timedelta(minutes=minutes))

    @rule(first=st.booleans())
    def expire_overdue_approvals(self, first: bool) -> None:
        # ``first``: let time reach the earliest deadline before expiring.
        deadlines = [m.deadline for m in self.model.values() if m.status is W and m.deadline]
        if first and deadlines and min(deadlines) > self.clock.now:
            self.clock.now = min(deadlines)
        due = sorted(r for r, m in self.model.items() if m.overdue(self.clock.now))
        head = ledger_head(self.engine)
        changed = self.engine.expire_approvals()
        assert sorted(info.run_id for info in changed) == due
        written = events_after(self.engine, head)
        assert sorted(written, key=lambda e: e[1] or "") == [("approval.expired", r) for r in due]
        for info in changed:
            self.model[info.run_id] = self.model[info.run_id].expired()
            self._check_info(info)

    # -- actor spellings (issue #8) -----------------------------------------------------------

    @precondition(lambda self: self._has(W))
    @rule(index=st.integers(0, 7), impersonate=st.integers(0, 3), how=st.sampled_from(sorted(SPELLINGS)))
    def an_actor_spelled_differently_is_the_same_person_to_the_policy(
        self, index: int, impersonate: int, how: str
    ) -> None:
        # Issue #8. Invisible, bidi, control characters and letters mixing
        # look-alike scripts are no id at all: refused on every gate. On a
        # four-eyes gate, the run's starter and anyone who approved already
        # are refused however their id is spelled (case, spaces, a +tag,
        # full-width or look-alike letters). Nothing is written either way.
        waiting = self._ids(W)
        run_id = waiting[index % len(waiting)]
        run = self.model[run_id]
        people = [STARTED_BY, *run.approved_by]
        spelled = SPELLINGS[how](people[impersonate % len(people)])
        if how in NOT_AN_ID:
            expected: type[Exception] = InvalidActorId  # checked before the run is even read
        elif run.overdue(self.clock.now):
            expected = ApprovalExpired  # past the gate's deadline no one decides it, however spelled
        elif run.required > 1:
            expected = ApprovalRefused
        else:
            return  # a gate without a policy lets anyone named approve: nothing to bypass
        assert_refused(self.engine, run_id, lambda: self.engine.approve(run_id, by=spelled, advance=False), expected)

    # -- malformed requests -----------------------------------------------------------------

    @rule(
        run_id=runs,
        what=st.sampled_from(["reject:reason", "cancel:reason", "approve:by", "retry:by"]),
    )
    def decision_without_a_reason_or_an_actor(self, run_id: str, what: str) -> None:
        requests = {
            "reject:reason": lambda: self.engine.reject(run_id, by="alice", reason="  "),
            "cancel:reason": lambda: self.engine.cancel(run_id, by="olga", reason=""),
            "approve:by": lambda: self.engine.approve(run_id, by="", advance=False),
            "retry:by": lambda: self.engine.retry(run_id, by=" ", advance=False),
        }
        assert_refused(self.engine, run_id, requests[what], RunError)

    @rule(trigger=st.sampled_from(OPERATOR_TRIGGERS))
    def request_on_an_unknown_run(self, trigger: str) -> None:
        assert_refused(
            self.engine, "run-999", operator_request(self.engine, "run-999", trigger), RunNotFound
        )

    # -- the process goes away and comes back ----------------------------------------------

    @rule(fresh_machine=st.booleans())
    def reopen_the_database(self, fresh_machine: bool) -> None:
        self.engine.close()
        if fresh_machine:
            self.machine = build_machine()  # as a new process would: same digest, new object
        self.engine = self._open()

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def every_run_is_what_the_model_says(self) -> None:
        listed = {info.run_id: info for info in self.engine.list(limit=10_000)}
        assert set(listed) == set(self.model)
        for info in listed.values():
            self._check_info(info)
            assert info.state_sha256 == state_sha256(self.model[info.run_id].state)
            assert info.lease_owner is None, f"run {info.run_id} kept a lease after advancing"
            if info.status is W:
                assert info.pending is not None and info.pending.step == info.step

    @invariant()
    def the_ledger_folds_into_the_run_rows_and_verifies(self) -> None:
        events = self.engine.events()
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        by_run: dict[str, list[Any]] = {}
        for e in events:
            if e.run_id is not None:
                by_run.setdefault(e.run_id, []).append(e)
        assert set(by_run) == set(self.model)
        rows = {info.run_id: info for info in self.engine.list(limit=10_000)}
        for run_id, run_events in by_run.items():
            row = rows[run_id]
            fold = check_run_events(run_events, run_id)
            assert len(run_events) == row.run_seq
            assert fold == (row.status, row.step, row.state_sha256), (
                f"run {run_id}: fold(events) = {fold}, row = "
                f"{(row.status, row.step, row.state_sha256)}"
            )
        with self.engine.db.read() as conn:
            folded = fold_runs(conn)
        assert {
            r: (f.status, f.step, f.state_sha256, f.run_seq) for r, f in folded.items()
        } == {r: (i.status, i.step, i.state_sha256, i.run_seq) for r, i in rows.items()}
        report = verify_ledger(self.engine.db)
        assert report.ok, report.reason
        assert report.last_seq == len(events)

    @invariant()
    def done_runs_accept_nothing(self) -> None:
        for run_id in self._ids(D):
            for trigger in OPERATOR_TRIGGERS:
                request = operator_request(self.engine, run_id, trigger)
                assert_refused(self.engine, run_id, request, IllegalTransition)
            assert_refused(self.engine, run_id, lambda: self.engine.resume(run_id), IllegalTransition)


LifecycleMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLifecycle = LifecycleMachine.TestCase


# -- example tests: the edges the table forbids -------------------------------------------


def test_the_reference_table_is_the_lifecycle_table() -> None:
    assert {(s, str(t), d) for s, t, d in LEGAL_EDGES} == {
        (s, t, d) for (s, t), d in DESIGN_TABLE.items()
    }


@pytest.fixture
def machine() -> Iterator[Machine[Doc]]:
    SCRIPT.clear()
    yield build_machine()
    SCRIPT.clear()


def run_in(engine: Engine, machine: Machine[Doc], status: RunStatus) -> str:
    """A run brought to ``status`` through legal requests only."""
    if status is I:
        return engine.create(machine, {}, by=STARTED_BY).run_id
    run_id = engine.start(machine, {}, by=STARTED_BY, advance=False).run_id

    def step(plan: object) -> RunInfo:
        SCRIPT.set(plan)
        return engine.advance(run_id, max_transitions=1)

    if status is W:
        step(Goto("review"))
        step(Goto("publish"))
        step(RequestApproval("looks risky", resume_at="archive"))
    elif status is F:
        step(Fail("no luck"))
    elif status is D:
        step(Goto("review"))
        step(Goto("publish"))
        step(Finish())
    SCRIPT.clear()
    assert engine.get(run_id).status is status
    return run_id


FORBIDDEN = [
    (status, trigger)
    for status in RunStatus
    for trigger in OPERATOR_TRIGGERS
    if (status, trigger) not in DESIGN_TABLE
]


@pytest.mark.parametrize(("status", "trigger"), FORBIDDEN, ids=[f"{s}-{t}" for s, t in FORBIDDEN])
def test_every_request_the_table_forbids_raises_and_writes_nothing(
    engine: Engine, machine: Machine[Doc], status: RunStatus, trigger: str
) -> None:
    run_id = run_in(engine, machine, status)
    error = assert_refused(
        engine, run_id, operator_request(engine, run_id, trigger), IllegalTransition
    )
    assert isinstance(error, IllegalTransition)
    assert (error.run_id, error.status, error.trigger) == (run_id, status, trigger)


def test_approving_a_done_run_is_rejected(engine: Engine, machine: Machine[Doc]) -> None:
    run_id = run_in(engine, machine, D)
    assert_refused(engine, run_id, lambda: engine.approve(run_id, by="alice"), IllegalTransition)


def test_retrying_a_running_run_is_illegal_and_writes_nothing(
    engine: Engine, machine: Machine[Doc]
) -> None:
    run_id = run_in(engine, machine, R)
    assert_refused(engine, run_id, lambda: engine.retry(run_id, by="olga"), IllegalTransition)


def test_starting_a_running_run_again_is_illegal_and_writes_nothing(
    engine: Engine, machine: Machine[Doc]
) -> None:
    run_id = run_in(engine, machine, R)
    assert_refused(engine, run_id, lambda: engine.start_created(run_id), IllegalTransition)


def test_rejecting_a_run_that_is_not_waiting_is_illegal(
    engine: Engine, machine: Machine[Doc]
) -> None:
    run_id = run_in(engine, machine, R)
    assert_refused(
        engine, run_id, lambda: engine.reject(run_id, by="alice", reason="no"), IllegalTransition
    )


def test_cancelling_a_failed_run_is_illegal_and_keeps_its_error(
    engine: Engine, machine: Machine[Doc]
) -> None:
    run_id = run_in(engine, machine, F)
    assert_refused(
        engine, run_id, lambda: engine.cancel(run_id, by="olga", reason="x"), IllegalTransition
    )
    assert engine.get(run_id).error_code == "agent_failed"


def test_approving_with_a_stale_digest_is_refused_and_writes_nothing(
    engine: Engine, machine: Machine[Doc]
) -> None:
    run_id = run_in(engine, machine, W)
    error = assert_refused(
        engine,
        run_id,
        lambda: engine.approve(run_id, by="alice", digest="0" * 64, advance=False),
        ApprovalMismatch,
    )
    pending = engine.get(run_id).pending
    assert pending is not None and error.actual == pending.proposal_digest  # type: ignore[attr-defined]


def test_advancing_a_waiting_run_calls_no_agent_and_writes_nothing(
    engine: Engine, machine: Machine[Doc]
) -> None:
    run_id = run_in(engine, machine, W)
    head, before = ledger_head(engine), engine.get(run_id)
    SCRIPT.set(Goto("archive"))
    assert engine.advance(run_id, max_transitions=1).status is W
    assert SCRIPT.calls == []
    assert events_after(engine, head) == [] and engine.get(run_id) == before


def test_an_agent_that_names_an_undeclared_step_fails_the_run_with_the_reason(
    engine: Engine, machine: Machine[Doc]
) -> None:
    run_id = run_in(engine, machine, R)
    SCRIPT.set(Goto("publish"))  # draft declares only review
    info = engine.advance(run_id, max_transitions=1)
    assert (info.status, info.step, info.error_code) == (F, "draft", "undeclared_edge")
    last = engine.events(run_id)[-1]
    assert (last.event_type, last.error_code, last.to_status) == ("run.failed", "undeclared_edge", F)


def test_silence_does_not_pass_a_four_eyes_gate(db_path: Path, machine: Machine[Doc]) -> None:
    clock = FakeClock()
    with Engine(db_path, clock=clock) as engine:
        run_id = engine.start(machine, {}, by=STARTED_BY, advance=False).run_id
        gate = RequestApproval("big payment", resume_at="publish", policy=FOUR_EYES)
        for plan in (Goto("review"), gate):
            SCRIPT.set(plan)
            engine.advance(run_id, max_transitions=1)
        assert engine.approve(run_id, by="alice", advance=False).status is W  # 1 of 2 approvals
        clock.advance(DEADLINE + timedelta(minutes=1))  # review: on_approval_timeout="approve"
        engine.expire_approvals()
        info = engine.get(run_id)
        decisions = [e.decision for e in engine.events(run_id)]
    assert info.status is not R and "approve_by_default" not in decisions, (
        f"the deadline approved a gate needing 2 approvers with only alice's: {info.status}, {decisions}"
    )
