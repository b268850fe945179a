"""Frame statistics per stream and per tenant."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(slots=True)
class FrameStats:
    """Counters of one stream, one reporting period or one tenant."""

    frames_seen: int = 0
    dropped_rate: int = 0
    dropped_duplicate: int = 0
    # Kept because they changed (stale-forced keeps are counted separately, not here).
    kept: int = 0
    kept_stale_forced: int = 0
    rejected: int = 0
    bytes_sent: int = 0
    image_tokens_sent: int = 0
    # What sending every frame of the source would have cost (see TrackFrameSelector).
    naive_image_tokens: int = 0
    naive_bytes: int = 0

    @property
    def frames_kept(self) -> int:
        return self.kept + self.kept_stale_forced

    def add(self, other: FrameStats) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def minus(self, other: FrameStats) -> FrameStats:
        return FrameStats(
            **{f.name: getattr(self, f.name) - getattr(other, f.name)
               for f in dataclasses.fields(self)}
        )

    def copy(self) -> FrameStats:
        return dataclasses.replace(self)

    def is_empty(self) -> bool:
        return not any(getattr(self, f.name) for f in dataclasses.fields(self))


class TenantStatsBook:
    """Aggregate stats and active stream counts per tenant (bounded by the tenant registry).

    Streams fold their counts in frame by frame, so a tenant's figures include
    streams still running.
    """

    def __init__(self) -> None:
        self._stats: dict[str, FrameStats] = {}
        self._active: dict[str, int] = {}

    def stats(self, tenant_id: str) -> FrameStats:
        return self._stats.setdefault(tenant_id, FrameStats())

    def active_streams(self, tenant_id: str) -> int:
        return self._active.get(tenant_id, 0)

    def total_active(self) -> int:
        return sum(self._active.values())

    def stream_started(self, tenant_id: str) -> None:
        self._active[tenant_id] = self._active.get(tenant_id, 0) + 1

    def stream_ended(self, tenant_id: str) -> None:
        self._active[tenant_id] = max(0, self._active.get(tenant_id, 0) - 1)
