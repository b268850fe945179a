"""Settings of kb-svc (env prefix PARLEY_)."""

from __future__ import annotations

from parley_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "kb-svc"
    grpc_port: int = 50053
    metrics_port: int = 9103
