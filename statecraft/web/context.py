"""Per-application state shared by the pages and the API: identity, CSRF, templates, continuing runs.

Identity is resolved once per request, in one order: a valid session cookie
(issued by the login form, re-checked against the users file on every
request), then each configured authenticator (HTTP Basic, a trusted proxy
header). Nothing in a request body is ever consulted.

CSRF: every form carries a token bound to the subject (the session id, or
the principal when there is no session, or a pre-login nonce cookie for the
login form itself) and to the form (``approve:RUN_ID``); a POST whose token
does not match is refused before anything else happens, as is any POST the
browser labels ``Sec-Fetch-Site: cross-site``. The JSON API instead requires
a custom request header, which a browser will not send cross-site without a
CORS preflight that this app never grants (OWASP CSRF Prevention Cheat
Sheet, "custom request headers").
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, Response

from ..engine import Engine
from ..lifecycle import RunStatus
from ..render import safe
from ..views import RunInfo
from .auth import Authenticator, PasswordAuthenticator, Principal
from .tokens import Signer

__all__ = ["API_CLIENT_HEADER", "NOTICES", "SESSION_COOKIE", "WebConfig", "WebContext"]

log = logging.getLogger("statecraft.web")

SESSION_COOKIE = "statecraft_session"
LOGIN_COOKIE = "statecraft_login"
API_CLIENT_HEADER = "X-Statecraft-Client"
"""Every JSON API request that changes something must carry this header (any non-empty value)."""

NOTICES = {
    "approved": "Approval recorded; the run continues.",
    "approval_recorded": "Your approval is recorded; the gate waits for more approvers.",
    "rejected": "Rejection recorded; the run has failed.",
    "logged_out": "Logged out.",
}
"""The only messages a redirect may ask a page to show (by key, so none is reflected from the URL)."""


@dataclass(frozen=True)
class WebConfig:
    """How the web app authenticates, protects forms and continues runs.

    Attributes:
        authenticators: tried in order; at least one is required.
        secret: signs session cookies and CSRF tokens (>= 32 bytes);
            ``None`` draws a random one, so sessions end with the process.
        continue_runs: after an approval reaches the quorum, advance the run
            on a background thread of this process (else leave it to
            ``statecraft worker``).
        continue_wait: how long an approval request waits for that
            background advance before answering; the page then
            refreshes itself until the run stops moving.
        allowed_hosts: ``Host`` header values accepted (``*`` for any);
            refusing others stops DNS-rebinding pages from reaching a
            server bound to loopback.
        secure_cookies: mark cookies ``Secure`` (serve over HTTPS).
        session_max_age: how long a login lasts.
        csrf_max_age: how long a rendered form stays valid.
        stop_engine_on_shutdown: call ``Engine.stop`` when the app shuts
            down, so background advances end after their current step.
    """

    authenticators: tuple[Authenticator, ...]
    secret: bytes | None = None
    continue_runs: bool = True
    continue_wait: timedelta = timedelta(seconds=2)
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
    secure_cookies: bool = False
    session_max_age: timedelta = timedelta(hours=8)
    csrf_max_age: timedelta = timedelta(hours=8)
    stop_engine_on_shutdown: bool = False


def visible(value: Any) -> Any:
    r"""What a page prints for ``value``: text with every character showing as itself, lines kept.

    Escaping (autoescape) makes markup inert; this makes text honest. Control
    characters, bidi overrides and zero-width characters could otherwise
    reorder or hide what a reviewer reads (``alice\u202e…``), so each line
    goes through :func:`statecraft.render.safe`, which shows them as visible
    escapes (``\u202e``); line breaks (``\n``, ``\r\n``) stay, for
    multi-line comments and JSON.
    Markup the app itself built (``Markup``) and non-text values pass unchanged.
    """
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return "\n".join(safe(line) for line in value.replace("\r\n", "\n").split("\n"))


def _usd(micros: int | None) -> str:
    return "" if micros is None else f"${micros / 1e6:.6f}"


def _pretty(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2, sort_keys=True)


def _path_segment(value: Any) -> str:
    return quote(str(value), safe="")


@dataclass
class WebContext:
    """The app's engine, configuration and helpers; one per application (``app.state.web``)."""

    engine: Engine
    config: WebConfig
    signer: Signer = field(init=False)
    templates: Environment = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)
    password_auth: PasswordAuthenticator | None = field(init=False)

    def __post_init__(self) -> None:
        self.signer = Signer(self.config.secret)
        # autoescape=True for every template: nothing from the ledger is markup.
        # finalize: every value a template prints passes through visible() first,
        # so control and bidi/invisible characters show as escapes (render.safe).
        self.templates = Environment(
            loader=PackageLoader("statecraft.web", "templates"), autoescape=True, undefined=StrictUndefined,
            finalize=visible,
        )
        self.templates.filters["usd"] = _usd
        self.templates.filters["seg"] = _path_segment
        self.templates.filters["pretty"] = _pretty
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="statecraft-web-advance")
        self.password_auth = next(
            (a for a in self.config.authenticators if isinstance(a, PasswordAuthenticator)), None
        )

    # -- identity ---------------------------------------------------------------------

    def principal(self, request: HTTPConnection) -> Principal | None:
        """Who sent ``request``: its session, else the first authenticator that names someone.

        Caches the answer on the request. Never reads the request body.
        """
        if getattr(request.state, "principal_resolved", False):
            cached: Principal | None = request.state.principal
            return cached
        found: Principal | None = None
        request.state.session_id = None
        claims = self.signer.check(
            "session", request.cookies.get(SESSION_COOKIE), max_age_s=int(self.config.session_max_age.total_seconds())
        )
        if claims is not None and self.password_auth is not None and isinstance(claims.get("login"), str):
            found = self.password_auth.lookup(claims["login"])
            if found is not None:
                request.state.session_id = claims.get("sid")
        if found is None:
            for authenticator in self.config.authenticators:
                found = authenticator.authenticate(request)
                if found is not None:
                    break
        request.state.principal = found
        request.state.principal_resolved = True
        return found

    def csrf_subject(self, request: HTTPConnection) -> str | None:
        """What this request's CSRF tokens are bound to; ``None`` if it has no identity and no login nonce."""
        principal = self.principal(request)
        if principal is not None:
            sid = request.state.session_id
            return f"sid:{sid}" if sid else f"principal:{principal.id}"
        nonce = getattr(request.state, "login_nonce", None) or request.cookies.get(LOGIN_COOKIE)
        return f"login:{nonce}" if nonce else None

    def csrf_token(self, request: HTTPConnection, form: str) -> str:
        """A token for ``form`` rendered for this request's subject."""
        subject = self.csrf_subject(request)
        if subject is None:
            raise RuntimeError("csrf_token needs an authenticated request or a login nonce")
        return self.signer.csrf_token(subject, form)

    def csrf_ok(self, request: Request, token: str | None, form: str) -> bool:
        """Whether a POST may proceed: not labelled cross-site, and its token matches subject and form."""
        if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
            return False
        subject = self.csrf_subject(request)
        return subject is not None and self.signer.csrf_ok(
            token, subject, form, max_age_s=int(self.config.csrf_max_age.total_seconds())
        )

    def new_session(self, response: Response, login: str) -> None:
        """Set a fresh session cookie for ``login`` (a new session id: no fixation)."""
        token = self.signer.sign("session", {"login": login, "sid": secrets.token_urlsafe(16)})
        response.set_cookie(
            SESSION_COOKIE, token, max_age=int(self.config.session_max_age.total_seconds()), httponly=True,
            samesite="strict", secure=self.config.secure_cookies, path="/",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/")

    def end_session(self, response: Response) -> None:
        """Remove the session cookie."""
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                               secure=self.config.secure_cookies)

    def login_nonce(self, request: HTTPConnection) -> str | None:
        """Give the login form a pre-session nonce (its CSRF subject); returns it if new (set it as a cookie)."""
        if request.cookies.get(LOGIN_COOKIE):
            return None
        nonce = secrets.token_urlsafe(16)
        request.state.login_nonce = nonce  # tokens rendered in this response bind to it
        return nonce

    def set_login_cookie(self, response: Response, nonce: str) -> None:
        """Set the login nonce cookie (one hour)."""
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict",
                            secure=self.config.secure_cookies, path="/")

    # -- pages ------------------------------------------------------------------------

    def render(self, request: Request, template: str, *, status_code: int = 200, **values: Any) -> HTMLResponse:
        """Render ``template`` (autoescaped) with the viewer, a CSRF-token function and ``values``."""
        principal = self.principal(request)
        notice = NOTICES.get(request.query_params.get("notice", ""))
        page = self.templates.get_template(template).render(
            principal=principal,
            csrf=lambda form: self.csrf_token(request, form),
            notice=notice,
            **values,
        )
        return HTMLResponse(page, status_code=status_code)

    # -- continuing runs --------------------------------------------------------------

    def continue_run(self, info: RunInfo) -> RunInfo:
        """After a decision, advance a RUNNING run in the background; wait briefly for it.

        Returns the run as it stands after at most ``continue_wait`` (unchanged if continuing is off or the run is not RUNNING).
        """
        if not self.config.continue_runs or info.status != RunStatus.RUNNING:
            return info
        future: Future[RunInfo] = self.executor.submit(self.engine.advance, info.run_id)
        future.add_done_callback(_log_failure(info.run_id))
        try:
            return future.result(timeout=self.config.continue_wait.total_seconds())
        except FutureTimeout:
            return self.engine.get(info.run_id)
        except Exception:  # logged by the callback; the decision itself is committed
            return self.engine.get(info.run_id)

    def shutdown(self) -> None:
        """Stop background advances (after their current step if configured) and wait for them."""
        if self.config.stop_engine_on_shutdown:
            self.engine.stop()
        self.executor.shutdown(wait=True, cancel_futures=True)


def _log_failure(run_id: str) -> Callable[[Future[RunInfo]], None]:
    def done(future: Future[RunInfo]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            log.error("continuing run %s failed: %s", run_id, exc)

    return done
