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
