"""Turn latency at the worker: end of the user's turn to the first LLM token, and the platform's
share of it (that minus the model's own time to first token, as router-svc measured it)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from .metrics import LLM_TTFT, TURN_FIRST_TOKEN, TURN_PLATFORM
from .router_llm import RouterObserver, TurnOutcome, tier_name


@dataclass(frozen=True, slots=True)
class TurnLatency:
    first_token_s: float
    model_ttft_s: float
    platform_s: float
    # Where the platform share goes: turn end -> RPC start (session pipeline, hooks, request
    # building) and RPC start -> first token minus the model's TTFT (gRPC + router-svc).
    pre_rpc_s: float
    rpc_overhead_s: float
    tier: str
    model_id: str


class TurnLatencyTracker(RouterObserver):
    """Observes the session's RouterLLM. Only the first LLM call after a turn end counts (tool
    follow-ups are not user-perceived turn starts)."""

    def __init__(self, *, keep: int = 256) -> None:
        self._turn_end: float | None = None
        self._first_token_at: float | None = None
        self.samples: deque[TurnLatency] = deque(maxlen=keep)
        self.last_outcome: TurnOutcome | None = None
        self.last_latency: TurnLatency | None = None

    def mark_turn_end(self, at: float | None = None) -> None:
        self._turn_end = time.monotonic() if at is None else at
        self._first_token_at = None

    def on_first_token(self, started_at: float, first_token_at: float) -> None:
        if self._turn_end is not None and self._first_token_at is None:
            self._first_token_at = first_token_at

    def on_outcome(self, outcome: TurnOutcome) -> None:
        self.last_outcome = outcome
        if outcome.completion is not None:
            LLM_TTFT.observe(outcome.completion.time_to_first_token_ms / 1000.0)
        if self._turn_end is None or self._first_token_at is None:
            return
        if outcome.first_token_at != self._first_token_at or outcome.completion is None:
            return
        first = self._first_token_at - self._turn_end
        model_ttft = outcome.completion.time_to_first_token_ms / 1000.0
        platform = max(0.0, first - model_ttft)
        pre_rpc = max(0.0, outcome.started_at - self._turn_end)
        sample = TurnLatency(
            first_token_s=first,
            model_ttft_s=model_ttft,
            platform_s=platform,
            pre_rpc_s=pre_rpc,
            rpc_overhead_s=max(0.0, platform - pre_rpc),
            tier=tier_name(outcome.completion.tier),
            model_id=outcome.completion.model_id,
        )
        self.samples.append(sample)
        self.last_latency = sample
        TURN_FIRST_TOKEN.observe(first)
        TURN_PLATFORM.observe(platform)
        self._turn_end = None
        self._first_token_at = None
