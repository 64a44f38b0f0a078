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
import yaml
from helpers_tiny import load_weights, tiny_raw
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N_BATCHES = 1000


def logged_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_saves_the_batch_reached_and_the_step_run_is_killed(signum, tmp_path, prefect_api, mlflow_store):
    """SIGINT is Ctrl-C (exit 130); SIGTERM is what `docker stop` and a Prefect worker's cancellation send."""
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "out"
    raw = tiny_raw(out, [{"name": "warm", "n_epochs": 1, "train_vae": True}], dataset_size=4 * N_BATCHES,
                   checkpoint_save_interval=N_BATCHES, no_samples=True)
    raw["tracking"] = {"experiment_name": "interrupt"}
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-m", "flows.cli_train", "--config", str(config_file), "--quiet"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        # A shell that starts jobs in the background ignores SIGINT in them; a terminal's Ctrl-C is not ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        metrics = out / "graph" / "training_metrics_warm.jsonl"
        deadline = time.monotonic() + 180
        while logged_lines(metrics) < 3 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, child.communicate()[0].decode()
        assert logged_lines(metrics) >= 3, "the step did not start training in time"
        os.kill(child.pid, signum)
        output = child.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()

    if signum == signal.SIGINT:
        assert child.returncode == 130, output
        assert "Interrupted: run the same command again to resume from the latest checkpoint." in output
    else:  # Prefect ends the process by the signal once the flow has stopped
        assert child.returncode == -signal.SIGTERM, output
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
