"""A tenant's `vision:` settings, their plan defaults, and per-stream overrides within bounds."""

from __future__ import annotations

from typing import Any

from parley_runtime.errors import InvalidArgument
from parley_runtime.tenants import TenantRegistry
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class VisionConfig(BaseModel):
    """Frame selection settings of one tenant (the `vision:` section of its config).

    Every field can also be set under `plans.<plan>.vision` as a default for a plan's tenants;
    a stream may override the tunable ones within the same bounds.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Model the kept frames are priced against (billing's VisionUsage.model_id). It goes into
    # every usage event, so it follows billing's rule for names: a model id billing refuses
    # would dead-letter all of the tenant's vision usage, so it fails the start-up instead.
    model_id: str = Field(
        default="gemini-2.5-flash", min_length=1, max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]*$",
    )
    # Maximum kept frames per second while the participant speaks / is silent (seed: 30 / 5).
    speaking_fps: float = Field(default=30.0, ge=0.1, le=60.0)
    idle_fps: float = Field(default=5.0, ge=0.0, le=60.0)
    # Kept frames per second during continuous change (scrolling, typing, a moving pointer),
    # after a burst of `keep_burst` frames at the rates above: a token bucket.
    sustained_fps: float = Field(default=1.5, ge=0.1, le=60.0)
    keep_burst: int = Field(default=2, ge=1, le=30)
    # When a screen stops changing, its settled picture is kept at once, borrowing up to this
    # many frames from the sustained rate (0: wait for the rate like any other frame).
    settle_debt: int = Field(default=1, ge=0, le=10)
    # Global pHash Hamming distance above which a frame is new (seed: 10 of 64 bits).
    hamming_threshold: int = Field(default=10, ge=0, le=32)
    # Per-tile pHash distance above which a region changed.
    tile_hamming_threshold: int = Field(default=14, ge=0, le=32)
    # Keep a frame after this many seconds without one, changed or not (0: never).
    max_staleness_s: float = Field(default=15.0, ge=0.0, le=3600.0)
    jpeg_quality: int = Field(default=75, ge=30, le=95)
    # Kept frames are resized so that their longer side is at most this (768: one Gemini tile).
    max_image_side: int = Field(default=768, ge=64, le=4096)

    def with_overrides(self, overrides: dict[str, Any]) -> VisionConfig:
        """A copy with a stream's overrides applied; INVALID_ARGUMENT when out of bounds."""
        if not overrides:
            return self
        try:
            return VisionConfig.model_validate({**self.model_dump(), **overrides})
        except ValidationError as exc:
            raise InvalidArgument(f"StreamConfig.settings out of bounds: {_errors(exc)}") from None


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )


def load_vision_configs(registry: TenantRegistry) -> dict[str, VisionConfig]:
    """Every tenant's validated vision settings (plan defaults, then the tenant's own).

    Raises ValueError naming the tenant when a section is invalid, so a bad config fails the
    service at start-up rather than a stream later.
    """
    out: dict[str, VisionConfig] = {}
    for tenant in registry.all():
        plan = registry.plans.get(tenant.plan) or {}
        plan_vision = (plan.get("vision") or {}) if isinstance(plan, dict) else {}
        try:
            out[tenant.tenant_id] = VisionConfig.model_validate(
                {**dict(plan_vision), **tenant.vision}
            )
        except ValidationError as exc:
            raise ValueError(
                f"tenant {tenant.tenant_id!r}: invalid vision settings: {_errors(exc)}"
            ) from None
    return out
