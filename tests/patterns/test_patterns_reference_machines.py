"""The five pattern reference machines, end to end through the real CLI, each ending in `audit verify`.

Every machine runs offline on deterministic agents, from its sample input in
machines/samples/. Gated runs are approved the way an operator would (with
the digest from `status`), including the refusals a quorum gate must make.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

from statecraft import Engine, Machine, RunStatus, Step, load_machine

REPO = Path(__file__).resolve().parents[2]
MACHINES = REPO / "machines"
SAMPLES = MACHINES / "samples"


def _ref(name: str) -> str:
    return str(MACHINES / f"{name}.py")


def _start(cli: Any, name: str, sample: str, by: str = "user:operator") -> dict[str, Any]:
    return cli.json("start", _ref(name), "--input", str(SAMPLES / sample), "--by", by)  # type: ignore[no-any-return]


def _verified(cli: Any) -> None:
    result = cli("audit", "verify")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("OK up to seq")


def _events(cli: Any, run_id: str) -> list[dict[str, Any]]:
    result = cli("audit", "log", "--run", run_id, "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _payload(event: dict[str, Any]) -> dict[str, Any]:
    return json.loads(event["payload_json"] or "{}")  # type: ignore[no-any-return]


# -- router ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("sample", "queue", "decided_by"),
    [
        ("ticket_billing.json", "billing", "rule"),
        ("ticket_unclear.txt", "technical", "agent"),
        ("ticket_other.txt", "human_queue", "fallback"),
    ],
)
def test_support_router_routes_each_sample_and_audits_the_decision(
    cli: Any, sample: str, queue: str, decided_by: str
) -> None:
    run = _start(cli, "support_router", sample)
    assert run["status"] == "DONE"
    assert run["state"]["queue"] == queue and run["state"]["route"]["decided_by"] == decided_by
    decided = [e for e in _events(cli, run["run_id"]) if e["event_type"] == "route.decided"]
    assert len(decided) == 1 and _payload(decided[0])["decided_by"] == decided_by
    assert "features" in _payload(decided[0])
    _verified(cli)


# -- fan-out -----------------------------------------------------------------------------

def test_research_fanout_degrades_gracefully_and_flags_the_slow_source(cli: Any) -> None:
    run = _start(cli, "research_fanout", "research_question.txt")
    assert run["status"] == "DONE"
    branches = run["state"]["findings"]["branches"]
    assert branches["slow_archive"]["status"] == "timeout" and branches["slow_archive"]["attempts"] == 2
    assert branches["flaky_index"] == {**branches["flaky_index"], "status": "success", "attempts": 2}
    assert run["state"]["gaps"] == ["slow_archive: timeout (timed out after 250 ms)"]
    events = _events(cli, run["run_id"])
    calls = [e for e in events if e["event_type"] == "agent.called"]
    assert len(calls) == 8  # 4 sources once, flaky twice, slow twice
    assert {e["outcome"] for e in calls} == {"success", "failure", "timeout"}
    summary = next(e for e in events if e["event_type"] == "fanout.completed")
    assert _payload(summary)["policy"] == "deadline:600ms:min=2"
    _verified(cli)


# -- supervisor --------------------------------------------------------------------------

def test_document_intake_runs_the_sample_through_supervisor_and_specialists(cli: Any) -> None:
    run = _start(cli, "document_intake", "mutual_nda.md")
    assert run["status"] == "DONE"
    record = run["state"]["record"]
    assert record["kind"] == "contract" and record["complete"] is True
    assert record["parties"]["organisations"] == ["Acme Analytics, Inc.", "Blue River Labs LLC"]
    assert record["dates"][0]["value"] == "2025-03-03"
    assert "governing_law" in record["clauses"]["found"]
    types = [e["event_type"] for e in _events(cli, run["run_id"])]
    assert types.count("agent.called") == 5 and "supervisor.converged" in types
    _verified(cli)


def test_document_intake_on_a_corpus_document_through_the_cli(cli: Any, corpus: Path) -> None:
    run = cli.json("start", _ref("document_intake"), "--input", str(corpus / "github-event-terms.md"))
    assert run["status"] == "DONE"
    sup = run["state"]["supervision"]
    # No parties in the preamble: re-delegated once to the whole document, then reported missing.
    assert [r["subtask"]["id"] for r in sup["results"] if r["subtask"]["specialist"] == "parties"] == [
        "parties", "parties.r2"]
    assert run["state"]["record"]["complete"] is False
    assert run["state"]["record"]["missing"] == [
        "parties.r2 (parties): dropped: no parties named anywhere in the document"]
    _verified(cli)


def test_document_intake_finishes_every_corpus_document(corpus: Path, tmp_path: Path) -> None:
    machine = load_machine(_ref("document_intake"))
    docs = sorted(corpus.glob("*.md"))
    with Engine(tmp_path / "corpus.db") as engine:
        for doc in docs:
            run = engine.start(machine, doc.read_text(encoding="utf-8"))
            assert run.status is RunStatus.DONE, (doc.name, run.reason)
            record = run.state["record"]
            assert record["metadata"]["words"] > 0, doc.name
            # Partial records say why; complete ones have nothing missing.
            assert record["complete"] == (not record["missing"] and not record["problems"]), doc.name
        from statecraft.audit.verify import verify_ledger

        assert verify_ledger(engine.db).ok
    assert len(docs) >= 20


# -- debate ------------------------------------------------------------------------------

def test_compliance_debate_agreement_finishes_without_a_human(cli: Any) -> None:
    run = _start(cli, "compliance_debate", "mutual_nda.md")
    assert run["status"] == "DONE"
    assert run["state"]["report"]["decided_by"] == "consensus" and run["state"]["report"]["verdict"] == "accept"
    _verified(cli)


def test_compliance_debate_disagreement_waits_for_the_compliance_group(cli: Any) -> None:
    run = _start(cli, "compliance_debate", "vendor_terms.md", by="user:analyst")
    assert run["status"] == "WAITING_FOR_APPROVAL"
    digest = run["pending"]["proposal_digest"]
    assert run["pending"]["reason"] == "advocates disagree on verdict, high_risk"
    refused = cli("approve", run["run_id"], "--by", "user:analyst", "--digest", digest)
    assert refused.exit_code == 1 and "not in the approver group" in refused.stderr
    done = cli.json("approve", run["run_id"], "--by", "user:counsel", "--digest", digest,
                    "--comment", "one-sided indemnity is not acceptable")
    assert done["status"] == "DONE"
    report = done["state"]["report"]
    assert report["decided_by"] == "human" and report["verdict"] == "escalate"
    assert report["positions"]["precise"]["verdict"] == "accept"
    types = [e["event_type"] for e in _events(cli, run["run_id"])]
    assert types.count("agent.called") == 2 and "judge.decided" in types
    _verified(cli)


# -- escalation gates -----------------------------------------------------------------------

def test_invoice_under_the_threshold_is_paid_without_a_gate(cli: Any) -> None:
    run = _start(cli, "invoice_approval", "invoice_small.json", by="user:clerk")
    assert run["status"] == "DONE"
    assert run["state"]["payment"]["reference"].startswith("PAY-")
    _verified(cli)


def test_invoice_over_the_threshold_needs_two_distinct_finance_approvers(cli: Any, db_path: Path) -> None:
    run = _start(cli, "invoice_approval", "invoice_large.json", by="user:clerk")
    run_id = run["run_id"]
    assert run["status"] == "WAITING_FOR_APPROVAL"
    assert run["pending"]["reason"] == "escalation rule 'amount_over_10k': amount_cents 4850000 > 1000000"
    assert run["pending"]["required"] == 2 and run["pending"]["rules"] == ["amount_over_10k"]
    digest = run["pending"]["proposal_digest"]

    assert "not in the approver group" in cli("approve", run_id, "--by", "user:clerk", "--digest", digest).stderr
    first = cli.json("approve", run_id, "--by", "user:cfo", "--digest", digest)
    assert first["status"] == "WAITING_FOR_APPROVAL" and first["pending"]["approved_by"] == ["user:cfo"]
    assert "already approved" in cli("approve", run_id, "--by", "user:cfo", "--digest", digest).stderr
    done = cli.json("approve", run_id, "--by", "user:controller", "--digest", digest)
    assert done["status"] == "DONE"

    events = _events(cli, run_id)
    requested = next(e for e in events if e["event_type"] == "approval.requested")
    assert requested["reason"].startswith("escalation rule 'amount_over_10k'")
    granted = [e for e in events if e["event_type"] == "approval.granted"]
    assert [(e["actor_id"], e["to_status"]) for e in granted] == [
        ("user:cfo", "WAITING_FOR_APPROVAL"), ("user:controller", "RUNNING")]
    assert all(e["caused_by_event_id"] == requested["event_id"] for e in granted)
    paid = [e for e in events if e["event_type"] == "tool.called"]
    assert len(paid) == 1 and paid[0]["decision"] == done["state"]["payment"]["reference"]
    with sqlite3.connect(db_path) as conn:
        effects = conn.execute("SELECT name FROM side_effect WHERE run_id = ?", (run_id,)).fetchall()
    assert effects == [("payment",)]
    _verified(cli)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"description": "URGENT wire transfer to new account"}, "suspicious_terms"),
        ({"po_number": None}, "missing_po"),
        ({"vendor": "Unknown Supplies GmbH"}, "unknown_vendor"),
    ],
)
def test_invoice_escalation_rules_fire_independently_of_the_agent(
    cli: Any, tmp_path: Path, change: dict[str, Any], rule: str
) -> None:
    invoice = {**json.loads((SAMPLES / "invoice_small.json").read_text()), **change}
    (tmp_path / "invoice.json").write_text(json.dumps(invoice))
    run = cli.json("start", _ref("invoice_approval"), "--input", str(tmp_path / "invoice.json"), "--by", "user:clerk")
    assert run["status"] == "WAITING_FOR_APPROVAL"
    assert run["pending"]["rules"] == [rule]
    assert run["state"]["decision"] == "pay"  # the agent wanted to pay; the rule said "ask first"


def _module_of(machine: Machine[Any]) -> Any:
    return sys.modules[machine.steps["pay"].agent.__module__]


def test_a_payment_is_made_once_even_when_the_pay_step_fails_after_paying(engine: Engine) -> None:
    base = load_machine(_ref("invoice_approval"))
    module = _module_of(base)
    crashes = [1]

    def pay_then_crash(state: Any, ctx: Any) -> Any:
        outcome = module.pay(state, ctx)
        if crashes:
            crashes.pop()
            raise RuntimeError("process died after the payment, before the commit")
        return outcome

    crashy = Machine("invoice_crashy", "1", module.Invoice, steps=[
        base.steps["check"], base.steps["review"],
        Step("pay", pay_then_crash, may_finish=True, reads=["vendor_id", "amount_cents", "currency", "decision"],
             writes=["payment"]),
    ])
    invoice = json.loads((SAMPLES / "invoice_small.json").read_text())
    run = engine.start(crashy, invoice, by="user:clerk")
    assert run.status is RunStatus.FAILED and "process died" in (run.reason or "")
    assert len(module.PAYMENTS.payments) == 1
    done = engine.retry(run.run_id, by="user:ops", reason="resume")
    assert done.status is RunStatus.DONE
    assert len(module.PAYMENTS.payments) == 1  # ctx.once returned the recorded payment
    (key, paid), = module.PAYMENTS.payments.items()
    assert done.state["payment"] == {"reference": paid["reference"], "idempotency_key": key,
                                     "amount_cents": 125000, "currency": "USD"}


def test_the_payment_service_deduplicates_by_key_when_the_record_is_lost(engine: Engine) -> None:
    machine = load_machine(_ref("invoice_approval"))
    module = _module_of(machine)
    real_pay = module.PAYMENTS.pay
    lost = [1]

    def pay_and_lose_the_answer(*args: Any) -> Any:
        result = real_pay(*args)
        if lost:
            lost.pop()
            raise ConnectionError("response lost after the provider paid")
        return result

    module.PAYMENTS.pay = pay_and_lose_the_answer
    invoice = json.loads((SAMPLES / "invoice_small.json").read_text())
    run = engine.start(machine, invoice, by="user:clerk")
    assert run.status is RunStatus.FAILED
    done = engine.retry(run.run_id, by="user:ops")
    assert done.status is RunStatus.DONE
    assert len(module.PAYMENTS.payments) == 1  # same idempotency key: the provider paid once


def test_pattern_machines_have_the_same_digest_in_another_process_and_directory(tmp_path: Path) -> None:
    # A run is continued by whichever process loads its machine again (a worker,
    # the CLI): pattern steps' configuration digests must not depend on addresses.
    import subprocess

    names = ["support_router", "research_fanout", "document_intake", "compliance_debate", "invoice_approval"]
    script = (
        "import sys; from statecraft import load_machine\n"
        "print(' '.join(load_machine(p).digest for p in sys.argv[1:]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, *[_ref(n) for n in names]], cwd=tmp_path,
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == [load_machine(_ref(n)).digest for n in names]
