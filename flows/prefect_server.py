"""The temporary Prefect API server that `fluxflow-train` runs its flow on when no PREFECT_API_URL is set.

Started by us rather than by Prefect, for two reasons.

Speed: it is started first thing, before this process imports torch, Prefect and MLflow, so that its start (3 s with an
existing database, 4 s with a new one copied from a template, 10-15 s with one made without: flows/prefect_app.py, on
2 cores) overlaps those imports instead of following them. This module therefore imports nothing of Prefect; the flow
then talks to the server as to any other (PREFECT_API_URL for the run), and Prefect's own server package
(`prefect.server.api.server`, about 1 s of imports) is never loaded in this process.

Signals: Prefect would start it as a plain child, in the trainer's process group. A signal to the whole group — what
`timeout`, systemd's stop, a closing terminal or a container runtime send — then kills the server together with the
trainer, and the trainer, still reporting its flow's end, waits minutes in Prefect's client retries on a server that is
gone. Here the server lives in a session of its own: a group signal reaches only the trainer, which saves its step,
records the end of its flow on a server still there, and stops the server itself. The server also dies with the
trainer (SIGTERM from the kernel when its parent dies; Linux: fluxflow/runtime/parent_death.py), so a `kill -9` of the
trainer leaves no orphan behind. "Its parent" is the thread that started it: start it from the main thread.
"""
from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from fluxflow.runtime.parent_death import dies_with_this_thread

KEPT_SERVER_FILE = "fluxflow-prefect-server.json"  # beside Prefect's database: the server a run kept (--keep-server)
_PORT_IN_USE = 3  # uvicorn's exit code when the port is taken (another process bound it since we picked it)
# What Prefect's own temporary server sets (prefect 3.9's `SubprocessASGIServer._run_uvicorn_command`, pinned in
# pyproject.toml): no UI, the server's services in their ephemeral configuration.
_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}


# The first request of each kind costs a new server about 0.25 s of its own start-up (measured on 2 cores: the flow's
# first `GET admin/version` and `POST flow_runs/`, 0.24 s each, 0.005 and 0.02 s on a server that had answered one).
# These read and write nothing; made as soon as the server answers, by a thread that only waits on sockets, they cost
# the server's process that time while this one still imports torch, Prefect and MLflow.
_WARM_UP = (("GET", "/admin/version", None), ("POST", "/flow_runs/filter", {"limit": 1}),
            ("POST", "/task_runs/filter", {"limit": 1}))


class ServerNotReady(RuntimeError):
    """The temporary server did not answer its health check in time, or exited."""


