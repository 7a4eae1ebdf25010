"""The JSON API under ``/api/``: the pages' reads and decisions for programs (OpenAPI at ``/api/openapi.json``).

Authentication is the pages' (HTTP Basic, the trusted proxy header, or the
login session). Every request that changes something must carry the
``X-Statecraft-Client`` header (any value) and a JSON body: a browser sends
neither cross-site without a CORS preflight, which this app never answers,
so another site cannot make a logged-in reviewer's browser approve anything.
Errors are ``{"error": NAME, "message": ONE_LINE}`` with the status codes
listed per endpoint.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from ..audit.export import export_bundle
from ..audit.query import EventFilter
from ..errors import (
    ApprovalMismatch,
    ApprovalRefused,
    IllegalTransition,
    RunError,
    RunNotFound,
    StatecraftError,
)
from ..views import AuditEvent, RunInfo
from .auth import Principal
from .context import API_CLIENT_HEADER, WebContext
from .decide import MAX_COMMENT_CHARS, Decision, decide
from .reads import GateView, Inbox, LedgerView, TimelineView, gate_view, inbox, ledger_view, timeline_view
from .search import PAGE_DEFAULT, PAGE_MAX, csv_chunks, events_page, jsonl_chunks, parse_search

__all__ = ["ApiError", "ErrorBody", "router"]


class ErrorBody(BaseModel):
    """Every API error: a short name and one line."""

    error: str
    message: str


class ApiError(Exception):
    """An API refusal with its status code (rendered as :class:`ErrorBody`)."""

    def __init__(self, status_code: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.headers = headers or {}


def api_error(exc: StatecraftError) -> ApiError:
    """The API answer for one of our errors: 404, 403, 409, 400 or 500."""
    if isinstance(exc, RunNotFound):
        code = 404
    elif isinstance(exc, ApprovalRefused):
        code = 403
    elif isinstance(exc, (ApprovalMismatch, IllegalTransition)):
        code = 409
    elif isinstance(exc, RunError):
        code = 400
    else:
        code = 500
    return ApiError(code, type(exc).__name__, str(exc))


def _ctx(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.web
    return ctx


def api_principal(request: Request) -> Principal:
    """The caller; 401 (with a Basic challenge where a users file is configured) without one."""
    ctx = _ctx(request)
    principal = ctx.principal(request)
    if principal is None:
        headers = {"WWW-Authenticate": 'Basic realm="statecraft", charset="UTF-8"'} if ctx.password_auth else None
        raise ApiError(401, "unauthenticated", "authenticate first (HTTP Basic or the trusted proxy)", headers)
    return principal


def write_guard(request: Request) -> None:
    """Refuse a state-changing request without the client header or a JSON body (CSRF defence)."""
    if not request.headers.get(API_CLIENT_HEADER, "").strip():
        raise ApiError(403, "csrf", f"requests that change something need the {API_CLIENT_HEADER} header")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "content_type", "send the body as application/json")


Caller = Annotated[Principal, Depends(api_principal)]
Ctx = Annotated[WebContext, Depends(_ctx)]
_ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in ((401, "not authenticated"), (404, "no such run"))
}
_DECISION_ERRORS: dict[int | str, dict[str, object]] = {
    **_ERRORS,
    **{
        code: {"model": ErrorBody, "description": text}
        for code, text in (
            (400, "bad request (e.g. a rejection without reason)"),
            (403, "refused: the approval policy forbids the caller, or the CSRF header is missing"),
            (409, "the proposal changed (stale digest), or the run does not wait"),
            (415, "the body is not JSON"),
        )
    },
}

router = APIRouter(prefix="/api", tags=["statecraft"])


class Me(BaseModel):
    """The authenticated caller."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="actor id recorded on the caller's decisions")
    login: str
    method: str = Field(description="basic, session, password or proxy-header")


class RunView(BaseModel):
    """A run and the gate it waits at (``gate`` is null when it does not wait)."""

    model_config = ConfigDict(frozen=True)

    run: RunInfo
    gate: GateView | None


