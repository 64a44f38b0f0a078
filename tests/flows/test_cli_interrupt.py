"""Ctrl-C or SIGTERM on `fluxflow-train`: the step stops at the next batch and saves it, instead of training to its
end (Ctrl-C) or losing the batches since its last checkpoint (SIGTERM).

The flow trains in Prefect task threads while Ctrl-C reaches the main thread; without a stop request the interrupted
run would keep training until the step finished. The child here is the real CLI on the session's Prefect test API,
with a step of 1,000 tiny batches that a working interrupt stops long before its end.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers_tiny import load_weights
from mlflow.tracking import MlflowClient
from process_groups import alive, child_pids, group_alive, kill_all
from train_cli import child_env, kill_group_when, start_train, training_records, write_vae_pipeline

from flows.cli_train import GO_ON

pytestmark = pytest.mark.slow

N_BATCHES = 1000


def logged_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("signum, to_group", [
    (signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGTERM, True), (signal.SIGINT, True),
], ids=["ctrl-c", "sigterm", "group-sigterm", "group-ctrl-c"])
def test_an_interrupt_saves_the_batch_reached_and_the_step_run_is_killed(signum, to_group, tmp_path, prefect_api,
                                                                          mlflow_store):
    """SIGINT to the trainer alone is Ctrl-C (exit 130), on the session's Prefect API. SIGTERM is what `docker stop`
    and `kill` send (exit 143). The other children start Prefect's temporary API server, as `fluxflow-train` does by
    default, which must not outlive them. A signal to the whole process group (`timeout`, systemd's stop, a closing
    terminal, a terminal's Ctrl-C) must not take that server away from the trainer while it saves and reports its
    end: the trainer then hung for minutes in Prefect's client retries (flows/prefect_server.py)."""
    from prefect.settings import PREFECT_API_URL

    config_file, out = write_vae_pipeline(tmp_path, N_BATCHES, N_BATCHES, "interrupt")
    log = tmp_path / "fluxflow-train.log"
    env = child_env()
    if signum == signal.SIGINT and not to_group:
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    else:
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    # A shell that starts jobs in the background ignores SIGINT in them; a terminal's Ctrl-C does not.
    child = start_train(config_file, env, log, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    children: list[int] = []
    try:
        metrics = out / "graph" / "training_metrics_warm.jsonl"
        deadline = time.monotonic() + 240
        while logged_lines(metrics) < 3 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, log.read_text()
        assert logged_lines(metrics) >= 3, "the step did not start training in time"
        children = child_pids(child.pid)  # the temporary Prefect server, in a session of its own
        (os.killpg if to_group else os.kill)(child.pid, signum)
        signalled = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=60)
        exit_s = time.monotonic() - signalled if child.poll() is not None else float("inf")
        time.sleep(0.5)
        left_behind = group_alive(child.pid) or any(map(alive, children))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        kill_all(children)
        child.wait()

    output = log.read_text(errors="replace")
    assert exit_s < 30, f"exited {exit_s:.1f} s after the signal:\n{output[-3000:]}"
    assert not left_behind, f"a process of the interrupted run outlived it:\n{output[-3000:]}"
    print(f"exit {child.returncode} {exit_s:.1f} s after the signal")
    assert "EventsWorker failed" not in output and max(map(len, output.splitlines())) < 1000, output[-3000:]
    # a stop the user asked for is no error: Prefect's "Crash detected!" records of it are INFO lines
    assert not re.search(r"\| ERROR +\|", output) and "aborted by a" in output, output[-3000:]
    if signum == signal.SIGINT:
        assert child.returncode == 130, output
        assert f"Interrupted: run the same command again {GO_ON}." in output
    else:
        assert child.returncode == 143, output
        assert f"Terminated: run the same command again {GO_ON}." in output
    if "PREFECT_API_URL" not in env:
        assert "Stopping temporary server" in output
    found = re.search(r"Interrupted step warm at epoch 1, batch (\d+): saved", output)
    assert found, output
    stopped_at = int(found.group(1))
    assert 3 <= stopped_at < N_BATCHES
    assert not (out / "checkpoints" / "warm" / "final.pt").exists()
    meta = load_weights(out / "checkpoints" / "warm" / "latest.pt")["pipeline_metadata"]
    assert (meta["current_step_epoch"], meta["batch"], meta["completed"]) == (0, stopped_at, False)
    last = json.loads(metrics.read_text().splitlines()[-1])
    assert last["batch"] == stopped_at  # log_interval 1: every batch up to the stop was logged, none after

    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("interrupt").experiment_id])
    status = {r.data.tags["fluxflow.kind"]: r.info.status for r in runs}
    assert status == {"pipeline": "KILLED", "step": "KILLED"}


def test_a_kill_9_of_the_group_leaves_no_temporary_prefect_server_behind(tmp_path, mlflow_store):
    """The temporary Prefect server lives in a session of its own, out of reach of a group signal: it must die with
    the trainer all the same (flows/prefect_server.py)."""
    config_file, out = write_vae_pipeline(tmp_path, N_BATCHES, N_BATCHES, "kill-9")
    env = child_env(PREFECT_HOME=str(tmp_path / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    child = start_train(config_file, env, tmp_path / "fluxflow-train.log")
    children = kill_group_when(child, lambda: len(training_records(out)) >= 3, "training")
    assert children, "no temporary Prefect server was started"


def test_ctrl_c_before_training_starts_exits_130_in_one_line(tmp_path):
    """Ctrl-C during the seconds of checks and imports between the printed plan and the flow's start."""
    config_file, _ = write_vae_pipeline(tmp_path, 10, 10, "early")
    env = child_env()
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    log = tmp_path / "fluxflow-train.log"
    with open(log, "w") as sink:  # not --quiet: the plan's last line says when the checks begin
        child = subprocess.Popen([sys.executable, "-m", "flows.cli_train", "--config", str(config_file)],
                                 cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while "Parameters" not in log.read_text() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGINT)
        code = child.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # its own session; the temporary server dies with it (Linux)
        child.wait()
    output = log.read_text()
    assert "Traceback" not in output, output
    assert code == 130, output
    assert "Interrupted" in output.splitlines()[-1], output


class _InterruptedWhileCollected:
    """Receives Ctrl-C while Python runs its finaliser, a place whose exceptions Python reports as 'Exception ignored'
    instead of raising them (as an importlib module lock's callback, or logging's at-fork hook)."""

    def __del__(self):
        signal.raise_signal(signal.SIGINT)
        time.sleep(0)  # the handler runs here, inside the finaliser


def test_a_ctrl_c_that_python_ignores_is_remembered_and_not_printed(monkeypatch):
    """Seen as a flaky failure of the test above: 'Exception ignored in: <function _get_module_lock.<locals>.cb>'
    and the KeyboardInterrupt's traceback, printed before the run's one line."""
    from flows.cli_train import remember_ctrl_c

    printed = []
    monkeypatch.setattr(sys, "unraisablehook", printed.append)
    # As in the command's process: Python's own handler (a test before this one in the session may have set another).
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        came = remember_ctrl_c()
        try:
            _InterruptedWhileCollected()  # dropped at once: its finaliser runs here
        finally:
            assert came(restore=True)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, outer)
    assert printed == []
    assert sys.unraisablehook == printed.append  # put back
