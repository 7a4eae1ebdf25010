"""The flat public namespace is deliberate: adding or removing a name is a decision.

Model: httpx's ``tests/test_exported_members.py``.
"""

from __future__ import annotations

import statecraft

EXPECTED = [
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


def test_the_public_names_are_exactly_the_pinned_list() -> None:
    assert statecraft.__all__ == EXPECTED


def test_all_is_sorted_and_every_name_exists() -> None:
    assert statecraft.__all__ == sorted(statecraft.__all__, key=lambda n: (not n.isupper(), n))
    for name in statecraft.__all__:
        assert getattr(statecraft, name) is not None, name


def test_public_callables_have_docstrings() -> None:
    missing = [
        n for n in statecraft.__all__ if callable(getattr(statecraft, n)) and not getattr(statecraft, n).__doc__
    ]
    assert missing == []


def test_importing_statecraft_does_not_import_the_anthropic_sdk() -> None:
    import subprocess
    import sys

    code = "import sys, statecraft; print('anthropic' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_importing_statecraft_does_not_import_cryptography() -> None:
    # Signed approvals are optional per gate; `import statecraft` (and every
    # CLI command) must not pay for loading the cryptography package.
    import subprocess
    import sys

    code = "import sys, statecraft, statecraft.cli; print('cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
