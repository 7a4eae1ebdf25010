"""Reference machine: pay a list of amounts through a (fake) payment service, each exactly once.

The payment service stands for Stripe and its kin: a separate system with
its own storage that deduplicates requests by an ``Idempotency-Key``. Here it
is :class:`Bank`, a SQLite file of its own, so a crash of the process that
runs the machine can land between the service's commit and statecraft's, the
window that matters. The machine charges through ``ctx.once("charge", ...)``:

- a retry, a resumed run or a second engine after a takeover gets the
  recorded charge back without calling the bank;
- if the process died after the bank charged but before statecraft recorded
  it, the bank is called again with the same key and returns the same charge.

So each amount is charged exactly once, however often the process dies
(tests/reliability/test_crash.py proves it under SIGKILL).

Input: ``{"bank": "/path/bank.db", "account": "acct_1", "amounts": [1200, 350]}``.
Environment: ``STATECRAFT_BANK_FLAKY`` (0..1) makes the bank fail that share of
calls *after* charging (a lost response), ``STATECRAFT_BANK_DELAY_MS`` adds a
random delay of up to that many milliseconds inside the bank's call.

Run it::

    statecraft start machines/payments.py --input payment.json
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from statecraft import Finish, Goto, Machine, RetryPolicy, Step, StepContext
from statecraft.policy import Budget


class BankUnavailable(ConnectionError):
    """The bank's answer was lost (it may have charged): retryable."""


class Bank:
    """A fake payment service: charges deduplicated by idempotency key, in its own SQLite file.

    Args:
        path: the bank's database file (created on first use).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with self._connect() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS charge (idempotency_key TEXT PRIMARY KEY, "
                "account TEXT NOT NULL, amount_cents INTEGER NOT NULL, charge_id TEXT NOT NULL, "
                "created_at REAL NOT NULL)"
            )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS request (id INTEGER PRIMARY KEY, idempotency_key TEXT NOT NULL, "
                "at REAL NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def charge(self, idempotency_key: str, account: str, amount_cents: int) -> dict[str, Any]:
        """Charge ``amount_cents`` to ``account`` once per key; a repeated key returns the first charge.

        Raises:
            ValueError: the key was used before with another account or amount
                (as Stripe refuses reusing a key for a different request).
            BankUnavailable: with ``STATECRAFT_BANK_FLAKY``, after charging.
        """
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO request (idempotency_key, at) VALUES (?, ?)", (idempotency_key, time.time()))
            conn.execute(
                "INSERT OR IGNORE INTO charge VALUES (?, ?, ?, ?, ?)",
                (idempotency_key, account, amount_cents, f"ch_{uuid.uuid4().hex[:16]}", time.time()),
            )
            row = conn.execute(
                "SELECT account, amount_cents, charge_id FROM charge WHERE idempotency_key = ?",
                (idempotency_key,),
            ).fetchone()
            conn.execute("COMMIT")
        finally:
            conn.close()
        if (row[0], row[1]) != (account, amount_cents):
            raise ValueError(f"idempotency key {idempotency_key[:12]}… was used for another charge")
        delay_ms = int(os.environ.get("STATECRAFT_BANK_DELAY_MS", "0") or 0)
        if delay_ms:
            time.sleep(random.uniform(0, delay_ms) / 1000)  # the answer is on its way back
        flaky = float(os.environ.get("STATECRAFT_BANK_FLAKY", "0") or 0)
        if flaky and random.random() < flaky:
            raise BankUnavailable("connection reset while reading the bank's answer")
        return {"charge_id": row[2], "amount_cents": row[1]}

    def charges(self) -> list[tuple[str, str, int, str]]:
        """Every charge: ``(idempotency_key, account, amount_cents, charge_id)``."""
        with self._connect() as conn:
            return list(conn.execute("SELECT idempotency_key, account, amount_cents, charge_id FROM charge ORDER BY created_at"))

    def requests(self) -> int:
        """How many charge requests the bank received (retries and replays included)."""
        with self._connect() as conn:
            return int(conn.execute("SELECT count(*) FROM request").fetchone()[0])


class Payment(BaseModel):
    """The state: where to pay, what to pay, and the charges made so far."""

    bank: str
    account: str
    amounts: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    paid: list[str] = Field(default_factory=list)
    i: int = 0
    receipt: str | None = None


def prepare(state: Payment, ctx: StepContext) -> object:
    if not state.amounts:
        return Finish(reason="nothing to pay")
    return Goto("charge", reason=f"{len(state.amounts)} payment(s) to make")


def charge(state: Payment, ctx: StepContext) -> object:
    amount = state.amounts[state.i]
    result = ctx.once("charge", lambda key: Bank(state.bank).charge(key, state.account, amount))
    nxt = "charge" if state.i + 1 < len(state.amounts) else "receipt"
    return Goto(nxt, update={"i": state.i + 1, "paid": [*state.paid, result["charge_id"]]},
                reason=f"charged {amount} cents as {result['charge_id']}")


def receipt(state: Payment, ctx: StepContext) -> object:
    return Finish(update={"receipt": f"{len(state.paid)} charges for {state.account}"})


machine = Machine(
    "payments",
    "1",
    Payment,
    steps=[
        # Every step has a per-attempt timeout (issue #9); the charge's bounds the bank's call.
        Step("prepare", prepare, next=["charge"], may_finish=True, timeout=timedelta(seconds=30),
             description="check the request"),
        Step(
            "charge", charge, next=["charge", "receipt"], writes=["i", "paid"],
            retry=RetryPolicy(max_attempts=5, initial_interval=timedelta(milliseconds=5),
                              max_interval=timedelta(milliseconds=50), jitter=0.5),
            timeout=timedelta(seconds=30),
            description="charge the next amount, exactly once",
        ),
        Step("receipt", receipt, may_finish=True, writes=["receipt"], timeout=timedelta(seconds=30),
             description="write the receipt"),
    ],
    budget=Budget(max_visits=1000),
    max_steps=2000,
)
