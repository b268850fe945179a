"""Pricing and savings, checked against figures computed by hand from the catalog."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from parley_billing.events import Usage, UsageType
from parley_billing.pricing import LEVERS, Pricer, div_round, usd
from parley_runtime.catalog import load_catalog

pytestmark = pytest.mark.unit

AT = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer(load_catalog())


def _u(kind: UsageType, **kw: object) -> Usage:
    return Usage(idempotency_key="k", occurred_at=AT, session_id="s", service="svc",
                 usage_type=kind, **kw)  # type: ignore[arg-type]


def D(text: str) -> Decimal:
    return Decimal(text)


def test_baseline_is_the_premium_tiers_first_model(pricer: Pricer) -> None:
    assert pricer.premium_model == "claude-sonnet-4-6"


def test_llm_with_cache_reads_on_a_cheaper_model(pricer: Pricer) -> None:
    # gemini-2.5-flash: input 0.30, cache_read 0.03, output 2.50 per Mtok.
    # 10,000 prompt tokens of which 6,000 cached; 500 output tokens.
    p = pricer.price(_u(UsageType.LLM, model_id="gemini-2.5-flash", input_tokens=10_000,
                        cached_input_tokens=6_000, output_tokens=500))
    # actual   = 4,000*0.30e-6 + 6,000*0.03e-6 + 500*2.50e-6 = 0.0012 + 0.00018 + 0.00125
    assert usd(p.cost) == D("0.00263")
    # naive    = 10,000*3.00e-6 + 500*15.00e-6 on claude-sonnet-4-6, no cache
    assert usd(p.naive) == D("0.0375")
    # caching  = (10,000*0.30e-6 + 500*2.50e-6) - actual = 0.00425 - 0.00263
    assert usd(p.saved_caching) == D("0.00162")
    # routing  = 0.0375 - 0.00425
    assert usd(p.saved_routing) == D("0.03325")
    assert p.unit == "tokens" and p.quantity == 10_500
    assert p.price_version.endswith("/gemini-2.5-flash@2025-06-17")


def test_cache_write_can_cost_more_than_it_saves_this_turn(pricer: Pricer) -> None:
    # claude-sonnet-4-6: input 3.00, cache_write 3.75, output 15.00 per Mtok.
    p = pricer.price(_u(UsageType.LLM, model_id="claude-sonnet-4-6", input_tokens=5_000,
                        cache_write_tokens=4_000, output_tokens=200))
    # 1,000*3e-6 + 4,000*3.75e-6 + 200*15e-6 = 0.003 + 0.015 + 0.003
    assert usd(p.cost) == D("0.021")
    assert usd(p.naive) == D("0.018")
    assert usd(p.saved_caching) == D("-0.003")  # measured, not assumed: a negative saving
    assert p.saved_routing == 0  # it ran on the baseline model


def test_vision_levers_price_dropped_frames_on_the_premium_model(pricer: Pricer) -> None:
    # 300 frames at source rate, 258 tokens each; 200 dropped by adaptive FPS, 80 as duplicates.
    p = pricer.price(_u(UsageType.VISION, model_id="gemini-2.5-flash", frames_seen=300,
                        frames_kept=20, dropped_rate=200, dropped_duplicate=80,
                        image_tokens_sent=20 * 258, naive_image_tokens=300 * 258))
    assert p.cost == 0  # the kept frames' tokens are billed in the LLM events carrying them
    assert usd(p.saved_dedup) == D("0.06192")  # 80 * 258 * 3e-6
    assert usd(p.saved_adaptive_fps) == D("0.1548")  # 200 * 258 * 3e-6
    assert p.naive - p.cost == p.saved_dedup + p.saved_adaptive_fps
    assert p.unit == "frames" and p.quantity == 20


def test_embedding_cache_saving(pricer: Pricer) -> None:
    # voyage-3.5 at 0.06 per Mtok; 10 texts embedded with 10,000 tokens, 5 more from cache.
    p = pricer.price(_u(UsageType.EMBEDDING, model_id="voyage-3.5", input_tokens=10_000,
                        embedded_texts=10, cached_texts=5))
    assert usd(p.cost) == D("0.0006")
    assert usd(p.saved_embedding_cache) == D("0.0003")


@pytest.mark.parametrize(
    "kind, fields, cost",
    [
        (UsageType.STT, {"model_id": "deepgram-nova-3", "audio_seconds": 90.0}, "0.01155"),
        (UsageType.TTS, {"model_id": "elevenlabs-flash-v2.5", "characters": 1_000}, "0.05"),
        (UsageType.SESSION, {"minutes": 10.0}, "0.1"),
        (UsageType.STT, {"model_id": "local-stt", "audio_seconds": 30.0}, "0"),
    ],
)
def test_straight_priced_usage(pricer: Pricer, kind: UsageType, fields: dict[str, object],
                               cost: str) -> None:
    p = pricer.price(_u(kind, **fields))
    assert usd(p.cost) == D(cost)
    assert p.naive == p.cost
    assert all(p.saved(lever) == 0 for lever in LEVERS)


def test_stt_rounds_half_even_to_the_picodollar(pricer: Pricer) -> None:
    # 1 s at 0.0077 $/min = 0.000128333... $ -> 128,333,333 pico-USD (rounded)
    p = pricer.price(_u(UsageType.STT, model_id="deepgram-nova-3", audio_seconds=1.0))
    assert p.cost == 128_333_333
    assert div_round(5, 2) == 2 and div_round(7, 2) == 4 and div_round(1, 3) == 0


def test_naive_minus_actual_is_the_sum_of_levers_for_every_kind(pricer: Pricer) -> None:
    usages = [
        _u(UsageType.LLM, model_id="gemini-2.5-flash-lite", input_tokens=123_457,
           cached_input_tokens=100_001, cache_write_tokens=3, output_tokens=999),
        _u(UsageType.VISION, model_id="gemini-2.5-flash", frames_seen=7, frames_kept=1,
           dropped_rate=3, dropped_duplicate=3, naive_image_tokens=7 * 1290),
        _u(UsageType.EMBEDDING, model_id="voyage-3.5-lite", input_tokens=777, embedded_texts=3,
           cached_texts=7),
    ]
    for u in usages:
        p = pricer.price(u)
        assert p.naive - p.cost == sum(p.saved(lever) for lever in LEVERS)


def test_usage_before_the_first_known_price_uses_the_earliest_entry() -> None:
    # claude-sonnet-4-5's only price starts 2025-09-29.
    pricer = Pricer(load_catalog())
    u = _u(UsageType.LLM, model_id="claude-sonnet-4-5", input_tokens=1_000_000,
           output_tokens=0)
    u.occurred_at = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    early = pricer.price(u)
    assert usd(early.cost) == D("3")
    assert early.price_version.endswith("claude-sonnet-4-5@2025-09-29")
