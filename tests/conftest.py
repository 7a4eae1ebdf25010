"""Shared fixtures, and the guard that keeps tests off the network.

Any connection to a non-loopback address fails the test (model:
pydantic-ai's ``ALLOW_MODEL_REQUESTS = False``): LLM agents are tested through
the real SDK against a loopback stand-in, never the internet.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"

_real_connect = socket.socket.connect


def _is_loopback(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise RuntimeError(f"tests must not touch the network (tried to connect to {address!r})")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def _no_network() -> Iterator[None]:
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh database file path (not yet created)."""
    return tmp_path / "statecraft.db"


# -- the two backends ------------------------------------------------------------------
#
# Every test that takes the ``engine`` (or ``db_url``) fixture runs twice: on a
# fresh SQLite file and on a fresh schema of the PostgreSQL server at
# $STATECRAFT_TEST_POSTGRES (default: the local server CI provides). Where no
# server answers, the PostgreSQL half is skipped, saying so. Tests that tamper
# with the SQLite file itself are marked ``sqlite_only``.

POSTGRES_URL = os.environ.get("STATECRAFT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def postgres_unavailable() -> str | None:
    """Why the PostgreSQL half cannot run here, or ``None`` if it can."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # no server, refused, wrong credentials
        return f"no PostgreSQL server answers at {POSTGRES_URL} ({type(exc).__name__}: {str(exc).strip()[:120]})"
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        # A test that also takes ``db_path`` works on the SQLite file itself (an
        # insider's sqlite3, a second Engine on the path): SQLite only.
        sqlite_only = metafunc.definition.get_closest_marker("sqlite_only") or "db_path" in metafunc.definition.fixturenames
        if metafunc.definition.get_closest_marker("postgres_only"):
            wanted = ["postgres"]
        else:
            wanted = ["sqlite"] if sqlite_only else ["sqlite", "postgres"]
        metafunc.parametrize("backend", wanted, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgres`` (the PostgreSQL half skips where no server answers)."""
    name = str(getattr(request, "param", "sqlite"))
    if name == "postgres":
        reason = postgres_unavailable()
        if reason is not None:
            pytest.skip(f"PostgreSQL half skipped: {reason}")
    return name


@contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema on the test server, dropped afterwards; yields a URL whose search_path is it."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}")
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{name}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database on ``backend``: a SQLite file path, or a PostgreSQL URL of a fresh schema."""
    if backend == "sqlite":
        yield str(tmp_path / "statecraft.db")
        return
    with postgres_schema() as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Any]:
    """An Engine on a fresh database: a real SQLite file, and a real PostgreSQL schema."""
    from statecraft import Engine

    with Engine(db_url) as eng:
        yield eng


@pytest.fixture
def corpus() -> Path:
    """../shared/corpus, or skip with the reason."""
    if not (CORPUS / "MANIFEST.tsv").is_file():
        pytest.skip(f"the shared corpus is absent ({CORPUS}); these tests need real documents")
    return CORPUS


class Cli:
    """Invoke the real click command in-process against one database."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        from statecraft.cli import main

        return self.runner.invoke(main, [*args, "--db", str(self.db)], input=input, catch_exceptions=False)

    def json(self, *args: str) -> Any:
        import json

        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def cli(db_path: Path) -> Cli:
    """The statecraft CLI bound to a fresh database file."""
    return Cli(db_path)