class TemporaryServer:
    """A Prefect API server (uvicorn on 127.0.0.1, the default database under PREFECT_HOME) started by fluxflow-train:
    stopped at the end of the run, or, when the user asks (`keep`), left running for later runs, which find it through
    a file beside Prefect's database (`kept()`)."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.port = 0
        self.pid: int | None = None
        self.process: subprocess.Popen | None = None
        self._ready = False

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> "TemporaryServer":
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:  # a free port
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        first = self.process is None  # not again for a restart on another port (wait_ready)
        if first:
            atexit.register(self.stop)
        self.process = subprocess.Popen(
            # --app-dir: where this package is, not the working directory (a folder `flows` there would be taken)
            [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(__file__).resolve().parents[1]), "--factory",
             "flows.prefect_app:create_app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, **_SERVER_ENV}, start_new_session=True,
            preexec_fn=None if self.keep else dies_with_this_thread(),
            stdout=subprocess.DEVNULL if self.keep else None, stderr=subprocess.DEVNULL if self.keep else None,
        )
        self.pid = self.process.pid
        if self.keep:  # at once, so that a run refused after this point still leaves it findable
            _kept_file().parent.mkdir(parents=True, exist_ok=True)
            _kept_file().write_text(json.dumps({"pid": self.pid, "port": self.port}))
        if first:
            threading.Thread(target=self._warm_up, name="prefect-server-warm-up", daemon=True).start()
        return self

    def _warm_up(self, timeout_s: float = 60.0) -> None:
        """`_WARM_UP`'s requests, once the server answers (on whichever port it ends up); nothing if it never does."""
        deadline = time.monotonic() + timeout_s
        while not self._healthy():
            process = self.process
            if time.monotonic() > deadline or process is None or process.poll() not in (None, _PORT_IN_USE):
                return
            time.sleep(0.05)
        for method, path, body in _WARM_UP:
            data = None if body is None else json.dumps(body).encode()
            request = urllib.request.Request(self.api_url + path, data=data, method=method,
                                             headers={"Content-Type": "application/json"})
            with contextlib.suppress(OSError, http.client.HTTPException):
                urllib.request.urlopen(request, timeout=10).close()

    @classmethod
    def kept(cls) -> "TemporaryServer | None":
        """The server an earlier run kept for this PREFECT_HOME, if it still answers. The record of one that is gone
        (stopped with the `kill` its run printed) is removed; one whose process lives but does not answer (busy, or
        its pid taken by another process) is left for a later run."""
        try:
            found = json.loads(_kept_file().read_text())
            server = cls(keep=True)
            server.port, server.pid = int(found["port"]), int(found["pid"])
            os.kill(server.pid, 0)
        except ProcessLookupError:
            _kept_file().unlink(missing_ok=True)
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        server._ready = server._healthy()
        return server if server._ready else None

    def wait_ready(self, timeout_s: float) -> str:
        """Block until the server answers its health check; returns its API URL. A taken port (another process bound
        it after we picked it) starts it again on another one, as Prefect does."""
        deadline = time.monotonic() + timeout_s
        while not self._ready:
            code = self.process.poll() if self.process else None
            if code == _PORT_IN_USE:
                self.start()
            elif code is not None:
                raise ServerNotReady(f"the temporary Prefect server exited with code {code} before it answered")
            if time.monotonic() > deadline:
                raise ServerNotReady(f"the temporary Prefect server did not answer within {timeout_s:.0f} s "
                                     "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
            self._ready = self._healthy()
            if not self._ready:
                time.sleep(0.05)
        return self.api_url

    def _healthy(self) -> bool:
        """Whether the server answers its health check. Another process that holds the port until the server has
        found it taken is not an answer (once in CI one answered in a binary protocol: http.client's BadStatusLine)."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                return response.status == 200
        except (OSError, http.client.HTTPException):  # OSError: urllib's URLError, refused, reset, timed out
            return False

    def stop(self, quiet: bool = False) -> None:
        """At the end of the run: stop it, or say where it is kept and how to stop it. `quiet`: without saying that it
        stops (a run refused before training: its refusal is the line to read)."""
        if self.keep:
            if self.pid is not None:
                print(f"Prefect server kept running on http://127.0.0.1:{self.port} for later runs (pid {self.pid}; "
                      f"stop it with: kill {self.pid})", file=sys.stderr, flush=True)
                self.pid = None
            return
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            if not quiet:
                print(f"Stopping temporary server on http://127.0.0.1:{self.port}", file=sys.stderr, flush=True)
            process.terminate()
            try:
                process.wait(timeout=5)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C while it stops: no traceback
                process.kill()
                process.wait()


def _kept_file() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser() / KEPT_SERVER_FILE


_started: TemporaryServer | None = None


def start_temporary_server(keep: bool = False) -> TemporaryServer | None:
    """The server the flow will use, unless the environment names one (PREFECT_API_URL): the one an earlier run kept
    (`keep=True` there), else a new one, stopped at exit unless `keep`. Calling it again returns the same one. A
    server named in the Prefect profile rather than the environment is only known once Prefect is imported:
    `api_url_for_run` then stops this one unused."""
    global _started
    if _started is not None and (_started.process is not None or _started.keep):
        return _started
    if os.environ.get("PREFECT_API_URL"):
        return None
    _started = TemporaryServer.kept()
    if _started is not None:
        print(f"Using the Prefect server an earlier run kept on http://127.0.0.1:{_started.port} (pid {_started.pid})",
              file=sys.stderr, flush=True)
        return _started
    _started = TemporaryServer(keep)  # first: a Ctrl-C that cuts its start short still finds it (`started_server`)
    return _started.start()


def started_server() -> TemporaryServer | None:
    """The server `start_temporary_server` started or found, also when a Ctrl-C ended its start before it returned
    (the caller then has no server to stop, while its process may already run)."""
    return _started


def api_url_for_run() -> str | None:
    """The API URL the flow must use: the temporary server's (started now if it was not), once it answers; None when
    Prefect's settings name a server (PREFECT_API_URL in the environment or the profile): the flow uses that one."""
    from flows import env  # noqa: F401  (must precede prefect)
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    if PREFECT_API_URL.value():
        if _started is not None:
            _started.stop()
        return None
    server = start_temporary_server()
    return server.wait_ready(float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))


def is_temporary(api_url: str | None) -> bool:
    """Whether `api_url` is the temporary server of this process: it has no UI and ends with the run, so no link to
    it is worth recording."""
    return _started is not None and api_url == _started.api_url


def is_own_temporary(api_url: str | None) -> bool:
    """Whether `api_url` is the temporary server this process started for its run alone (not a kept one, which a
    user may have given a `gpu` limit)."""
    return is_temporary(api_url) and kept_server_of(api_url) is None


def kept_server_of(api_url: str | None) -> TemporaryServer | None:
    """The temporary server of this process at `api_url` when it is kept (--keep-server, or an earlier run's): it
    outlives the run, on a port of its own, and serves the API only (no UI)."""
    return _started if is_temporary(api_url) and _started.keep else None
