"""The anthropic -> statecraft error mapping is exhaustive and says the right thing about retrying.

A new exception class in a future ``anthropic`` release fails
``test_every_exception_class_the_sdk_exports_is_classified``: classify it in
``statecraft/agents/errors.py`` (``_BY_NAME``) and in ``EXPECTED`` below.
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import anthropic
import anthropic._exceptions
import httpx2
import pytest

from statecraft import RetryPolicy, RunError, StatecraftError
from statecraft.agents import errors as agent_errors
from statecraft.agents.errors import (
    AgentError,
    LLMAuthError,
    LLMBadRequest,
    LLMError,
    LLMNotFound,
    LLMOverloaded,
    LLMPermissionDenied,
    LLMProtocolError,
    LLMRateLimited,
    LLMSpendLimitReached,
    LLMTimeout,
    LLMUnavailable,
    convert_error,
)

R, N = True, False  # retryable / not retryable

# SDK class name -> (our class, retryable). Reviewed by hand: keep it independent
# of the module's own table, or this test checks nothing.
EXPECTED: dict[str, tuple[type[LLMError], bool]] = {
    "AnthropicError": (LLMError, N),
    "APIError": (LLMError, N),
    "APIStatusError": (LLMError, N),
    "APIWebhookValidationError": (LLMError, N),
    "APIConnectionError": (LLMUnavailable, R),
    "APITimeoutError": (LLMTimeout, R),
    "APIResponseValidationError": (LLMProtocolError, R),
    "RetryableError": (LLMUnavailable, R),
    "CredentialsError": (LLMAuthError, N),
    "IdentityTokenFileError": (LLMAuthError, N),
    "WorkloadIdentityError": (LLMAuthError, N),
    "AuthenticationError": (LLMAuthError, N),
    "BadRequestError": (LLMBadRequest, N),
    "PaymentRequiredError": (LLMSpendLimitReached, N),
    "PermissionDeniedError": (LLMPermissionDenied, N),
    "NotFoundError": (LLMNotFound, N),
    "RequestTimeoutError": (LLMTimeout, R),
    "ConflictError": (LLMUnavailable, R),
    "PreconditionFailedError": (LLMBadRequest, N),
    "StorageNotReadyError": (LLMUnavailable, R),
    "WorkspaceHumanReviewDisabledError": (LLMPermissionDenied, N),
    "ContentTooLargeError": (LLMBadRequest, N),
    "UnprocessableEntityError": (LLMBadRequest, N),
    "RateLimitError": (LLMRateLimited, R),
    "RequestHeaderFieldsTooLargeError": (LLMBadRequest, N),
    "ClientClosedRequestError": (LLMTimeout, R),
    "InternalServerError": (LLMUnavailable, R),
    "HTTPNotImplementedError": (LLMBadRequest, N),
    "ServiceUnavailableError": (LLMUnavailable, R),
    "GatewayTimeoutError": (LLMTimeout, R),
    "OverloadedError": (LLMOverloaded, R),
    "ClaudeCodeKeyCreatorNotMemberError": (LLMPermissionDenied, N),
    "ClaudeCodeVersionTooOldError": (LLMBadRequest, N),
    "CMEKKeyDisabledError": (LLMPermissionDenied, N),
    "CMEKKeyNetworkBlockedError": (LLMPermissionDenied, N),
    "CMEKKeyUnreachableError": (LLMUnavailable, R),
    "CMEKContextUnavailableError": (LLMUnavailable, R),
    "OrganizationOnHoldError": (LLMPermissionDenied, N),
    "OrganizationTypeNotSupportedError": (LLMPermissionDenied, N),
    "ParentOrganizationRequiredError": (LLMPermissionDenied, N),
    "RequestBodyEncodingInvalidError": (LLMBadRequest, N),
    "RequestBodyEncodingUnsupportedError": (LLMBadRequest, N),
    "RequestBodyTooLargeAfterDecodingError": (LLMBadRequest, N),
    "SandboxEgressRestrictedError": (LLMPermissionDenied, N),
    "RampLimitExceededError": (LLMRateLimited, R),
    "ContractSpendLimitReachedError": (LLMSpendLimitReached, N),
    "EnforcedSpendLimitReachedError": (LLMSpendLimitReached, N),
    "LinkedOrganizationSpendLimitReachedError": (LLMSpendLimitReached, N),
    "LinkedOrganizationBillingUnavailableError": (LLMSpendLimitReached, N),
}

OURS = {
    AgentError, LLMError, LLMUnavailable, LLMOverloaded, LLMTimeout, LLMRateLimited, LLMProtocolError,
    LLMSpendLimitReached, LLMAuthError, LLMPermissionDenied, LLMNotFound, LLMBadRequest,
}


def _exported() -> dict[str, type[BaseException]]:
    """Every AnthropicError subclass reachable as ``anthropic.X`` or ``anthropic._exceptions.X``."""
    found: dict[str, type[BaseException]] = {}
    for module in (anthropic, anthropic._exceptions):
        for value in vars(module).values():
            if inspect.isclass(value) and issubclass(value, anthropic.AnthropicError):
                found[value.__name__] = value
    return found


def _all_subclasses(root: type) -> set[type]:
    import anthropic._error_classes  # noqa: F401  (loads the endpoint-specific classes)

    seen: set[type] = set()
    todo: list[type] = [root]
    while todo:
        subs: list[type] = todo.pop().__subclasses__()
        for sub in subs:
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return seen | {root}


def _status_of(cls: type) -> int:
    status = getattr(cls, "status_code", None)
    if isinstance(status, int):
        return status
    return 500 if issubclass(cls, anthropic.InternalServerError) else 418


def _instance(cls: type[BaseException]) -> BaseException:
    """An instance of any SDK exception class, built the way the SDK builds it."""
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    if issubclass(cls, anthropic.APIStatusError):
        status = _status_of(cls)
        body = {"type": "error", "error": {"type": "api_error", "message": f"scripted {status}"}}
        response = httpx2.Response(status, request=request, headers={"request-id": "req_1"})
        return cls(f"Error code: {status}", response=response, body=body)
    if issubclass(cls, anthropic.APIResponseValidationError):
        return cls(httpx2.Response(200, request=request), None)
    if issubclass(cls, anthropic.APITimeoutError):
        return cls(request)
    if issubclass(cls, anthropic.APIConnectionError):
        return cls(request=request)
    if issubclass(cls, anthropic.APIError):
        return cls("scripted", request, body=None)
    try:
        return cls("scripted")
    except TypeError:  # e.g. StreamAlreadyConsumed, MissingDependencyError: their own signatures
        exc = cls.__new__(cls)
        exc.args = ("scripted",)
        return exc


def test_every_exception_class_the_sdk_exports_is_classified() -> None:
    exported = _exported()
    unclassified = sorted(set(exported) - set(EXPECTED))
    gone = sorted(set(EXPECTED) - set(exported))
    suggestions = ", ".join(
        f"{name} (a {exported[name].__mro__[1].__name__}; at run time it is handled as "
        f"{convert_error(_instance(exported[name])).__class__.__name__})"
        for name in unclassified
    )
    assert not unclassified, (
        f"anthropic {anthropic.__version__} exports exception classes statecraft has not classified: "
        f"{suggestions}; add each to _BY_NAME in statecraft/agents/errors.py and to EXPECTED here"
    )
    assert not gone, f"classes no longer exported by anthropic {anthropic.__version__}: {gone}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_exported_sdk_error_maps_to_exactly_one_of_ours_with_the_right_retryability(name: str) -> None:
    sdk_class = getattr(anthropic, name)
    assert sdk_class in agent_errors._mapping(), f"{name} must be listed explicitly, not inherited"
    expected, retryable = EXPECTED[name]

    ours = convert_error(_instance(sdk_class), run_id="run-1", step="s", model_id="claude-x")

    assert type(ours) is expected
    assert RetryPolicy(max_attempts=3).is_retryable(ours) is retryable
    assert isinstance(ours, RunError) and isinstance(ours, StatecraftError)
    assert (ours.run_id, ours.step, ours.model_id) == ("run-1", "s", "claude-x")
    assert "\n" not in str(ours) and str(ours).startswith("claude-x: ")


def test_every_sdk_error_class_including_endpoint_specific_ones_converts_to_one_of_ours() -> None:
    classes = _all_subclasses(anthropic.AnthropicError)
    assert len(classes) > len(EXPECTED)  # the SDK's endpoint-specific error_code classes are seen
    for cls in classes:
        ours = convert_error(_instance(cls))
        assert type(ours) in OURS, cls
        # An unlisted subclass behaves like its nearest listed ancestor, or,
        # where that is only a root class, like its HTTP status says.
        listed = next(k for k in cls.__mro__ if k in agent_errors._mapping())
        expected = agent_errors._mapping()[listed]
        if listed is not cls and listed.__name__ in agent_errors._ROOTS:
            status = getattr(_instance(cls), "status_code", None)
            expected = agent_errors._by_status(status if isinstance(status, int) else None) or expected
        assert type(ours) is expected, cls


@pytest.mark.parametrize(
    ("base", "status", "expected", "retryable"),
    [
        ("ServiceUnavailableError", 503, LLMUnavailable, True),
        ("BadRequestError", 400, LLMBadRequest, False),
        ("APIStatusError", 429, LLMRateLimited, True),
        ("APIStatusError", 503, LLMUnavailable, True),
        ("APIStatusError", 529, LLMOverloaded, True),
        ("APIStatusError", 402, LLMSpendLimitReached, False),
        ("APIStatusError", 451, LLMBadRequest, False),
        ("APIError", 0, LLMError, False),
    ],
)
def test_an_sdk_error_class_statecraft_has_never_seen_is_handled_by_its_base_and_http_status(
    base: str, status: int, expected: type[LLMError], retryable: bool
) -> None:
    # What a future SDK release looks like to this code: a new class, unknown by name.
    future = type("FutureSDKError", (getattr(anthropic, base),), {"status_code": status} if status else {})
    ours = convert_error(_instance(future), model_id="claude-x")
    assert type(ours) is expected
    assert RetryPolicy(max_attempts=3).is_retryable(ours) is retryable


def test_a_non_json_body_the_sdk_fails_to_decode_is_a_protocol_error() -> None:
    try:
        json.loads("{not json")
    except json.JSONDecodeError as exc:
        ours = convert_error(exc)
    assert type(ours) is LLMProtocolError and not ours.non_retryable


def test_the_status_error_details_are_carried_over() -> None:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    body = {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "Number of request tokens has exceeded your per-minute rate limit",
            "details": {"error_code": "ramp_limit_exceeded"},
        },
    }
    response = httpx2.Response(
        429, request=request, headers={"request-id": "req_42", "retry-after": "30"}
    )
    sdk_exc = anthropic.RateLimitError("Error code: 429", response=response, body=body)

    ours = convert_error(sdk_exc, model_id="claude-haiku-4-5", agent_name="triage")

    assert type(ours) is LLMRateLimited
    assert ours.status_code == 429 and ours.request_id == "req_42"
    assert ours.api_error_type == "rate_limit_error" and ours.api_error_code == "ramp_limit_exceeded"
    assert ours.retry_after is not None and ours.retry_after.total_seconds() == 30
    assert ours.agent_name == "triage" and ours.model_provider == "anthropic"
    assert str(ours) == (
        "claude-haiku-4-5: rate limited (HTTP 429, rate_limit_error, ramp_limit_exceeded, request req_42): "
        "Number of request tokens has exceeded your per-minute rate limit"
    )


def test_a_policy_can_still_refuse_to_retry_a_retryable_class_by_name() -> None:
    exc: Any = convert_error(_instance(anthropic.OverloadedError))
    assert RetryPolicy(max_attempts=3).is_retryable(exc)
    assert not RetryPolicy(max_attempts=3, non_retryable=frozenset({"LLMOverloaded"})).is_retryable(exc)


def test_convert_is_called_in_exactly_one_place_and_its_result_raised_from_the_sdk_error() -> None:
    # One boundary: ClaudeAgent._error is the only caller of convert_error, and every
    # raise of its result (sync and async calls) chains the SDK error.
    import ast
    from pathlib import Path

    import statecraft

    package = Path(statecraft.__file__).parent
    converts: list[str] = []
    raises: list[ast.Raise] = []
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "convert_error":
                    converts.append(f"{path.relative_to(package)}:{fn.name}")
                if (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)
                        and getattr(node.exc.func, "attr", None) == "_error"):
                    raises.append(node)
    assert converts == ["agents/claude.py:_error"], converts
    assert len(raises) == 2  # ClaudeAgent.__call__ and AsyncClaudeAgent.__call__
    assert all(isinstance(r.cause, ast.Name) and r.cause.id == "exc" for r in raises)
