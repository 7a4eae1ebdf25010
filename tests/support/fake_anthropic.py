"""A loopback stand-in of the Anthropic Messages API, for driving the real SDK offline.

``FakeAnthropic`` is a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` (a free
port) serving ``POST /v1/messages`` from a script: each request takes the next
scripted :class:`Reply` (FIFO). Replies are built with the helpers below, whose
bodies have the real API's shapes:

- :func:`tool_use_message` / :func:`json_message` / :func:`message` — a
  ``{"type": "message", ...}`` body with ``content``, ``stop_reason`` and
  ``usage`` (``input_tokens``, ``output_tokens``, cache counts);
- :func:`api_error` — ``{"type": "error", "error": {"type": ..., "message": ...}}``
  with its HTTP status (429 with ``retry-after``, 529, 500, 401, 400, 404, …);
- :func:`raw` — any bytes (garbage, truncated JSON).

A reply may be delayed (``delay_s``) to make the client time out. Every request
is recorded (:attr:`FakeAnthropic.requests`: method, path, headers, parsed
body) so tests can assert what the SDK sent. An unscripted request gets a 500
``api_error`` naming the problem, and :meth:`FakeAnthropic.assert_all_used`
catches leftover replies.

Use the ``fake_anthropic`` fixture::

    def test_x(fake_anthropic):
        fake_anthropic.push(tool_use_message({"kind": "contract"}, name="submit_triage"))
        client = fake_anthropic.client()       # anthropic.Anthropic, max_retries=0
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = [
    "FakeAnthropic",
    "Received",
    "Reply",
    "api_error",
    "fake_anthropic",
    "json_message",
    "message",
    "raw",
    "tool_use_message",
    "usage",
]

DEFAULT_MODEL = "claude-sonnet-4-6"
_ids = itertools.count(1)


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP response.

    Attributes:
        status: HTTP status code.
        body: a JSON-compatible value (sent as JSON) or ``bytes`` (sent as is).
        headers: extra response headers.
        delay_s: seconds to wait before answering (cut short when the server stops).
    """

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0

    def slow(self, delay_s: float) -> Reply:
        """This reply, sent after ``delay_s`` seconds."""
        return Reply(self.status, self.body, self.headers, delay_s)


@dataclass(frozen=True)
class Received:
    """One request the stand-in received.

    Attributes:
        method: ``POST``, …
        path: the request path, e.g. ``/v1/messages``.
        headers: header name (lower case) -> value.
        body: the parsed JSON body (``None`` when it was not JSON).
        at: when it arrived, ``time.time()`` seconds (comparable across processes).
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    at: float = field(default_factory=time.time)


def usage(
    input_tokens: int = 100,
    output_tokens: int = 20,
    *,
    cache_creation_input_tokens: int | None = None,
    cache_read_input_tokens: int | None = None,
    ephemeral_5m: int | None = None,
    ephemeral_1h: int | None = None,
) -> dict[str, Any]:
    """A ``usage`` block as the Messages API returns it."""
    out: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
    if cache_creation_input_tokens is not None:
        out["cache_creation_input_tokens"] = cache_creation_input_tokens
    if cache_read_input_tokens is not None:
        out["cache_read_input_tokens"] = cache_read_input_tokens
    if ephemeral_5m is not None or ephemeral_1h is not None:
        out["cache_creation"] = {
            "ephemeral_5m_input_tokens": ephemeral_5m or 0,
            "ephemeral_1h_input_tokens": ephemeral_1h or 0,
        }
    return out


def message(
    content: list[dict[str, Any]],
    *,
    model: str = DEFAULT_MODEL,
    stop_reason: str = "end_turn",
    usage_block: Mapping[str, Any] | None = None,
) -> Reply:
    """A 200 reply with a Messages API ``message`` body holding ``content``."""
    body = {
        "id": f"msg_fake{next(_ids):06d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": dict(usage_block) if usage_block is not None else usage(),
    }
    return Reply(200, body)


def tool_use_message(
    tool_input: Any,
    *,
    name: str,
    model: str = DEFAULT_MODEL,
    stop_reason: str = "tool_use",
    usage_block: Mapping[str, Any] | None = None,
) -> Reply:
    """A 200 reply whose answer is one ``tool_use`` block calling ``name`` with ``tool_input``."""
    block = {
        "type": "tool_use",
        "id": f"toolu_fake{next(_ids):06d}",
        "name": name,
        "input": tool_input,
    }
    return message([block], model=model, stop_reason=stop_reason, usage_block=usage_block)


def json_message(
    value: Any,
    *,
    model: str = DEFAULT_MODEL,
    stop_reason: str = "end_turn",
    usage_block: Mapping[str, Any] | None = None,
) -> Reply:
    """A 200 reply whose answer is one text block: ``value`` as JSON (structured outputs),
    or ``value`` itself when it is a ``str`` (to send text that is not JSON)."""
    text = value if isinstance(value, str) else json.dumps(value)
    return message(
        [{"type": "text", "text": text}], model=model, stop_reason=stop_reason, usage_block=usage_block
    )


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def api_error(
    status: int,
    message_text: str = "scripted error",
    *,
    error_type: str | None = None,
    error_code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An error reply with the API's error body, e.g. ``api_error(429, headers={"retry-after": "7"})``."""
    error: dict[str, Any] = {
        "type": error_type or _ERROR_TYPES.get(status, "api_error"),
        "message": message_text,
    }
    if error_code is not None:
        error["details"] = {"error_code": error_code}
    return Reply(status, {"type": "error", "error": error}, dict(headers or {}))


