"""Canonical JSON and entry hashes: our fast paths agree with RFC 8785 exactly.

``chain.canonical_json`` serialises the ledger's domain with ``json.dumps``
and ``verify._entry_hash_sorted`` by concatenation; both are only correct if
they equal the reference (the ``rfc8785`` package, and
``chain.compute_entry_hash``). Hypothesis checks that here.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest
import rfc8785
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateTable

from statecraft.audit import verify as verify_module
from statecraft.audit.chain import DOMAIN, HASHED_COLUMNS, canonical_json, compute_entry_hash
from statecraft.audit.verify import (
    _ENVELOPE_SQL,
    _SORTED_HASHED,
    _entry_hash_sorted,
    _sqlite_renders_jcs,
)
from statecraft.canonical import in_fast_domain
from statecraft.store.blobs import blob_json
from statecraft.store.tables import AuditEventRow

SAFE = 2**53 - 1

# Strings that stress escaping: control characters, quotes, backslashes,
# DEL, non-ASCII, astral-plane emoji, U+2028/9 (JSON-legal, unescaped by JCS).
tricky_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list('\x00\x01\x08\t\n\x0b\x0c\r\x1f"\\/\x7f\u2028\u2029é€😀🚀')),
        st.characters(codec="utf-8"),  # any code point except lone surrogates
    ),
    max_size=30,
)
safe_ints = st.integers(min_value=-SAFE, max_value=SAFE)
scalars = st.one_of(st.none(), st.booleans(), safe_ints, tricky_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(tricky_text, children, max_size=5),
    ),
    max_leaves=25,
)


@settings(max_examples=300)
@given(json_values)
def test_canonical_json_equals_rfc8785_for_every_ledger_value(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=300)
@given(st.dictionaries(st.text(max_size=4), st.integers(-5, 5), max_size=8))
def test_object_keys_are_ordered_like_rfc8785_including_non_ascii_keys(value: dict[str, int]) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@settings(max_examples=100)
@given(
    st.recursive(
        st.floats(allow_nan=True, allow_infinity=True),
        lambda children: st.one_of(
            st.lists(st.one_of(children, scalars), min_size=1, max_size=3).map(
                lambda xs: xs + [1.5]
            ),
            st.dictionaries(st.text(max_size=3), children, min_size=1, max_size=3),
        ),
        max_leaves=5,
    )
)
def test_floats_anywhere_in_a_value_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


@pytest.mark.parametrize("value", [2**53, -(2**53), 2**63 - 1, {"n": [2**60]}])
def test_integers_beyond_2_to_the_53_are_refused_like_rfc8785(value: Any) -> None:
    with pytest.raises(rfc8785.CanonicalizationError):
        rfc8785.dumps(value)
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical_json(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 8785 section 3.2.3: keys sorted by UTF-16 code units, so U+1F600
        # (surrogates D83D DE00) sorts before U+E000 though its code point is larger.
        ({"\ue000": 1, "\U0001f600": 2, "a": 3}, '{"a":3,"\U0001f600":2,"\ue000":1}'),
        # RFC 8785 section 3.2.2.2: only " \\ and U+0000..U+001F are escaped,
        # with the short forms where JSON has them and lower-case hex otherwise.
        ("\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/", '"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"'),
        # No whitespace; literals; nesting.
        (
            {"b": [True, False, None], "a": {"z": 1, "y": "é"}},
            '{"a":{"y":"é","z":1},"b":[true,false,null]}',
        ),
        ([], "[]"),
        ({}, "{}"),
        (-0, "0"),
    ],
)
def test_fixed_rfc8785_examples(value: Any, expected: str) -> None:
    assert canonical_json(value) == expected.encode("utf-8")
    assert rfc8785.dumps(value) == expected.encode("utf-8")


@pytest.mark.parametrize("value", ["\ud800", ["a\udfff"], {"k": "\ud83d"}, {"\ud800": 1}])
def test_lone_surrogates_are_refused_as_value_errors_like_rfc8785(value: Any) -> None:
    # Not valid Unicode, so not UTF-8: SQLite can never hand one back, but
    # callers of append_event could pass one.
    with pytest.raises(ValueError):
        rfc8785.dumps(value)
    with pytest.raises(ValueError):
        canonical_json(value)


def test_floats_raise_type_error_rather_than_being_serialised() -> None:
    with pytest.raises(TypeError, match="floats"):
        canonical_json({"cost": 0.01})
    with pytest.raises(TypeError):
        compute_entry_hash({"tokens_in": 1.0})


# Blob bodies may hold floats (a model's score, a temperature): blob_json's
# fast path takes the common ones, and must write exactly what rfc8785 writes,
# or every stored body's address would change with the path taken.
any_float = st.floats(allow_nan=True, allow_infinity=True)
blob_values = st.recursive(
    st.one_of(scalars, any_float, st.floats(min_value=-1e17, max_value=1e17), st.floats(-1e-3, 1e-3)),
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(tricky_text, children, max_size=5),
    ),
    max_leaves=25,
)


def _rfc8785_or_error(value: Any) -> bytes | type[BaseException]:
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        return type(exc)


@settings(max_examples=600)
@given(blob_values)
def test_blob_json_equals_rfc8785_for_values_with_floats(value: Any) -> None:
    expected = _rfc8785_or_error(value)
    if isinstance(expected, bytes):
        assert blob_json(value) == expected
    else:
        with pytest.raises(expected):
            blob_json(value)


@pytest.mark.parametrize(
    "value",
    [
        0.1, -0.5, 0.87, 1e-4, -1e-4, 0.00010000000000000002, 9.999999999999999e-05,
        9007199254740991.5 - 0.5, 4503599627370495.5, 1e16 - 2, 9999999999999998.0, 1e16, 1e21, 1e22,
        1.0, -1.0, 0.0, -0.0, 5e-324, 1.7976931348623157e308, 123456789.125, 2.5e-7,
        {"score": 0.93, "n": [1.0, 2.5, 1e-7]},
    ],
)
def test_blob_json_agrees_with_rfc8785_at_the_edges_of_the_fast_path(value: Any) -> None:
    assert blob_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    ("value", "fast"),
    [(0.5, True), (1e-4, True), (9.999999999999999e-05, False), (4503599627370495.5, True),
     (1.0, False), (1e16, False), (float("inf"), False), (float("nan"), False), (-0.0, False)],
)
def test_the_fast_path_takes_floats_only_with_floats_and_only_where_repr_is_jcs(value: float, fast: bool) -> None:
    assert in_fast_domain({"x": value}, floats=True) is fast
    assert in_fast_domain({"x": value}) is False  # the ledger's envelopes never hold a float


# -- verify's fast entry hash ----------------------------------------------------------

# What SQLite can hand back for a column: text, integers of any 64-bit size,
# NULL, and (in a tampered row) reals and blobs.
column_values = st.one_of(
    st.none(),
    tricky_text,
    safe_ints,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    st.binary(max_size=4),
)


@st.composite
def audit_rows(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> dict[str, Any]:
    return {c: draw(values) for c in HASHED_COLUMNS}


def _reference(row: dict[str, Any]) -> str | type[Exception]:
    try:
        return compute_entry_hash(row)
    except (TypeError, ValueError) as exc:
        return type(exc)


def _fast(row: dict[str, Any]) -> str | type[Exception]:
    try:
        return _entry_hash_sorted([row[c] for c in _SORTED_HASHED])
    except (TypeError, ValueError) as exc:
        return type(exc)


@settings(max_examples=300)
@given(audit_rows(st.one_of(st.none(), tricky_text, safe_ints)))
def test_the_fast_entry_hash_equals_compute_entry_hash_on_plain_rows(row: dict[str, Any]) -> None:
    assert _entry_hash_sorted([row[c] for c in _SORTED_HASHED]) == compute_entry_hash(row)


@settings(max_examples=300)
@given(audit_rows(column_values))
def test_the_fast_entry_hash_agrees_with_compute_entry_hash_on_tampered_rows(row: dict[str, Any]) -> None:
    # Same hash, or the same kind of error (a float is a TypeError; a huge
    # integer or a blob is a ValueError).
    assert _fast(row) == _reference(row)


def test_the_entry_hash_is_sha256_of_the_domain_and_the_jcs_envelope() -> None:
    row = dict.fromkeys(HASHED_COLUMNS)
    row.update(seq=1, prev_hash="0" * 64, event_type="ledger.genesis", reason="é\n")
    envelope = json.dumps(
        {c: row[c] for c in HASHED_COLUMNS}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")

    expected = hashlib.sha256(DOMAIN + envelope).hexdigest()

    assert compute_entry_hash(row) == expected
    assert _entry_hash_sorted([row[c] for c in _SORTED_HASHED]) == expected
    assert rfc8785.dumps({c: row[c] for c in HASHED_COLUMNS}) == envelope


# -- verify's SQLite-rendered envelopes ----------------------------------------------------


@pytest.fixture(scope="module")
def audit_table() -> Iterator[sqlite3.Connection]:
    """An in-memory ``audit_event`` table, declared exactly as statecraft declares it."""
    conn = sqlite3.connect(":memory:")
    table = AuditEventRow.__table__  # type: ignore[attr-defined]
    ddl = CreateTable(table).compile(dialect=sqlite_dialect.dialect())
    conn.execute(str(ddl))
    yield conn
    conn.close()


def test_this_sqlite_renders_jcs_so_verify_can_use_its_fast_path() -> None:
    assert _sqlite_renders_jcs() is True


@settings(max_examples=300)
@given(audit_rows(st.one_of(st.none(), tricky_text, safe_ints)))
def test_sqlite_json_object_renders_stored_rows_exactly_like_canonical_json(
    audit_table: sqlite3.Connection, row: dict[str, Any]
) -> None:
    # Row values go through the real column affinities (a digit string in an
    # INTEGER column becomes an integer), so compare against what is stored.
    stored_row = {**row, "seq": 1}
    for c in ("ledger_id", "prev_hash", "entry_hash", "hash_alg", "event_id", "event_type",
              "occurred_at", "recorded_at", "actor_type", "actor_id", "schema_version"):
        if stored_row.get(c) is None:
            stored_row[c] = 1 if c == "schema_version" else "x"
    cols = list(HASHED_COLUMNS) + ["entry_hash"]
    audit_table.execute("DELETE FROM audit_event")
    audit_table.execute(
        f"INSERT INTO audit_event ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
        [stored_row[c] for c in cols],
    )
    values = audit_table.execute(
        f"SELECT {', '.join(_SORTED_HASHED)} FROM audit_event"
    ).fetchone()
    # A long digit string in an INTEGER column is stored as a REAL: verify's
    # unsafe flag sends such rows to Python, so they are not this property's domain.
    assume(not any(isinstance(v, float) or (isinstance(v, int) and abs(v) > SAFE) for v in values))
    rendered = audit_table.execute(f"SELECT {_ENVELOPE_SQL} FROM audit_event").fetchone()[0]

    envelope = dict(zip(_SORTED_HASHED, values))
    assert rendered.encode("utf-8") == canonical_json(envelope)
    assert hashlib.sha256(DOMAIN + rendered.encode("utf-8")).hexdigest() == compute_entry_hash(envelope)


def test_verify_trusts_sqlite_rendering_for_every_row_of_an_intact_ledger(
    ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fixture's rows hold quotes, backslashes, control characters and
    # emoji in hashed columns; none may need the Python fallback.
    def python_hashing(values: Any) -> str:
        raise AssertionError(f"row re-hashed in Python: {values}")

    monkeypatch.setattr(verify_module, "_entry_hash_sorted", python_hashing)
    db = ledger.open()
    try:
        assert verify_module.verify_ledger(db).ok is True
    finally:
        db.close()
