"""`python -m parley_vision` as deployed: env settings, tenants file, health, a stream, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from parley.common.v1 import common_pb2
from parley.vision.v1 import vision_pb2, vision_pb2_grpc
from parley_runtime import context
from parley_runtime.testing import TEST_KEYS, free_port, signed_channel
from vision_corpus import _slide, rgb_to_i420

pytestmark = pytest.mark.integration


async def _wait_serving(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        for _ in range(300):
            try:
                r = await health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service="parley.vision.v1.VisionService"),
                    timeout=0.5,
                )
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail("vision-svc never became SERVING")


async def test_the_service_process_serves_a_stream_and_drains(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants:\n  acme:\n    vision:\n      jpeg_quality: 70\n")
    port = free_port()
    env = dict(os.environ, PARLEY_GRPC_PORT=str(port), PARLEY_METRICS_PORT="0",
               PARLEY_AUTH_KEYS=json.dumps(TEST_KEYS), PARLEY_TENANTS_FILE=str(tenants),
               PARLEY_DRAIN_SECONDS="2", PARLEY_DRAIN_DELAY_SECONDS="0")
    proc = subprocess.Popen([sys.executable, "-m", "parley_vision"], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        await _wait_serving(port)
        a = rgb_to_i420(np.asarray(_slide(0, "1 / 2", 50)))[0]
        b = rgb_to_i420(np.asarray(_slide(1, "2 / 2", 51)))[0]

        async def requests() -> AsyncIterator[vision_pb2.ProcessFramesRequest]:
            yield vision_pb2.ProcessFramesRequest(config=vision_pb2.StreamConfig(
                session_id="s", track_id="t", source=common_pb2.TRACK_SOURCE_SCREEN_SHARE,
                source_fps=30))
            for i, data in enumerate([a] * 10 + [b] * 10):
                yield vision_pb2.ProcessFramesRequest(frame=vision_pb2.Frame(
                    sequence=i, timestamp_us=i * 33_333, format=vision_pb2.FRAME_FORMAT_I420,
                    width=1280, height=720, data=data))

        token = context.tenant_id_var.set("acme")
        try:
            async with signed_channel(port, service="agent-worker") as ch:
                out = [r async for r in vision_pb2_grpc.VisionServiceStub(ch).ProcessFrames(
                    requests(), timeout=30)]
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    context.tenant_id_var.set("nobody")
                    await vision_pb2_grpc.VisionServiceStub(ch).GetTenantStats(
                        vision_pb2.GetTenantStatsRequest(), timeout=5)
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            context.tenant_id_var.reset(token)
        kept = [r.decision.sequence for r in out
                if r.WhichOneof("payload") == "decision"
                and r.decision.decision == vision_pb2.DECISION_KEEP]
        assert kept == [0, 10]
        assert out[-1].stats.stats.frames_seen == 20

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr = proc.communicate()[1]
    assert "stream ended" in stderr  # the JSON log of the stream's end


async def test_a_bad_tenants_file_stops_the_process_with_the_reason(tmp_path: Path) -> None:
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants:\n  acme:\n    vision:\n      jpeg_qualty: 70\n")
    env = dict(os.environ, PARLEY_GRPC_PORT=str(free_port()), PARLEY_METRICS_PORT="0",
               PARLEY_AUTH_KEYS=json.dumps(TEST_KEYS), PARLEY_TENANTS_FILE=str(tenants))
    proc = subprocess.run([sys.executable, "-m", "parley_vision"], env=env, timeout=60,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "tenant 'acme'" in proc.stderr and "jpeg_qualty" in proc.stderr
