"""Errors an agent raises when its call to a model fails, and the one boundary
where ``anthropic`` SDK errors become ours.

Part of the "the run went wrong" branch of :mod:`statecraft.errors`::

    RunError
    └── AgentError                  an agent could not produce an outcome        (non_retryable)
        └── LLMError                a call to a model provider failed            (model_id, status_code, …)
            ├── LLMUnavailable      retryable: 5xx, connection failure, 409
            │   ├── LLMOverloaded   retryable: 529 overloaded_error
            │   ├── LLMTimeout      retryable: client timeout, 408, 499, 504
            │   └── LLMCircuitOpen  retryable: our circuit breaker is open; not sent  (retry_after)
            ├── LLMRateLimited      retryable: 429 rate_limit_error              (retry_after)
            │   └── LLMRateLimitWait  retryable: our rate limiter's wait would exceed max_wait; not sent
            ├── LLMProtocolError    retryable: the response is not the API's shape
            ├── LLMInvalidOutput       retryable only by policy (``retry_on_invalid_output``):
            │                          the answer does not validate against the output model
            ├── LLMSpendLimitReached   not retryable: 402, spend limits — a human must act
            ├── LLMAuthError           not retryable: 401, missing/invalid credentials
            ├── LLMPermissionDenied    not retryable: 403, account or key configuration
            ├── LLMNotFound            not retryable: 404, e.g. an unknown model id
            └── LLMBadRequest          not retryable: 400, 412, 413, 422, 431, 501
                └── LLMContextOverBudget  not retryable: the input exceeds the call's
                                          context budget even after the declared cuts; not sent

Retryability is data on the error (``non_retryable``, read by
:meth:`statecraft.RetryPolicy.is_retryable`); the engine decides whether to
retry, agents never loop (STYLE.md, "Errors"). The rule: an error is retryable
when the same request can succeed later without anyone changing anything —
the statuses the SDK itself retries (408, 409, 429, 5xx) — except where the
API's ``error_code`` says a human must act first (spend limits, a disabled
encryption key, an organisation on hold) or the status is permanent (501).

``error_code`` (class attribute, ``snake_case``) is the stable code the engine
writes to the audit log when the run fails with the error.

Four classes are not conversions of SDK errors but statecraft's own
verdicts about a call (the controls in front of the model, and the answer's
validation): ``LLMCircuitOpen``, ``LLMRateLimitWait`` and
``LLMContextOverBudget`` stop a call before it is sent; ``LLMInvalidOutput``
judges an answer. They sit under the class whose handling they share.

:func:`convert_error` is the only place an ``anthropic`` exception becomes one of
ours; ``tests/agents/test_claude_agent.py`` checks that every exception class
the SDK exports maps to exactly one class here, with the right retryability.
"""

from __future__ import annotations

import functools
import json
from datetime import timedelta
from typing import Any

from ..errors import RunError

__all__ = [
    "AgentError",
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
    "convert_error",
    "sdk_errors",
]

_MAX_MESSAGE = 300


class AgentError(RunError):
    """An agent could not produce an outcome; the engine retries it or fails the run.

    Attributes:
        run_id: the run whose step raised it.
        step: the step being executed.
        agent_name: the agent's stable name.
        non_retryable: ``True`` when retrying the same call cannot help
            (read by :meth:`statecraft.RetryPolicy.is_retryable`).
        error_code: stable ``snake_case`` code for the audit log (class attribute).
    """

    error_code: str = "agent_error"
    non_retryable: bool = True

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        step: str | None = None,
        agent_name: str | None = None,
        non_retryable: bool | None = None,
    ) -> None:
        self.step = step
        self.agent_name = agent_name
        if non_retryable is not None:
            self.non_retryable = non_retryable
        super().__init__(message, run_id=run_id)


class LLMError(AgentError):
    """A call to a model provider failed. Also the class for SDK errors no subclass describes.

    Attributes:
        model_provider: ``anthropic``.
        model_id: the model requested.
        status_code: the HTTP status, when the API answered.
        request_id: the API's ``request-id`` header, for support tickets.
        api_error_type: ``error.type`` of the response body (``rate_limit_error``, …).
        api_error_code: ``error.details.error_code`` of the body, when present.
        retry_after: how long the API asked the caller to wait (``retry-after-ms``
            or ``retry-after`` header), when it said so; the engine never retries sooner.
        summary: a few words for the one-line message (class attribute).
    """

    error_code = "llm_error"
    summary = "model call failed"
    non_retryable = True

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        step: str | None = None,
        agent_name: str | None = None,
        non_retryable: bool | None = None,
        model_provider: str = "anthropic",
        model_id: str | None = None,
        status_code: int | None = None,
        request_id: str | None = None,
        api_error_type: str | None = None,
        api_error_code: str | None = None,
        retry_after: timedelta | None = None,
    ) -> None:
        self.model_provider = model_provider
        self.model_id = model_id
        self.status_code = status_code
        self.request_id = request_id
        self.api_error_type = api_error_type
        self.api_error_code = api_error_code
        self.retry_after = retry_after
        super().__init__(
            message, run_id=run_id, step=step, agent_name=agent_name, non_retryable=non_retryable
        )


