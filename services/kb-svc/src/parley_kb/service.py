"""`serve`: the gRPC service and the admin REST API in one process, drained together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator

import uvicorn
from parley.kb.v1 import kb_pb2_grpc
from parley_runtime.server import GrpcServiceHost, bootstrap, make_signer, make_verifier
from parley_runtime.usage import make_usage_recorder

from .admin_api import create_admin_app
from .app import build_runtime
from .config import KbTenants, Settings
from .server import SERVICE_NAME, KnowledgeBaseServicer

logger = logging.getLogger(__name__)


class AdminServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the gRPC host owns SIGTERM and drains both."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(settings: Settings) -> None:
    bootstrap(settings)
    tenants = KbTenants.from_settings(settings)
    signer = make_signer(settings)
    recorder = make_usage_recorder(settings.service_name, signer)
    runtime = await build_runtime(settings, tenants=tenants, recorder=recorder)
    host = GrpcServiceHost(settings)
    kb_pb2_grpc.add_KnowledgeBaseServiceServicer_to_server(
        KnowledgeBaseServicer(runtime.kb), host.server
    )
    host.add_service_name(SERVICE_NAME)
    host.on_shutdown(runtime.aclose)

    async def close_recorder() -> None:
        await recorder.flush(5.0)
        await recorder.close()

    host.on_shutdown(close_recorder)

    admin_task: asyncio.Task[None] | None = None
    if settings.admin_port:
        app = create_admin_app(
            runtime.kb,
            verifier=None if settings.auth_disabled else make_verifier(settings),
            max_body_bytes=settings.max_message_bytes,
            ops=runtime.ops,
            operators=settings.kb_operator_callers,
            reembed_batch_chunks=settings.kb_reembed_batch_chunks,
        )
        admin = AdminServer(
            uvicorn.Config(
                app, host=settings.host, port=settings.admin_port, log_config=None,
                access_log=False, lifespan="off",
            )
        )
        admin_task = asyncio.create_task(admin.serve(), name="kb-admin-api")

        async def stop_admin() -> None:
            admin.should_exit = True
            if admin_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(admin_task, settings.drain_seconds + 5)

        host.on_shutdown(stop_admin)
        logger.info("admin REST API listening", extra={"port": settings.admin_port})
    try:
        await host.start()
        await host.serve_until_signalled()
    finally:
        if admin_task is not None and not admin_task.done():
            admin_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await admin_task
