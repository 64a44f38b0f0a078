"""flows/prefect_server.py: the temporary Prefect server that fluxflow-train starts, when its port is taken."""
from __future__ import annotations

import contextlib
import http.server
import threading

import pytest

from binary_server import binary_protocol_server

from flows import prefect_server


class UvicornThatFoundItsPortTaken:
    """The server's process: running for a moment, then exited with uvicorn's code for a port in use."""

    def __init__(self) -> None:
        self.polls = 0

    def poll(self) -> int | None:
        self.polls += 1
        return None if self.polls == 1 else prefect_server._PORT_IN_USE


class Running:
    def poll(self) -> None:
        return None


@contextlib.contextmanager
def health_server(seen: list | None = None):
    """What the restarted Prefect server answers: 200 on /api/health (and to the warm-up's requests, each recorded in
    `seen` as (method, path))."""
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if seen is not None:
                seen.append(("GET", self.path))
            self.send_response(200 if self.path == "/api/health" or seen is not None else 404)
            self.end_headers()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if seen is not None:
                seen.append(("POST", self.path))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_port_another_protocol_took_is_not_an_answer_and_the_server_starts_again_elsewhere():
    """CI at 8d7694b: the port picked for the temporary server was taken before uvicorn bound it (by a process not
    identified, beside the test), the health check read that process's binary answer, and http.client's
    BadStatusLine ended the run with a traceback."""
    with binary_protocol_server() as taken, health_server() as free:
        server = prefect_server.TemporaryServer()
        server.port, server.process = taken, UvicornThatFoundItsPortTaken()

        def start_again():  # TemporaryServer.start on a new free port, without a real Prefect server
            server.port, server.process = free, Running()
            return server

        server.start = start_again
        assert server.wait_ready(10) == f"http://127.0.0.1:{free}/api"


def test_the_flows_first_requests_reach_a_new_server_as_soon_as_it_answers_and_none_before():
    """Each first request of a kind cost a new server 0.25 s (the flow's first GET admin/version and POST flow_runs/);
    the warm-up makes them (reading only) while fluxflow-train still imports, on the server's core."""
    seen: list = []
    with health_server(seen) as port:
        server = prefect_server.TemporaryServer()
        server.port, server.process = port, Running()
        server._warm_up(timeout_s=10)
    assert seen[0] == ("GET", "/api/health")
    assert [r for r in seen if r[1] != "/api/health"] == [
        ("GET", "/api/admin/version"), ("POST", "/api/flow_runs/filter"), ("POST", "/api/task_runs/filter")]


def test_a_server_that_exits_before_it_answers_is_not_waited_for_by_the_warm_up():
    class Exited:
        def poll(self) -> int:
            return 1

    with binary_protocol_server() as taken:  # something on the port that is not the server
        server = prefect_server.TemporaryServer()
        server.port, server.process = taken, Exited()
        done = threading.Thread(target=server._warm_up, kwargs={"timeout_s": 30})
        done.start()
        done.join(5)
        assert not done.is_alive()


def test_a_ctrl_c_inside_the_servers_start_stops_the_server_without_a_word(tmp_path, monkeypatch, capsys):
    """CI at 88cf866: the Ctrl-C came while the server's start made its warm-up thread, after its process had started:
    `main` had no server to stop, so the exit handler stopped it with "Stopping temporary server" as the last line
    instead of the one line about the interruption."""
    from train_cli import write_vae_pipeline

    from flows import cli_train

    class ServerProcess:  # the uvicorn process, already running when the Ctrl-C comes
        pid, stopped = 12345, False

        def poll(self) -> int | None:
            return 0 if self.stopped else None

        def terminate(self) -> None:
            self.stopped = True

        def wait(self, timeout: float | None = None) -> int:
            return 0

    class CtrlCWhileStarting(threading.Thread):
        def start(self) -> None:
            raise KeyboardInterrupt

    process = ServerProcess()
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    monkeypatch.setattr(prefect_server, "_started", None)
    monkeypatch.setattr(prefect_server.subprocess, "Popen", lambda *args, **kwargs: process)
    monkeypatch.setattr(prefect_server.threading, "Thread", CtrlCWhileStarting)
    config, _ = write_vae_pipeline(tmp_path, 4, 4, "ctrl-c")

    assert cli_train.main(["--config", str(config)]) == 130
    assert process.stopped
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "Interrupted before training started: nothing was trained or changed."
    prefect_server.started_server().stop()  # what the exit handler does: nothing more to stop, nothing said
    assert capsys.readouterr().err == ""


def test_the_record_of_a_kept_server_that_was_stopped_is_removed(tmp_path, monkeypatch):
    """A run kept its server (--keep-server), the user stopped it with the printed `kill PID`: the next run found the
    pid gone and started its own, and the record stayed in PREFECT_HOME for good."""
    import subprocess
    import sys

    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no process holds now
    record = tmp_path / prefect_server.KEPT_SERVER_FILE
    record.write_text(f'{{"pid": {gone.pid}, "port": 1}}')
    assert prefect_server.TemporaryServer.kept() is None
    assert not record.exists()
    record.write_text('{"pid": 1, "port": 1}')  # a live process that does not answer: left for a later run
    assert prefect_server.TemporaryServer.kept() is None
    assert record.exists()


def test_a_second_ctrl_c_while_the_server_stops_kills_it_without_a_traceback(capsys):
    """Ctrl-C twice, 0.1-0.2 s apart: the second came while the exit handler waited for the server to stop, and
    printed "Exception ignored in atexit callback ... KeyboardInterrupt" under the run's last line."""
    class Stopping:
        pid, killed = 12345, False

        def poll(self) -> int | None:
            return None

        def terminate(self) -> None:
            pass

        def kill(self) -> None:
            self.killed = True

        def wait(self, timeout: float | None = None) -> int:
            if timeout is not None:  # the wait for a clean stop, where the second Ctrl-C lands
                raise KeyboardInterrupt
            return 0

    server = prefect_server.TemporaryServer()
    server.process = process = Stopping()
    try:
        server.stop(quiet=True)
    except KeyboardInterrupt:  # caught here: escaping, it would end the whole test session
        pytest.fail("the second Ctrl-C escaped the server's stop")
    assert process.killed and server.process is None
