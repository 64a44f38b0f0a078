"""A real `mlflow server` on 127.0.0.1 for tests, in a process group of its own, that a test can kill and start again
on the same port and store (a tracking-server outage)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """`mlflow server` over a sqlite store: `start()`, `kill()` (its whole process group, at once), `start()` again."""

    def __init__(self, directory: Path, template_db: Path):
        self.directory, self.port = directory, free_port()
        self.db = directory / "mlflow.db"
        self.db.write_bytes(template_db.read_bytes())  # an initialised store: creating one costs seconds
        self.process: subprocess.Popen | None = None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> float:
        """Start it and wait until it answers; returns the seconds that took."""
        began = time.monotonic()
        mlflow = Path(sys.executable).parent / "mlflow"
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job-runner processes
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.directory / "mlflow-server.log", "a") as log:
            self.process = subprocess.Popen(
                [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.db}", "--artifacts-destination",
                 str(self.directory / "artifacts")],
                cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - began < timeout:
            assert self.process.poll() is None, (self.directory / "mlflow-server.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - began
            time.sleep(0.2)
        raise TimeoutError(f"mlflow server not answering on {self.uri} after {timeout} s")

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None
