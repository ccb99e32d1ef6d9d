"""A real ``mlflow server`` for the tests that need one (tracking, lineage, the UI)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

SERVER_START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class MlflowServer:
    """A real ``python -m mlflow server`` with a sqlite backend, serving artifacts from a folder.

    It runs in its own process group (uvicorn is a child process of ``mlflow server``), and is
    stopped through that group, whose id is this Popen's pid.
    """

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.db = root / "server.db"
        self.artifacts = root / "artifacts"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "server.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no huey workers
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server",
                 "--backend-store-uri", f"sqlite:///{self.db}",
                 "--artifacts-destination", str(self.artifacts),
                 "--workers", "1", "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=root,
                env=env,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:]

    def wait_healthy(self, timeout: float = SERVER_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"mlflow server not healthy on {self.uri} after {timeout:.0f} s:\n{self.output()}")

    def _signal_group(self, sig: int) -> bool:
        try:
            os.killpg(self.proc.pid, sig)
            return True
        except ProcessLookupError:
            return False

    def stop(self) -> None:
        """Terminate the whole group, killing it if it lingers; return once the port is closed."""
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while self._signal_group(0) and time.monotonic() < deadline:
            self.proc.poll()  # reap the leader so the group can vanish
            time.sleep(0.2)
        if self._signal_group(signal.SIGKILL):
            time.sleep(0.5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
            pass
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not port_open(self.port), f"port {self.port} still open after stopping the server"
