"""Creating the control tables in a database made before they existed.

The tables of the controls in front of a model (``rate_limit_bucket``,
``circuit_breaker``, ``prompt_digest``, ``session_entry``) are created with
the schema of a new database (statecraft/store/db.py). A database created by
an earlier statecraft lacks them; rather than refuse it, the first control
that needs them creates them (``CREATE TABLE IF NOT EXISTS``: idempotent,
safe against a racing process), once per :class:`Database` object.
"""

from __future__ import annotations

import threading
import weakref

from sqlmodel import SQLModel

from .db import Database
from .tables import CONTROL_TABLES

__all__ = ["ensure_control_tables"]

_READY: weakref.WeakSet[Database] = weakref.WeakSet()
_GUARD = threading.Lock()


def ensure_control_tables(db: Database) -> None:
    """Create the control tables in ``db`` if they are missing. Commits at most one transaction.

    Raises:
        StoreError: the database is closed.
    """
    if db in _READY:
        return
    with _GUARD:
        if db in _READY:
            return
        with db.write() as conn:
            SQLModel.metadata.create_all(
                conn, tables=[t.__table__ for t in CONTROL_TABLES], checkfirst=True  # type: ignore[union-attr]
            )
        _READY.add(db)
