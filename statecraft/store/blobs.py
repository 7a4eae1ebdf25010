"""Content-addressed blob storage: each body stored once, by SHA-256.

Inputs, outputs and states are referenced from audit events and checkpoints by
hash, so a 50,000-token document is written once however many steps read it
(DESIGN.md, "How a step executes").
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785
from sqlalchemy import Connection

from ..canonical import in_fast_domain, sorted_json
from .txn import Tx, tx_of

__all__ = ["blob_json", "get_blob", "insert_blob", "put_blob", "sha256_hex"]


def sha256_hex(body: bytes) -> str:
    """SHA-256 of ``body`` as 64 lower-case hex characters."""
    return hashlib.sha256(body).hexdigest()


def blob_json(value: Any) -> bytes:
    """Canonical JSON (RFC 8785) of a JSON-compatible value; floats allowed.

    Blob bodies are hashed, not chained, so floats are permitted here (JCS
    defines their form); the audit envelope only holds the resulting hash.
    """
    if in_fast_domain(value, floats=True):
        return sorted_json(value).encode()
    return rfc8785.dumps(value)




_INSERT = (
    "INSERT INTO blob (sha256, body, size, media_type, created_at) "
    "VALUES (:sha256, :body, :size, :media_type, :created_at) ON CONFLICT (sha256) DO NOTHING"
)


def put_blob(
    conn: Connection | Tx, body: bytes, *, created_at: str, media_type: str = "application/json"
) -> str:
    """Store ``body`` once (no-op when already present); return its SHA-256.

    Must run inside the caller's write transaction.
    """
    digest = sha256_hex(body)
    tx_of(conn).run(
        _INSERT,
        {"sha256": digest, "body": body, "size": len(body), "media_type": media_type, "created_at": created_at},
    )
    return digest


def get_blob(conn: Connection | Tx, digest: str) -> bytes | None:
    """The body stored under ``digest``; ``None`` if absent or redacted. Read-only."""
    row = tx_of(conn).one("SELECT body FROM blob WHERE sha256 = :d", {"d": digest})
    return None if row is None or row[0] is None else bytes(row[0])


_INSERT_RAW = (
    "INSERT INTO blob (sha256, body, size, media_type, created_at) "
    "VALUES (:sha256, :body, :size, 'application/json', :created_at) ON CONFLICT (sha256) DO NOTHING"
)


def insert_blob(tx: Tx, digest: str, body: bytes, *, created_at: str) -> None:
    """Store ``body`` under its already computed ``digest`` (no-op if present). Inside ``tx``.

    ``ON CONFLICT DO NOTHING`` also keeps a lawfully redacted body redacted.
    """
    tx.run(_INSERT_RAW, {"sha256": digest, "body": body, "size": len(body), "created_at": created_at})

