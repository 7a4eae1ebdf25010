"""Orchestration patterns as reusable step kinds (docs/patterns.md).

Each pattern is a factory returning :class:`~statecraft.machine.Step` s that
you put in a machine like any other; what they decide is audited in enough
detail to reconstruct every decision from the log alone.

=====================  ================================  ============================
pattern                factory                           reference machine
=====================  ================================  ============================
sequential pipeline    :func:`pipeline` + :class:`Stage`  machines/document_intake.py
router-worker          :func:`router` + :class:`Rule`     machines/support_router.py
parallel fan-out       :func:`fan_out`                    machines/research_fanout.py
supervisor-worker      :func:`supervisor`                 machines/document_intake.py
debate / consensus     :func:`debate` + :class:`Criterion` machines/compliance_debate.py
escalation gates       ``Step(escalate=[...])``           machines/invoice_approval.py
=====================  ================================  ============================
"""

from .debate import Criterion, CriterionVerdict, DebateRecord, debate
from .escalation import (
    EscalationRule,
    amount_above,
    flagged_terms,
    low_confidence,
    missing_fields,
)
from .fanout import fan_out
from .parallel import (
    All,
    BranchCall,
    BranchContext,
    BranchReport,
    Completion,
    Deadline,
    FanOutResult,
    Quorum,
    run_parallel,
)
from .pipeline import Stage, pipeline
from .router import RouteDecision, Rule, router
from .supervisor import (
    Accept,
    Drop,
    Redelegate,
    Split,
    Subtask,
    SubtaskResult,
    Supervision,
    default_review,
    supervisor,
)

__all__ = [
    "Accept",
    "All",
    "Completion",
    "Criterion",
    "CriterionVerdict",
    "Deadline",
    "DebateRecord",
    "Drop",
    "EscalationRule",
    "FanOutResult",
    "Quorum",
    "Redelegate",
    "RouteDecision",
    "Rule",
    "Split",
    "Stage",
    "Subtask",
    "SubtaskResult",
    "Supervision",
    "BranchCall",
    "BranchContext",
    "BranchReport",
    "amount_above",
    "debate",
    "default_review",
    "fan_out",
    "flagged_terms",
    "low_confidence",
    "missing_fields",
    "pipeline",
    "router",
    "run_parallel",
    "supervisor",
]
