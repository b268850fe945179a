"""Adaptive frame rate: when another frame may be kept.

The gate runs on capture timestamps, never on arrival time, so a burst of frames delivered late
is judged as it was filmed. It caps the rate of *kept* frames rather than decimating the input:
hashing a frame is cheap, so a change after a quiet spell is kept on the very frame that shows
it instead of waiting for the next sampling slot.

Two limits apply together:

* at most `speaking_fps` kept frames per second while the participant speaks and `idle_fps`
  otherwise (the seed's 30 / 5): the minimum spacing of two kept frames;
* a token bucket of `burst` frames refilled at `sustained_fps`: isolated changes (a slide, a
  pop-up, a few keystrokes) go out at once, while continuous change (scrolling, typing, a
  moving pointer) settles at `sustained_fps` instead of 5-30 frames a second.

When continuous change stops (the scroll ends, the pointer rests) the picture it settled on is
the one worth having, now rather than when the bucket refills: a *settle* keep may borrow up to
`settle_debt` tokens ahead (the minimum spacing still applies), repaid from later refills, so
the long-run rate stays `sustained_fps`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Timestamps that go back by more than this restart the stream clock (a new capture source);
# smaller steps back are jitter and are clamped.
_REWIND_TOLERANCE_US = 500_000
# 30 fps timestamps are 33,333 us apart, not 33,334: half a millisecond of slack.
_SLACK_US = 500


@dataclass(frozen=True, slots=True)
class GateVerdict:
    open: bool
    min_interval_us: int
    since_keep_us: int
    # The minimum spacing allows a keep and a settle keep may borrow a token: closed only by
    # the sustained-rate bucket, within its debt limit.
    settle_open: bool = False


class AdaptiveRateGate:
    """Caps kept frames by speaking state and by a sustained-rate token bucket."""

    def __init__(
        self,
        *,
        speaking_fps: float,
        idle_fps: float,
        sustained_fps: float = 2.0,
        burst: int = 3,
        settle_debt: int = 1,
    ) -> None:
        self.speaking_fps = speaking_fps
        self.idle_fps = idle_fps
        self.sustained_fps = sustained_fps
        self.burst = burst
        self.settle_debt = settle_debt
        self._last_keep_us: int | None = None
        self._tokens = float(burst)
        self._tokens_at_us: int | None = None

    @staticmethod
    def _interval_us(fps: float) -> int:
        return int(round(1_000_000 / fps)) if fps > 0 else -1

    def _tokens_at(self, t_us: int) -> float:
        if self._tokens_at_us is None:
            return self._tokens
        elapsed = max(0, t_us - self._tokens_at_us + _SLACK_US)
        return min(float(self.burst), self._tokens + elapsed * self.sustained_fps / 1e6)

    def check(self, t_us: int, *, speaking: bool) -> GateVerdict:
        fps = self.speaking_fps if speaking else self.idle_fps
        interval = self._interval_us(fps)
        if interval < 0:
            return GateVerdict(False, interval, 0)
        if self._last_keep_us is None:
            return GateVerdict(True, interval, 0)
        since = t_us - self._last_keep_us
        spaced = since + _SLACK_US >= interval
        tokens = self._tokens_at(t_us)
        ok = spaced and tokens >= 1.0
        settle = spaced and tokens >= 1.0 - self.settle_debt
        return GateVerdict(ok, interval, since, settle)

    def record_keep(self, t_us: int) -> None:
        """A keep: one token spent (a settle keep may leave the bucket in debt)."""
        self._tokens = max(-float(self.settle_debt), self._tokens_at(t_us) - 1.0)
        self._tokens_at_us = t_us
        self._last_keep_us = t_us

    @property
    def last_keep_us(self) -> int | None:
        return self._last_keep_us


class StreamClock:
    """Monotonic stream time from capture timestamps that may jitter back or restart."""

    def __init__(self) -> None:
        self._offset = 0
        self._last: int | None = None
        self.restarts = 0

    def __call__(self, timestamp_us: int) -> int:
        t = timestamp_us + self._offset
        if self._last is not None and t < self._last:
            if self._last - t > _REWIND_TOLERANCE_US:
                # A new timeline: continue right after the old one.
                self._offset += self._last - t
                self.restarts += 1
            t = self._last
        self._last = t
        return t
