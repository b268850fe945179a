"""Settings of router-svc (env prefix PARLEY_)."""

from __future__ import annotations

from parley_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "router-svc"
    grpc_port: int = 50051
    metrics_port: int = 9101
