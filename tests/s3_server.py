"""moto's S3 server on localhost for the tests of outputs on an object store: started once per module on a free
port, stopped by its pid. Credentials and endpoint come from the environment, as a user's would; nothing leaves the
machine."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true"}  # no wait for an instance-metadata endpoint when credentials are missing


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_filesystems() -> None:
    """Forget s3fs's cached filesystems (their credentials were resolved when they were made)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The endpoint URL of a moto S3 server with an empty bucket `fluxflow`, in this process's environment."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "moto's S3 server did not start"
                time.sleep(0.1)
        with pytest.MonkeyPatch.context() as monkeypatch:
            for key, value in {**ENV, "AWS_ENDPOINT_URL": endpoint}.items():
                monkeypatch.setenv(key, value)
            fresh_filesystems()
            import fsspec

            fsspec.filesystem("s3").mkdir("fluxflow")
            yield endpoint
            fresh_filesystems()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
