"""Run the emulator in a background thread (tests, benchmarks) or a child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from .app import create_app
from .state import EmulatorConfig, EmulatorState


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Urls:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def anthropic_base_url(self) -> str:
        """For ``AsyncAnthropic(base_url=...)`` (the SDK appends ``/v1/messages``)."""
        return self.url

    @property
    def gemini_base_url(self) -> str:
        """For ``types.HttpOptions(base_url=...)``."""
        return self.url

    @property
    def voyage_base_url(self) -> str:
        """For ``voyageai.AsyncClient(base_url=...)`` (must include ``/v1``)."""
        return self.url + "/v1"


class EmulatorServer(_Urls):
    """The emulator on a free port in a daemon thread with its own event loop.

    >>> with EmulatorServer() as emu:
    ...     client = AsyncAnthropic(api_key="k", base_url=emu.anthropic_base_url)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        config: EmulatorConfig | None = None,
        log_level: str = "warning",
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port
        self.app = create_app(config)
        self.state: EmulatorState = self.app.state.emulator
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> EmulatorServer:
        sock = bind_socket(self.host, self._requested_port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level=self._log_level,
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
            backlog=2048,
        )
        server = uvicorn.Server(config)
        self._server = server

        def run() -> None:
            server.run(sockets=[sock])

        self._thread = threading.Thread(target=run, name="parley-emulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("provider emulator did not start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._server = None
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmulatorProcess(_Urls):
    """The emulator as a child process (``python -m parley_emulator``) on a free port."""

    def __init__(self, host: str = "127.0.0.1", extra_args: list[str] | None = None) -> None:
        self.host = host
        self.port = 0
        self._extra = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> EmulatorProcess:
        with tempfile.TemporaryDirectory() as tmp:
            port_file = Path(tmp) / "port"
            cmd = [
                sys.executable, "-m", "parley_emulator",
                "--host", self.host, "--port", "0", "--port-file", str(port_file), *self._extra,
            ]
            self.proc = subprocess.Popen(cmd, env=dict(os.environ))
            deadline = time.monotonic() + timeout
            while True:
                if port_file.exists() and port_file.read_text().strip():
                    self.port = int(port_file.read_text().strip())
                    break
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("provider emulator process did not start")
                time.sleep(0.02)
        wait_healthy(self.url, timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def wait_healthy(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/healthz did not answer")
        time.sleep(0.05)