class ApproveBody(BaseModel):
    """An approval, bound to the proposal digest the caller reviewed."""

    digest: str = Field(pattern="^[0-9a-f]{64}$", description="the pending proposal's digest (gate.proposal_digest)")
    comment: str | None = Field(default=None, max_length=MAX_COMMENT_CHARS, description="recorded as the reason")


class RejectBody(BaseModel):
    """A rejection, bound to the proposal digest the caller reviewed; a reason is required."""

    digest: str = Field(pattern="^[0-9a-f]{64}$")
    reason: str = Field(min_length=1, max_length=MAX_COMMENT_CHARS)


class EventPage(BaseModel):
    """One page of audit events; ``next_after`` is the ``after`` of the next page (null at the end)."""

    events: list[AuditEvent]
    next_after: int | None


@router.get("/me", response_model=Me, responses=_ERRORS)
def me(caller: Caller) -> Me:
    """Who the server thinks you are."""
    return Me(id=caller.id, login=caller.login, method=caller.method)


@router.get("/inbox", response_model=Inbox, responses=_ERRORS)
def api_inbox(ctx: Ctx, caller: Caller, machine: str | None = None, policy: str | None = None) -> Inbox:
    """Runs waiting for approval, newest request first; ``policy`` is one of the items' ``policy_tags``."""
    return inbox(ctx.engine, machine=machine or None, policy=policy or None, viewer=caller.id)


@router.get("/runs/{run_id}", response_model=RunView, responses=_ERRORS)
def api_run(ctx: Ctx, caller: Caller, run_id: str) -> RunView:
    """A run's snapshot and its pending gate (digest, policy, approvals so far, deadline)."""
    try:
        info = ctx.engine.get(run_id)
        return RunView(run=info, gate=gate_view(ctx.engine, info, caller.id))
    except StatecraftError as exc:
        raise api_error(exc) from exc


@router.get("/runs/{run_id}/timeline", response_model=TimelineView, responses=_ERRORS)
def api_timeline(ctx: Ctx, caller: Caller, run_id: str) -> TimelineView:
    """Every event of the run with inputs, outputs and payloads (redactions marked), gates, totals, graph."""
    try:
        return timeline_view(ctx.engine, run_id, viewer=caller.id)
    except StatecraftError as exc:
        raise api_error(exc) from exc


@router.get("/runs/{run_id}/bundle.jsonl", responses=_ERRORS, response_class=Response)
def api_bundle(ctx: Ctx, caller: Caller, run_id: str) -> Response:
    """The run's export bundle (``audit export --run``); check it offline with ``audit verify-export``."""
    out = io.StringIO()
    try:
        export_bundle(ctx.engine.db, out, runs=(run_id,))
    except StatecraftError as exc:
        raise api_error(exc) from exc
    return Response(out.getvalue(), media_type="application/x-ndjson",
                    headers={"Content-Disposition": 'attachment; filename="run-bundle.jsonl"'})


def _decided(ctx: WebContext, caller: Principal, decision: Decision) -> RunView:
    try:
        info = ctx.continue_run(decide(ctx.engine, caller, decision))
        return RunView(run=info, gate=gate_view(ctx.engine, info, caller.id))
    except StatecraftError as exc:
        raise api_error(exc) from exc


@router.post("/runs/{run_id}/approve", response_model=RunView, responses=_DECISION_ERRORS,
             dependencies=[Depends(write_guard)])
def api_approve(ctx: Ctx, caller: Caller, run_id: str, body: ApproveBody) -> RunView:
    """Approve as the authenticated caller; refused (409) if ``digest`` is not the pending proposal's.

    Under a four-eyes policy the run stays WAITING_FOR_APPROVAL until enough
    distinct approvers agreed (``gate.approved_by``, ``gate.still_needed``);
    the approval that completes the quorum continues the run.
    """
    return _decided(ctx, caller, Decision("approve", run_id, body.digest, body.comment))


@router.post("/runs/{run_id}/reject", response_model=RunView, responses=_DECISION_ERRORS,
             dependencies=[Depends(write_guard)])
