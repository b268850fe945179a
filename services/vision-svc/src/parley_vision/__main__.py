"""Entry point: `python -m parley_vision` (wiring only)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from parley.vision.v1 import vision_pb2_grpc
from parley_runtime.server import GrpcServiceHost, bootstrap, make_signer
from parley_runtime.tenants import TenantRegistry
from parley_runtime.usage import make_usage_recorder

from . import kernels
from .config import Settings
from .cpu import limit_blas_threads
from .log import logger
from .server import VisionServicer
from .tenant_config import load_vision_configs


async def main() -> None:
    settings = Settings()
    bootstrap(settings)
    limit_blas_threads()
    # Compile (first start on a machine) or load the per-frame kernels before serving, so that
    # no frame waits for the compiler.
    started = time.perf_counter()
    kernels.warm_up()
    logger.info("kernels ready", extra={"seconds": round(time.perf_counter() - started, 2)})
    if not settings.tenants_file:
        raise SystemExit("PARLEY_TENANTS_FILE is not set: vision-svc needs the tenant configs")
    try:
        registry = TenantRegistry.from_file(settings.tenants_file)
        configs = load_vision_configs(registry)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot load tenants from {settings.tenants_file}: {exc}") from None
    usage = make_usage_recorder("vision-svc", make_signer(settings))
    encoders = ThreadPoolExecutor(settings.encode_threads, thread_name_prefix="jpeg")
    servicer = VisionServicer(
        settings=settings,
        tenants=registry,
        vision_configs=configs,
        usage=usage,
        encode_executor=encoders,
    )
    # BDP probing grows each stream's transport buffer to several 1.4 MB frames.
    host = GrpcServiceHost(settings, extra_options=[("grpc.http2.bdp_probe", 0)])
    vision_pb2_grpc.add_VisionServiceServicer_to_server(servicer, host.server)
    host.add_service_name("parley.vision.v1.VisionService")

    async def close_usage() -> None:
        await usage.flush(timeout=settings.drain_seconds)
        await usage.close()

    async def stop_encoders() -> None:
        encoders.shutdown(wait=False, cancel_futures=True)

    host.on_shutdown(stop_encoders)
    host.on_shutdown(close_usage)
    await host.start()
    await host.serve_until_signalled()


if __name__ == "__main__":
    asyncio.run(main())
