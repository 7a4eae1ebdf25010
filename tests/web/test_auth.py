"""Identity for the web: the users file, password hashes, signed tokens, and the two authenticators."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from statecraft import Engine
from statecraft.errors import DefinitionError
from statecraft.web.auth import ProxyHeaderAuthenticator, UsersFileAuthenticator
from statecraft.web.tokens import Signer
from statecraft.web.users import add_user, hash_password, parse_users, read_users, verify_password
from tests.web.support import HOST, basic, make_client, start_payment

# -- passwords and the users file -------------------------------------------------------------


def test_a_password_hash_is_salted_scrypt_and_never_the_password() -> None:
    first, second = hash_password("hunter2", n=2**10), hash_password("hunter2", n=2**10)
    assert first.startswith("scrypt$1024$8$1$") and first != second  # a fresh salt each time
    assert "hunter2" not in first
    assert verify_password("hunter2", first) and verify_password("hunter2", second)
    assert not verify_password("hunter3", first)
    assert not verify_password("hunter2", None)  # an unknown login still costs one scrypt run, and fails
    assert not verify_password("hunter2", first.replace("scrypt$1024", "scrypt$3"))  # a bad cost is refused


def test_the_users_file_refuses_malformed_lines_naming_the_line() -> None:
    good = hash_password("pw", n=2**10)
    cases = {
        "alice alice@example.com\n": "line 1: expected 'LOGIN PRINCIPAL HASH'",
        f"# c\nal:ice a {good}\n": "line 2: bad login",
        f"alice a\x07b {good}\n": "line 1: bad principal",
        "alice a plaintext-password\n": "line 1: the hash is not",
        f"alice a {good}\nalice b {good}\n": "login 'alice' appears twice",
        f"alice a {good}\nbob a {good}\n": "principal 'a' already belongs to login 'alice'",
    }
    for content, message in cases.items():
        with pytest.raises(DefinitionError, match=message):
            parse_users(content)


def test_a_users_file_others_may_write_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    add_user(path, "alice", "alice@example.com", "pw", n=2**10)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert read_users(path)["alice"].principal == "alice@example.com"
    os.chmod(path, 0o666)
    with pytest.raises(DefinitionError, match="writable by group or others"):
        read_users(path)


def test_adding_a_user_again_replaces_the_password_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    add_user(path, "alice", "alice@example.com", "old", n=2**10)
    add_user(path, "bob", "bob@example.com", "pw", n=2**10)
    add_user(path, "alice", "alice@example.com", "new", n=2**10)
    users = read_users(path)
    assert sorted(users) == ["alice", "bob"]
    assert verify_password("new", users["alice"].password_hash)
    assert not verify_password("old", users["alice"].password_hash)
    with pytest.raises(DefinitionError, match="already belongs to login 'alice'"):
        add_user(path, "carol", "alice@example.com", "pw", n=2**10)


def test_the_users_command_adds_a_user_from_stdin_in_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    done = subprocess.run(
        [sys.executable, "-m", "statecraft.web.users", "add", str(path), "cfo", "--principal", "user:cfo",
         "--password-stdin"], input="s3cret\n", capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert verify_password("s3cret", read_users(path)["cfo"].password_hash)
    bad = subprocess.run(
        [sys.executable, "-m", "statecraft.web.users", "add", str(path), "a:b", "--password-stdin"],
        input="x\n", capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 1 and "bad login" in bad.stderr and "Traceback" not in bad.stderr


# -- signed tokens ---------------------------------------------------------------------------


def test_a_token_is_refused_when_tampered_expired_or_minted_for_another_purpose() -> None:
    now = [1_000_000.0]
    signer = Signer(b"k" * 32, clock=lambda: now[0])
    token = signer.sign("session", {"login": "cfo", "sid": "s1"})
    assert signer.check("session", token, max_age_s=60) == {"login": "cfo", "sid": "s1", "iat": 1_000_000}
    assert signer.check("csrf", token, max_age_s=60) is None
    body, mac = token.split(".")
    forged = base64.urlsafe_b64encode(b'{"iat":1000000,"login":"ceo","sid":"s1"}').rstrip(b"=").decode()
    assert signer.check("session", f"{forged}.{mac}", max_age_s=60) is None
    assert Signer(b"x" * 32, clock=lambda: now[0]).check("session", token, max_age_s=60) is None
    now[0] += 61
    assert signer.check("session", token, max_age_s=60) is None
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Signer(b"short")


def test_a_csrf_token_is_bound_to_its_subject_and_its_form() -> None:
    signer = Signer(b"k" * 32)
    token = signer.csrf_token("sid:abc", "approve:run-1")
    assert signer.csrf_ok(token, "sid:abc", "approve:run-1", max_age_s=60)
    assert not signer.csrf_ok(token, "sid:xyz", "approve:run-1", max_age_s=60)
    assert not signer.csrf_ok(token, "sid:abc", "approve:run-2", max_age_s=60)
    assert not signer.csrf_ok(token, "sid:abc", "reject:run-1", max_age_s=60)
    assert not signer.csrf_ok(None, "sid:abc", "approve:run-1", max_age_s=60)


# -- authenticators, through the app -----------------------------------------------------------


def _proxy_client(engine: Engine, peer: str, *, trusted: tuple[str, ...] = ("127.0.0.1",)) -> TestClient:
    from statecraft.web.app import create_app
    from statecraft.web.context import WebConfig

    app = create_app(engine, WebConfig(authenticators=(ProxyHeaderAuthenticator("X-Forwarded-User", trusted),),
                                       allowed_hosts=(HOST,)))
    return TestClient(app, base_url=f"http://{HOST}", client=(peer, 50000))


def test_the_proxy_header_names_the_principal_only_from_a_trusted_proxy(engine: Engine) -> None:
    with _proxy_client(engine, "127.0.0.1") as via_proxy:
        me = via_proxy.get("/api/me", headers={"X-Forwarded-User": "carol@example.com"})
        assert me.json() == {"id": "carol@example.com", "login": "carol@example.com", "method": "proxy-header"}
        assert via_proxy.get("/api/me").status_code == 401
        for bad in ("", "two words", "bell\x07"):
            assert via_proxy.get("/api/me", headers={"X-Forwarded-User": bad}).status_code == 401
    with _proxy_client(engine, "203.0.113.9") as direct:
        assert direct.get("/api/me", headers={"X-Forwarded-User": "ceo@example.com"}).status_code == 401
    with _proxy_client(engine, "10.1.2.3", trusted=("10.0.0.0/8",)) as in_network:
        assert in_network.get("/api/me", headers={"X-Forwarded-User": "dave"}).json()["id"] == "dave"


def test_a_proxy_header_sent_twice_is_ignored(engine: Engine) -> None:
    with _proxy_client(engine, "127.0.0.1") as client:
        answer = client.get("/api/me", headers=[("X-Forwarded-User", "carol"), ("X-Forwarded-User", "ceo")])
        assert answer.status_code == 401


def test_without_the_proxy_authenticator_the_header_is_just_a_header(engine: Engine, users_file: Path) -> None:
    with make_client(engine, users_file) as client:
        assert client.get("/api/me", headers={"X-Forwarded-User": "user:cfo"}).status_code == 401


def test_the_proxy_principal_decides_and_the_form_cannot_override_it(engine: Engine) -> None:
    run = start_payment(engine, 10)
    assert run.pending is not None
    with _proxy_client(engine, "127.0.0.1") as client:
        headers = {"X-Forwarded-User": "carol@example.com", "X-Statecraft-Client": "t"}
        answer = client.post(f"/api/runs/{run.run_id}/approve", headers=headers,
                             json={"digest": run.pending.proposal_digest, "by": "user:cfo"})
        assert answer.status_code == 200
    granted = [e.actor_id for e in engine.events(run.run_id) if e.event_type == "approval.granted"]
    assert granted == ["carol@example.com"]


def test_basic_auth_checks_each_request_and_a_changed_password_takes_effect(users_file: Path) -> None:
    auth = UsersFileAuthenticator(users_file)
    assert auth.check_password("cfo", "cfo-pw") is not None
    assert auth.check_password("cfo", "cfo-pw") is not None  # cached
    add_user(users_file, "cfo", "user:cfo", "rotated", n=2**10)
    assert auth.check_password("cfo", "cfo-pw") is None
    assert auth.check_password("cfo", "rotated") is not None
    assert auth.check_password("cfo", "") is None


def test_a_broken_users_file_authenticates_nobody_until_fixed(users_file: Path) -> None:
    auth = UsersFileAuthenticator(users_file)
    good = users_file.read_text()
    users_file.write_text(good + "garbage line\n")
    assert auth.check_password("cfo", "cfo-pw") is None
    assert auth.lookup("cfo") is None
    users_file.write_text(good)
    assert auth.check_password("cfo", "cfo-pw") is not None


def test_malformed_basic_headers_are_not_an_identity(engine: Engine, users_file: Path) -> None:
    with make_client(engine, users_file) as client:
        for header in ("Basic", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Bearer x",
                       "Basic " + base64.b64encode(b"\xff\xfe:x").decode()):
            assert client.get("/api/me", headers={"Authorization": header}).status_code == 401
        assert client.get("/api/me", headers=basic("cfo")).status_code == 200