def api_reject(ctx: Ctx, caller: Caller, run_id: str, body: RejectBody) -> RunView:
    """Reject as the authenticated caller (the run goes FAILED); refused (409) on a stale digest."""
    return _decided(ctx, caller, Decision("reject", run_id, body.digest, body.reason))


_EVENT_HELP = "event type, wildcards allowed (approval.*); repeatable or comma-separated"


def _event_filter(default_limit: int | None) -> Callable[..., EventFilter]:
    """A FastAPI dependency: ``audit log``'s filters from the query string, as one ``EventFilter``.

    ``default_limit`` applies when the query names none (``None``: every
    matching event, for exports); a given ``limit`` is at most ``PAGE_MAX``.

    Raises (in the dependency): ApiError 400 ``bad_filter`` for a filter
    ``parse_search`` refuses (a time without an offset, an unknown status).
    """

    def event_filter(
        run: str | None = None, machine: str | None = None, actor: str | None = None,
        event: Annotated[list[str], Query(description=_EVENT_HELP)] = [],  # noqa: B006 - FastAPI copies defaults
        step: str | None = None, status: str | None = None,
        since: Annotated[str | None, Query(description="ISO 8601 with offset, inclusive")] = None,
        until: Annotated[str | None, Query(description="ISO 8601 with offset, exclusive")] = None,
        model: str | None = None,
        after: Annotated[int | None, Query(ge=0, description="only events after this seq")] = None,
        limit: Annotated[int | None, Query(ge=1, le=PAGE_MAX)] = None,
    ) -> EventFilter:
        params = {k: [str(v)] for k, v in {
            "run": run, "machine": machine, "actor": actor, "step": step, "status": status, "since": since,
            "until": until, "model": model, "after": after, "limit": limit,
        }.items() if v is not None}
        params["event"] = list(event)
        try:
            return parse_search(params, default_limit=default_limit)[1]
        except ValueError as exc:
            raise ApiError(400, "bad_filter", str(exc)) from exc

    return event_filter


PageFilter = Annotated[EventFilter, Depends(_event_filter(PAGE_DEFAULT))]
ExportFilter = Annotated[EventFilter, Depends(_event_filter(None))]


@router.get("/audit/events", response_model=EventPage, responses={**_ERRORS, 400: {"model": ErrorBody}})
def api_events(ctx: Ctx, caller: Caller, flt: PageFilter) -> EventPage:
    """Audit events in seq order with ``audit log``'s filters, one page at a time."""
    rows, next_after = events_page(ctx.engine.db, flt)
    return EventPage(events=[AuditEvent.model_validate(r) for r in rows], next_after=next_after)


def _export(kind: str, ctx: WebContext, flt: EventFilter) -> StreamingResponse:
    chunks = csv_chunks(ctx.engine.db, flt) if kind == "csv" else jsonl_chunks(ctx.engine.db, flt)
    media = "text/csv; charset=utf-8" if kind == "csv" else "application/x-ndjson"
    return StreamingResponse(chunks, media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="audit-events.{kind}"'})


@router.get("/audit/events.csv", responses={**_ERRORS, 400: {"model": ErrorBody}}, response_class=StreamingResponse)
def api_events_csv(ctx: Ctx, caller: Caller, flt: ExportFilter) -> StreamingResponse:
    """Every matching event as ``audit log --csv`` prints it (all columns; no limit unless given)."""
    return _export("csv", ctx, flt)


@router.get("/audit/events.jsonl", responses={**_ERRORS, 400: {"model": ErrorBody}}, response_class=StreamingResponse)
def api_events_jsonl(ctx: Ctx, caller: Caller, flt: ExportFilter) -> StreamingResponse:
    """Every matching event as ``audit log --json`` prints it (JSON lines; no limit unless given)."""
    return _export("jsonl", ctx, flt)


@router.get("/ledger", response_model=LedgerView, responses=_ERRORS)
def api_ledger(ctx: Ctx, caller: Caller) -> LedgerView:
    """``audit verify`` of the whole ledger, and its last anchors."""
    try:
        return ledger_view(ctx.engine)
    except StatecraftError as exc:
        raise api_error(exc) from exc
