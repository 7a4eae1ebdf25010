"""Who acted: one spelling per person in every policy check, and what the ledger records beside it (issue #8).

Reproductions: ``--by`` was free text, so self-approval and four-eyes were
bypassed with ``Clerk@example.com``, trailing spaces, ``+tag``, zero-width
or Cyrillic look-alikes and NUL bytes. Every request now normalises its
actor once (statecraft/identity.py), before any check, and stores the
normalised id; every event a request writes records the OS account and
host of the process (and the principal an ``authenticate`` hook vouched
for) beside it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from statecraft import (
    ApprovalMismatch,
    ApprovalPolicy,
    Engine,
    Finish,
    Machine,
    NotAuthenticated,
    RequestApproval,
    RunError,
    RunStatus,
    Step,
)
from statecraft.audit.redact import redact_event

CLERK = "clerk@example.com"

#: Spellings of the clerk that a human reads as the clerk.
CLERK_SPELLINGS = [
    "Clerk@example.com",
    "clerk@example.com   ",
    " CLERK@EXAMPLE.COM",
    "clerk+approvals@example.com",
    "ｃｌｅｒｋ@example.com",
    "cl\u200berk@example.com",
    "clerk@example.com\u200b",
    "\u0441lerk@example.com",
    "clerk@example.com\x00",
    "\u202eclerk@example.com",
]


class Payment(BaseModel):
    amount: int = 100
    paid: bool = False


def _payments(policy: ApprovalPolicy) -> Machine[Payment]:
    def ask(state: Payment, ctx: Any) -> RequestApproval:
        return RequestApproval(f"pay {state.amount}?", resume_at="pay", policy=policy)

    def pay(state: Payment, ctx: Any) -> Finish:
        return Finish(update={"paid": True})

    return Machine("payments", "1", Payment, steps=[
        Step("ask", ask, next=["pay"]),
        Step("pay", pay, may_finish=True, writes=["paid"]),
    ])


def _ledger(engine: Engine) -> list[Any]:
    return engine.events()


@pytest.mark.parametrize("spelling", CLERK_SPELLINGS)
def test_the_starter_cannot_approve_their_own_run_under_another_spelling(engine: Engine, spelling: str) -> None:
    run = engine.start(_payments(ApprovalPolicy()), {}, by=CLERK, actor_type="human")
    before = _ledger(engine)
    with pytest.raises(RunError) as info:  # ApprovalRefused, or InvalidActorId for the unspeakable ones
        engine.approve(run.run_id, by=spelling, advance=False)
    assert "\n" not in str(info.value)
    assert _ledger(engine) == before
    assert engine.get(run.run_id).status is RunStatus.WAITING_FOR_APPROVAL


@pytest.mark.parametrize("spelling", ["Alice@example.com", "alice+2@example.com", "alice@example.com  "])
def test_four_eyes_needs_two_people_not_two_spellings(engine: Engine, spelling: str) -> None:
    run = engine.start(_payments(ApprovalPolicy(required=2)), {}, by=CLERK)
    engine.approve(run.run_id, by="alice@example.com", advance=False)
    before = _ledger(engine)
    with pytest.raises(RunError, match="already approved this gate"):
        engine.approve(run.run_id, by=spelling, advance=False)
    assert _ledger(engine) == before
    done = engine.approve(run.run_id, by="bob@example.com")
    assert (done.status, done.state["paid"]) == (RunStatus.DONE, True)


def test_an_excluded_approver_stays_excluded_under_a_tag(engine: Engine) -> None:
    run = engine.start(_payments(ApprovalPolicy(excluded={"Submitter@example.com"})), {}, by="svc:intake")
    before = _ledger(engine)
    with pytest.raises(RunError, match="excluded"):
        engine.approve(run.run_id, by="submitter+late@example.com")
    assert _ledger(engine) == before


def test_every_request_stores_the_normalised_id(engine: Engine, tmp_path: Path) -> None:
    run = engine.start(_payments(ApprovalPolicy()), {}, by="  Clerk@Example.COM ", actor_type="human")
    assert run.started_by == CLERK
    engine.reject(run.run_id, by="BOB@example.com", reason="wrong amount")
    engine.retry(run.run_id, by="Ops@Example.com ")
    engine.cancel(run.run_id, by="OPS@example.com", reason="duplicate")
    actors = [(e.event_type, e.actor_id) for e in engine.events(run.run_id)]
    assert actors == [
        ("run.created", CLERK), ("run.started", CLERK), ("approval.requested", "ask"),
        ("approval.denied", "bob@example.com"), ("run.retried", "ops@example.com"),
        ("approval.requested", "ask"), ("run.cancelled", "ops@example.com"),
    ]
    redaction = redact_event(engine.db, engine.events(run.run_id)[0].event_id, by="DPO@Example.com",
                             reason="erasure request", parts=["payload"])
    assert engine.events()[redaction.redaction_seq - 1].actor_id == "dpo@example.com"


def test_every_human_event_records_the_os_account_and_host_beside_the_claimed_id(engine: Engine) -> None:
    import pwd

    expected = {"os_user": pwd.getpwuid(os.geteuid()).pw_name, "os_uid": os.geteuid(),
                "host": socket.gethostname(), "principal": None}
    run = engine.start(_payments(ApprovalPolicy()), {}, by=CLERK, actor_type="human")
    engine.reject(run.run_id, by="bob@example.com", reason="no")
    engine.retry(run.run_id, by="ops@example.com")
    engine.approve(run.run_id, by="alice@example.com", digest=engine.get(run.run_id).pending.proposal_digest)  # type: ignore[union-attr]
    run2 = engine.create(_payments(ApprovalPolicy()), {}, by=CLERK)
    engine.start_created(run2.run_id, by=CLERK, advance=False)
    engine.cancel(run2.run_id, by="ops@example.com", reason="not needed")
    redaction = redact_event(engine.db, engine.events(run2.run_id)[0].event_id, by="dpo@example.com",
                             reason="erasure", parts=["input"])
    human = [e for e in engine.events() if e.event_type in (
        "run.created", "run.started", "approval.granted", "approval.denied", "run.retried",
        "run.cancelled", "payload.redacted",
    )]
    assert len(human) == 9 and human[-1].seq == redaction.redaction_seq
    for event in human:
        payload = json.loads(event.payload_json or "{}")
        assert payload["identity"] == expected, event.event_type


def test_an_authenticate_hook_records_the_principal_and_refuses_writing_nothing(db_path: Path) -> None:
    current: dict[str, str | None] = {"user": "alice@example.com"}

    def authenticate(claimed: str) -> str | None:
        if current["user"] is None:
            return None
        if current["user"] != claimed:
            raise PermissionError(f"signed in as {current['user']}")
        return current["user"]

    with Engine(db_path, authenticate=authenticate) as engine:
        run = engine.start(_payments(ApprovalPolicy()), {}, by="alice@example.com", actor_type="human")
        created = json.loads(engine.events(run.run_id)[0].payload_json or "{}")
        assert created["identity"]["principal"] == "alice@example.com"
        before = _ledger(engine)
        with pytest.raises(NotAuthenticated, match="PermissionError: signed in as alice@example.com"):
            engine.approve(run.run_id, by="bob@example.com")
        current["user"] = None
        with pytest.raises(NotAuthenticated, match="vouched for no principal"):
            engine.cancel(run.run_id, by="alice@example.com", reason="x")
        assert _ledger(engine) == before
        current["user"] = "bob@example.com"
        done = engine.approve(run.run_id, by="Bob@example.com")
        granted = next(e for e in engine.events(run.run_id) if e.event_type == "approval.granted")
        assert done.status is RunStatus.DONE and granted.actor_id == "bob@example.com"
        assert json.loads(granted.payload_json or "{}")["identity"]["principal"] == "bob@example.com"


def test_an_old_digest_cannot_approve_the_request_asked_again_after_reject_and_retry(engine: Engine) -> None:
    run = engine.start(_payments(ApprovalPolicy()), {}, by=CLERK)
    assert run.pending is not None
    old = run.pending.proposal_digest
    engine.reject(run.run_id, by="bob@example.com", reason="check the amount first")
    again = engine.retry(run.run_id, by="ops@example.com")
    assert again.pending is not None and again.pending.proposal_digest != old
    before = _ledger(engine)
    with pytest.raises(ApprovalMismatch):
        engine.approve(run.run_id, by="alice@example.com", digest=old)
    assert _ledger(engine) == before


def test_the_cli_approve_needs_a_digest_or_says_it_approves_without_one(cli: Any, tmp_path: Path) -> None:
    toy = str(Path(__file__).parents[1] / "support" / "toy.py")
    doc = tmp_path / "doc.txt"
    doc.write_text("one two three four five")
    run = cli.json("start", toy, "--input", str(doc), "--by", "Clerk@Example.com ")
    assert run["started_by"] == CLERK
    bare = cli("approve", run["run_id"], "--by", "alice@example.com")
    assert bare.exit_code == 2 and "approve needs --digest" in bare.stderr
    both = cli("approve", run["run_id"], "--by", "alice@example.com", "--no-digest", "--digest", "f" * 64)
    assert both.exit_code == 2
    assert cli.json("status", run["run_id"])["status"] == "WAITING_FOR_APPROVAL"
    done = cli.json("approve", run["run_id"], "--by", "Alice@Example.com", "--no-digest")
    assert done["status"] == "DONE"
    with Engine(cli.db) as engine:
        granted = next(e for e in engine.events(run["run_id"]) if e.event_type == "approval.granted")
    assert granted.actor_id == "alice@example.com"
    assert json.loads(granted.payload_json or "{}")["digest_checked"] is False
