"""Settings of billing-svc (env prefix PARLEY_)."""

from __future__ import annotations

from parley_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "billing-svc"
    grpc_port: int = 50054
    metrics_port: int = 9104
