"""Fixtures for the web tests: a users file, and the app on TestClient over a real SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web tests need the web extra (pip install -e '.[web]')")

from statecraft import Engine  # noqa: E402
from tests.web.support import Web, make_client, write_users  # noqa: E402


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    return write_users(tmp_path / "users.txt")


@pytest.fixture
def web(engine: Engine, users_file: Path) -> Iterator[Web]:
    with make_client(engine, users_file) as client:
        yield Web(client, engine)
