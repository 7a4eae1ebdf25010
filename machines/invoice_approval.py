"""Reference machine: invoice approval with escalation gates and an idempotent payment.

The input is an invoice as a JSON object (``invoice_id``, ``vendor``,
``amount_cents``, ``currency``, ``po_number``, ``description``). Steps::

    check -> review -+-> pay -> DONE
                     '-> (gate: WAITING_FOR_APPROVAL) -> pay -> DONE

* ``check``: vendor known?  matching confidence (integer percent).
* ``review``: the agent's own judgement (here: always "pay"). Whatever it
  says, the machine's **escalation rules** on this step are judged by the
  engine on the state it proposes; any that fires turns "go to pay" into a
  gate, with the rule as the audited reason:

  ====================  =============================================  =====================
  rule                  fires when                                     approvers
  ====================  =============================================  =====================
  amount_over_10k       ``amount_cents`` > 1,000,000 ($10,000)         2 of cfo, controller,
                                                                       treasurer (four-eyes)
  suspicious_terms      "gift card", "wire transfer", "urgent", …      1 of the finance group
                        in the description
  missing_po            no ``po_number``                               anyone but the starter
  unknown_vendor        ``match_confidence`` < 80                      1 of the finance group
  ====================  =============================================  =====================

  Nobody approves a gate of a run they started (no self-approval), and a
  four-eyes gate needs two *distinct* approvers: it stays
  WAITING_FOR_APPROVAL after the first, each approval its own event.
* ``pay``: the payment side effect, through ``ctx.once`` with the step's
  idempotency key, so a retried or resumed step never pays twice; the fake
  payment service also deduplicates by key, as real ones (Stripe, Adyen) do.

Try::

    statecraft start machines/invoice_approval.py --input machines/samples/invoice_small.json --by user:clerk
    statecraft start machines/invoice_approval.py --input machines/samples/invoice_large.json --by user:clerk
    statecraft approve RUN_ID --by user:cfo --digest DIGEST
    statecraft approve RUN_ID --by user:controller --digest DIGEST
"""

# No ``from __future__ import annotations``: this file is loaded by path under
# a synthetic module name, and pydantic must resolve the annotations eagerly.

import hashlib
import threading
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from statecraft.agents.base import RecordedCall, StepContext
from statecraft.machine import Machine, Step
from statecraft.outcomes import ApprovalPolicy, Finish, Goto, Outcome
from statecraft.patterns import (
    amount_above,
    flagged_terms,
    low_confidence,
    missing_fields,
)

VERSION = "1"
FINANCE = ("user:cfo", "user:controller", "user:treasurer")
KNOWN_VENDORS = {"northwind hosting ltd.": "V-1001", "acme analytics, inc.": "V-1002",
                 "blue river labs llc": "V-1003"}
THRESHOLD_CENTS = 1_000_000  # $10,000.00


class Payment(BaseModel):
    model_config = ConfigDict(frozen=True)

    reference: str
    idempotency_key: str
    amount_cents: int
    currency: str


class Invoice(BaseModel):
    """State of an invoice run. Money is integer cents (no floats in audited data)."""

    model_config = ConfigDict(frozen=True)

    invoice_id: str
    vendor: str
    amount_cents: int = Field(ge=0)
    currency: str = "USD"
    po_number: str | None = None
    description: str = ""
    vendor_id: str | None = None
    match_confidence: int | None = Field(default=None, ge=0, le=100)
    decision: str | None = None
    payment: Payment | None = None


class FakePaymentService:
    """An in-process payment provider that deduplicates by idempotency key.

    Stands in for a real provider's API; ``payments`` is the provider's own
    ledger, so tests can count what was actually paid.
    """

    def __init__(self) -> None:
        self.payments: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def pay(self, key: str, vendor_id: str, amount_cents: int, currency: str) -> dict[str, Any]:
        """Pay once per ``key``; a repeated key returns the first payment."""
        with self._lock:
            if key not in self.payments:
                self.payments[key] = {
                    "reference": f"PAY-{hashlib.sha256(key.encode()).hexdigest()[:10].upper()}",
                    "vendor_id": vendor_id, "amount_cents": amount_cents, "currency": currency,
                }
            return dict(self.payments[key])


