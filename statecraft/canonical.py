"""Canonical JSON (RFC 8785, JCS): the bytes that get hashed, for the ledger and for blobs.

A leaf module: the audit chain (statecraft/audit/chain.py) hashes event
envelopes with it, the store (statecraft/store/blobs.py) addresses blob
bodies with it, and neither needs the other for that.

``canonical_json`` produces RFC 8785 output. For the values the ledger holds
(no floats, integers within ±2**53, ASCII keys) RFC 8785 serialisation is
exactly ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``: same key order, same string escapes (only ``"``, ``\\``
and U+0000..U+001F, lower-case hex), same integers. That path is ~20x faster
than the pure-Python ``rfc8785`` package; anything outside that domain goes to
``rfc8785`` itself, and a Hypothesis test (tests/audit/test_canonical.py)
proves both agree. Blob bodies may hold floats; the common ones (not whole,
not in exponent form) take the fast path too (:func:`in_fast_domain`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import rfc8785

__all__ = ["MAX_SAFE_INT", "canonical_json", "in_fast_domain", "sorted_json"]

MAX_SAFE_INT: Final = 2**53 - 1
"""The largest integer JSON numbers carry exactly (and that hashed data may hold)."""

sorted_json: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
"""``json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, without an encoder per call."""

_MAX_SAFE_INT: Final = MAX_SAFE_INT
_JSON_SORTED: Final = sorted_json


def in_fast_domain(value: Any, floats: bool = False) -> bool:
    """Whether ``value`` is inside the domain where :data:`sorted_json` equals RFC 8785.

    With ``floats`` (blob bodies, :func:`statecraft.store.blobs.blob_json`),
    also floats that are not whole numbers with 1e-4 <= |f| < 1e16:
    there Python's ``repr`` (what ``json`` writes) is positional and
    shortest-round-trip, which is ECMAScript's ``Number::toString`` and so
    RFC 8785 section 3.2.2.3, character for character. A whole float
    (``1.0``: JCS writes ``1``), an exponent form, NaN and infinities stay
    outside (tests/audit/test_canonical.py compares both with Hypothesis).
    """
    if type(value) is dict:
        # Hot path (every append hashes a flat envelope): exact types first,
        # the general rule below for anything else; same verdicts either way.
        for k, v in value.items():
            if not isinstance(k, str) or not k.isascii():
                return False
            if v is None or type(v) is str or (type(v) is int and -_MAX_SAFE_INT <= v <= _MAX_SAFE_INT):
                continue
            if not in_fast_domain(v, floats):
                return False
        return True
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
    if type(value) is float:
        return floats and not value.is_integer() and 1e-4 <= abs(value) < 1e16
    if isinstance(value, Mapping):
        return all(
            isinstance(k, str) and k.isascii() and in_fast_domain(v, floats) for k, v in value.items()
        )
    if isinstance(value, (list, tuple)):
        return all(in_fast_domain(v, floats) for v in value)
    return False


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON of ``value``, UTF-8 encoded.

    Raises:
        TypeError: ``value`` holds a float (forbidden in hashed data) or a
            type JSON cannot represent.
        rfc8785.CanonicalizationError: an integer beyond ±2**53, or a string
            that is not valid Unicode.
    """
    if in_fast_domain(value):
        return _JSON_SORTED(value).encode("utf-8")
    if _has_float(value):
        raise TypeError("floats are not allowed in hashed audit data; use integers")
    return rfc8785.dumps(value)


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, Mapping):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_float(v) for v in value)
    return False
