"""Helpers for the web tests: a users file, runs that wait at a gate, the app on TestClient, form scraping.

The users file uses the cheapest scrypt cost the parser accepts (2**10), so
a login costs about a millisecond; the format and code path are the real ones.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from statecraft import Engine, RunInfo
from statecraft.loader import load_machine
from statecraft.web.auth import UsersFileAuthenticator
from statecraft.web.context import API_CLIENT_HEADER, WebConfig
from statecraft.web.users import add_user

HERE = Path(__file__).resolve().parent
MACHINE_REF = str(HERE / "review_machine.py")
REPO_TOY = str(HERE.parent / "support" / "toy.py")
PASSWORDS = {"cfo": "cfo-pw", "controller": "controller-pw", "treasurer": "treasurer-pw", "clerk": "clerk-pw",
             "alice": "alice-pw"}
PRINCIPALS = {"cfo": "user:cfo", "controller": "user:controller", "treasurer": "user:treasurer",
              "clerk": "user:clerk", "alice": "alice@example.com"}
HOST = "127.0.0.1"


def write_users(path: Path) -> Path:
    """A users file with every login of PASSWORDS (cheap scrypt cost)."""
    for login, password in PASSWORDS.items():
        add_user(path, login, PRINCIPALS[login], password, n=2**10)
    return path


def start_payment(engine: Engine, amount: int, note: str = "invoice 17", by: str = "user:clerk") -> RunInfo:
    """Start a run of tests/web/review_machine.py; it stops at its gate."""
    machine = load_machine(MACHINE_REF)
    return engine.start(machine, {"amount": amount, "note": note}, by=by, actor_type="human", ref=MACHINE_REF)


class Web:
    """A TestClient on the app, plus helpers to log in and to post forms the way the pages do."""

    def __init__(self, client: TestClient, engine: Engine) -> None:
        self.client = client
        self.engine = engine

    def login(self, login: str) -> None:
        """Log in through the login form (session cookie)."""
        page = self.client.get("/login")
        token = csrf_of(page.text, "/login")
        answer = self.client.post("/login", data={"csrf": token, "login": login, "password": PASSWORDS[login],
                                                  "next": "/inbox"}, follow_redirects=False)
        assert answer.status_code == 303, answer.text

    def logout(self) -> None:
        page = self.client.get("/inbox")
        token = csrf_of(page.text, "/logout")
        assert self.client.post("/logout", data={"csrf": token}, follow_redirects=False).status_code == 303

    def decide(self, run_id: str, action: str = "approve", text: str = "", **override: str) -> Any:
        """Open the run page, then post its approve (or reject) form as a browser would."""
        page = self.client.get(f"/runs/{run_id}")
        assert page.status_code == 200, page.text
        form = {"csrf": csrf_of(page.text, f"/runs/{run_id}/{action}"),
                "digest": field_of(page.text, f"/runs/{run_id}/{action}", "digest"),
                "comment" if action == "approve" else "reason": text}
        form.update(override)
        return self.client.post(f"/runs/{run_id}/{action}", data=form, follow_redirects=False)


def basic(login: str, password: str | None = None) -> dict[str, str]:
    """An Authorization header for HTTP Basic."""
    raw = f"{login}:{password if password is not None else PASSWORDS[login]}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def api_headers(login: str) -> dict[str, str]:
    """Basic credentials plus the header every state-changing API call needs."""
    return {**basic(login), API_CLIENT_HEADER: "tests"}


def _form(html: str, action: str | None) -> str:
    if action is None:
        return html
    start = html.index(f'action="{action}"')
    return html[start: html.index("</form>", start)]


def field_of(html: str, action: str | None, name: str) -> str:
    """The value of hidden input ``name`` in the form posting to ``action`` (first form if None)."""
    match = re.search(rf'name="{name}" value="([^"]*)"', _form(html, action))
    assert match, f"no {name} field in form {action}"
    return match.group(1)


def csrf_of(html: str, action: str | None = None) -> str:
    return field_of(html, action, "csrf")


def make_client(engine: Engine, users: Path, **config: Any) -> TestClient:
    from statecraft.web.app import create_app

    settings: dict[str, Any] = {"authenticators": (UsersFileAuthenticator(users),), "allowed_hosts": (HOST,)}
    settings.update(config)
    app = create_app(engine, WebConfig(**settings))
    return TestClient(app, base_url=f"http://{HOST}")
