"""Usage records: idempotency keys unique per provider call and always acceptable to billing."""

from __future__ import annotations

import re

import pytest
from parley_router.chat import ChatRequest, Message, Role, TextPart, Usage
from parley_router.complexity import Tier
from parley_router.failover import AttemptReport
from parley_router.providers.base import CallContext
from parley_router.router import Turn
from parley_router.usage import RecorderUsageSink, idempotency_key
from parley_runtime.catalog import load_catalog
from parley_runtime.ids import MAX_IDEMPOTENCY_KEY_LEN
from parley_runtime.usage import NullUsageRecorder

pytestmark = pytest.mark.unit

CATALOG = load_catalog()
MODEL = CATALOG.get("gemini-2.5-flash")
REQ = ChatRequest((Message(Role.USER, (TextPart("hello"),)),))
KEY_RE = re.compile(rf"[!-~]{{1,{MAX_IDEMPOTENCY_KEY_LEN}}}")


def report(attempt: int = 1) -> AttemptReport:
    return AttemptReport(MODEL, attempt, "ok", Usage(input_tokens=5, output_tokens=3), 0.1, 0.2)


def test_calls_reusing_a_turn_id_get_distinct_keys() -> None:
    recorder = NullUsageRecorder()
    sink = RecorderUsageSink(recorder)
    for _ in range(2):
        sink.record_call(turn=Turn("acme", "s", "t-1", REQ), report=report(), tier=Tier.SIMPLE,
                         fallback_used=False)
    keys = [ev.idempotency_key for _, ev in recorder.events]
    assert len(set(keys)) == 2 and all(k.startswith("router-svc:llm:t-1:") for k in keys)


def test_the_same_call_and_attempt_keep_their_key() -> None:
    # What makes a re-shipped or doubly settled record count once.
    assert idempotency_key("t", "c" * 32, 2) == idempotency_key("t", "c" * 32, 2)
    assert idempotency_key("t", "c" * 32, 2) != idempotency_key("t", "c" * 32, 3)


@pytest.mark.parametrize("turn_id", ["t" * 5000, "with space", "ünïcode", "t" * 64])
def test_keys_stay_within_billings_rules_whatever_the_turn_id(turn_id: str) -> None:
    key = idempotency_key(turn_id, "0123456789abcdef" * 2, 4)
    assert KEY_RE.fullmatch(key), key
    # Distinct turn ids stay distinct after hashing.
    assert key != idempotency_key(turn_id + "x", "0123456789abcdef" * 2, 4)


def test_every_gemini_cache_creation_is_billed_even_with_a_reused_turn_id() -> None:
    recorder = NullUsageRecorder()
    sink = RecorderUsageSink(recorder)
    ctx = CallContext("acme", "s", "t" * 128, 1)
    sink.record_cache_creation(ctx, MODEL, 5000)
    sink.record_cache_creation(ctx, MODEL, 5000)
    keys = [ev.idempotency_key for _, ev in recorder.events]
    assert len(set(keys)) == 2 and all(KEY_RE.fullmatch(k) for k in keys)
