"""Start a real ``inferno serve`` on the default model for integration tests and benchmarks."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["ServeProcess", "free_port"]


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``inferno serve`` in a subprocess; `start` waits until /health/ready passes."""

    def __init__(self, *extra: str, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra: Sequence[str] = extra
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 180.0) -> ServeProcess:
        """Launch and wait for readiness (raises with the log tail on failure)."""
        cmd = [sys.executable, "-m", "inferno_backend.cli", "serve", "--port", str(self.port)]
        out: Any = subprocess.DEVNULL
        if self.log_path is not None:
            self._log = out = self.log_path.open("wb")
        self.proc = subprocess.Popen([*cmd, *self.extra], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"inferno serve exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"inferno serve did not become ready within {timeout} s")

    def get_json(self, path: str) -> dict[str, object]:
        """GET ``path`` and decode the JSON body."""
        with urllib.request.urlopen(self.url + path, timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def terminate(self) -> None:
        """Send SIGTERM (graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM and wait; kill if it does not exit. Returns the exit status."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
