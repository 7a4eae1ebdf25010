"""The reviewer's web inbox: ``statecraft serve`` (docs/web.md).

Compliance reviewers and approvers do not live in a terminal, so the same
database the CLI and the workers use is also served as a small web
application: an inbox of runs waiting for approval, approve/reject bound to
the proposal digest shown, run timelines, audit search with exports, the
ledger's verification status, and a JSON API for the same actions.

It is an optional layer over statecraft's public API (``Engine``, the views,
``statecraft.audit``): nothing in the engine depends on it. Importing this
package does not import FastAPI (``statecraft --help`` must not need the
``web`` extra); the modules that do:

======================  ============================================================
module                  role
======================  ============================================================
``users``               the users file: scrypt hashes, ``python -m statecraft.web.users add``
``tokens``              HMAC-signed session cookies and per-form CSRF tokens
``auth``                authenticators: trusted proxy header, HTTP Basic / login form
``decide``              the one place an authenticated principal is handed to the engine
``reads``               inbox, timeline and ledger views composed from public reads
``search``              ``audit log`` filters, CSV and JSON-lines exports
``context``             per-app state: identity resolution, CSRF, templates, continuing runs
``pages``, ``api``      the HTML pages and the ``/api/`` JSON endpoints
``app``                 ``create_app(engine, config)``: headers, host check, wiring
``command``             the ``statecraft serve`` click command
======================  ============================================================
"""

from __future__ import annotations

from typing import Any

__all__ = ["WebConfig", "create_app"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI imports statecraft.web.command at start-up, which must not pull FastAPI in.
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "WebConfig":
        from .context import WebConfig

        return WebConfig
    raise AttributeError(f"module 'statecraft.web' has no attribute {name!r}")
