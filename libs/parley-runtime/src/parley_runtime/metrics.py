"""Prometheus metrics shared by every service, and the /metrics endpoint."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

GRPC_HANDLED = Counter(
    "parley_grpc_server_handled_total",
    "RPCs completed, by status code",
    ["service", "method", "code"],
)
GRPC_LATENCY = Histogram(
    "parley_grpc_server_handling_seconds",
    "RPC handling time",
    ["service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GRPC_IN_FLIGHT = Gauge("parley_grpc_server_in_flight", "RPCs in progress", ["service"])
AUTH_FAILURES = Counter(
    "parley_auth_failures_total", "Rejected calls by reason", ["service", "reason"]
)


def start_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve /metrics on `port` (0 disables)."""
    if port:
        start_http_server(port, addr=host)
        logger.info("metrics endpoint up", extra={"port": port})