class LLMUnavailable(LLMError):
    """The provider cannot serve the call right now (5xx, connection failure); retryable."""

    error_code = "llm_unavailable"
    summary = "model API unavailable"
    non_retryable = False


class LLMOverloaded(LLMUnavailable):
    """The API is overloaded (HTTP 529 ``overloaded_error``); retryable, with backoff."""

    error_code = "llm_overloaded"
    summary = "model API overloaded"


class LLMTimeout(LLMUnavailable):
    """The call timed out (client timeout, HTTP 408, 499 or 504); retryable."""

    error_code = "llm_timeout"
    summary = "model call timed out"


class LLMRateLimited(LLMError):
    """Rate limited (HTTP 429 ``rate_limit_error``); retryable, after ``retry_after`` if given."""

    error_code = "llm_rate_limited"
    summary = "rate limited"
    non_retryable = False


class LLMProtocolError(LLMError):
    """The response does not have the Messages API's shape (a proxy, a truncated body); retryable."""

    error_code = "llm_protocol_error"
    summary = "response is not a Messages API response"
    non_retryable = False


class LLMSpendLimitReached(LLMError):
    """Billing stops the call (HTTP 402, or a 429 spend limit); not retryable until a human acts."""

    error_code = "llm_spend_limit_reached"
    summary = "spend limit reached"


class LLMAuthError(LLMError):
    """Credentials are missing, invalid or cannot be loaded (HTTP 401); not retryable."""

    error_code = "llm_auth_error"
    summary = "authentication failed"


class LLMPermissionDenied(LLMError):
    """The key, workspace or organisation may not make this call (HTTP 403, …); not retryable."""

    error_code = "llm_permission_denied"
    summary = "permission denied"


class LLMNotFound(LLMError):
    """The resource does not exist, e.g. an unknown model id (HTTP 404); not retryable."""

    error_code = "llm_not_found"
    summary = "not found"


class LLMBadRequest(LLMError):
    """The request cannot succeed as sent (HTTP 400, 412, 413, 422, 431, 501); not retryable."""

    error_code = "llm_bad_request"
    summary = "bad request"


class LLMCircuitOpen(LLMUnavailable):
    """The circuit breaker guarding the model's API is open; the call was not sent.

    Retryable: ``retry_after`` is when the breaker lets a probe call through
    (statecraft/agents/breaker.py). Attributes: ``breaker``, the breaker's name.
    """

    error_code = "circuit_open"
    summary = "circuit open"

    def __init__(self, message: str, *, breaker: str, **kwargs: Any) -> None:
        self.breaker = breaker
        super().__init__(message, **kwargs)


class LLMRateLimitWait(LLMRateLimited):
    """Our own rate limiter would make the call wait longer than its ``max_wait``; not sent.

    Retryable: ``retry_after`` is the wait the limiter asked for
    (statecraft/agents/limits.py). Attributes: ``limiter_key``.
    """

    error_code = "rate_limit_wait_exceeded"
    summary = "rate limit wait too long"

    def __init__(self, message: str, *, limiter_key: str, **kwargs: Any) -> None:
        self.limiter_key = limiter_key
        super().__init__(message, **kwargs)


class LLMContextOverBudget(LLMBadRequest):
    """The call's input exceeds its context budget even after the declared cuts; not sent.

    Not retryable: the same input would be over budget again
    (statecraft/agents/context.py). Attributes: ``budget_tokens``,
    ``estimated_tokens`` (after the cuts).
    """

    error_code = "context_over_budget"
    summary = "context over budget"

    def __init__(self, message: str, *, budget_tokens: int, estimated_tokens: int, **kwargs: Any) -> None:
        self.budget_tokens = budget_tokens
        self.estimated_tokens = estimated_tokens
        super().__init__(message, **kwargs)


