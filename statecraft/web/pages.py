"""The reviewer's pages: inbox, run timeline with the decision forms, audit search, ledger, login.

Server-rendered HTML, no script at all: the Content-Security-Policy forbids
every script and inline style (statecraft/web/app.py), so even markup that
slipped past escaping could neither run nor restyle the page. Forms POST
with a CSRF token and redirect (303) to a page that shows the outcome.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from ..errors import (
    ApprovalMismatch,
    ApprovalRefused,
    IllegalTransition,
    RunError,
    RunNotFound,
    StatecraftError,
)
from ..lifecycle import RunStatus
from .auth import Principal
from .context import WebContext
from .decide import MAX_COMMENT_CHARS, Decision, decide
from .reads import inbox, ledger_view, timeline_view
from .search import PAGE_DEFAULT, events_page, parse_search

__all__ = ["NeedLogin", "router"]

router = APIRouter(include_in_schema=False)


class NeedLogin(Exception):
    """Raised by :func:`page_principal` when a page is asked for without an identity."""


def web(request: Request) -> WebContext:
    """The application's :class:`WebContext`."""
    ctx: WebContext = request.app.state.web
    return ctx


def page_principal(request: Request) -> Principal:
    """The viewer of a page; raises :class:`NeedLogin` (answered with the login page or 401)."""
    principal = web(request).principal(request)
    if principal is None:
        raise NeedLogin()
    return principal


Viewer = Annotated[Principal, Depends(page_principal)]
Ctx = Annotated[WebContext, Depends(web)]


def _status_code(exc: StatecraftError) -> int:
    if isinstance(exc, RunNotFound):
        return 404
    if isinstance(exc, ApprovalRefused):
        return 403
    if isinstance(exc, (ApprovalMismatch, IllegalTransition)):
        return 409
    if isinstance(exc, RunError):
        return 400
    return 500


def error_page(ctx: WebContext, request: Request, exc: StatecraftError, *, run_id: str | None = None) -> Response:
    """The page for a refused or failed request: the error's one line, escaped."""
    title = {
        ApprovalMismatch: "The proposal changed since you loaded the page",
        ApprovalRefused: "The approval policy does not let you decide this gate",
        IllegalTransition: "The run does not wait for this decision any more",
        RunNotFound: "No such run",
    }.get(type(exc), "The request was refused")
    return ctx.render(
        request, "error.html", status_code=_status_code(exc), title=title, message=str(exc), run_id=run_id
    )


def _refused(ctx: WebContext, request: Request, message: str, status_code: int = 403) -> Response:
    return ctx.render(request, "error.html", status_code=status_code, title="Refused", message=message, run_id=None)


@router.get("/")
def home() -> Response:
    """The inbox is the home page."""
    return RedirectResponse("/inbox", status_code=303)


@router.get("/inbox")
def inbox_page(request: Request, ctx: Ctx, viewer: Viewer, machine: str = "", policy: str = "") -> Response:
    """Runs waiting for approval, newest first, filterable by machine and policy."""
    box = inbox(ctx.engine, machine=machine or None, policy=policy or None, viewer=viewer.id)
    return ctx.render(request, "inbox.html", box=box, machine=machine, policy=policy)


@router.get("/runs/{run_id}")
def run_page(request: Request, ctx: Ctx, viewer: Viewer, run_id: str) -> Response:
    """One run: its gate and the decision forms, its timeline, and its machine's graph."""
    try:
        view = timeline_view(ctx.engine, run_id, viewer=viewer.id)
    except StatecraftError as exc:
        return error_page(ctx, request, exc, run_id=run_id)
    moving = view.run is not None and view.run.status in (RunStatus.RUNNING, RunStatus.IDLE)
    return ctx.render(request, "run_page.html", view=view, refresh=moving, max_comment=MAX_COMMENT_CHARS)


def _decide(
    request: Request, ctx: WebContext, viewer: Principal, run_id: str, action: str, csrf: str, digest: str,
    comment: str,
) -> Response:
    if not ctx.csrf_ok(request, csrf, f"{action}:{run_id}"):
        return _refused(ctx, request, "The form was not accepted (missing or stale CSRF token); reload the page.")
    try:
        info = decide(ctx.engine, viewer, Decision("approve" if action == "approve" else "reject", run_id,
                                                   digest.strip(), comment))
        info = ctx.continue_run(info)
    except StatecraftError as exc:
        return error_page(ctx, request, exc, run_id=run_id)
    if action == "reject":
        notice = "rejected"
    else:
        notice = "approval_recorded" if info.status == RunStatus.WAITING_FOR_APPROVAL else "approved"
    return RedirectResponse(f"/runs/{quote(run_id, safe='')}?notice={notice}", status_code=303)


