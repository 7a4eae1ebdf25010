"""Claude agents: one Messages API call per step, a validated structured result, an outcome.

A :class:`ClaudeAgent` is an ordinary agent, ``(state_view, ctx) -> Outcome``.
Each call:

1. renders one user message from the step's state view (JSON) and the run's
   original task (``ctx.task``, truncated to ``max_task_chars``: intent
   propagation) with the agent's versioned prompt template;
2. calls ``client.messages.create`` once, through the official ``anthropic``
   SDK with its own retries off (``max_retries=0``): retrying is the engine's
   job, under the step's retry policy;
3. records the tokens and their cost (:mod:`statecraft.agents.pricing`) with
   ``ctx.record_usage`` — also when the answer turns out to be unusable;
4. validates the structured answer against the agent's pydantic ``output``
   model, and hands it to ``decide(state_view, output, ctx)``, a plain function
   that returns the outcome (e.g. ``Goto("review", update={...})``).

Failures, by who can fix them:

- the API call fails (HTTP error, timeout, connection): raises an
  :class:`~statecraft.agents.errors.LLMError` subclass that says whether it is
  retryable (:mod:`statecraft.agents.errors`);
- the model answers but the answer does not validate: returns
  ``Fail(error_code="invalid_llm_output")`` with the precise reason — a model
  that produces garbage fails the run, it never crashes the engine;
- the model refuses (``stop_reason == "refusal"``): returns
  ``Fail(error_code="llm_refusal")``.

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
import hashlib
import json
import re
import weakref
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from string import Template
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from ..errors import DefinitionError
from ..outcomes import Fail, Outcome
from ..tracing import SpanHandle, span
from .base import StepContext, Usage
from .errors import LLMAuthError, LLMError, LLMProtocolError, _convert, _sdk_errors

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

    # -- what is sent ---------------------------------------------------------

    @property
    def prompt_digest(self) -> str:
        """SHA-256 (hex) of everything that shapes the model's answer except the input.

        Model, system prompt, template, output schema, structured-output mode,
        tool name, ``max_tokens`` and ``effort``. Pin it in a test next to
        ``prompt_version`` so that editing the prompt without bumping the
        version fails the build.
        """
        material = {
            "model": self.model,
            "system": self.system,
            "prompt": self.prompt,
            "schema": self.output_schema,
            "structured_output": self.structured_output,
            "tool_name": self.tool_name,
            "max_tokens": self.max_tokens,
            "effort": self.effort,
        }
        canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def render(self, state: Any, task: Any) -> str:
        """The user message for ``state`` (the step's view) and ``task`` (the run's input). Pure."""
        task_text = self._task_text(task)
        state_text = _state_json(state)
        identifiers = set(self._template.get_identifiers())
        blocks = []
        if "task" not in identifiers:
            blocks.append(f"<task>\n{task_text}\n</task>")
        if "state" not in identifiers:
            blocks.append(f"<state>\n{state_text}\n</state>")
        body = self._template.substitute(task=task_text, state=state_text)
        return "\n\n".join([*blocks, body]) if body.strip() else "\n\n".join(blocks)

    def request(self, state: Any, task: Any) -> dict[str, Any]:
        """The keyword arguments of ``messages.create`` for this input. Pure; for inspection."""
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "system": self.system,
            "messages": [{"role": "user", "content": self.render(state, task)}],
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

        Side effects: one HTTP request; ``ctx.record_usage`` once per answer.

        Raises:
            LLMError: the call failed (a subclass says which way and whether it
                is retryable); nothing was recorded.
            LLMProtocolError: the API answered with something that is not a
                Messages API response (retryable).
        """
        params = self.request(state, ctx.task)
        with self._chat_span(ctx) as chat:
            try:
                client = self._client if self._client is not None else self._build_client()
                response = client.messages.create(**params, timeout=self.timeout.total_seconds())
            except _sdk_errors() as exc:
                raise self._error(exc, ctx) from exc
            _note_response(chat, response)
        return self._conclude(response, state, ctx)

    def _chat_span(self, ctx: StepContext) -> AbstractContextManager[SpanHandle]:
        """The ``chat {model}`` client span of one Messages API call (OpenTelemetry GenAI conventions)."""
        return span(f"chat {self.model}", {
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": self.model_provider,
            "gen_ai.system": self.model_provider, "gen_ai.request.model": self.model,
            "gen_ai.request.max_tokens": self.max_tokens, "gen_ai.agent.name": self.agent_name,
            "statecraft.prompt_version": self.prompt_version, "statecraft.prompt_digest": self.prompt_digest,
            "statecraft.run_id": ctx.run_id, "statecraft.step": ctx.step,
        }, kind="client")

    def _error(self, exc: BaseException, ctx: StepContext) -> LLMError:
        return _convert(exc, run_id=ctx.run_id, step=ctx.step, agent_name=self.agent_name, model_id=self.model)

    def _conclude(self, response: Any, state: Any, ctx: StepContext) -> Outcome:
        """Record usage, validate the answer and decide; shared by the sync and async calls."""
        content = getattr(response, "content", None)
        if not isinstance(content, list):
            raise LLMProtocolError(
                f"{self.model}: response is not a Messages API response (no content list)",
                run_id=ctx.run_id,
                step=ctx.step,
                agent_name=self.agent_name,
                model_id=self.model,
                request_id=_request_id(response),
            )
        served_by = getattr(response, "model", None)
        model_id = served_by if isinstance(served_by, str) and served_by else self.model
        tokens = TokenCounts.from_usage(getattr(response, "usage", None) or {})
        ctx.record_usage(
            Usage(
                tokens_in=tokens.total_input,
                tokens_out=tokens.output,
                cost_micros=cost_micros(model_id, tokens, self.prices) or 0,
                model_provider=self.model_provider,
                model_id=model_id,
                prompt_version=self.prompt_version,
            )
        )

        stop_reason = getattr(response, "stop_reason", None)
        if stop_reason == "refusal":
            return Fail(
                _clip(f"{model_id} refused to answer (stop_reason=refusal)"),
                error_code="llm_refusal",
            )
        parsed = self._parse(content, stop_reason)
        if isinstance(parsed, Fail):
            return parsed
        return self.decide(state, parsed, ctx)

    def _parse(self, content: list[Any], stop_reason: Any) -> O | Fail:
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
                return _invalid(f"no {self.tool_name!r} tool call in the answer; got {kinds}{cut}")
            raw: Any = _field(blocks[0], "input")
        else:
            texts = [_field(b, "text") for b in content if _field(b, "type") == "text"]
            text = "".join(t for t in texts if isinstance(t, str)).strip()
            if not text:
                kinds = [str(_field(b, "type")) for b in content]
                return _invalid(f"no text in the answer; got {kinds}{cut}")
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                return _invalid(f"answer is not JSON: {exc.msg} at char {exc.pos}{cut}")
        try:
            return self.output.model_validate(raw)
        except ValidationError as exc:
            errors = exc.errors()
            first = errors[0]
            loc = ".".join(str(p) for p in first["loc"]) or "(root)"
            return _invalid(
                f"answer does not match {self.output.__name__}: {len(errors)} error(s); "
                f"first at {loc!r}: {first['msg']}{cut}"
            )

    def _build_client(self) -> Any:
        # Built on first use, not at construction: loading a machine (CLI
        # ``graph``, ``status``) must not need credentials. Cached afterwards so
        # connections are reused across steps.
        client = _anthropic().Anthropic(
            api_key=self._api_key,
            base_url=self._base_url,
            max_retries=0,
            timeout=self.timeout.total_seconds(),
        )
        # Without any credentials the SDK raises a bare TypeError per request,
        # which a retry policy would retry; say so once, as the auth error it is.
        # (_token_cache is the SDK's credentials-provider hook; if it is gone,
        # leave the judgement to the SDK.)
        if not (client.api_key or client.auth_token) and getattr(client, "_token_cache", ...) is None:
            raise LLMAuthError(
                f"{self.model}: authentication failed: no credentials; set ANTHROPIC_API_KEY "
                "(or pass api_key= or client= to the ClaudeAgent)",
                agent_name=self.agent_name,
                model_id=self.model,
            )
        self._client = client
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

        Raises:
            LLMError: the call failed (retryable or not, per its class).
            LLMProtocolError: the API answered with something that is not a Messages API response.
        """
        params = self.request(state, ctx.task)
        with self._chat_span(ctx) as chat:
            try:
                client = self._client if self._client is not None else self._async_client()
                response = await client.messages.create(**params, timeout=self.timeout.total_seconds())
            except _sdk_errors() as exc:
                raise self._error(exc, ctx) from exc
            _note_response(chat, response)
        return self._conclude(response, state, ctx)

    def _async_client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = _anthropic().AsyncAnthropic(
                api_key=self._api_key,
                base_url=self._base_url,
                max_retries=0,
                timeout=self.timeout.total_seconds(),
            )
            if not (client.api_key or client.auth_token) and getattr(client, "_token_cache", ...) is None:
                raise LLMAuthError(
                    f"{self.model}: authentication failed: no credentials; set ANTHROPIC_API_KEY "
                    "(or pass api_key= or client= to the AsyncClaudeAgent)",
                    agent_name=self.agent_name,
                    model_id=self.model,
                )
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


def _state_json(state: Any) -> str:
    if isinstance(state, BaseModel):
        data: Any = state.model_dump(mode="json")
    elif isinstance(state, Mapping):
        data = dict(state)
    else:
        data = state
    return json.dumps(data, ensure_ascii=False, sort_keys=True, indent=2, default=str)


def _field(block: Any, name: str) -> Any:
    if isinstance(block, Mapping):
        return block.get(name)
    return getattr(block, name, None)


def _request_id(response: Any) -> str | None:
    value = getattr(response, "_request_id", None)
    return value if isinstance(value, str) else None


def _invalid(reason: str) -> Fail:
    return Fail(_clip(reason), error_code="invalid_llm_output")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
