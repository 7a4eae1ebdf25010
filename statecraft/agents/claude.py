"""Claude agents: one Messages API call per step, a validated structured result, an outcome.

A :class:`ClaudeAgent` is an ordinary agent, ``(state_view, ctx) -> Outcome``.
Each call:

1. renders one user message from the step's state view (JSON) and the run's
   original task (``ctx.task``, truncated to ``max_task_chars``: intent
   propagation) with the agent's versioned prompt template;
2. calls ``client.messages.create`` once, through the official ``anthropic``
   SDK with its own retries off (``max_retries=0``): retrying is the engine's
   job, under the step's retry policy;
3. records the call **whole**, as its own ``agent.called`` event
   (``ctx.record_call``): the prompt's digest and body (a blob whose hash
   *is* the digest), the raw answer (a blob), ``stop_reason``, the model
   requested and the model that answered, tokens, their cost
   (:mod:`statecraft.agents.pricing`) and latency — also when the call fails
   (the requested model is kept) or the answer is unusable, and, with its
   estimated input tokens, when the attempt is abandoned at its timeout
   before the answer came (the request was billed all the same). The
   step's own event carries no usage of its own, so each call is counted
   once in the run's totals;
4. validates the structured answer against the agent's pydantic ``output``
   model, and hands it to ``decide(state_view, output, ctx)``, a plain function
   that returns the outcome (e.g. ``Goto("review", update={...})``).

In front of the call, optional controls (docs/agents.md): a context budget
(:mod:`~statecraft.agents.context`: cut what the policy allows, or fail
before sending), a rate limit (:mod:`~statecraft.agents.limits`: wait for a
slot shared by every run and process), a circuit breaker
(:mod:`~statecraft.agents.breaker`: fail fast while the API keeps failing),
a session (:mod:`~statecraft.agents.session`: the conversation so far), and
always the prompt registry (:mod:`~statecraft.agents.prompts`: a digest
changed under an unchanged ``prompt_version`` is flagged on the event).

Failures, by who can fix them:

- the API call fails (HTTP error, timeout, connection), or a control stops
  it before sending: raises an :class:`~statecraft.agents.errors.LLMError`
  subclass that says whether it is retryable (:mod:`statecraft.agents.errors`);
- the model answers but the answer does not validate: raises
  ``LLMInvalidOutput`` (``error_code="invalid_llm_output"``) with the precise
  reason — an attempt failure, so the step's retry policy
  (``retry_on_invalid_output``) and its error edge apply; a model that
  produces garbage never crashes the engine;
- the model refuses (``stop_reason == "refusal"``): returns
  ``Fail(error_code="llm_refusal")``, a decision, not an error.

Structured output is requested one of two ways (``structured_output=``):

- ``"json_schema"`` (default): the Messages API's structured outputs,
  ``output_config={"format": {"type": "json_schema", "schema": ...}}``; the
  answer is a JSON text block. Claude 4.5 models and later.
- ``"tool"``: one tool whose ``input_schema`` is the output model's JSON schema,
  forced with ``tool_choice={"type": "tool", "name": ...}``; the answer is that
  tool's input. For models without structured outputs. Forcing a tool is
  refused (HTTP 400) with thinking on, and always by Claude Sonnet 5.5,
  Opus 5.5 and Fable 5.1.

Example::

    class Triage(BaseModel):
        kind: Literal["contract", "invoice", "other"]
        reason: str

    def route(state, out: Triage, ctx):
        return Goto("legal" if out.kind == "contract" else "archive",
                    update={"kind": out.kind}, reason=out.reason)

    triage = ClaudeAgent(
        agent_name="triage", prompt_version="triage-v3",
        model="claude-haiku-4-5", system="You triage incoming documents.",
        prompt="Classify the document in <task>.", output=Triage, decide=route,
    )
    Step("triage", triage, next=["legal", "archive"], writes=["kind"],
         retry=RetryPolicy(max_attempts=4, initial_interval=timedelta(seconds=2)))
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import weakref
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import timedelta
from string import Template
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from .._time import format_utc
from ..errors import DefinitionError
from ..execution import AttemptAbandoned
from ..outcomes import Fail, Outcome
from ..store.blobs import blob_json, sha256_hex
from ..tracing import SpanHandle, span
from . import breaker as breakers
from .base import RecordedCall, StepContext, Usage
from .breaker import Admission, CircuitBreaker
from .context import ContextBudget, TokenCounter, estimate_tokens, fit
from .errors import (
    LLMAuthError,
    LLMContextOverBudget,
    LLMError,
    LLMInvalidOutput,
    LLMProtocolError,
    LLMTimeout,
    convert_error,
    sdk_errors,
)
from .limits import RateLimit, Reservation, reserve, settle
from .prompts import check_prompt
from .session import History, Session, open_history, remember

if TYPE_CHECKING:
    import anthropic

CLAUDE_EXTRA_HINT = "ClaudeAgent needs the anthropic SDK: pip install 'statecraft[claude]'"
"""The one-line refusal when the optional ``claude`` extra is not installed."""


def _anthropic() -> Any:
    """The ``anthropic`` module; ``DefinitionError`` naming the extra if it is not installed.

    Imported here rather than at module level so that a machine file that
    declares Claude steps fails when the machine is *built*, with one line
    naming the extra, instead of an ``ImportError`` traceback.
    """
    try:
        import anthropic
    except ImportError as exc:
        raise DefinitionError(CLAUDE_EXTRA_HINT) from exc
    return anthropic
from .pricing import ModelPrice, TokenCounts, cost_micros

__all__ = ["AsyncClaudeAgent", "ClaudeAgent", "StructuredOutput"]

O = TypeVar("O", bound=BaseModel)

StructuredOutput = Literal["json_schema", "tool"]

_PLACEHOLDERS = frozenset({"task", "state"})
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_REASON = 480


class ClaudeAgent(Generic[O]):
    """An agent that asks Claude for one structured result and turns it into an outcome.

    Args:
        agent_name: stable name, recorded in audit events (``agent_name``).
        prompt_version: version of ``system`` + ``prompt`` + ``output``; bump it
            whenever one of them changes (``prompt_version`` column; part of the
            machine digest). :attr:`prompt_digest` fingerprints the real content.
        model: Claude model id, e.g. ``claude-sonnet-4-5`` (alias or dated id).
        system: the system prompt (sent as is).
        prompt: the user-message template (:class:`string.Template` syntax). It
            may place ``$task`` (the run's task) and ``$state`` (the state view
            as JSON); whichever it does not place is put before it in a
            ``<task>`` / ``<state>`` block, so the model always sees both.
            ``$$`` is a literal ``$``.
        output: pydantic model of the structured result.
        decide: ``(state_view, output, ctx) -> Outcome``; pure deciding, no I/O.
        agent_version: version of the agent's code (``decide``), audited.
        max_tokens: the response's token limit (``max_tokens``).
        structured_output: ``"json_schema"`` (default) or ``"tool"`` (see module doc).
        tool_name: the tool's name in ``"tool"`` mode (default ``submit_<output name>``).
        effort: ``output_config.effort`` (``low`` … ``max``) for models that take it.
        max_task_chars: characters of the task sent at most (a marker notes the
            cut); ``None`` sends it whole.
        timeout: per-request HTTP timeout. The step's ``timeout`` bounds the
            whole attempt; this bounds the one request.
        prices: price table overriding
            :data:`~statecraft.agents.pricing.DEFAULT_PRICES` (keys: model
            families or exact ids). Unknown models cost 0 (one warning logged).
        client: an ``anthropic.Anthropic`` client to use (tests, proxies). It
            should be built with ``max_retries=0``. Default: one is built on first
            use from ``api_key`` / ``base_url``, else the SDK's environment
            (``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``, …).
        api_key: API key for the built client.
        base_url: API base URL for the built client.
        rate_limit: wait for a slot of this limit before each call
            (statecraft/agents/limits.py); shared by every run and process
            on the engine's database.
        breaker: fail fast while this circuit breaker is open
            (statecraft/agents/breaker.py).
        context_budget: most input tokens per call, and what may be cut to
            stay within it (statecraft/agents/context.py).
        session: keep a conversation across turns and runs
            (statecraft/agents/session.py).
        token_counter: ``(request) -> input tokens`` for the budget, the
            limiter and abandoned calls; default
            :func:`~statecraft.agents.context.estimate_tokens` (conservative).

    Raises:
        DefinitionError: an argument is invalid (at construction, not at run time).
    """

    model_provider = "anthropic"

    def __init__(
        self,
        *,
        agent_name: str,
        prompt_version: str,
        model: str,
        system: str,
        prompt: str,
        output: type[O],
        decide: Callable[[Any, O, StepContext], Outcome],
        agent_version: str = "1",
        max_tokens: int = 1024,
        structured_output: StructuredOutput = "json_schema",
        tool_name: str | None = None,
        effort: str | None = None,
        max_task_chars: int | None = 100_000,
        timeout: timedelta = timedelta(minutes=10),
        prices: Mapping[str, ModelPrice] | None = None,
        client: anthropic.Anthropic | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        rate_limit: RateLimit | None = None,
        breaker: CircuitBreaker | None = None,
        context_budget: ContextBudget | None = None,
        session: Session | None = None,
        token_counter: TokenCounter | None = None,
    ) -> None:
        anthropic = _anthropic()
        problems: list[str] = []
        for label, value in (
            ("agent_name", agent_name),
            ("prompt_version", prompt_version),
            ("agent_version", agent_version),
            ("model", model),
        ):
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{label} must be a non-empty string")
        if not isinstance(system, str):
            problems.append("system must be a string")
        template = Template(prompt) if isinstance(prompt, str) else None
        if template is None:
            problems.append("prompt must be a string")
        elif not template.is_valid():
            problems.append("prompt is not a valid string.Template (use $$ for a literal $)")
        else:
            unknown = set(template.get_identifiers()) - _PLACEHOLDERS
            if unknown:
                problems.append(
                    f"prompt uses unknown placeholders {sorted(unknown)}; "
                    f"available: {sorted(_PLACEHOLDERS)}"
                )
        if not (isinstance(output, type) and issubclass(output, BaseModel)):
            problems.append("output must be a pydantic BaseModel subclass")
        if not callable(decide):
            problems.append("decide must be callable")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            problems.append("max_tokens must be a positive integer")
        if structured_output not in ("json_schema", "tool"):
            problems.append("structured_output must be 'json_schema' or 'tool'")
        if structured_output == "json_schema" and not hasattr(anthropic, "transform_schema"):
            problems.append(
                "structured_output='json_schema' needs an anthropic SDK with structured outputs; "
                "upgrade anthropic or use structured_output='tool'"
            )
        if max_task_chars is not None and (not isinstance(max_task_chars, int) or max_task_chars < 0):
            problems.append("max_task_chars must be a non-negative integer or None")
        if not isinstance(timeout, timedelta) or timeout <= timedelta(0):
            problems.append("timeout must be a positive timedelta")
        controls: tuple[tuple[str, object, type], ...] = (
            ("rate_limit", rate_limit, RateLimit), ("breaker", breaker, CircuitBreaker),
            ("context_budget", context_budget, ContextBudget), ("session", session, Session),
        )
        for label, control, kind in controls:
            if control is not None and not isinstance(control, kind):
                problems.append(f"{label} must be a {kind.__name__} or None")
        if token_counter is not None and not callable(token_counter):
            problems.append("token_counter must be callable or None")
        if problems:
            raise DefinitionError(
                f"ClaudeAgent {agent_name!r} is invalid: " + "; ".join(problems)
            )
        assert template is not None

        self.agent_name = agent_name
        self.agent_version = agent_version
        self.prompt_version = prompt_version
        self.model = model
        self.system = system
        self.prompt = prompt
        self.output = output
        self.decide = decide
        self.max_tokens = max_tokens
        self.structured_output: StructuredOutput = structured_output
        self.tool_name = tool_name or "submit_" + _snake(output.__name__)
        if not _TOOL_NAME.match(self.tool_name):
            raise DefinitionError(
                f"ClaudeAgent {agent_name!r}: tool_name {self.tool_name!r} must match {_TOOL_NAME.pattern}"
            )
        self.effort = effort
        self.max_task_chars = max_task_chars
        self.timeout = timeout
        self.prices = prices
        self._template = template
        self._client = client
        self._api_key = api_key
        self._base_url = base_url
        self.output_schema: dict[str, Any] = output.model_json_schema()
        self._format_schema: dict[str, Any] | None = (
            anthropic.transform_schema(self.output_schema) if structured_output == "json_schema" else None
        )
        description = (output.__doc__ or "").strip()
        self._tool_description = description or f"Record the {output.__name__} result."
        self.rate_limit = rate_limit
        self.breaker = breaker
        self.context_budget = context_budget
        self.session = session
        self.count_tokens: TokenCounter = token_counter or estimate_tokens
        self.limiter_key = (rate_limit.key if rate_limit and rate_limit.key else None) or f"anthropic:{model}"
        self.breaker_name = (breaker.name if breaker and breaker.name else None) or f"anthropic:{model}"

    # -- what is sent ---------------------------------------------------------

    @property
    def prompt_digest(self) -> str:
        """SHA-256 (hex) of everything that shapes the model's answer except the input.

        Model, system prompt, template, output schema, structured-output mode,
        tool name, ``max_tokens`` and ``effort``: :meth:`prompt_material`.
        It is also the hash of the blob each call's ``agent.called`` event
        stores as its input (``input_sha256``), so the prompt's body is in
        the ledger once, however many calls use it. Pin it in a test next to
        ``prompt_version`` so that editing the prompt without bumping the
        version fails the build; at run time such an edit is flagged on the
        calls' events (statecraft/agents/prompts.py).
        """
        return sha256_hex(blob_json(self.prompt_material()))

    def prompt_material(self) -> dict[str, Any]:
        """The prompt as data (what :attr:`prompt_digest` hashes; the body of each call's input blob). Pure."""
        return {
            "model": self.model,
            "system": self.system,
            "prompt": self.prompt,
            "schema": self.output_schema,
            "structured_output": self.structured_output,
            "tool_name": self.tool_name,
            "max_tokens": self.max_tokens,
            "effort": self.effort,
        }

    def render(self, state: Any, task: Any) -> str:
        """The user message for ``state`` (the step's view) and ``task`` (the run's input). Pure."""
        return self._render(self._task_text(task), _state_data(state))

    def _render(self, task_text: str, state_data: Any) -> str:
        state_text = json.dumps(state_data, ensure_ascii=False, sort_keys=True, indent=2, default=str)
        identifiers = set(self._template.get_identifiers())
        blocks = []
        if "task" not in identifiers:
            blocks.append(f"<task>\n{task_text}\n</task>")
        if "state" not in identifiers:
            blocks.append(f"<state>\n{state_text}\n</state>")
        body = self._template.substitute(task=task_text, state=state_text)
        return "\n\n".join([*blocks, body]) if body.strip() else "\n\n".join(blocks)

    def request(self, state: Any, task: Any) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for this input (no session, no budget). Pure; for inspection."""
        return self._params(self.render(state, task), None)

    def _params(self, user_text: str, history: History | None) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": self.system if history is None else history.system(self.system),
            "messages": (
                [{"role": "user", "content": user_text}] if history is None else history.messages(user_text)
            ),
        }
        output_config: dict[str, Any] = {}
        if self.effort is not None:
            output_config["effort"] = self.effort
        if self.structured_output == "json_schema":
            output_config["format"] = {"type": "json_schema", "schema": self._format_schema}
        else:
            params["tools"] = [
                {
                    "name": self.tool_name,
                    "description": self._tool_description,
                    "input_schema": self.output_schema,
                }
            ]
            params["tool_choice"] = {"type": "tool", "name": self.tool_name}
        if output_config:
            params["output_config"] = output_config
        return params

    # -- the call -------------------------------------------------------------

    def __call__(self, state: Any, ctx: StepContext, /) -> Outcome:
        """Call Claude once for this step and decide the outcome.

        Side effects: at most one HTTP request; one ``agent.called`` record
        (``ctx.record_call``) for it; the controls' bookkeeping in the
        engine's database (module docstring).

        Raises:
            LLMError: the call failed, or a control stopped it before sending
                (a subclass says which way and whether it is retryable).
            LLMInvalidOutput: the answer does not validate.
            LLMProtocolError: the API answered with something that is not a
                Messages API response (retryable).
        """
        client = self._client if self._client is not None else self._build_client()
        call = self._prepare(state, ctx)
        wait_s = self._reserve(ctx, call)
        if wait_s > 0:
            time.sleep(wait_s)
            if ctx.abandoned:
                # Abandoned at its timeout while waiting (this thread is no longer
                # waited for): sending now would be a billed call nobody reads.
                raise AttemptAbandoned("not sent: the attempt was abandoned while waiting for a rate-limit slot")
        self._admit(ctx, call)
        with self._chat_span(ctx) as chat:
            try:
                response = client.messages.create(**call.params, timeout=self.timeout.total_seconds())
            except sdk_errors() as exc:
                raise self._error(exc, ctx, call) from exc
            except Exception as exc:
                self._failed(ctx, call, exc)
                raise
            _note_response(chat, response)
        return self._conclude(response, state, ctx, call)

    def _chat_span(self, ctx: StepContext) -> AbstractContextManager[SpanHandle]:
        """The ``chat {model}`` client span of one Messages API call (OpenTelemetry GenAI conventions)."""
        return span(f"chat {self.model}", {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": self.model_provider,
            "gen_ai.system": self.model_provider, "gen_ai.request.model": self.model,
            "gen_ai.request.max_tokens": self.max_tokens, "gen_ai.agent.name": self.agent_name,
            "statecraft.prompt_version": self.prompt_version, "statecraft.prompt_digest": self.prompt_digest,
            "statecraft.run_id": ctx.run_id, "statecraft.step": ctx.step,
        }, kind="client")

    def _error(self, exc: BaseException, ctx: StepContext, call: _Call | None = None) -> LLMError:
        """The SDK error as ours; with ``call``, also the failed call's record and the controls' bookkeeping."""
        error = convert_error(exc, run_id=ctx.run_id, step=ctx.step, agent_name=self.agent_name, model_id=self.model)
        if call is not None:
            self._failed(ctx, call, error)
        return error

    # -- before sending: the controls ---------------------------------------------

    def _prepare(self, state: Any, ctx: StepContext) -> _Call:
        """Build the request: session history, context budget, prompt registry, breaker check.

        Blocking (database reads; a session compaction writes).

        Raises:
            LLMContextOverBudget: over the budget after every declared cut; not sent.
            LLMCircuitOpen: the breaker is open and cooling down; not sent.
        """
        history = None
        if self.session is not None:
            count = self.count_tokens
            history = open_history(
                self.session, state, ctx, agent_name=self.agent_name, agent_version=self.agent_version,
                count=lambda text: count({"messages": [{"role": "user", "content": text}]}),
            )

        def build(task_text: str, state_data: Any) -> dict[str, Any]:
            return self._params(self._render(task_text, state_data), history)

        fitted = fit(self.context_budget, self.count_tokens, build, self._task_text(ctx.task), _state_data(state))
        digest = self.prompt_digest
        payload: dict[str, Any] = {
            "prompt_digest": digest,
            "request_sha256": sha256_hex(blob_json(fitted.params)),
            "model_requested": self.model,
            "input_tokens_estimated": fitted.tokens,
        }
        if self.context_budget is not None:
            payload["context"] = {
                "budget_tokens": self.context_budget.max_input_tokens, "tokens_before": fitted.tokens_before,
                "tokens_sent": fitted.tokens, "cuts": [c.describe() for c in fitted.cuts],
            }
        if history is not None:
            payload["session"] = history.describe()
        if not fitted.fits:
            assert self.context_budget is not None
            cut = ", ".join(c.part for c in fitted.cuts) or "nothing (the policy allows no cut)"
            raise LLMContextOverBudget(
                f"{self.model}: input of ~{fitted.tokens} tokens is over the context budget of "
                f"{self.context_budget.max_input_tokens} after cutting {cut}; not sent",
                budget_tokens=self.context_budget.max_input_tokens, estimated_tokens=fitted.tokens,
                run_id=ctx.run_id, step=ctx.step, agent_name=self.agent_name, model_id=self.model,
            )
        payload.update(check_prompt(
            ctx.database, self.agent_name, self.prompt_version, digest, format_utc(ctx.now()), ctx.run_id,
        ).payload())
        if self.breaker is not None:
            breakers.check(self.breaker, self.breaker_name, ctx.database, ctx.now())
        user_text = fitted.params["messages"][-1]["content"]
        return _Call(fitted.params, user_text, fitted.tokens, payload, history)

    def _reserve(self, ctx: StepContext, call: _Call) -> float:
        """Reserve a rate-limit slot; the seconds to wait before sending (0 without a limit).

        Raises:
            LLMRateLimitWait: the wait would exceed the limit's ``max_wait``; not sent.
        """
        if self.rate_limit is None:
            return 0.0
        call.reservation = reserve(self.rate_limit, self.limiter_key, call.estimated, ctx.database)
        call.payload["rate_limit"] = {"key": self.limiter_key, "waited_ms": call.reservation.waited_ms}
        return call.reservation.wait_us / 1_000_000

    def _admit(self, ctx: StepContext, call: _Call) -> None:
        """Pass the breaker, then record the call as in flight (what an abandoned attempt keeps).

        Raises:
            LLMCircuitOpen: the breaker opened meanwhile, or another call is its probe; not sent.
        """
        if self.breaker is not None:
            call.admission = breakers.admit(
                self.breaker, self.breaker_name, ctx.database, ctx.now(),
                self.breaker.probe_timeout or self.timeout, (ctx.run_id, ctx.step),
            )
            if call.admission.probe:
                call.payload["breaker_probe"] = True
        call.started = time.perf_counter()
        call.finish = ctx.start_call(self._record(
            ctx, call, outcome="timeout", usage=self._estimated_usage(call), error_code="timeout",
            reason="no answer before the attempt was abandoned; input tokens estimated",
            extra={"usage_estimated": True},
        ))

    # -- after the call -------------------------------------------------------------

    def _conclude(self, response: Any, state: Any, ctx: StepContext, call: _Call) -> Outcome:
        """Record the call, validate the answer and decide; shared by the sync and async calls.

        Blocking (the controls' bookkeeping; a session exchange is written).
        """
        content = getattr(response, "content", None)
        if not isinstance(content, list):
            error = LLMProtocolError(
                f"{self.model}: response is not a Messages API response (no content list)",
                run_id=ctx.run_id,
                step=ctx.step,
                agent_name=self.agent_name,
                model_id=self.model,
                request_id=_request_id(response),
            )
            self._failed(ctx, call, error)
            raise error
        served_by = getattr(response, "model", None)
        model_id = served_by if isinstance(served_by, str) and served_by else self.model
        tokens = TokenCounts.from_usage(getattr(response, "usage", None) or {})
        usage = Usage(
            tokens_in=tokens.total_input,
            tokens_out=tokens.output,
            cost_micros=cost_micros(model_id, tokens, self.prices) or 0,
            model_provider=self.model_provider,
            model_id=model_id,
            prompt_version=self.prompt_version,
        )
        stop_reason = getattr(response, "stop_reason", None)
        answered = {
            "model_answered": served_by if isinstance(served_by, str) else None,
            "stop_reason": stop_reason if isinstance(stop_reason, str) else None,
            "request_id": _request_id(response),
            "response_id": _str(getattr(response, "id", None)),
        }
        self._settle(ctx, call, tokens.total_input + tokens.output, None)
        raw = _raw(response)

        def finish(outcome: str, error_code: str | None = None, reason: str | None = None) -> None:
            assert call.finish is not None
            call.finish(self._record(ctx, call, outcome=outcome, usage=usage, error_code=error_code,
                                     reason=reason, output=raw, extra=answered))

        if stop_reason == "refusal":
            finish("failure", "llm_refusal", f"{model_id} refused to answer (stop_reason=refusal)")
            return Fail(
                _clip(f"{model_id} refused to answer (stop_reason=refusal)"),
                error_code="llm_refusal",
            )
        parsed = self._parse(content, stop_reason)
        if isinstance(parsed, str):
            finish("failure", LLMInvalidOutput.error_code, parsed)
            raise LLMInvalidOutput(
                _clip(f"{model_id}: {parsed}"), stop_reason=answered["stop_reason"], run_id=ctx.run_id,
                step=ctx.step, agent_name=self.agent_name, model_id=model_id, request_id=answered["request_id"],
            )
        finish("success")
        if call.history is not None:
            remember(
                call.history, ctx, call.user_text, parsed.model_dump(mode="json"), agent_name=self.agent_name,
                agent_version=self.agent_version, tokens=tokens.output,
            )
        return self.decide(state, parsed, ctx)

    def _failed(self, ctx: StepContext, call: _Call, error: BaseException) -> None:
        """Record a call that got no usable answer, and tell the controls.

        A timeout without any answer keeps the estimated input tokens (the
        request was sent, and is billed); an HTTP error answer used none.
        """
        if call.finish is None:
            return  # never sent
        no_answer = isinstance(error, LLMTimeout) and error.status_code is None
        extra: dict[str, Any] = {}
        if isinstance(error, LLMError):
            extra = {"status_code": error.status_code, "request_id": error.request_id,
                     "api_error_type": error.api_error_type}
        if no_answer:
            extra["usage_estimated"] = True
        usage = self._estimated_usage(call) if no_answer else Usage(
            model_provider=self.model_provider, model_id=self.model, prompt_version=self.prompt_version,
        )
        code = getattr(error, "error_code", None)
        call.finish(self._record(
            ctx, call, outcome="timeout" if isinstance(error, LLMTimeout) else "failure", usage=usage,
            error_code=code if isinstance(code, str) else "agent_error",
            reason=f"{type(error).__name__}: {error}", extra=extra,
        ))
        self._settle(ctx, call, call.estimated if no_answer else 0, error)

    def _settle(self, ctx: StepContext, call: _Call, used_tokens: int, error: BaseException | None) -> None:
        """Tell the limiter what the call used and the breaker how it ended.

        ``error`` ``None``: the API answered. An exception that is not an
        ``LLMError`` (a bug, an SDK surprise) says nothing about the API's
        health, so the breaker is not told (a probe's lease then runs out).
        """
        if self.rate_limit is not None and call.reservation is not None:
            settle(self.rate_limit, call.reservation, used_tokens, ctx.database)
        if self.breaker is not None and call.admission is not None and (error is None or isinstance(error, LLMError)):
            breakers.record(self.breaker, call.admission, ctx.database, ctx.now(), error, (ctx.run_id, ctx.step))

    def _estimated_usage(self, call: _Call) -> Usage:
        return Usage(
            tokens_in=call.estimated,
            cost_micros=cost_micros(self.model, TokenCounts(input=call.estimated), self.prices) or 0,
            model_provider=self.model_provider,
            model_id=self.model,
            prompt_version=self.prompt_version,
        )

    def _record(
        self, ctx: StepContext, call: _Call, *, outcome: str, usage: Usage, error_code: str | None = None,
        reason: str | None = None, output: Any = None, extra: Mapping[str, Any] | None = None,
    ) -> RecordedCall:
        """The call's ``agent.called`` record: prompt blob in, raw answer out, the detail in the payload."""
        payload = {**call.payload, **{k: v for k, v in (extra or {}).items() if v is not None}}
        return RecordedCall(
            event_type="agent.called",
            name=self.agent_name,
            version=self.agent_version,
            outcome=outcome,
            reason=None if reason is None else _clip(reason),
            error_code=error_code,
            latency_ms=int((time.perf_counter() - call.started) * 1000),
            attempt=ctx.attempt,
            usage=usage,
            input=self.prompt_material(),
            output=output,
            payload=payload,
        )

    def _parse(self, content: list[Any], stop_reason: Any) -> O | str:
        """The validated result, or why the answer does not validate."""
        cut = (
            f" (stopped at max_tokens={self.max_tokens}; raise max_tokens)"
            if stop_reason == "max_tokens"
            else f" (stop_reason={stop_reason})"
        )
        if self.structured_output == "tool":
            blocks = [
                b
                for b in content
                if _field(b, "type") == "tool_use" and _field(b, "name") == self.tool_name
            ]
            if not blocks:
                kinds = [str(_field(b, "type")) for b in content]
                return f"no {self.tool_name!r} tool call in the answer; got {kinds}{cut}"
            raw: Any = _field(blocks[0], "input")
        else:
            texts = [_field(b, "text") for b in content if _field(b, "type") == "text"]
            text = "".join(t for t in texts if isinstance(t, str)).strip()
            if not text:
                kinds = [str(_field(b, "type")) for b in content]
                return f"no text in the answer; got {kinds}{cut}"
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                return f"answer is not JSON: {exc.msg} at char {exc.pos}{cut}"
        try:
            return self.output.model_validate(raw)
        except ValidationError as exc:
            errors = exc.errors()
            first = errors[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(root)"
            return (
                f"answer does not match {self.output.__name__}: {len(errors)} error(s); "
                f"first at {loc!r}: {first['msg']}{cut}"
            )

    def _build_client(self) -> Any:
        # Built on first use, not at construction: loading a machine (CLI
        # ``graph``, ``status``) must not need credentials. Cached afterwards so
        # connections are reused across steps.
        self._client = self._new_client("Anthropic")
        return self._client

    def _new_client(self, kind: str) -> Any:
        """A new SDK client of class ``kind`` (``Anthropic`` or ``AsyncAnthropic``), SDK retries off.

        Raises:
            LLMAuthError: no credentials at all. Without any the SDK raises a
                bare TypeError per request, which a retry policy would retry;
                say so once, as the auth error it is. (``_token_cache`` is the
                SDK's credentials-provider hook; if it is gone, the judgement
                is left to the SDK.)
        """
        client = getattr(_anthropic(), kind)(
            api_key=self._api_key,
            base_url=self._base_url,
            max_retries=0,
            timeout=self.timeout.total_seconds(),
        )
        if not (client.api_key or client.auth_token) and getattr(client, "_token_cache", ...) is None:
            raise LLMAuthError(
                f"{self.model}: authentication failed: no credentials; set ANTHROPIC_API_KEY "
                f"(or pass api_key= or client= to the {type(self).__name__})",
                agent_name=self.agent_name,
                model_id=self.model,
            )
        return client

    def _task_text(self, task: Any) -> str:
        if task is None:
            text = "(no task)"
        elif isinstance(task, str):
            text = task
        else:
            text = json.dumps(task, ensure_ascii=False, sort_keys=True, indent=2, default=str)
        limit = self.max_task_chars
        if limit is not None and len(text) > limit:
            text = (
                text[:limit]
                + f"\n[… task truncated by statecraft: {len(text) - limit} of {len(text)} characters omitted]"
            )
        return text

    def __repr__(self) -> str:
        return (
            f"<ClaudeAgent {self.agent_name} v{self.agent_version} model={self.model} "
            f"prompt={self.prompt_version}>"
        )


class AsyncClaudeAgent(ClaudeAgent[O]):
    """A :class:`ClaudeAgent` whose call is a coroutine, through ``anthropic.AsyncAnthropic``.

    Same arguments, request, validation, usage and errors as ``ClaudeAgent``;
    the engine awaits it (statecraft/execution.py): ``AsyncEngine`` on the
    service's loop, ``Engine`` on the process's event loop, so no thread
    waits on the HTTP call, and a step timeout cancels the request. One
    ``AsyncAnthropic`` client per event loop (an async client's connection
    pool belongs to the loop that opened it), built on first use; pass
    ``client=`` an ``AsyncAnthropic`` to use your own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._async_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    async def __call__(self, state: Any, ctx: StepContext, /) -> Outcome:  # type: ignore[override]
        """Call Claude once for this step and decide the outcome (awaitable).

        The controls' database work runs in a worker thread, and a rate-limit
        wait is ``asyncio.sleep``: the event loop is never blocked. Cancelled
        at the step's timeout, the call keeps its in-flight record (estimated
        input tokens: the request was billed).

        Raises:
            LLMError: the call failed, or a control stopped it before sending.
            LLMInvalidOutput: the answer does not validate.
            LLMProtocolError: the API answered with something that is not a Messages API response.
        """
        client = self._client if self._client is not None else self._async_client()
        call = await asyncio.to_thread(self._prepare, state, ctx)
        wait_s = await asyncio.to_thread(self._reserve, ctx, call)
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        await asyncio.to_thread(self._admit, ctx, call)
        with self._chat_span(ctx) as chat:
            try:
                response = await client.messages.create(**call.params, timeout=self.timeout.total_seconds())
            except sdk_errors() as exc:
                raise self._error(exc, ctx, call) from exc
            except Exception as exc:
                self._failed(ctx, call, exc)
                raise
            _note_response(chat, response)
        return await asyncio.to_thread(self._conclude, response, state, ctx, call)

    def _async_client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._new_client("AsyncAnthropic")
            self._async_clients[loop] = client
        return client


def _note_response(chat: SpanHandle, response: Any) -> None:
    usage = getattr(response, "usage", None)
    stop = getattr(response, "stop_reason", None)
    chat.set_many({
        "gen_ai.response.model": getattr(response, "model", None),
        "gen_ai.response.id": getattr(response, "id", None),
        "gen_ai.response.finish_reasons": [stop] if isinstance(stop, str) else None,
        "gen_ai.usage.input_tokens": getattr(usage, "input_tokens", None),
        "gen_ai.usage.output_tokens": getattr(usage, "output_tokens", None),
    })


def _state_data(state: Any) -> Any:
    """The state view as JSON-compatible data (what the prompt shows as ``<state>``)."""
    if isinstance(state, BaseModel):
        return state.model_dump(mode="json")
    if isinstance(state, Mapping):
        return dict(state)
    return state


def _field(block: Any, name: str) -> Any:
    if isinstance(block, Mapping):
        return block.get(name)
    return getattr(block, name, None)


def _request_id(response: Any) -> str | None:
    value = getattr(response, "_request_id", None)
    return value if isinstance(value, str) else None


def _raw(response: Any) -> Any:
    """The answer as the API sent it (JSON-compatible), for the call's output blob."""
    dump = getattr(response, "model_dump", None)
    if callable(dump):
        try:
            return dump(mode="json")
        except Exception:  # a stand-in object or a future SDK shape: keep what can be kept
            pass
    return {"repr": repr(response)[:2000]}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass
class _Call:
    """One call in the making: the request, what the controls decided, and its in-flight record."""

    params: dict[str, Any]
    user_text: str
    estimated: int  # input tokens, as counted before sending
    payload: dict[str, Any]  # audit detail shared by every record of the call
    history: History | None
    reservation: Reservation | None = None
    admission: Admission | None = None
    started: float = 0.0
    finish: Callable[[RecordedCall], None] | None = None


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