class LLMInvalidOutput(LLMError):
    """The model answered, but the answer does not validate (not JSON, wrong schema, cut at ``max_tokens``).

    An attempt failure like any other, so it reaches the step's retry policy
    and error edge. Not retryable unless the policy says
    ``retry_on_invalid_output=True`` (:meth:`statecraft.RetryPolicy.is_retryable`
    reads ``invalid_output``): the same prompt often gets the same answer.
    Attributes: ``stop_reason``.
    """

    error_code = "invalid_llm_output"
    summary = "answer does not validate"
    invalid_output = True

    def __init__(self, message: str, *, stop_reason: str | None = None, **kwargs: Any) -> None:
        self.stop_reason = stop_reason
        super().__init__(message, **kwargs)


# SDK class name -> ours. Every AnthropicError subclass that ``anthropic``
# exports is listed by name (the test fails on a new one, so it is classified
# on purpose); endpoint-specific subclasses the SDK keeps in ``anthropic.types``
# inherit their HTTP status class's entry through the MRO. Names, not objects,
# so an SDK that lacks a class still imports this module.
_BY_NAME: dict[str, type[LLMError]] = {
    # roots: nothing more specific is known
    "AnthropicError": LLMError,
    "APIError": LLMError,
    "APIStatusError": LLMError,
    "APIWebhookValidationError": LLMError,
    # no usable answer from the API
    "APIConnectionError": LLMUnavailable,
    "APITimeoutError": LLMTimeout,
    "APIResponseValidationError": LLMProtocolError,
    "RetryableError": LLMUnavailable,
    # credentials
    "CredentialsError": LLMAuthError,
    "IdentityTokenFileError": LLMAuthError,
    "WorkloadIdentityError": LLMAuthError,
    "AuthenticationError": LLMAuthError,
    # 4xx
    "BadRequestError": LLMBadRequest,
    "PaymentRequiredError": LLMSpendLimitReached,
    "PermissionDeniedError": LLMPermissionDenied,
    "NotFoundError": LLMNotFound,
    "RequestTimeoutError": LLMTimeout,
    "ConflictError": LLMUnavailable,
    "PreconditionFailedError": LLMBadRequest,
    "ContentTooLargeError": LLMBadRequest,
    "UnprocessableEntityError": LLMBadRequest,
    "RateLimitError": LLMRateLimited,
    "RequestHeaderFieldsTooLargeError": LLMBadRequest,
    "ClientClosedRequestError": LLMTimeout,
    # 5xx
    "InternalServerError": LLMUnavailable,
    "HTTPNotImplementedError": LLMBadRequest,
    "ServiceUnavailableError": LLMUnavailable,
    "GatewayTimeoutError": LLMTimeout,
    "OverloadedError": LLMOverloaded,
    # error_code subclasses shared by every endpoint
    "ClaudeCodeKeyCreatorNotMemberError": LLMPermissionDenied,
    "ClaudeCodeVersionTooOldError": LLMBadRequest,
    "CMEKKeyDisabledError": LLMPermissionDenied,
    "CMEKKeyNetworkBlockedError": LLMPermissionDenied,
    "CMEKKeyUnreachableError": LLMUnavailable,
    "CMEKContextUnavailableError": LLMUnavailable,
    "OrganizationOnHoldError": LLMPermissionDenied,
    "OrganizationTypeNotSupportedError": LLMPermissionDenied,
    "ParentOrganizationRequiredError": LLMPermissionDenied,
    "RequestBodyEncodingInvalidError": LLMBadRequest,
    "RequestBodyEncodingUnsupportedError": LLMBadRequest,
    "RequestBodyTooLargeAfterDecodingError": LLMBadRequest,
    "SandboxEgressRestrictedError": LLMPermissionDenied,
    "RampLimitExceededError": LLMRateLimited,
    "ContractSpendLimitReachedError": LLMSpendLimitReached,
    "EnforcedSpendLimitReachedError": LLMSpendLimitReached,
    "LinkedOrganizationSpendLimitReachedError": LLMSpendLimitReached,
    "LinkedOrganizationBillingUnavailableError": LLMSpendLimitReached,
    # added in anthropic 2.16
    "StorageNotReadyError": LLMUnavailable,  # 503 storage_not_ready: "try again in a few minutes"
    "WorkspaceHumanReviewDisabledError": LLMPermissionDenied,  # 400: workspace setting, a human must act
}

# The run-time fallback for an SDK class this module has not classified (a
# newer SDK than the tests ran against): its nearest listed ancestor decides,
# and where that is only a root class, the HTTP status does. The
# exhaustiveness test is the tripwire that makes us classify it on purpose;
# this keeps a user's run correct meanwhile (STYLE.md: a tripwire fails a
# test, never a user's run).
_ROOTS: frozenset[str] = frozenset({"AnthropicError", "APIError", "APIStatusError"})
_BY_STATUS: dict[int, type[LLMError]] = {
    400: LLMBadRequest, 401: LLMAuthError, 402: LLMSpendLimitReached, 403: LLMPermissionDenied,
    404: LLMNotFound, 408: LLMTimeout, 409: LLMUnavailable, 412: LLMBadRequest,
    413: LLMBadRequest, 422: LLMBadRequest, 429: LLMRateLimited, 431: LLMBadRequest,
    499: LLMTimeout, 501: LLMBadRequest, 504: LLMTimeout, 529: LLMOverloaded,
}


