"""statecraft: an explicit state-machine orchestrator for multi-agent LLM workflows.

The public API, and nothing else. Everything here is importable as
``from statecraft import X``; ``tests/test_public_api.py`` pins the list.
"""

from typing import Any

from .agents.base import Agent, RecordedCall, StepContext, Usage
from .agents.breaker import CircuitBreaker
from .agents.canary import Canary
from .agents.context import ContextBudget
from .agents.errors import (
    AgentError,
    LLMAuthError,
    LLMBadRequest,
    LLMCircuitOpen,
    LLMContextOverBudget,
    LLMError,
    LLMInvalidOutput,
    LLMNotFound,
    LLMOverloaded,
    LLMPermissionDenied,
    LLMProtocolError,
    LLMRateLimited,
    LLMRateLimitWait,
    LLMSpendLimitReached,
    LLMTimeout,
    LLMUnavailable,
)
from .agents.limits import RateLimit
from .agents.pricing import ModelPrice
from .agents.session import Session
from .aio import AsyncEngine
from .engine import Engine
from .errors import (
    AdvanceInterrupted,
    ApprovalExpired,
    ApprovalMismatch,
    ApprovalRefused,
    DefinitionError,
    IdentityError,
    IllegalTransition,
    InvalidActorId,
    KeyringError,
    LeaseHeld,
    LedgerError,
    MachineDefinitionError,
    MachineLoadError,
    MachineMismatch,
    NotAStatecraftDatabase,
    NotAuthenticated,
    RunError,
    RunNotFound,
    SignatureRefused,
    StatecraftError,
    StoreError,
)
from .identity import normalize_actor
from .lifecycle import LEGAL_EDGES, RunStatus, Trigger
from .loader import load_machine
from .machine import Machine, Step
from .outcomes import ApprovalPolicy, Fail, Finish, Goto, Outcome, RequestApproval
from .policy import Budget, RetryPolicy
from .signing import ApprovalSignature, Keyring, SigningKey
from .store.db import Database
from .views import AuditEvent, PendingApproval, RunInfo, StepReport
from .worker import Worker

__all__ = [
    "LEGAL_EDGES",
    "AdvanceInterrupted",
    "Agent",
    "AgentError",
    "ApprovalExpired",
    "ApprovalMismatch",
    "ApprovalPolicy",
    "ApprovalRefused",
    "ApprovalSignature",
    "AsyncClaudeAgent",
    "AsyncEngine",
    "AuditEvent",
    "Budget",
    "Canary",
    "CircuitBreaker",
    "ClaudeAgent",
    "ContextBudget",
    "Database",
    "DefinitionError",
    "Engine",
    "Fail",
    "Finish",
    "Goto",
    "IdentityError",
    "IllegalTransition",
    "InvalidActorId",
    "Keyring",
    "KeyringError",
    "LLMAuthError",
    "LLMBadRequest",
    "LLMCircuitOpen",
    "LLMContextOverBudget",
    "LLMError",
    "LLMInvalidOutput",
    "LLMNotFound",
    "LLMOverloaded",
    "LLMPermissionDenied",
    "LLMProtocolError",
    "LLMRateLimitWait",
    "LLMRateLimited",
    "LLMSpendLimitReached",
    "LLMTimeout",
    "LLMUnavailable",
    "LeaseHeld",
    "LedgerError",
    "Machine",
    "MachineDefinitionError",
    "MachineLoadError",
    "MachineMismatch",
    "ModelPrice",
    "NotAStatecraftDatabase",
    "NotAuthenticated",
    "Outcome",
    "PendingApproval",
    "RateLimit",
    "RecordedCall",
    "RequestApproval",
    "RetryPolicy",
    "RunError",
    "RunInfo",
    "RunNotFound",
    "RunStatus",
    "Session",
    "SignatureRefused",
    "SigningKey",
    "StatecraftError",
    "Step",
    "StepContext",
    "StepReport",
    "StoreError",
    "Trigger",
    "Usage",
    "Worker",
    "load_machine",
    "normalize_actor",
]


def __getattr__(name: str) -> Any:
    # ClaudeAgent is imported lazily: importing the anthropic SDK takes seconds,
    # and neither `import statecraft` nor the CLI should pay that unless used.
    if name in ("ClaudeAgent", "AsyncClaudeAgent"):
        from .agents import claude

        return getattr(claude, name)
    raise AttributeError(f"module 'statecraft' has no attribute {name!r}")