PAYMENTS = FakePaymentService()


def check(state: Any, ctx: StepContext) -> Outcome:
    """Match the vendor against the vendor master; report how sure the match is."""
    vendor_id = KNOWN_VENDORS.get(" ".join(state.vendor.lower().split()))
    return Goto("review", update={"vendor_id": vendor_id, "match_confidence": 98 if vendor_id else 40},
                reason=f"vendor {'matched ' + vendor_id if vendor_id else 'not in the vendor master'}")


def review(state: Any, ctx: StepContext) -> Outcome:
    """The agent's judgement: pay. The escalation rules, not this agent, decide on the gate."""
    return Goto("pay", update={"decision": "pay"}, reason="invoice checked; proposing payment")


def pay(state: Any, ctx: StepContext) -> Outcome:
    """Pay exactly once: ``ctx.once`` records the result under the step's idempotency key."""

    def call_provider(key: str) -> dict[str, Any]:
        result = PAYMENTS.pay(key, state.vendor_id or "unmatched", state.amount_cents, state.currency)
        ctx.record_call(RecordedCall(
            event_type="tool.called", name="payments.pay", decision=result["reference"],
            input={"vendor_id": state.vendor_id, "amount_cents": state.amount_cents,
                   "currency": state.currency},
            output=result, payload={"idempotency_key": key},
        ))
        return result

    result = ctx.once("payment", call_provider)
    payment = Payment(reference=result["reference"], idempotency_key=ctx.idempotency_key("payment"),
                      amount_cents=result["amount_cents"], currency=result["currency"])
    return Finish(update={"payment": payment.model_dump()}, reason=f"paid: {payment.reference}")


for _fn in (check, review, pay):
    _fn.agent_version = VERSION  # type: ignore[attr-defined]

ESCALATION_RULES = [
    amount_above("amount_cents", THRESHOLD_CENTS, name="amount_over_10k",
                 approvers=ApprovalPolicy(2, group=FINANCE),
                 description="amount above $10,000: two finance approvers"),
    flagged_terms("description", ["gift card", "gift cards", "wire transfer", "urgent", "crypto",
                                  "bitcoin", "change of bank details"],
                  name="suspicious_terms", approvers=ApprovalPolicy(1, group=FINANCE),
                  description="payment-fraud phrases in the description"),
    missing_fields(["po_number"], name="missing_po", approvers=ApprovalPolicy(1),
                   description="no purchase order"),
    low_confidence("match_confidence", 80, name="unknown_vendor",
                   approvers=ApprovalPolicy(1, group=FINANCE),
                   description="vendor not matched with confidence"),
]

_FIELDS = ["invoice_id", "vendor", "amount_cents", "currency", "po_number", "description"]

# Every step has a per-attempt timeout (issue #9): a runaway step fails its run
# (outcome ``timeout``) instead of leaving it RUNNING. These steps take milliseconds.
STEP_TIMEOUT = timedelta(seconds=30)

machine: Machine[Invoice] = Machine(
    "invoice_approval", VERSION, Invoice,
    steps=[
        Step("check", check, next=["review"], reads=_FIELDS, writes=["vendor_id", "match_confidence"],
             timeout=STEP_TIMEOUT, description="match the vendor; report confidence"),
        Step("review", review, next=["pay"], reads=[*_FIELDS, "vendor_id", "match_confidence"],
             writes=["decision"], escalate=ESCALATION_RULES,
             timeout=STEP_TIMEOUT, description="propose payment; escalation rules gate it"),
        Step("pay", pay, may_finish=True, reads=["vendor_id", "amount_cents", "currency", "decision"],
             writes=["payment"], timeout=STEP_TIMEOUT, description="idempotent payment side effect"),
    ],
    description="Approve and pay an invoice; amounts over $10,000 need two finance approvers.",
)
