"""A small machine for the web tests, loadable by path (``tests/web/review_machine.py``).

Input: ``{"amount": int, "note": str}``. ``draft`` (model ``claude-draft``,
prompt ``p7``; its reason quotes the note, so hostile text reaches the
ledger as agent output) → ``review`` (escalation rule ``amount_over_1k``:
above 1,000 the run waits for two of ``user:cfo``, ``user:controller``,
``user:treasurer``; approval deadline four hours; smaller amounts wait for
one approval by anyone, without a rule, and each ask increments ``round``)
→ ``pay`` (finishes).
"""

# No ``from __future__ import annotations``: loaded by path under a synthetic
# module name, and pydantic must resolve the annotations eagerly.

from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from statecraft import ApprovalPolicy, Finish, Goto, Machine, RequestApproval, Step, StepContext, Usage
from statecraft.patterns import amount_above

FINANCE = ("user:cfo", "user:controller", "user:treasurer")


class Payment(BaseModel):
    amount: int = 0
    note: str = ""
    summary: str = ""
    round: int = 0
    paid: bool = False


def draft(state: Any, ctx: StepContext) -> Any:
    ctx.record_usage(Usage(1200, 340, 5_100, "anthropic", "claude-draft", "p7"))
    return Goto("review", update={"summary": f"pay {state.amount}: {state.note}"}, reason=f"drafted: {state.note}")


def review(state: Any, ctx: StepContext) -> Any:
    if state.amount <= 1000:
        # ``round`` changes the state at every ask, so a gate asked again (after a
        # rejection and a retry) is a new proposal with a new digest.
        return RequestApproval(f"small payment (round {state.round + 1}): {state.note}", resume_at="pay",
                               summary=f"note: {state.note}", update={"round": state.round + 1})
    return Goto("pay", reason="looks fine")


def pay(state: Any, ctx: StepContext) -> Any:
    return Finish(update={"paid": True}, reason="paid")


machine: Machine[Payment] = Machine(
    "web_review", "1", Payment,
    steps=[
        Step("draft", draft, next=["review"], writes=["summary"]),
        Step("review", review, next=["pay"], writes=["round"],
             escalate=[amount_above("amount", 1000, name="amount_over_1k",
                                    approvers=ApprovalPolicy(2, group=FINANCE))],
             approval_deadline=timedelta(hours=4)),
        Step("pay", pay, may_finish=True, writes=["paid"]),
    ],
)
