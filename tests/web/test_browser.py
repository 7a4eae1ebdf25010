"""The reviewer's flow in a real browser: Debian's headless Chromium driven by Playwright.

The server is real uvicorn on a free loopback port (a thread of this test
process) over a real SQLite file. Skipped, with the reason, where Chromium
(``/usr/bin/chromium``, installed by ``.ci/run``) or the Playwright package
is missing. Playwright's own browser downloads are never used.

Set ``STATECRAFT_WEB_SCREENSHOTS=DIR`` to save the inbox and a timeline as
PNG files there (docs/web.md's screenshots come from this test).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); the browser tests need it",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package")
uvicorn = pytest.importorskip("uvicorn", reason="the browser tests need the web extra")

from statecraft import Engine, RunStatus  # noqa: E402
from statecraft.web.app import create_app  # noqa: E402
from statecraft.web.auth import UsersFileAuthenticator  # noqa: E402
from statecraft.web.context import WebConfig  # noqa: E402
from tests.web.support import PASSWORDS, start_payment, write_users  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Server:
    """uvicorn serving the app on a thread; ``base`` is its URL."""

    def __init__(self, engine: Engine, users: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        app = create_app(engine, WebConfig(authenticators=(UsersFileAuthenticator(users),),
                                           allowed_hosts=("127.0.0.1",)))
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    proxy_headers=False))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.base = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, Server]]:
    root = tmp_path_factory.mktemp("browser")
    users = write_users(root / "users.txt")
    with Engine(root / "statecraft.db") as engine, Server(engine, users) as server:
        yield engine, server


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=ARGS, viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(10_000)
        yield context
        context.close()


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    browser_context.clear_cookies()
    page = browser_context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.dialogs = dialogs
    yield page
    page.close()


def log_in(page: Any, base: str, login: str) -> None:
    page.goto(base + "/inbox")
    page.fill("#login", login)
    page.fill("#password", PASSWORDS[login])
    page.click("#submit-login")
    page.wait_for_url("**/inbox")
    assert page.inner_text("#principal")


def shoot(page: Any, name: str, selector: str | None = None) -> None:
    folder = os.environ.get("STATECRAFT_WEB_SCREENSHOTS")
    if folder:
        target = page.locator(selector) if selector else page
        target.screenshot(path=str(Path(folder) / name))


def test_two_reviewers_approve_a_four_eyes_gate_and_the_run_finishes(site: tuple[Engine, Server], page: Any) -> None:
    engine, server = site
    run = start_payment(engine, 5000, note="invoice 4711 from Northwind Hosting")
    log_in(page, server.base, "cfo")
    assert run.run_id in page.inner_text(f"#run-{run.run_id}")
    assert "amount_over_1k" in page.inner_text(f"#run-{run.run_id}")
    shoot(page, "web-inbox.png")
    page.click(f"#run-{run.run_id} a.run-link")
    page.wait_for_url(f"**/runs/{run.run_id}")
    assert page.inner_text("#run-status") == "WAITING_FOR_APPROVAL"
    assert page.locator("li.event").count() == len(engine.events(run.run_id))
    page.fill("#approve-comment", "matches PO 4711")
    page.click("#approve")
    page.wait_for_url("**notice=approval_recorded")
    gate = page.inner_text("#gate")
    assert "1 of 2" in gate and "user:cfo" in gate and "1 more needed" in gate
    page.click("#logout")
    page.wait_for_url("**/login**")
    log_in(page, server.base, "controller")
    page.goto(f"{server.base}/runs/{run.run_id}")
    page.fill("#approve-comment", "second pair of eyes")
    page.click("#approve")
    page.wait_for_function("document.querySelector('#run-status').textContent === 'DONE'", timeout=15_000)
    assert engine.get(run.run_id).status == RunStatus.DONE
    page.click("li.event-step-completed details.body summary >> nth=0")  # open one input, as a reviewer would
    shoot(page, "web-timeline.png", "section:has(ol.timeline)")
    assert page.dialogs == []


def test_a_script_injected_into_a_comment_or_agent_output_does_not_run(site: tuple[Engine, Server], page: Any) -> None:
    engine, server = site
    payload = "<script>document.title='pwned';alert('pwned')</script>"
    run = start_payment(engine, 10, note=f"{payload}<img src=x onerror=\"alert('img')\">")
    log_in(page, server.base, "alice")
    page.goto(f"{server.base}/runs/{run.run_id}")
    page.fill("#approve-comment", payload)
    page.click("#approve")
    page.wait_for_url("**notice=approved")
    page.wait_for_load_state("load")
    assert page.title() != "pwned"
    assert page.dialogs == []
    assert page.evaluate("document.querySelectorAll('main script, main img').length") == 0
    assert payload in page.inner_text("main")  # shown as text, exactly as written


def test_a_stale_digest_is_refused_in_the_browser(site: tuple[Engine, Server], page: Any) -> None:
    engine, server = site
    run = start_payment(engine, 20)
    log_in(page, server.base, "alice")
    page.goto(f"{server.base}/runs/{run.run_id}")
    shown = page.input_value("form.approve input[name=digest]")
    engine.reject(run.run_id, by="user:cfo", reason="wrong vendor")
    asked_again = engine.retry(run.run_id, by="user:cfo")  # the gate asks again: a new proposal
    assert asked_again.pending is not None and asked_again.pending.proposal_digest != shown
    page.fill("#approve-comment", "looked fine to me")
    page.click("#approve")
    assert "The proposal changed since you loaded the page" in page.inner_text("main")
    assert engine.get(run.run_id).status == RunStatus.WAITING_FOR_APPROVAL
    assert "approval.granted" not in [e.event_type for e in engine.events(run.run_id)]
