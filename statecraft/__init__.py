"""statecraft: an explicit state-machine orchestrator for multi-agent LLM workflows.

The public API, and nothing else. Everything here is importable as
``from statecraft import X``; ``tests/test_public_api.py`` pins the list.

Why the names are loaded lazily (PEP 562): ``import statecraft`` is paid by
every CLI command, every worker start and every service that only wants one
name, and importing all of them pulls SQLAlchemy, SQLModel, pydantic and the
``transitions`` package (~0.5 s, issue #9). So importing the package imports
nothing else; the first ``statecraft.X`` (or ``from statecraft import X``)
imports the one module that defines ``X``, and caches the name here. Type
checkers see the plain imports in the ``TYPE_CHECKING`` block instead.
"""

# Private aliases: this namespace holds the public names and nothing else.
import typing as _typing
from importlib import import_module as _import_module

if _typing.TYPE_CHECKING:
    from .agents.base import Agent, RecordedCall, StepContext, Usage
    from .agents.breaker import CircuitBreaker
    from .agents.canary import Canary
    from .agents.claude import AsyncClaudeAgent, ClaudeAgent
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

_MODULES: dict[str, tuple[str, ...]] = {
    ".agents.base": ("Agent", "RecordedCall", "StepContext", "Usage"),
    ".agents.breaker": ("CircuitBreaker",),
    ".agents.canary": ("Canary",),
    ".agents.claude": ("AsyncClaudeAgent", "ClaudeAgent"),
    ".agents.context": ("ContextBudget",),
    ".agents.errors": (
        "AgentError", "LLMAuthError", "LLMBadRequest", "LLMCircuitOpen", "LLMContextOverBudget", "LLMError",
        "LLMInvalidOutput", "LLMNotFound", "LLMOverloaded", "LLMPermissionDenied", "LLMProtocolError",
        "LLMRateLimitWait", "LLMRateLimited", "LLMSpendLimitReached", "LLMTimeout", "LLMUnavailable",
    ),
    ".agents.limits": ("RateLimit",),
    ".agents.pricing": ("ModelPrice",),
    ".agents.session": ("Session",),
    ".aio": ("AsyncEngine",),
    ".engine": ("Engine",),
    ".errors": (
        "AdvanceInterrupted", "ApprovalExpired", "ApprovalMismatch", "ApprovalRefused", "DefinitionError",
        "IdentityError", "IllegalTransition", "InvalidActorId", "KeyringError", "LeaseHeld", "LedgerError",
        "MachineDefinitionError", "MachineLoadError", "MachineMismatch", "NotAStatecraftDatabase",
        "NotAuthenticated", "RunError", "RunNotFound", "SignatureRefused", "StatecraftError", "StoreError",
    ),
    ".identity": ("normalize_actor",),
    ".lifecycle": ("LEGAL_EDGES", "RunStatus", "Trigger"),
    ".loader": ("load_machine",),
    ".machine": ("Machine", "Step"),
    ".outcomes": ("ApprovalPolicy", "Fail", "Finish", "Goto", "Outcome", "RequestApproval"),
    ".policy": ("Budget", "RetryPolicy"),
    ".signing": ("ApprovalSignature", "Keyring", "SigningKey"),
    ".store.db": ("Database",),
    ".views": ("AuditEvent", "PendingApproval", "RunInfo", "StepReport"),
    ".worker": ("Worker",),
}
"""The module (relative to this package) that defines each public name."""

_WHERE: dict[str, str] = {name: module for module, names in _MODULES.items() for name in names}

if not _typing.TYPE_CHECKING:
    # Only at run time: to a type checker the names are the imports above, so
    # a misspelt ``statecraft.X`` is still an error rather than ``Any``.

    def __getattr__(name: str) -> object:
        """Import the module defining public ``name`` on first use and cache the name (PEP 562).

        Raises:
            AttributeError: ``name`` is not public API (``from statecraft import name``
                then raises ``ImportError``, as for any missing name).
        """
        module = _WHERE.get(name)
        if module is None:
            raise AttributeError(f"module 'statecraft' has no attribute {name!r}")
        value = getattr(_import_module(module, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    """The module's own names and every public name, loaded or not (for ``dir()`` and completion)."""
    return sorted(set(globals()) | set(__all__))
