"""Fixtures for the reliability tests (helpers live in tests/support/reliability.py)."""

from __future__ import annotations

import pytest

from tests.support.reliability import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A settable UTC clock starting at 2026-01-01."""
    return FakeClock()
