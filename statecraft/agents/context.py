"""Context budgeting: a per-call input-token budget, met by cutting what a declared policy allows.

Why a budget per call, before sending: a run's ``Budget(max_tokens=...)``
stops a run *after* the call that crossed it; a single call fed an
unexpectedly large task (a 400-page contract) can cost more than the whole
run was meant to, or exceed the model's context window and be refused after
the request was built and sent. So a :class:`ContextBudget` bounds the
input of each call, and the call is measured *before* it is sent.

Why a declared policy: what may be cut without changing the meaning of the
task is a decision about the workflow, not something to leave to a
truncation heuristic. ``cut`` lists, in order, what may give way: ``"task"``
(the run's task text, cut from the end) and ``"state.FIELD"`` (a field of
the step's state view: a string is cut from the end, anything else is
replaced by a marker). Each is cut only as far as needed; every cut is
recorded on the call's ``agent.called`` event (``payload.context``). If the
input is still over the budget after every declared cut, the call fails
before sending (``LLMContextOverBudget``, ``error_code``
``context_over_budget``, not retryable).

Why an estimate: counting exactly needs the provider's tokenizer, which is
not public (Anthropic offers a counting endpoint, a request of its own).
:func:`estimate_tokens` counts UTF-8 bytes / 3 of every text the request
carries, which for English and code over-counts Claude's tokenizer by
roughly a fifth: the budget errs on the safe side. Pass your own
``token_counter`` to a ``ClaudeAgent`` for exact counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import DefinitionError

__all__ = ["ContextBudget", "Cut", "Fitted", "TokenCounter", "estimate_tokens", "fit"]

TokenCounter = Callable[[Mapping[str, Any]], int]
"""``(messages.create keyword arguments) -> input tokens``."""

_BYTES_PER_TOKEN = 3
_PER_MESSAGE = 4  # role and framing tokens of each message
OMITTED = "[omitted by statecraft: context budget]"


def estimate_tokens(params: Mapping[str, Any]) -> int:
    """A conservative estimate of a Messages API request's input tokens. Pure.

    ``ceil(UTF-8 bytes / 3)`` of the system prompt, every message's text and
    the JSON of tools and output format, plus 4 tokens per message.

    Args:
        params: the keyword arguments of ``messages.create``.

    Returns:
        Estimated input tokens (an integer >= 0).
    """
    size = len(_text(params.get("system")).encode())
    messages = params.get("messages") or []
    for message in messages:
        size += len(_text(message.get("content") if isinstance(message, Mapping) else message).encode())
    for key in ("tools", "output_config"):
        if params.get(key) is not None:
            size += len(json.dumps(params[key], sort_keys=True, default=str).encode())
    return math.ceil(size / _BYTES_PER_TOKEN) + _PER_MESSAGE * len(messages)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Sequence):  # content blocks
        return "".join(_text(b.get("text") if isinstance(b, Mapping) else b) for b in value)
    return json.dumps(value, sort_keys=True, default=str)


@dataclass(frozen=True)
class ContextBudget:
    """A per-call input-token budget, and what may be cut to meet it.

    Attributes:
        max_input_tokens: most input tokens one call may send (as counted by
            the agent's token counter).
        cut: what may give way, in order: ``"task"`` and ``"state.FIELD"``
            entries. Empty: nothing is cut, an over-budget call just fails.

    Raises:
        DefinitionError: a bound is not a positive integer, or an entry of
            ``cut`` is neither ``"task"`` nor ``"state.<field>"``, or repeats.
    """

    max_input_tokens: int
    cut: Sequence[str] = ("task",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "cut", tuple(self.cut))
        limit = self.max_input_tokens
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise DefinitionError(f"ContextBudget.max_input_tokens must be a positive integer, got {limit!r}")
        bad = [c for c in self.cut if not isinstance(c, str) or not (
            c == "task" or (c.startswith("state.") and len(c) > len("state.")))]
        if bad:
            raise DefinitionError(f"ContextBudget.cut entries are 'task' or 'state.<field>', not {bad}")
        if len(set(self.cut)) != len(self.cut):
            raise DefinitionError(f"ContextBudget.cut lists an entry twice: {list(self.cut)}")

    def describe(self) -> dict[str, Any]:
        """JSON form (integers and strings), for audit payloads."""
        return {"max_input_tokens": self.max_input_tokens, "cut": list(self.cut)}


@dataclass(frozen=True)
class Cut:
    """One cut made to meet a budget, as recorded.

    Attributes:
        part: ``task`` or ``state.FIELD``.
        chars_before: characters of the part before the cut (its JSON for non-strings).
        chars_after: characters kept (0 when omitted).
        omitted: the part was replaced by a marker rather than shortened.
    """

    part: str
    chars_before: int
    chars_after: int
    omitted: bool = False

    def describe(self) -> dict[str, Any]:
        """JSON form for the audit payload."""
        return {"part": self.part, "chars_before": self.chars_before, "chars_after": self.chars_after,
                "omitted": self.omitted}


@dataclass(frozen=True)
class Fitted:
    """A request that fits its budget (or the best the policy allowed), and how it was made to.

    Attributes:
        params: the ``messages.create`` keyword arguments to send.
        tokens_before: estimated input tokens before any cut.
        tokens: estimated input tokens of ``params``.
        cuts: the cuts made, in policy order.
        fits: whether ``tokens`` is within the budget.
    """

    params: dict[str, Any]
    tokens_before: int
    tokens: int
    cuts: tuple[Cut, ...] = field(default=())
    fits: bool = True


Build = Callable[[str, Any], dict[str, Any]]
"""``(task text, state data) -> messages.create keyword arguments``."""


def fit(
    budget: ContextBudget | None,
    count: TokenCounter,
    build: Build,
    task_text: str,
    state_data: Any,
) -> Fitted:
    """Build the request, cutting per ``budget.cut`` until it fits. Pure.

    Each part is cut only as far as needed (the longest prefix that fits,
    found by bisection), in the policy's order; a state field missing from
    the view is skipped.

    Args:
        budget: the budget; ``None`` builds the request uncut.
        count: the token counter.
        build: renders the request from a task text and the state data.
        task_text: the task as it would be sent.
        state_data: the state view as JSON-compatible data (a dict for a model).

    Returns:
        The request; ``fits`` is false when every allowed cut was not enough
        (the caller refuses to send it).
    """
    params = build(task_text, state_data)
    tokens = before = count(params)
    if budget is None or tokens <= budget.max_input_tokens:
        return Fitted(params, before, tokens)
    limit = budget.max_input_tokens
    cuts: list[Cut] = []
    for part in budget.cut:
        if part == "task":
            kept, params, tokens = _shorten(task_text, lambda t: build(t, state_data), count, limit, "task")
            if kept is not None:
                cuts.append(Cut("task", len(task_text), kept[0]))
                task_text = kept[1]
        else:
            name = part[len("state."):]
            if not isinstance(state_data, Mapping) or name not in state_data:
                continue
            value = state_data[name]
            if isinstance(value, str):
                fixed_task, fixed_state = task_text, state_data

                def with_value(v: str) -> dict[str, Any]:
                    return build(fixed_task, {**fixed_state, name: v})

                kept, params, tokens = _shorten(value, with_value, count, limit, part)
                if kept is not None:
                    cuts.append(Cut(part, len(value), kept[0]))
                    state_data = {**state_data, name: kept[1]}
            else:
                state_data = {**state_data, name: OMITTED}
                params = build(task_text, state_data)
                tokens = count(params)
                cuts.append(Cut(part, len(json.dumps(value, default=str)), 0, omitted=True))
        if tokens <= limit:
            break
    return Fitted(params, before, tokens, tuple(cuts), tokens <= limit)


def _shorten(
    text: str, build: Callable[[str], dict[str, Any]], count: TokenCounter, limit: int, label: str
) -> tuple[tuple[int, str] | None, dict[str, Any], int]:
    """The longest prefix of ``text`` (plus a marker) whose request fits.

    Returns:
        ``((characters kept, the text sent), request, tokens)``; the first
        item is ``None`` when the text fits uncut. When not even an empty
        prefix fits, the empty prefix (the request stays over the limit).
    """
    params = build(text)
    tokens = count(params)
    if tokens <= limit:
        return None, params, tokens

    def marked(keep: int) -> str:
        return text[:keep] + f"\n[… {label} cut by statecraft to meet the context budget: " \
                             f"{len(text) - keep} of {len(text)} characters omitted]"

    lo, hi = 0, len(text)  # invariant: keeping lo characters fits, keeping hi does not
    best = marked(0)
    best_params = build(best)
    best_tokens = count(best_params)
    if best_tokens > limit:
        return (0, best), best_params, best_tokens  # even all of it cut is not enough
    while hi - lo > 1:
        mid = (lo + hi) // 2
        candidate = marked(mid)
        candidate_params = build(candidate)
        candidate_tokens = count(candidate_params)
        if candidate_tokens <= limit:
            lo, best, best_params, best_tokens = mid, candidate, candidate_params, candidate_tokens
        else:
            hi = mid
    return (lo, best), best_params, best_tokens