def raw(body: bytes, *, status: int = 200, content_type: str = "application/json") -> Reply:
    """A reply with an arbitrary body (garbage, truncated JSON, HTML from a proxy)."""
    return Reply(status, body, {"content-type": content_type})


class FakeAnthropic:
    """The stand-in server. Start with :meth:`start` (the fixture does), stop with :meth:`stop`."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ------------------------------------------------------------

    def push(self, *replies: Reply) -> FakeAnthropic:
        """Queue replies; each request consumes the next one."""
        with self._lock:
            self._replies.extend(replies)
        return self

    def assert_all_used(self) -> None:
        """Fail when scripted replies were never requested."""
        with self._lock:
            left = len(self._replies)
        assert left == 0, f"{left} scripted repl{'y' if left == 1 else 'ies'} never requested"

    @property
    def last(self) -> Received:
        """The last request received."""
        assert self.requests, "the stand-in received no request"
        return self.requests[-1]

    # -- serving --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: pass it as the SDK's ``base_url``."""
        assert self._server is not None, "FakeAnthropic is not started"
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def client(self, *, timeout: float = 5.0, api_key: str = "sk-ant-test") -> Any:
        """A real ``anthropic.Anthropic`` client pointed at the stand-in, SDK retries off."""
        import anthropic

        return anthropic.Anthropic(
            api_key=api_key, base_url=self.base_url, max_retries=0, timeout=timeout
        )

    def start(self) -> FakeAnthropic:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def do_POST(self) -> None:
                fake._handle(self)

            def do_GET(self) -> None:
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="fake-anthropic", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        data = handler.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(data) if data else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.requests.append(Received(handler.command, handler.path, headers, body))
            reply = self._replies.popleft() if self._replies else None
        if handler.command != "POST" or handler.path.split("?")[0] != "/v1/messages":
            reply = api_error(404, f"the stand-in serves POST /v1/messages, not {handler.command} {handler.path}")
        elif reply is None:
            reply = api_error(500, "the stand-in has no scripted reply for this request")
        if reply.delay_s and self._stopping.wait(reply.delay_s):
            return
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        try:
            handler.send_response(reply.status)
            extra = {k.lower(): v for k, v in reply.headers.items()}
            extra.setdefault("content-type", "application/json")
            extra.setdefault("request-id", f"req_fake{next(_ids):06d}")
            for name, value in extra.items():
                handler.send_header(name, value)
            handler.send_header("content-length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test); nothing to answer


@pytest.fixture
def fake_anthropic() -> Iterator[FakeAnthropic]:
    """A started :class:`FakeAnthropic`; stopped after the test."""
    fake = FakeAnthropic().start()
    try:
        yield fake
    finally:
        fake.stop()
