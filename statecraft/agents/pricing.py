"""What a Claude call cost, in integer micro-USD, from a price table.

Units: Anthropic publishes prices in USD per million tokens ("$3 / MTok").
$X per million tokens is X micro-USD per token, so a table of *micro-USD per
million tokens* (``3_000_000`` for $3 / MTok) holds every published price,
fractional ones included ($0.30, $3.75, $0.08), as an exact integer. A call's
cost is ``ceil(sum(tokens × rate) / 1_000_000)`` micro-USD: integer arithmetic
throughout (audit data holds no floats), rounded up so that cost budgets err
on the safe side by less than one micro-USD per call.

The default table, :data:`DEFAULT_PRICES`, holds the Claude API's standard
prices as published on https://platform.claude.com/docs/en/about-claude/pricing
and the per-model pages (checked for statecraft 0.1). It does not model: the
Batch API discount, fast mode, ``inference_geo`` surcharges, long-prompt price
bands (Claude Haiku 5.5 is therefore absent), or cloud-platform prices. Prices
change: pass ``prices=`` to :class:`~statecraft.agents.claude.ClaudeAgent` to
override or extend it.

A model the table does not know costs 0 and logs one warning per model id per
process (logger ``statecraft.agents.pricing``): tokens are still recorded, so
token budgets keep working, but cost budgets do not see the call.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

__all__ = ["DEFAULT_PRICES", "ModelPrice", "TokenCounts", "cost_micros", "normalize_model_id"]

log = logging.getLogger(__name__)

_PER_MTOK = 1_000_000
_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """One model's prices, in micro-USD per million tokens (``3_000_000`` = $3 / MTok).

    Attributes:
        input_micros_per_mtok: uncached input tokens.
        output_micros_per_mtok: output tokens (thinking included).
        cache_write_5m_micros_per_mtok: tokens written to the 5-minute prompt cache.
        cache_write_1h_micros_per_mtok: tokens written to the 1-hour prompt cache.
        cache_read_micros_per_mtok: tokens read from the prompt cache.
    """

    input_micros_per_mtok: int
    output_micros_per_mtok: int
    cache_write_5m_micros_per_mtok: int
    cache_write_1h_micros_per_mtok: int
    cache_read_micros_per_mtok: int

    def __post_init__(self) -> None:
        for name in self.__slots__:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ModelPrice.{name} must be a non-negative integer, got {value!r}")

    @classmethod
    def usd_per_mtok(
        cls,
        input: str | int | Decimal,
        output: str | int | Decimal,
        *,
        cache_write_5m: str | int | Decimal | None = None,
        cache_write_1h: str | int | Decimal | None = None,
        cache_read: str | int | Decimal | None = None,
    ) -> ModelPrice:
        """Build a price from USD per million tokens, as the pricing page writes them.

        Cache prices default to Anthropic's standard multipliers of the input
        price: 1.25× (5-minute write), 2× (1-hour write), 0.1× (read).

        Example::

            ModelPrice.usd_per_mtok("3", "15")   # Sonnet 4.6: $3 in, $15 out
            ModelPrice.usd_per_mtok("4", "20", cache_read="0.20")

        Raises:
            ValueError: a price is negative or finer than 1 micro-USD per MTok.
        """
        base = _usd(input)
        return cls(
            input_micros_per_mtok=_micros(base),
            output_micros_per_mtok=_micros(_usd(output)),
            cache_write_5m_micros_per_mtok=_micros(
                _usd(cache_write_5m) if cache_write_5m is not None else base * Decimal("1.25")
            ),
            cache_write_1h_micros_per_mtok=_micros(
                _usd(cache_write_1h) if cache_write_1h is not None else base * 2
            ),
            cache_read_micros_per_mtok=_micros(
                _usd(cache_read) if cache_read is not None else base / 10
            ),
        )


@dataclass(frozen=True, slots=True)
class TokenCounts:
    """The token counts of one Messages API response (its ``usage`` block).

    Attributes:
        input: uncached input tokens (``input_tokens``).
        output: output tokens (``output_tokens``).
        cache_write_5m: tokens written to the 5-minute cache.
        cache_write_1h: tokens written to the 1-hour cache.
        cache_read: tokens read from the cache (``cache_read_input_tokens``).
    """

    input: int = 0
    output: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    cache_read: int = 0

    @property
    def total_input(self) -> int:
        """Every input token the model processed: uncached, cache writes and cache reads."""
        return self.input + self.cache_write_5m + self.cache_write_1h + self.cache_read

    @classmethod
    def from_usage(cls, usage: Any) -> TokenCounts:
        """Read an ``anthropic`` ``Usage`` object (or a dict of the same shape).

        Missing or malformed counts read as 0. When the response does not break
        cache writes down by lifetime, all of ``cache_creation_input_tokens``
        counts as 5-minute writes (the API's default lifetime).
        """
        written = _count(_get(usage, "cache_creation_input_tokens"))
        breakdown = _get(usage, "cache_creation")
        if breakdown is not None:
            w5 = _count(_get(breakdown, "ephemeral_5m_input_tokens"))
            w1 = _count(_get(breakdown, "ephemeral_1h_input_tokens"))
            if w5 + w1 == 0 and written:
                w5 = written
        else:
            w5, w1 = written, 0
        return cls(
            input=_count(_get(usage, "input_tokens")),
            output=_count(_get(usage, "output_tokens")),
            cache_write_5m=w5,
            cache_write_1h=w1,
            cache_read=_count(_get(usage, "cache_read_input_tokens")),
        )


def _usd(value: str | int | Decimal) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValueError(f"price must be a str, int or Decimal (no floats), got {value!r}")
    return Decimal(value)


def _micros(usd_per_mtok: Decimal) -> int:
    micros = usd_per_mtok * _PER_MTOK
    if micros < 0 or micros != micros.to_integral_value():
        raise ValueError(f"price {usd_per_mtok} USD/MTok is negative or finer than 1 micro-USD/MTok")
    return int(micros)


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _p(input: str, output: str, w5: str, w1: str, read: str) -> ModelPrice:
    return ModelPrice.usd_per_mtok(input, output, cache_write_5m=w5, cache_write_1h=w1, cache_read=read)


# USD per MTok: input, output, 5m cache write, 1h cache write, cache read.
# Source: platform.claude.com pricing page and model overview pages.
_OPUS_4_5_TO_5 = _p("5", "25", "6.25", "10", "0.50")
_OPUS_4 = _p("15", "75", "18.75", "30", "1.50")
_SONNET_5 = _p("2", "10", "2.50", "4", "0.20")
_SONNET_4 = _p("3", "15", "3.75", "6", "0.30")

DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "claude-fable-5-1": _p("10", "50", "12.50", "20", "0.25"),
    "claude-mythos-5-1": _p("10", "50", "12.50", "20", "0.25"),
    "claude-fable-5": _p("10", "50", "12.50", "20", "1"),
    "claude-mythos-5": _p("10", "50", "12.50", "20", "1"),
    "claude-opus-5-5": _p("4", "20", "5", "8", "0.20"),
    "claude-opus-5": _OPUS_4_5_TO_5,
    "claude-opus-4-8": _OPUS_4_5_TO_5,
    "claude-opus-4-7": _OPUS_4_5_TO_5,
    "claude-opus-4-6": _OPUS_4_5_TO_5,
    "claude-opus-4-5": _OPUS_4_5_TO_5,
    "claude-opus-4-1": _OPUS_4,
    "claude-opus-4": _OPUS_4,
    "claude-sonnet-5-5": _SONNET_5,
    "claude-sonnet-5": _SONNET_5,
    "claude-sonnet-4-6": _SONNET_4,
    "claude-sonnet-4-5": _SONNET_4,
    "claude-sonnet-4": _SONNET_4,
    "claude-3-7-sonnet": _SONNET_4,
    "claude-haiku-4-5": _p("1", "5", "1.25", "2", "0.10"),
    "claude-3-5-haiku": _p("0.80", "4", "1", "1.6", "0.08"),
    "claude-3-haiku": _p("0.25", "1.25", "0.30", "0.50", "0.03"),
}
"""Claude API standard prices by model family (the id without its date suffix)."""

# Dated snapshots (claude-opus-4-5-20251101), aliases (claude-3-5-haiku-latest),
# Vertex ids (claude-haiku-4-5@20251001) and Bedrock ids
# (anthropic.claude-haiku-4-5-20251001-v1:0) all name the same family. Only these
# suffixes are stripped: a new minor version (claude-opus-4-9) must not match an
# older family's price by prefix.
_SUFFIX = re.compile(r"(?:-v\d+(?::\d+)?)?$")
_DATE = re.compile(r"(?:[-@]\d{8}|-latest)$")


def normalize_model_id(model_id: str) -> str:
    """The price-table key for ``model_id``: its family, without date or platform decorations.

    Example: ``anthropic.claude-haiku-4-5-20251001-v1:0`` -> ``claude-haiku-4-5``.
    """
    key = model_id.strip().lower()
    key = key.removeprefix("anthropic.")
    key = _SUFFIX.sub("", key)
    key = _DATE.sub("", key)
    return key


def cost_micros(
    model_id: str, tokens: TokenCounts, prices: Mapping[str, ModelPrice] | None = None
) -> int | None:
    """The cost of one call in micro-USD, or ``None`` when ``model_id`` has no price.

    Args:
        model_id: the model that served the call (any id form; see :func:`normalize_model_id`).
        tokens: the call's token counts.
        prices: the table to use (keys are families or exact ids); default :data:`DEFAULT_PRICES`.

    Returns:
        ``ceil(Σ tokens × micro-USD per MTok / 1_000_000)``; ``None`` for an unknown
        model (after logging one warning per model id).
    """
    table = DEFAULT_PRICES if prices is None else prices
    price = table.get(model_id) or table.get(normalize_model_id(model_id))
    if price is None:
        if model_id not in _warned:
            _warned.add(model_id)
            log.warning(
                "no price for model %r: its calls are recorded with cost_micros=0; "
                "pass prices={%r: ModelPrice.usd_per_mtok(...)} to ClaudeAgent",
                model_id,
                normalize_model_id(model_id),
            )
        return None
    total = (
        tokens.input * price.input_micros_per_mtok
        + tokens.output * price.output_micros_per_mtok
        + tokens.cache_write_5m * price.cache_write_5m_micros_per_mtok
        + tokens.cache_write_1h * price.cache_write_1h_micros_per_mtok
        + tokens.cache_read * price.cache_read_micros_per_mtok
    )
    return -(-total // _PER_MTOK)
