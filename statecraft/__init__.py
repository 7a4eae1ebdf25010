"""statecraft: an explicit state-machine orchestrator for multi-agent LLM workflows.

The public API, and nothing else. Everything here is importable as
``from statecraft import X``; ``tests/test_public_api.py`` pins the list.
"""

from .agents.base import Agent, StepContext, Usage
from .engine import Engine, StepReport
from .errors import (
    ApprovalMismatch,
    DefinitionError,
    IllegalTransition,
    LeaseHeld,
    LedgerError,
    MachineDefinitionError,
    MachineLoadError,
    MachineMismatch,
    NotAStatecraftDatabase,
    RunError,
    RunNotFound,
    StatecraftError,
    StoreError,
)
from .lifecycle import LEGAL_EDGES, RunStatus, Trigger
from .loader import load_machine
from .machine import Machine, Step
from .outcomes import Fail, Finish, Goto, Outcome, RequestApproval
from .policy import RetryPolicy
from .store.db import Database
from .views import AuditEvent, PendingApproval, RunInfo

__all__ = [
    "LEGAL_EDGES",
    "Agent",
    "ApprovalMismatch",
    "AuditEvent",
    "Database",
    "DefinitionError",
    "Engine",
    "Fail",
    "Finish",
    "Goto",
    "IllegalTransition",
    "LeaseHeld",
    "LedgerError",
    "Machine",
    "MachineDefinitionError",
    "MachineLoadError",
    "MachineMismatch",
    "NotAStatecraftDatabase",
    "Outcome",
    "PendingApproval",
    "RequestApproval",
    "RetryPolicy",
    "RunError",
    "RunInfo",
    "RunNotFound",
    "RunStatus",
    "StatecraftError",
    "Step",
    "StepContext",
    "StepReport",
    "StoreError",
    "Trigger",
    "Usage",
    "load_machine",
]
