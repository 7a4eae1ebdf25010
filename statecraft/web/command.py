"""``statecraft serve``: the click command that starts the web app under uvicorn.

Importing this module imports click only; FastAPI, uvicorn and Jinja2 are
imported when the command runs, so ``statecraft --help`` works without the
``web`` extra. The server refuses to start without an authenticator: an
approval from the web must name an authenticated person.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..errors import DefinitionError

__all__ = ["serve"]

_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def _secret(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise DefinitionError(f"--secret-file {path}: {exc.strerror or exc}") from exc
    if len(secret) < 32:
        raise DefinitionError(f"--secret-file {path}: needs at least 32 bytes (e.g. `head -c 48 /dev/urandom | base64`)")
    return secret


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--users", "users_file", metavar="FILE", envvar="STATECRAFT_WEB_USERS",
              help="Users file (scrypt hashes) for HTTP Basic and the login form (env: STATECRAFT_WEB_USERS).")
@click.option("--proxy-header", metavar="NAME",
              help="Trust header NAME (e.g. X-Forwarded-User) as the authenticated user, from --trusted-proxy only.")
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDR",
              help="Address or network of the authenticating proxy; repeatable (default 127.0.0.1 and ::1).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Host header to accept (the name users type); repeatable (default: loopback names and --host).")
@click.option("--secret-file", metavar="FILE", envvar="STATECRAFT_WEB_SECRET_FILE",
              help="File of at least 32 bytes that signs sessions and forms (default: random, sessions end on restart).")
@click.option("--secure-cookies", is_flag=True, help="Mark cookies Secure (serve over HTTPS, e.g. behind a TLS proxy).")
@click.option("--no-continue", "no_continue", is_flag=True,
              help="After an approval completes a gate, leave the run to `statecraft worker`.")
@click.option("--db", "db", envvar="STATECRAFT_DB", default="statecraft.db", show_default=True,
              help="Database file or SQLAlchemy URL (env: STATECRAFT_DB).")
def serve(
    host: str, port: int, users_file: str | None, proxy_header: str | None, trusted_proxies: tuple[str, ...],
    allowed_hosts: tuple[str, ...], secret_file: str | None, secure_cookies: bool, no_continue: bool, db: str,
) -> None:
    """Serve the reviewers' web inbox, run timelines, audit search and JSON API (docs/web.md).

    Needs the web extra and at least one way to authenticate: --users FILE
    (HTTP Basic and a login form against salted scrypt hashes) and/or
    --proxy-header NAME (an authenticating reverse proxy). Approvals are
    recorded under the authenticated user's principal, never a typed name.

    \b
    Example:
      python -m statecraft.web.users add users.txt alice --principal alice@example.com
      statecraft serve --users users.txt --port 8000
      statecraft serve --proxy-header X-Forwarded-User --allowed-host review.example.com
    """
    try:
        import uvicorn

        from ..engine import Engine
        from ..store.db import Database
        from .app import create_app
        from .auth import Authenticator, ProxyHeaderAuthenticator, UsersFileAuthenticator
        from .context import WebConfig
    except ImportError as exc:
        raise DefinitionError(f"statecraft serve needs the web extra: pip install 'statecraft[web]' ({exc})") from None
    authenticators: list[Authenticator] = []
    if users_file:
        authenticators.append(UsersFileAuthenticator(users_file))
    if proxy_header:
        authenticators.append(ProxyHeaderAuthenticator(proxy_header, trusted_proxies or ("127.0.0.1", "::1")))
    if not authenticators:
        raise click.UsageError("give --users FILE and/or --proxy-header NAME: approvals need an authenticated identity")
    if "://" not in db and not Path(db).exists():
        raise DefinitionError(f"no database at {db} (start a run first, or pass --db / STATECRAFT_DB)")
    synchronous = os.environ.get("STATECRAFT_SYNCHRONOUS", "FULL").upper()
    if synchronous not in ("FULL", "NORMAL"):
        raise click.UsageError(f"STATECRAFT_SYNCHRONOUS must be FULL or NORMAL, not {synchronous!r}")
    hosts = allowed_hosts or tuple(dict.fromkeys((*_LOOPBACK, *(() if host in ("0.0.0.0", "::") else (host,)))))
    config = WebConfig(
        authenticators=tuple(authenticators), secret=_secret(secret_file), continue_runs=not no_continue,
        allowed_hosts=hosts, secure_cookies=secure_cookies, stop_engine_on_shutdown=True,
    )
    from .decide import web_principal

    # Every decision made through the pages is recorded with the principal that
    # authenticated it (payload identity.principal), beside the OS account.
    engine = Engine(Database(db, create=False, synchronous=synchronous), authenticate=web_principal)  # type: ignore[arg-type]
    with engine:
        app = create_app(engine, config)
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"statecraft serve: http://{shown}:{port}/ on {db}", err=True)
        for a in authenticators:
            describe = getattr(a, "describe", None)
            click.echo(f"  auth: {describe() if callable(describe) else type(a).__name__}", err=True)
        click.echo(f"  accepted Host names: {', '.join(hosts)}", err=True)
        uvicorn.run(app, host=host, port=port, proxy_headers=False, server_header=False, log_level="info")
