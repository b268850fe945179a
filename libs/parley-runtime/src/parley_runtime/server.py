"""The grpc.aio server bootstrap every service uses.

Health (real status, NOT_SERVING while draining), reflection, the Parley interceptor chain,
message size limits, /metrics, and a graceful SIGTERM drain:
health flips to NOT_SERVING at once, in-flight RPCs get `drain_seconds`, then the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .auth import TokenSigner, TokenVerifier, key_owner
from .interceptors import ParleyServerInterceptor
from .log import configure_logging
from .metrics import start_metrics_server
from .settings import ServiceSettings
from .telemetry import configure_tracing

logger = logging.getLogger(__name__)

Cleanup = Callable[[], Awaitable[None]]


def make_verifier(settings: ServiceSettings) -> TokenVerifier | None:
    if settings.auth_disabled:
        logger.warning("authentication DISABLED (PARLEY_AUTH_DISABLED=true): local use only")
        return None
    if not settings.auth_keys:
        raise SystemExit(
            "PARLEY_AUTH_KEYS is empty: set it to a JSON object {kid: secret} of trusted keys "
            "(or PARLEY_AUTH_DISABLED=true for local experiments)"
        )
    return TokenVerifier(
        keys=settings.auth_keys,
        audience=settings.service_name,
        allowed_callers=settings.auth_allowed_callers,
    )


def make_signer(settings: ServiceSettings) -> TokenSigner | None:
    """The signer for this process's outbound calls (None when auth is disabled)."""
    if settings.auth_disabled:
        return None
    secret = settings.auth_keys.get(settings.signing_kid)
    if secret is None:
        raise SystemExit(
            f"no key for kid {settings.signing_kid!r} in PARLEY_AUTH_KEYS: this service cannot "
            "sign its calls; add it or set PARLEY_AUTH_KID"
        )
    if key_owner(settings.signing_kid) != settings.service_name:
        raise SystemExit(
            f"PARLEY_AUTH_KID {settings.signing_kid!r} is not a key of {settings.service_name!r}: "
            f"name it {settings.service_name!r} or '{settings.service_name}:<version>' (receivers "
            "only accept a token whose issuer owns its key)"
        )
    return TokenSigner(
        service=settings.service_name,
        kid=settings.signing_kid,
        secret=secret,
        ttl_s=settings.auth_token_ttl_s,
    )


class GrpcServiceHost:
    """Owns one grpc.aio server and its lifecycle."""

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        verifier: TokenVerifier | None = None,
        extra_options: Sequence[tuple[str, int | str]] = (),
    ) -> None:
        self.settings = settings
        if verifier is None and not settings.auth_disabled:
            verifier = make_verifier(settings)
        self.interceptor = ParleyServerInterceptor(
            service=settings.service_name,
            verifier=verifier,
            default_deadline_s=settings.default_deadline_s,
        )
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            *extra_options,
        ]
        self.server = grpc.aio.server(
            interceptors=[self.interceptor, *extra_interceptors],
            options=options,
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = []
        self._cleanups: list[Cleanup] = []
        self._stopping = asyncio.Event()
        self.port = 0

    def add_service_name(self, full_name: str) -> None:
        """Register a service for health and reflection (e.g. 'parley.router.v1.RouterService')."""
        self._service_names.append(full_name)

    def on_shutdown(self, fn: Cleanup) -> None:
        self._cleanups.append(fn)

    async def start(self) -> int:
        names = [*self._service_names, reflection.SERVICE_NAME, health.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.server)
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise SystemExit(f"cannot bind gRPC port {address}: is it in use?")
        await self.server.start()
        for name in (*self._service_names, ""):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        logger.info(
            "grpc server listening",
            extra={"address": f"{self.settings.host}:{self.port}", "services": names},
        )
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in (*self._service_names, ""):
            await self.health.set(name, status)

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING first, then give in-flight RPCs `grace` seconds, then cleanups."""
        grace = self.settings.drain_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if grace > 0 and self.settings.drain_delay_seconds > 0:
            logger.info(
                "not serving; waiting for traffic to move away",
                extra={"delay_s": self.settings.drain_delay_seconds},
            )
            await asyncio.sleep(self.settings.drain_delay_seconds)
        logger.info("draining", extra={"grace_s": grace})
        await self.server.stop(grace)
        for fn in reversed(self._cleanups):
            try:
                await fn()
            except Exception:
                logger.exception("cleanup failed")
        logger.info("stopped")

    async def serve_until_signalled(self) -> None:
        """Run until SIGTERM/SIGINT, then drain and stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self._stopping.wait()
        logger.info("termination signal received")
        await self.stop()


def bootstrap(settings: ServiceSettings) -> None:
    """Process-wide set-up: logging, tracing, the /metrics endpoint."""
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    configure_tracing(settings.service_name)
    start_metrics_server(settings.metrics_port, settings.host)
