"""Start a real, throw-away etcd for tests: free ports, a temporary data dir, its own log.

Usage from a test or fixture::

    from tests.integration.etcd_server import EtcdServer, require_etcd

    with EtcdServer(tmp_path / "etcd", binary=require_etcd()) as etcd:
        discovery = EtcdDiscovery(etcd.endpoint)
        ...
        etcd.stop()      # graceful; etcd.kill() for SIGKILL
        etcd.start()     # same ports and data dir: a restart

`require_etcd()` skips the calling test when no ``etcd`` binary is found, except under
``CI=true``, where a missing etcd fails instead (CI must never go green by skipping).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

__all__ = ["EtcdServer", "EtcdStartError", "find_etcd", "free_port", "require_etcd"]


class EtcdStartError(RuntimeError):
    """etcd did not become healthy; the message carries the tail of its log."""


def find_etcd() -> str | None:
    """The path of the ``etcd`` binary (``$ETCD_BINARY``, then ``PATH``), or None."""
    explicit = os.environ.get("ETCD_BINARY")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("etcd")


def require_etcd() -> str:
    """The ``etcd`` binary; skip the test without one, or fail when ``CI=true``."""
    binary = find_etcd()
    if binary is not None:
        return binary
    message = "etcd binary not found (install it with .ci/install-etcd, or set ETCD_BINARY)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI=true, so this is an error, not a skip", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EtcdServer:
    """One single-member etcd process on 127.0.0.1, owned by a test.

    Ports are chosen once, so `stop` then `start` is a restart on the same address with the same
    data (``data_dir``). The process's output goes to ``log_path`` (next to the data dir).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: str | None = None,
        client_port: int | None = None,
        peer_port: int | None = None,
    ) -> None:
        self.binary = binary or require_etcd()
        self.data_dir = Path(data_dir)
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """The client URL, ``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        """The discovery URL, ``etcd://127.0.0.1:PORT``."""
        return f"etcd://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """The etcd command line."""
        client = self.endpoint
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary,
            "--name=default",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--log-level=warn",
        ]

    def start(self, timeout: float = 15.0) -> None:
        """Start etcd and wait until ``/health`` says it is serving."""
        if self.running:
            return
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EtcdStartError(f"etcd exited with {self._process.returncode}\n{self._tail()}")
            if self.healthy():
                return
            time.sleep(0.05)
        self.kill()
        raise EtcdStartError(f"etcd was not healthy after {timeout:.0f} s\n{self._tail()}")

    def healthy(self) -> bool:
        """Whether etcd answers ``/health`` with ``{"health": "true"}``."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=0.5) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop etcd gracefully (SIGTERM), killing it if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """Stop etcd abruptly (SIGKILL), like a crash."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again on the same ports and data dir."""
        self.stop()
        self.start()

    def _tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no etcd log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
