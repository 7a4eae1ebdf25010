"""``audit verify --keyring``: every approval's signature, checked months later (statecraft/audit/signatures.py).

The attacks are an insider's with write access to the file who rewrites an
approval and recomputes every hash after it: the chain alone then verifies
(no anchor), the signature check does not.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from statecraft import ApprovalPolicy, Engine, Finish, Keyring, Machine, RequestApproval, SigningKey, Step
from statecraft.audit.verify import verify_ledger
from statecraft.signing import add_to_keyring
from tests.audit.conftest import Insider


class Payment(BaseModel):
    paid: bool = False


def _payments(policy: ApprovalPolicy) -> Machine[Payment]:
    def ask(state: Payment, ctx: Any) -> RequestApproval:
        return RequestApproval("pay?", resume_at="pay", policy=policy)

    def pay(state: Payment, ctx: Any) -> Finish:
        return Finish(update={"paid": True})

    return Machine("pay", "1", Payment, steps=[
        Step("ask", ask, next=["pay"]), Step("pay", pay, may_finish=True, writes=["paid"]),
    ])


@pytest.fixture
def signed(tmp_path: Path, db_path: Path) -> tuple[Path, Keyring, list[int]]:
    """A ledger with a signed approval at a gate requiring signatures, then an unsigned one
    at a gate that does not; returns the keyring folder, the keyring and the approvals' seqs."""
    folder = tmp_path / "ring"
    alice = SigningKey.generate("alice@example.com")
    add_to_keyring(alice.public_entry(), folder)
    with Engine(db_path, keyring=folder) as engine:
        run = engine.start(_payments(ApprovalPolicy(require_signature=True)), {})
        assert run.pending is not None
        signature = alice.sign_approval(run_id=run.run_id, proposal_digest=run.pending.proposal_digest)
        engine.approve(run.run_id, by="alice@example.com", digest=run.pending.proposal_digest, signature=signature)
        other = engine.start(_payments(ApprovalPolicy()), {})
        engine.approve(other.run_id, by="bob@example.com")
        seqs = [e.seq for e in engine.events() if e.event_type == "approval.granted"]
    return folder, Keyring.load(folder), seqs


def _verify(db_path: Path, keyring: Keyring | None) -> Any:
    with Engine(db_path) as engine:
        return verify_ledger(engine.db, keyring=keyring)


def _rewrite_payload(db_path: Path, seq: int, change: Any, **columns: Any) -> None:
    insider = Insider(db_path)
    insider.drop_guards()
    payload = json.loads(insider.row(seq)["payload_json"])
    change(payload)
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    sets = ", ".join(["payload_json = ?", "payload_sha256 = ?", *(f"{c} = ?" for c in columns)])
    insider.execute(f"UPDATE audit_event SET {sets} WHERE seq = ?",
                    (body, hashlib.sha256(body.encode()).hexdigest(), *columns.values(), seq))
    insider.rehash_from(seq)


def test_an_intact_ledger_with_signed_approvals_verifies_against_the_keyring(db_path: Path, signed: Any) -> None:
    _, keyring, _ = signed
    report = _verify(db_path, keyring)
    assert report.ok and report.signatures_checked == 1
    assert _verify(db_path, None).signatures_checked is None


def test_removing_the_signature_of_an_approval_the_gate_required_is_found(db_path: Path, signed: Any) -> None:
    _, keyring, (first, _) = signed
    _rewrite_payload(db_path, first, lambda p: p.pop("signature"))
    assert _verify(db_path, None).ok  # rehashed: the chain alone cannot tell
    report = _verify(db_path, keyring)
    assert (report.ok, report.first_bad_seq) == (False, first)
    assert f"seq {first}: the approval by alice@example.com is unsigned, but its gate" in (report.reason or "")


def test_claiming_someone_else_approved_breaks_their_signature(db_path: Path, signed: Any) -> None:
    _, keyring, (first, _) = signed
    insider = Insider(db_path)
    insider.drop_guards()
    insider.execute("UPDATE audit_event SET actor_id = 'carol@example.com' WHERE seq = ?", (first,))
    insider.rehash_from(first)
    report = _verify(db_path, keyring)
    assert report.first_bad_seq == first and "does not verify" in (report.reason or "")


def test_a_signature_by_a_key_the_keyring_does_not_hold_is_named(db_path: Path, signed: Any, tmp_path: Path) -> None:
    _, keyring, (_, second) = signed
    mallory = SigningKey.generate("bob@example.com")  # a key made for bob by someone else

    def sign(payload: dict[str, Any]) -> None:
        with Engine(db_path) as engine:
            row = next(e for e in engine.events() if e.seq == second)
        payload["signature"] = mallory.sign_approval(
            run_id=str(row.run_id), proposal_digest=payload["proposal_digest"]
        ).describe()

    _rewrite_payload(db_path, second, sign)
    report = _verify(db_path, keyring)
    assert report.first_bad_seq == second and "is not in keyring" in (report.reason or "")


def test_the_cli_names_the_first_bad_approval(db_path: Path, signed: Any) -> None:
    from click.testing import CliRunner

    from statecraft.cli import main

    folder, _, (first, _) = signed
    _rewrite_payload(db_path, first, lambda p: p.pop("signature"))
    result = CliRunner().invoke(main, ["audit", "verify", "--db", str(db_path), "--keyring", str(folder)])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"FAILED at seq {first}: seq {first}: the approval by alice@example.com is unsigned")
