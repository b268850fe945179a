"""Tenant vision settings: plan defaults, tenant values, per-stream overrides within bounds."""

from __future__ import annotations

import pytest
from parley_runtime.errors import InvalidArgument
from parley_runtime.tenants import TenantRegistry
from parley_vision.tenant_config import VisionConfig, load_vision_configs

pytestmark = pytest.mark.unit


def test_plan_defaults_then_tenant_values() -> None:
    reg = TenantRegistry.from_dict({
        "plans": {"free": {"vision": {"idle_fps": 1.0, "jpeg_quality": 60}}},
        "tenants": {
            "acme": {"plan": "free", "vision": {"jpeg_quality": 85}},
            "globex": {"plan": "pro"},
        },
    })
    configs = load_vision_configs(reg)
    assert configs["acme"].idle_fps == 1.0 and configs["acme"].jpeg_quality == 85
    assert configs["globex"] == VisionConfig()
    assert VisionConfig().speaking_fps == 30 and VisionConfig().idle_fps == 5  # the seed's


def test_invalid_tenant_section_fails_naming_the_tenant() -> None:
    reg = TenantRegistry.from_dict({"tenants": {"acme": {"vision": {"idle_fsp": 1}}}})
    with pytest.raises(ValueError, match="tenant 'acme'.*idle_fsp"):
        load_vision_configs(reg)
    reg = TenantRegistry.from_dict({"tenants": {"acme": {"vision": {"jpeg_quality": 101}}}})
    with pytest.raises(ValueError, match="jpeg_quality"):
        load_vision_configs(reg)


def test_stream_overrides_apply_within_bounds() -> None:
    base = VisionConfig()
    cfg = base.with_overrides({"speaking_fps": 2.0, "max_image_side": 384})
    assert cfg.speaking_fps == 2.0 and cfg.max_image_side == 384 and cfg.idle_fps == 5
    with pytest.raises(InvalidArgument, match="speaking_fps"):
        base.with_overrides({"speaking_fps": 1000.0})
    with pytest.raises(InvalidArgument, match="hamming_threshold"):
        base.with_overrides({"hamming_threshold": -1})


@pytest.mark.parametrize("model_id", ["gemini 2.5", "gémini", "-gemini", "m" * 129])
def test_a_model_id_billing_would_refuse_fails_the_start_up(model_id: str) -> None:
    """The model id goes into every usage event: one billing refuses would dead-letter all of
    the tenant's vision usage."""
    reg = TenantRegistry.from_dict({"tenants": {"acme": {"vision": {"model_id": model_id}}}})
    with pytest.raises(ValueError, match="tenant 'acme'.*model_id"):
        load_vision_configs(reg)
    ok = TenantRegistry.from_dict(
        {"tenants": {"acme": {"vision": {"model_id": "vertex:gemini-2.5-flash@001"}}}}
    )
    assert load_vision_configs(ok)["acme"].model_id == "vertex:gemini-2.5-flash@001"
