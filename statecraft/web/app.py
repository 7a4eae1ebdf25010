"""The web application: pages and JSON API on one engine, behind authentication and strict headers.

Why the headers are shaped as they are: the pages show text written by
agents, by approvers and by whoever started a run, all of which an attacker
may control. Escaping (Jinja2 autoescape) is the first line; the second is a
Content-Security-Policy that allows no script at all and styles only from
this server's own stylesheet, so a string that escaped escaping could still
neither run nor restyle anything. Frames are refused (no clickjacking of the
approve button), responses are not cached (they hold audit data), and a
request whose ``Host`` is not one the operator named is refused before any
handler runs (a DNS-rebinding page cannot talk to a loopback server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles

from ..engine import Engine
from ..errors import DefinitionError
from . import api, pages
from .context import WebConfig, WebContext

__all__ = ["SECURITY_HEADERS", "create_app"]

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
"""Sent with every response."""


def _host_of(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):  # [::1]:8000
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def create_app(engine: Engine, config: WebConfig) -> FastAPI:
    """Build the reviewer's web application on ``engine``.

    The caller owns the engine (open it before, close it after the server
    stops). Approvals that complete a gate continue the run on a background
    thread of this app when ``config.continue_runs``.

    Args:
        engine: the engine whose database the pages read and decide on.
        config: authenticators, secret, and the other settings.

    Returns:
        A FastAPI (ASGI) application; serve it with uvicorn.

    Raises:
        DefinitionError: no authenticator configured.
    """
    if not config.authenticators:
        raise DefinitionError("the web app needs an authenticator: a users file or a trusted proxy header")
    ctx = WebContext(engine, config)
    allowed = {h.lower() for h in config.allowed_hosts}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        ctx.shutdown()

    app = FastAPI(
        title="statecraft",
        summary="Reviewer inbox, approvals, run timelines and audit search for a statecraft database.",
        version="1",
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI loads its script from a CDN; the policy forbids it
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.web = ctx

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if "*" not in allowed and _host_of(request.headers.get("host", "")) not in allowed:
            response: Response = PlainTextResponse("host not allowed (see --allowed-host)", status_code=400)
        else:
            response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(pages.NeedLogin)
    async def need_login(request: Request, exc: pages.NeedLogin) -> Response:
        return pages.login_redirect(request, ctx)

    @app.exception_handler(api.ApiError)
    async def api_refusal(request: Request, exc: api.ApiError) -> Response:
        body = api.ErrorBody(error=exc.error, message=exc.message).model_dump()
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        body = api.ErrorBody(error="invalid_request", message=f"{where}: {first.get('msg')}").model_dump()
        return JSONResponse(body, status_code=422)

    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    app.include_router(api.router)
    app.include_router(pages.router)
    return app
