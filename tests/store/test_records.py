"""The store's column lists match the declared tables, and a misspelled column fails at once."""

from __future__ import annotations

import pytest

from statecraft.audit.chain import new_event_row
from statecraft.store.ledger import AUDIT_COLUMNS
from statecraft.store.runs import RUN_COLUMNS
from statecraft.store.tables import AuditEventRow, RunRow


def test_the_ledger_column_list_is_the_audit_event_table() -> None:
    assert AUDIT_COLUMNS == tuple(AuditEventRow.__table__.columns.keys())  # type: ignore[attr-defined]


def test_the_run_column_list_is_the_run_table() -> None:
    assert set(RUN_COLUMNS) == set(RunRow.__table__.columns.keys())  # type: ignore[attr-defined]


def test_a_misspelled_audit_column_is_refused_not_silently_dropped() -> None:
    fields = {"event_type": "run.failed", "actor_type": "system", "actor_id": "statecraft",
              "occurred_at": "2026-01-01T00:00:00.000000Z", "eror_code": "boom"}
    with pytest.raises(KeyError, match="eror_code"):
        new_event_row(None, ledger_id="l", fields=fields)


def test_the_typed_records_name_exactly_the_tables_columns() -> None:
    from statecraft.store.ledger import AuditFields, AuditRecord
    from statecraft.store.runs import RunRecord, RunUpdate

    assert tuple(RunRecord.__annotations__) == RUN_COLUMNS
    assert set(AuditRecord.__annotations__) == set(AUDIT_COLUMNS)
    chain_made = {"seq", "ledger_id", "prev_hash", "entry_hash", "hash_alg", "schema_version",
                  "payload_json", "payload_sha256"}
    assert set(AuditFields.__annotations__) == set(AUDIT_COLUMNS) - chain_made
    guards = {"expected_seq", "fence_owner", "release"}
    lease = {"lease_owner", "lease_expires_at"}  # never written from a cached row
    immutable = {"machine_name", "machine_version", "machine_digest", "machine_ref", "task_sha256",
                 "created_at", "started_by", "parent_run_id"}
    assert set(RunUpdate.__annotations__) == (set(RUN_COLUMNS) - lease - immutable) | guards


_MISSPELLED = '''
from statecraft.store.runs import RunRecord
from statecraft.store.ledger import AuditFields


def status_of(run: RunRecord) -> object:
    return run["{run_key}"]


def failure() -> AuditFields:
    return {{"{audit_key}": "boom", "reason": "it broke"}}
'''


@pytest.mark.parametrize(("run_key", "audit_key", "errors"), [
    ("status", "error_code", []),
    ("stauts", "eror_code", ['TypedDict "RunRecord" has no key "stauts"', 'Extra key "eror_code" for TypedDict "AuditFields"']),
])
def test_a_misspelled_column_is_a_type_error(tmp_path, run_key: str, audit_key: str, errors: list[str]) -> None:
    """The records are TypedDicts: mypy --strict (run on every change, .ci/run) names a misspelled column."""
    import shutil
    import subprocess
    import sys

    if shutil.which("mypy") is None and subprocess.run([sys.executable, "-m", "mypy", "--version"],
                                                       capture_output=True).returncode != 0:
        pytest.skip("mypy is not installed here (pip install mypy): the type check cannot run")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(_MISSPELLED.format(run_key=run_key, audit_key=audit_key))
    out = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(snippet)],
                         capture_output=True, text=True, timeout=300)
    for error in errors:
        assert error in out.stdout, out.stdout
    assert (out.returncode == 0) == (not errors), out.stdout
