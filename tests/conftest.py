"""Shared fixtures, and the guard that keeps tests off the network.

Any connection to a non-loopback address fails the test (model:
pydantic-ai's ``ALLOW_MODEL_REQUESTS = False``): LLM agents are tested through
the real SDK against a loopback stand-in, never the internet.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
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


@pytest.fixture
def engine(db_path: Path) -> Iterator[Any]:
    """An Engine on a fresh real SQLite file."""
    from statecraft import Engine

    with Engine(db_path) as eng:
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
