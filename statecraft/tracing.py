"""OpenTelemetry spans for runs, steps, attempts, LLM calls and tool calls; ``logging`` for the rest.

Why spans here, and why these: an operator debugging a slow or failing run
wants it in the tracing tool the rest of the service already reports to, as
one tree — the run (one ``advance``), each step, each attempt of its agent,
and inside an attempt the LLM calls and tool calls — with the names and
attributes of the OpenTelemetry GenAI semantic conventions, so that
dashboards built for any GenAI instrumentation work:

======================================  ==========================================  ======================
span                                    ``gen_ai.operation.name``                   made by
======================================  ==========================================  ======================
``invoke_workflow {machine}``           ``invoke_workflow``                         ``advance``/``resume``
``step {step}``                         —                                           each transition
``invoke_agent {agent}``                ``invoke_agent``                            each attempt, each fan-out branch attempt
``chat {model}``                        ``chat`` (``gen_ai.provider.name`` …)       ``ClaudeAgent``
``execute_tool {name}``                 ``execute_tool``                            ``ctx.once`` side effects
``statecraft.approve`` / ``.reject`` …  —                                           human decisions
======================================  ==========================================  ======================

plus ``statecraft.run_id``, ``statecraft.step``, ``statecraft.audit.seq``
(the ledger position of the event a span committed) and
``statecraft.event_type``, so a trace leads to its audit rows and back.

Only the ``opentelemetry-api`` package is used (the ``otel`` extra); without
it every function here is a no-op, and ``import statecraft`` never imports
it (it is imported on the first span). Without an SDK tracer provider set
by the application, no span is started at all (the API's no-op spans still
cost ~15 µs per step). Context crosses
into the threads and the event loop that agents run on
(statecraft/execution.py copies ``contextvars``), so an agent's own spans —
the ``anthropic`` SDK's included — nest under its attempt.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

__all__ = ["SpanHandle", "copy_context", "span"]

_SCOPE = "statecraft"


@functools.cache
def _trace_api() -> Any:
    """``opentelemetry.trace``, or ``None`` when the otel extra is not installed (spans are no-ops)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


_cached: tuple[Any, Any] = (None, None)  # (provider, our tracer from it)


def _tracer() -> Any:
    """Our tracer from the application's tracer provider; ``None`` when no SDK provider is set.

    Without a provider (the API's proxy, or its explicit no-op provider) a
    span would record nothing: skipping it saves ~15 µs per step (issue #11)
    and changes nothing a trace could show, since the current context (and
    any remote parent in it) is left as it is. Checked on every span, so a
    provider set after ``import statecraft`` is used from then on.
    """
    global _cached
    trace = _trace_api()
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    seen, tracer = _cached
    if seen is not provider:
        from importlib.metadata import PackageNotFoundError, version

        try:
            ours: str | None = version("statecraft")
        except PackageNotFoundError:
            ours = None
        tracer = provider.get_tracer(_SCOPE, ours)
        _cached = (provider, tracer)
    return tracer


class SpanHandle:
    """What ``with span(...) as s`` gives: set attributes and record a failure, on a span or on nothing."""

    __slots__ = ("_span",)

    def __init__(self, otel_span: Any) -> None:
        self._span = otel_span

    def set(self, **attributes: Any) -> None:
        """Set attributes (``None`` values are skipped; names with ``__`` become dots)."""
        if self._span is None:
            return
        for key, value in attributes.items():
            if value is not None:
                self._span.set_attribute(key.replace("__", "."), value)

    def set_many(self, attributes: Mapping[str, Any]) -> None:
        """Set dotted attribute names as given (``None`` values skipped)."""
        if self._span is None:
            return
        for key, value in attributes.items():
            if value is not None:
                self._span.set_attribute(key, value)

    def fail(self, error_type: str, message: str | None = None) -> None:
        """Mark the span as an error (``error.type``, status ERROR) without an exception object."""
        if self._span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        self._span.set_attribute("error.type", error_type)
        self._span.set_status(Status(StatusCode.ERROR, message))


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *, kind: str = "internal") -> Iterator[SpanHandle]:
    """A span around the block, the current span's child; a no-op without ``opentelemetry-api``.

    An exception escaping the block is recorded on the span (and re-raised).

    Args:
        name: the span name (module docstring's table).
        attributes: initial attributes; ``None`` values are skipped.
        kind: ``internal`` or ``client`` (an outgoing call, e.g. to an LLM API).
    """
    tracer = _tracer()
    if tracer is None:
        yield SpanHandle(None)
        return
    from opentelemetry.trace import SpanKind

    clean = {k: v for k, v in (attributes or {}).items() if v is not None}
    span_kind = SpanKind.CLIENT if kind == "client" else SpanKind.INTERNAL
    with tracer.start_as_current_span(name, attributes=clean, kind=span_kind) as otel_span:
        yield SpanHandle(otel_span)


def copy_context() -> contextvars.Context:
    """The calling thread's context (current span included), to run an agent in on another thread."""
    return contextvars.copy_context()
