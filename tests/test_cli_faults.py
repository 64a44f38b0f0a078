"""Faults the user must fix, through the real command lines in child processes: `fluxflow-train` on the session's
Prefect test API and `fluxflow-generate`. Each ends in exit code 2 and one line (❌ for fluxflow-train) that names the
file and says what to do: no traceback, no retry, and a pickle's payload never runs."""
from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers_tiny import tiny_config, tiny_raw

from fluxflow.checkpoints.latest import previous_of
from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request
from fluxflow.train.pipeline import run_pipeline

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STEPS = [{"name": "warm", "n_epochs": 2, "max_steps": 4, "train_vae": True}]


class RunsCode:
    """A `__reduce__` payload: unpickling it creates a directory (the proof that code ran)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def payload_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker, path = tmp_path / "payload-ran", tmp_path / "evil.pt"
    torch.save({"models": {}, "payload": RunsCode(marker)}, path)
    return path, marker


def run_cli(module: str, *args: str, cwd: Path, prefect_api_url: str | None = None) -> tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if prefect_api_url:
        env["PREFECT_API_URL"] = prefect_api_url
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    return done.returncode, done.stdout + done.stderr


def train_cli(raw: dict, tmp_path: Path) -> tuple[int, str]:
    from prefect.settings import PREFECT_API_URL

    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    return run_cli("flows.cli_train", "--config", str(config_file), "--quiet", cwd=tmp_path,
                   prefect_api_url=PREFECT_API_URL.value())


def the_one_line(output: str) -> str:
    """fluxflow-train's own line about the failure; there must be exactly one."""
    lines = [line for line in output.splitlines() if line.startswith("❌")]
    assert len(lines) == 1, output
    return lines[0]


def assert_no_traceback_and_no_retry(output: str) -> None:
    assert "Traceback" not in output, output
    assert "Retry 1/" not in output, output  # attempted once


def test_train_refuses_a_model_checkpoint_that_would_run_code(tmp_path, prefect_api, mlflow_store):
    evil, marker = payload_checkpoint(tmp_path)
    raw = tiny_raw(tmp_path / "out", STEPS, no_samples=True, model_checkpoint=str(evil))
    raw["training"]["pipeline"]["retries"] = 2
    code, output = train_cli(raw, tmp_path)
    assert code == 2, output
    line = the_one_line(output)
    assert line.startswith(f"❌ checkpoint {evil} refused: contains Python objects that would run code when loaded")
    assert "corrupt" not in line and "weights_only" not in output
    assert_no_traceback_and_no_retry(output)
    assert not marker.exists()


@pytest.mark.parametrize("captions, holdout, field, says", [
    (None, 0, "path", "image folder {folder} does not exist"),
    ("a.png\tone\nb.png\ttwo\n", 2, "holdout",
     "folder {folder}: holdout=2 leaves no training images (2 entries in captions.txt); lower holdout or add images"),
])
def test_train_with_a_missing_or_too_small_data_folder_exits_2_at_start(tmp_path, captions, holdout, field, says):
    folder = tmp_path / "photos"
    if captions is not None:
        folder.mkdir()
        (folder / "captions.txt").write_text(captions)
    raw = tiny_raw(tmp_path / "out", STEPS, no_samples=True)
    raw["training"]["pipeline"]["datasets"] = {"photos": {"type": "folder", "path": str(folder),
                                                          "captions_file": "captions.txt", "holdout": holdout}}
    raw["training"]["pipeline"]["default_dataset"] = "photos"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    code, output = run_cli("flows.cli_train", "--config", str(tmp_path / "config.yaml"), "--quiet", cwd=tmp_path)
    assert code == 2, output
    assert the_one_line(output) == f"❌ 1 problem in {tmp_path / 'config.yaml'}:"
    assert f"  - training.pipeline.datasets.photos.{field}: {says.format(folder=folder)}" in output.splitlines()
    assert_no_traceback_and_no_retry(output)
    assert "Flow run" not in output  # refused before the flow started


def test_generate_refuses_a_checkpoint_that_would_run_code(tmp_path):
    evil, marker = payload_checkpoint(tmp_path)
    code, output = run_cli("flows.cli_generate", "--checkpoint", str(evil), "--prompt", "a red circle",
                           "--device", "cpu", cwd=tmp_path)
    assert code == 2, output
    assert output.strip().splitlines() == [
        f"fluxflow-generate: checkpoint {evil} refused: contains Python objects that would run code when loaded "
        "(posix.mkdir); checkpoints are loaded as plain data only (tensors, dicts, lists, numbers, strings): use a "
        "checkpoint written by fluxflow, or one that holds only tensors in plain dicts"]
    assert not marker.exists()


def test_train_with_both_mid_step_checkpoints_torn_exits_2_saying_what_to_do(tmp_path, prefect_api, mlflow_store):
    out = tmp_path / "out"
    raw = tiny_raw(out, STEPS, checkpoint_save_interval=1, no_samples=True)
    raw["training"]["pipeline"]["retries"] = 2

    class StopAtBatch3:  # the flow's Ctrl-C, in process: latest.pt holds batch 3, latest.prev.pt batch 2
        def __getattr__(self, name):
            return lambda *args: None

        def log_metrics(self, metrics, progress):
            if progress.batch == 3:
                from fluxflow.runtime.stop_request import request_stop

                request_stop()

    clear_stop_request()
    try:
        with contextlib.redirect_stdout(io.StringIO()), pytest.raises(StepInterrupted):
            run_pipeline(tiny_config(out, STEPS, checkpoint_save_interval=1, no_samples=True), tracker=StopAtBatch3())
    finally:
        clear_stop_request()
    latest = out / "checkpoints" / "warm" / "latest.pt"
    for path in (latest, previous_of(latest)):
        path.write_bytes(path.read_bytes()[:200])

    code, output = train_cli(raw, tmp_path)
    assert code == 2, output
    line = the_one_line(output)
    assert line.startswith(f"❌ cannot resume: checkpoint {latest} is corrupt, truncated or not a torch checkpoint")
    assert f"checkpoint {previous_of(latest)} is corrupt" in line
    assert line.endswith(f"Move latest.pt and latest.prev.pt out of {latest.parent} to train this step again from "
                         "its start (or put back a good copy)")
    assert_no_traceback_and_no_retry(output)
