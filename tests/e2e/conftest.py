"""The whole platform on free loopback ports, started once for the e2e session."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from parley_devstack.procs import free_port
from parley_devstack.stack import Ports, Stack, down, up


@pytest.fixture(scope="session")
def platform() -> Iterator[Stack]:
    ports = Ports(
        postgres=free_port(), redis=free_port(), livekit=free_port(), livekit_tcp=free_port(),
        livekit_udp=free_port(), emulator=free_port(), router=free_port(), vision=free_port(),
        kb=free_port(), billing=free_port(), kb_rest=free_port(), billing_rest=free_port(),
        agent_health=free_port(), metrics_base=free_port(),
    )
    # metrics ports are metrics_base+1..+5: pick a base whose next five are free enough
    stack = Stack(Path(tempfile.mkdtemp(prefix="parley-e2e-")), ports)
    (stack.dir).chmod(0o755)
    try:
        up(stack)
        yield stack
    finally:
        down(stack)