@router.post("/runs/{run_id}/approve")
def approve_form(
    request: Request, ctx: Ctx, viewer: Viewer, run_id: str,
    csrf: Annotated[str, Form()] = "", digest: Annotated[str, Form()] = "", comment: Annotated[str, Form()] = "",
) -> Response:
    """Approve the gate the page showed, bound to the digest the page showed."""
    return _decide(request, ctx, viewer, run_id, "approve", csrf, digest, comment)


@router.post("/runs/{run_id}/reject")
def reject_form(
    request: Request, ctx: Ctx, viewer: Viewer, run_id: str,
    csrf: Annotated[str, Form()] = "", digest: Annotated[str, Form()] = "", reason: Annotated[str, Form()] = "",
) -> Response:
    """Reject the gate the page showed (a reason is required)."""
    return _decide(request, ctx, viewer, run_id, "reject", csrf, digest, reason)


def _params(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        out.setdefault(key, []).append(value)
    return out


@router.get("/audit")
def audit_page(request: Request, ctx: Ctx, viewer: Viewer) -> Response:
    """Audit search with ``audit log``'s filters; links to CSV and JSON-lines exports of the same filter."""
    try:
        form, flt = parse_search(_params(request), default_limit=PAGE_DEFAULT)
    except ValueError as exc:
        return ctx.render(request, "audit.html", status_code=400, form=None, error=str(exc), rows=[],
                          next_query=None, export_query="", statuses=[s.value for s in RunStatus])
    rows, next_after = events_page(ctx.engine.db, flt)
    export = {k: v for k, v in form.query().items() if k not in ("after", "limit")}
    return ctx.render(
        request, "audit.html", form=form, error=None, rows=rows,
        next_query=None if next_after is None else urlencode(form.query(after=str(next_after))),
        export_query=urlencode(export), statuses=[s.value for s in RunStatus],
    )


@router.get("/ledger")
def ledger_page(request: Request, ctx: Ctx, viewer: Viewer) -> Response:
    """``audit verify`` status, the last anchor, and how to verify offline."""
    try:
        view = ledger_view(ctx.engine)
    except StatecraftError as exc:
        return error_page(ctx, request, exc)
    return ctx.render(request, "ledger_page.html", view=view)


# -- logging in and out ----------------------------------------------------------------


def _safe_next(target: str) -> str:
    # Only a local path: "//host" and "/\\host" are other sites to a browser.
    if not target.startswith("/") or target.startswith("//") or "\\" in target or any(ord(c) < 32 for c in target):
        return "/inbox"
    return target


@router.get("/login")
def login_page(request: Request, ctx: Ctx, next: str = "/inbox") -> Response:
    """The login form (when a users file is configured)."""
    if ctx.password_auth is None:
        return ctx.render(request, "error.html", status_code=401, title="Not authenticated",
                          message="This server authenticates through its reverse proxy; there is no login form.",
                          run_id=None)
    nonce = ctx.login_nonce(request)
    response = ctx.render(request, "login.html", next=_safe_next(next), failed=False)
    if nonce is not None:
        ctx.set_login_cookie(response, nonce)
    return response


@router.post("/login")
def login_submit(
    request: Request, ctx: Ctx,
    csrf: Annotated[str, Form()] = "", login: Annotated[str, Form()] = "", password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/inbox",
) -> Response:
    """Check the password against the users file; on success start a session and go on."""
    if ctx.password_auth is None:
        return _refused(ctx, request, "There is no login form on this server.", 404)
    if not ctx.csrf_ok(request, csrf, "login"):
        return _refused(ctx, request, "The login form was not accepted (missing or stale CSRF token); reload it.")
    principal = ctx.password_auth.check_password(login, password)
    if principal is None:
        return ctx.render(request, "login.html", status_code=401, next=_safe_next(next), failed=True)
    response = RedirectResponse(_safe_next(next), status_code=303)
    ctx.new_session(response, principal.login)
    return response


@router.post("/logout")
def logout(request: Request, ctx: Ctx, viewer: Viewer, csrf: Annotated[str, Form()] = "") -> Response:
    """End the session (HTTP Basic credentials stay in the browser until it closes)."""
    if not ctx.csrf_ok(request, csrf, "logout"):
        return _refused(ctx, request, "The form was not accepted (missing or stale CSRF token); reload the page.")
    response = RedirectResponse("/login?notice=logged_out" if ctx.password_auth else "/inbox", status_code=303)
    ctx.end_session(response)
    return response


def login_redirect(request: Request, ctx: WebContext) -> Response:
    """What an unauthenticated page request gets: the login form, or a Basic challenge."""
    if ctx.password_auth is not None and request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)
    response = ctx.render(request, "error.html", status_code=401, title="Not authenticated",
                          message="Log in first.", run_id=None)
    if ctx.password_auth is not None:
        response.headers["WWW-Authenticate"] = 'Basic realm="statecraft", charset="UTF-8"'
    return response

