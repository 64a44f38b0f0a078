"""The temporary Prefect API server that `fluxflow-train` runs its flow on when no PREFECT_API_URL is set.

Prefect starts one by itself (`SubprocessASGIServer`) as a plain child, in the trainer's process group. A signal to
the whole group — what `timeout`, systemd's stop, a closing terminal or a container runtime send — then kills the
server together with the trainer, and the trainer, still reporting its flow's end, waits minutes in Prefect's client
retries on a server that is gone. Started here instead, the server lives in a session of its own: a group signal
reaches only the trainer, which saves its step, records the end of its flow on a server still there, and stops the
server itself. The server also dies with the trainer (SIGTERM from the kernel when its parent dies; Linux), so a
`kill -9` of the trainer leaves no orphan behind. "Its parent" is the thread that started it: start it from the
main thread (`run_pipeline_flow` is called from there).

Registered as Prefect's default temporary server (the `None` port), so every Prefect client of this process that
would start one finds this one running (as `prefect.testing.utilities.prefect_test_harness` does).
"""
from __future__ import annotations

from flows import env  # noqa: F401  (must precede prefect)

import ctypes
import os
import signal
import subprocess
import sys
from typing import Any

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import PREFECT_API_URL, get_current_settings

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """In the server's process, before it runs: SIGTERM when the trainer dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: stopping it is left to the trainer's exit path
        return
    if os.getppid() != parent:  # the trainer died before prctl took effect
        os._exit(1)


class OwnSessionServer(SubprocessASGIServer):
    """`SubprocessASGIServer`, started in a session of its own and tied to this process's life."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        # The command and environment of prefect 3.9's `SubprocessASGIServer._run_uvicorn_command` (pinned in
        # pyproject.toml); only the process's session and parent-death signal differ.
        server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        parent = os.getpid()
        return subprocess.Popen(
            args=[sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                  "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                  "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, **server_env, **get_current_settings().to_environment_variables(exclude_unset=True)},
            start_new_session=True, preexec_fn=lambda: _die_with_parent(parent),
        )


def start_temporary_server() -> OwnSessionServer | None:
    """Start the temporary server the flow will use, unless PREFECT_API_URL names a server. Stop it with `.stop()`
    (also registered at exit)."""
    if PREFECT_API_URL.value():
        return None
    server = OwnSessionServer()
    server.start()
    return server
