"""Signed approvals: keys, the keyring, and the engine's refusals (statecraft/signing.py, issue #8).

Each refusal is checked the same way: the request raises and the ledger is
unchanged. ``tests/audit/test_signatures.py`` checks ``audit verify --keyring``.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from statecraft import (
    ApprovalPolicy,
    Engine,
    Finish,
    Keyring,
    KeyringError,
    Machine,
    RequestApproval,
    RunStatus,
    SignatureRefused,
    SigningKey,
    Step,
)
from statecraft.cli import main
from statecraft.signing import ApprovalSignature, add_to_keyring

SIGNED_MACHINE = '''
from pydantic import BaseModel

from statecraft import ApprovalPolicy, Finish, Machine, RequestApproval, Step


class Payment(BaseModel):
    paid: bool = False


def ask(state, ctx):
    return RequestApproval("pay 1,000?", resume_at="pay", policy=ApprovalPolicy(require_signature=True))


def pay(state, ctx):
    return Finish(update={"paid": True})


machine = Machine("signed_pay", "1", Payment, steps=[
    Step("ask", ask, next=["pay"]),
    Step("pay", pay, may_finish=True, writes=["paid"]),
])
'''


class Payment(BaseModel):
    paid: bool = False


def _signed_payments() -> Machine[Payment]:
    def ask(state: Payment, ctx: Any) -> RequestApproval:
        return RequestApproval("pay 1,000?", resume_at="pay", policy=ApprovalPolicy(require_signature=True))

    def pay(state: Payment, ctx: Any) -> Finish:
        return Finish(update={"paid": True})

    return Machine("signed_pay", "1", Payment, steps=[
        Step("ask", ask, next=["pay"]),
        Step("pay", pay, may_finish=True, writes=["paid"]),
    ])


@pytest.fixture
def keyring(tmp_path: Path) -> tuple[Path, SigningKey, SigningKey]:
    """A keyring folder holding alice's and bob's public keys; their signing keys."""
    folder = tmp_path / "keyring"
    alice, bob = SigningKey.generate("alice@example.com"), SigningKey.generate("bob@example.com")
    for key in (alice, bob):
        add_to_keyring(key.public_entry(), folder)
    return folder, alice, bob


def _refused(engine: Engine, request: Any, match: str) -> None:
    before = engine.events()
    with pytest.raises(SignatureRefused, match=match) as info:
        request()
    assert "\n" not in str(info.value)
    assert engine.events() == before


def test_a_gate_requiring_signatures_refuses_an_unsigned_approval(db_path: Path, keyring: Any) -> None:
    folder, alice, _ = keyring
    with Engine(db_path, keyring=folder) as engine:
        run = engine.start(_signed_payments(), {})
        assert run.pending is not None
        _refused(engine, lambda: engine.approve(run.run_id, by="alice@example.com", digest=run.pending.proposal_digest),  # type: ignore[union-attr]
                 "requires a signed approval")
        signature = alice.sign_approval(run_id=run.run_id, proposal_digest=run.pending.proposal_digest)
        done = engine.approve(run.run_id, by="Alice@Example.com", digest=run.pending.proposal_digest, signature=signature)
        assert done.status is RunStatus.DONE
        granted = next(e for e in engine.events(run.run_id) if e.event_type == "approval.granted")
        assert json.loads(granted.payload_json or "{}")["signature"] == signature.describe()


def test_a_gate_requiring_signatures_refuses_when_the_engine_has_no_keyring(
    db_path: Path, keyring: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STATECRAFT_KEYRING", raising=False)
    _, alice, _ = keyring
    with Engine(db_path) as engine:
        run = engine.start(_signed_payments(), {})
        assert run.pending is not None
        signature = alice.sign_approval(run_id=run.run_id, proposal_digest=run.pending.proposal_digest)
        _refused(engine, lambda: engine.approve(run.run_id, by="alice@example.com", signature=signature),
                 "has none")


def test_the_keyring_may_come_from_statecraft_keyring(
    db_path: Path, keyring: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, alice, _ = keyring
    monkeypatch.setenv("STATECRAFT_KEYRING", str(folder))
    with Engine(db_path) as engine:
        run = engine.start(_signed_payments(), {})
        assert run.pending is not None
        signature = alice.sign_approval(run_id=run.run_id, proposal_digest=run.pending.proposal_digest)
        assert engine.approve(run.run_id, by="alice@example.com", signature=signature).status is RunStatus.DONE


def test_signatures_for_another_request_approver_or_by_an_unlisted_key_are_refused(
    db_path: Path, keyring: Any
) -> None:
    folder, alice, bob = keyring
    with Engine(db_path, keyring=folder) as engine:
        first = engine.start(_signed_payments(), {})
        second = engine.start(_signed_payments(), {})
        assert first.pending is not None and second.pending is not None
        for_first = alice.sign_approval(run_id=first.run_id, proposal_digest=first.pending.proposal_digest)
        _refused(engine, lambda: engine.approve(second.run_id, by="alice@example.com", signature=for_first),
                 "does not verify")
        # bob's valid signature offered as alice's approval
        by_bob = bob.sign_approval(run_id=second.run_id, proposal_digest=second.pending.proposal_digest)
        _refused(engine, lambda: engine.approve(second.run_id, by="alice@example.com", signature=by_bob),
                 "does not verify")
        # a key someone made for alice, that the keyring does not hold
        forged_key = SigningKey.generate("alice@example.com")
        forged = forged_key.sign_approval(run_id=second.run_id, proposal_digest=second.pending.proposal_digest)
        _refused(engine, lambda: engine.approve(second.run_id, by="alice@example.com", signature=forged),
                 "is not in keyring")
        # bob's key listed as bob, signing as bob, is fine for bob
        assert engine.approve(second.run_id, by="bob@example.com", signature=by_bob).status is RunStatus.DONE
        # a garbled signature value
        garbled = ApprovalSignature(for_first.key_id, for_first.public_key, "AAAA")
        _refused(engine, lambda: engine.approve(first.run_id, by="alice@example.com", signature=garbled),
                 "is 3 bytes, not 64")


def test_a_keyring_entry_cannot_bind_someone_elses_key_to_another_id(tmp_path: Path) -> None:
    alice = SigningKey.generate("alice@example.com")
    entry = alice.public_entry()
    relabelled = type(entry)("mallory@example.com", entry.key_id, entry.public_key, entry.created_at, entry.proof)
    with pytest.raises(KeyringError, match="proof does not verify"):
        add_to_keyring(relabelled, tmp_path / "ring")
    (tmp_path / "ring").mkdir(exist_ok=True)
    (tmp_path / "ring" / "x.pub").write_text(relabelled.text())
    with pytest.raises(KeyringError, match="proof does not verify"):
        Keyring.load(tmp_path / "ring")


def test_the_keys_commands_make_a_private_key_add_it_to_a_keyring_and_list_it(tmp_path: Path) -> None:
    runner = CliRunner()
    key, ring = tmp_path / "alice.key", tmp_path / "ring"
    made = runner.invoke(main, ["keys", "init", "--by", "Alice@Example.com", "--key", str(key)])
    assert made.exit_code == 0, made.stderr
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert made.stdout.startswith("statecraft-public-key v1\nactor_id alice@example.com\n")
    entry = tmp_path / "alice.pub"
    entry.write_text(made.stdout)
    assert runner.invoke(main, ["keys", "add", str(entry), "--keyring", str(ring)]).exit_code == 0
    again = runner.invoke(main, ["keys", "add", str(entry), "--keyring", str(ring)])
    assert again.exit_code == 1 and "already exists; not overwritten" in again.stderr
    listed = runner.invoke(main, ["keys", "list", "--keyring", str(ring), "--json"])
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["actor_id"], row["key_id"]) == ("alice@example.com", SigningKey.load(key).key_id)
    twice = runner.invoke(main, ["keys", "init", "--by", "alice@example.com", "--key", str(key)])
    assert twice.exit_code == 1 and twice.stderr.count("\n") == 1


def test_approve_sign_key_signs_through_the_cli_and_audit_verify_checks_it(tmp_path: Path) -> None:
    runner = CliRunner()
    db, ring, key = tmp_path / "s.db", tmp_path / "ring", tmp_path / "alice.key"
    machine = tmp_path / "signed_pay.py"
    machine.write_text(SIGNED_MACHINE)
    assert runner.invoke(main, ["keys", "init", "--by", "alice@example.com", "--key", str(key),
                                "--keyring", str(ring)]).exit_code == 0
    other = tmp_path / "bob.key"
    assert runner.invoke(main, ["keys", "init", "--by", "bob@example.com", "--key", str(other)]).exit_code == 0
    run = json.loads(runner.invoke(main, ["start", str(machine), "--json", "--db", str(db)]).stdout)
    digest = run["pending"]["proposal_digest"]
    base = ["approve", run["run_id"], "--by", "alice@example.com", "--db", str(db), "--keyring", str(ring)]
    unsigned = runner.invoke(main, [*base, "--digest", digest])
    assert unsigned.exit_code == 1 and "requires a signed approval" in unsigned.stderr
    no_digest = runner.invoke(main, [*base, "--no-digest", "--sign-key", str(key)])
    assert no_digest.exit_code == 2 and "give --digest" in no_digest.stderr
    wrong_key = runner.invoke(main, [*base, "--digest", digest, "--sign-key", str(other)])
    assert wrong_key.exit_code == 1 and "belongs to bob@example.com, not alice@example.com" in wrong_key.stderr
    done = runner.invoke(main, [*base, "--digest", digest, "--sign-key", str(key), "--json"])
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "DONE"
    verified = runner.invoke(main, ["audit", "verify", "--db", str(db), "--keyring", str(ring)])
    assert verified.exit_code == 0, verified.stdout
    assert "signatures: 1 signed approvals verified against keyring" in verified.stdout
