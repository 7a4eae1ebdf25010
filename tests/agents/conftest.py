"""Fixtures for agent tests: the loopback Messages API stand-in."""

from tests.support.fake_anthropic import fake_anthropic  # noqa: F401  (fixture)