def _by_status(status: int | None) -> type[LLMError] | None:
    """Our class for an HTTP status alone (the SDK's own retry rule: 408, 409, 429, 5xx)."""
    if status is None:
        return None
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if 500 <= status < 600:
        return LLMUnavailable
    if 400 <= status < 500:
        return LLMBadRequest
    return None


@functools.cache
def _mapping() -> dict[type[BaseException], type[LLMError]]:
    """SDK class -> ours, resolved on first use: ``anthropic`` takes seconds to
    import, and ``import statecraft`` (the CLI) must not pay for it."""
    import anthropic

    table: dict[type[BaseException], type[LLMError]] = {
        getattr(anthropic, name): ours for name, ours in _BY_NAME.items() if hasattr(anthropic, name)
    }
    # The SDK lets the decoder's error escape when a 2xx body labelled JSON is
    # not JSON (a proxy's truncated answer): the API's fault, not the caller's.
    table[json.JSONDecodeError] = LLMProtocolError
    return table


@functools.cache
def sdk_errors() -> tuple[type[BaseException], ...]:
    """What the SDK call can raise that :func:`convert_error` converts: catch exactly these."""
    import anthropic

    return (anthropic.AnthropicError, json.JSONDecodeError)


def _our_class(sdk_class: type[BaseException], status: int | None = None) -> type[LLMError]:
    """The class of ours for ``sdk_class``.

    Its own entry; else its nearest listed ancestor's; where that ancestor is
    only a root (``APIStatusError``, …) or none is listed, the class the HTTP
    ``status`` implies; else :class:`LLMError` (not retryable: fail closed).
    """
    mapping = _mapping()
    for klass in sdk_class.__mro__:
        ours = mapping.get(klass)
        if ours is None:
            continue
        if klass is sdk_class or klass.__name__ not in _ROOTS:
            return ours
        return _by_status(status) or ours
    return _by_status(status) or LLMError


def convert_error(
    exc: BaseException,
    *,
    run_id: str | None = None,
    step: str | None = None,
    agent_name: str | None = None,
    model_id: str | None = None,
) -> LLMError:
    """Turn an ``anthropic`` SDK exception into ours. Pure; the caller raises it ``from exc``.

    The only conversion point (STYLE.md, "Errors"): use it as
    ``except sdk_errors() as exc: raise convert_error(exc, ...) from exc`` around
    the SDK call, nowhere else.

    Args:
        exc: what the SDK call raised, an instance of one of :func:`sdk_errors`.
        run_id, step, agent_name: where it happened.
        model_id: the model the call asked for.

    Returns:
        An :class:`LLMError` subclass instance whose ``str()`` is one line:
        ``<model>: <class summary> (HTTP <status> <type>, request <id>): <api message>``.
    """
    status: int | None = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        status = None
    ours = _our_class(type(exc), status)
    request_id = _str_or_none(getattr(exc, "request_id", None))
    api_type = _str_or_none(getattr(exc, "type", None))
    api_code = _str_or_none(getattr(exc, "error_code", None))
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    api_message = _str_or_none(getattr(exc, "api_message", None)) or str(exc)

    details = []
    if status is not None:
        details.append(f"HTTP {status}")
    if api_type:
        details.append(api_type)
    if api_code:
        details.append(api_code)
    if request_id:
        details.append(f"request {request_id}")
    where = f" ({', '.join(details)})" if details else ""
    text = " ".join(api_message.split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 1] + "…"
    message = f"{model_id or 'anthropic'}: {ours.summary}{where}: {text}"
    return ours(
        message,
        run_id=run_id,
        step=step,
        agent_name=agent_name,
        model_id=model_id,
        status_code=status,
        request_id=request_id,
        api_error_type=api_type,
        api_error_code=api_code,
        retry_after=_retry_after(headers),
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _retry_after(headers: Any) -> timedelta | None:
    # Same precedence as the SDK's own retry loop: the precise millisecond
    # header first, then whole seconds. HTTP-date values are ignored (the API
    # sends seconds); a missing or odd header means "no advice".
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            seconds = float(raw) * scale
        except (TypeError, ValueError):
            continue
        if 0 <= seconds < 24 * 3600:
            return timedelta(seconds=seconds)
    return None
