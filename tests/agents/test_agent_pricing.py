"""Cost in integer micro-USD from a price table; model ids of every form find their family."""

from __future__ import annotations

from decimal import Decimal

import pytest

from statecraft.agents.pricing import DEFAULT_PRICES, ModelPrice, TokenCounts, cost_micros, normalize_model_id


@pytest.mark.parametrize(
    ("model_id", "family"),
    [
        ("claude-sonnet-4-5", "claude-sonnet-4-5"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-20250514", "claude-opus-4"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
        ("anthropic.claude-opus-4-6-v1", "claude-opus-4-6"),
        ("Claude-Opus-5-5", "claude-opus-5-5"),
    ],
)
def test_a_model_id_of_any_form_names_its_family(model_id: str, family: str) -> None:
    assert normalize_model_id(model_id) == family


def test_a_new_minor_version_does_not_inherit_an_older_familys_price_by_prefix() -> None:
    assert normalize_model_id("claude-opus-4-9") == "claude-opus-4-9"
    assert cost_micros("claude-opus-4-9", TokenCounts(input=1)) is None


def test_every_published_price_is_an_exact_integer_of_micro_usd_per_mtok() -> None:
    for family, price in DEFAULT_PRICES.items():
        for name in ModelPrice.__slots__:
            value = getattr(price, name)
            assert isinstance(value, int) and value > 0, (family, name)
    assert DEFAULT_PRICES["claude-3-5-haiku"].cache_read_micros_per_mtok == 80_000  # $0.08
    assert DEFAULT_PRICES["claude-opus-4-1"].cache_write_5m_micros_per_mtok == 18_750_000  # $18.75


def test_cost_is_exact_for_whole_micro_usd_and_rounds_up_otherwise() -> None:
    sonnet = TokenCounts(input=1000, output=200)
    assert cost_micros("claude-sonnet-4-6", sonnet) == 1000 * 3 + 200 * 15
    # Haiku 3 input is $0.25 / MTok: one token is a quarter of a micro-USD -> 1.
    assert cost_micros("claude-3-haiku-20240307", TokenCounts(input=1)) == 1
    assert cost_micros("claude-3-haiku-20240307", TokenCounts(input=4)) == 1
    assert cost_micros("claude-3-haiku-20240307", TokenCounts(input=5)) == 2
    assert cost_micros("claude-sonnet-4-6", TokenCounts()) == 0


def test_usd_per_mtok_applies_the_standard_cache_multipliers_exactly() -> None:
    price = ModelPrice.usd_per_mtok("3", "15")
    assert price == ModelPrice(3_000_000, 15_000_000, 3_750_000, 6_000_000, 300_000)
    assert ModelPrice.usd_per_mtok(Decimal("0.8"), 4).cache_read_micros_per_mtok == 80_000


@pytest.mark.parametrize("bad", [0.3, "-1", "0.0000001"])
def test_a_price_that_is_a_float_negative_or_too_fine_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        ModelPrice.usd_per_mtok(bad, "1")  # type: ignore[arg-type]


def test_token_counts_read_the_usage_block_with_or_without_a_cache_breakdown() -> None:
    plain = TokenCounts.from_usage(
        {"input_tokens": 5, "output_tokens": 7, "cache_creation_input_tokens": 11, "cache_read_input_tokens": 13}
    )
    assert plain == TokenCounts(input=5, output=7, cache_write_5m=11, cache_write_1h=0, cache_read=13)
    assert plain.total_input == 5 + 11 + 13
    split = TokenCounts.from_usage(
        {
            "input_tokens": 1,
            "output_tokens": 1,
            "cache_creation_input_tokens": 30,
            "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
        }
    )
    assert (split.cache_write_5m, split.cache_write_1h) == (10, 20)
    assert TokenCounts.from_usage({"input_tokens": None, "output_tokens": -3}) == TokenCounts()
