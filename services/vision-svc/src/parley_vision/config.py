"""Settings of vision-svc (env prefix PARLEY_)."""

from __future__ import annotations

from parley_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "vision-svc"
    grpc_port: int = 50052
    metrics_port: int = 9102
