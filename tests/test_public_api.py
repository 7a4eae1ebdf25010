"""The flat public namespace is deliberate: adding or removing a name is a decision."""

from __future__ import annotations

import statecraft

EXPECTED = sorted(statecraft.__all__)


def test_all_is_sorted_and_every_name_exists() -> None:
    assert statecraft.__all__ == sorted(statecraft.__all__, key=lambda n: (not n.isupper(), n))
    for name in statecraft.__all__:
        assert hasattr(statecraft, name), name


def test_public_callables_have_docstrings() -> None:
    missing = [n for n in statecraft.__all__ if callable(getattr(statecraft, n)) and not getattr(statecraft, n).__doc__]
    assert missing == []
