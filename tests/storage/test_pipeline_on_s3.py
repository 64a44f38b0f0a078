"""A pipeline whose output directory is on moto's S3 server (through s3fs): killed with SIGKILL in the middle of a
step, run again, and finished with the weights of an uninterrupted run; then `fluxflow-generate --checkpoint
s3://...` reads the step's final.pt from the store.

The killed run is a child process running `run_pipeline` (the core's path, no Prefect: the store is what is tested
here), which SIGKILLs itself right after its second checkpoint of the flow step reached the store: the kill lands
mid-step at a known batch, and leaves the lock object behind as a real kill does. The run of the same config in this
process takes the lock over (its holder is dead), pulls what the store has into an empty staging directory and
resumes there.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import torch
from helpers_tiny import load_weights, one_thread, one_torch_thread, tiny_config, tiny_raw
from test_runner_resume import assert_same_tensors, run_captured

from flows import cli_generate
from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

# slow: a pipeline killed and resumed on a moto server, then generated from (6-7 s here; the README: over ~2 s).
pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STEPS = [
    {"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True},
    {"name": "flow", "n_epochs": 1, "train_diff_full": True, "ema_decay": 0.5},
]  # flow: 24 shapes / batch 4 = 6 batches, a checkpoint every 2
# Fresh weights come from the global RNG: both runs seed it alike (tests/train/test_runner_resume.py).
PROCESS_SEED = 1234
KILL_AFTER = 2  # the flow step's checkpoints that reach the store before the kill: batch 4 of 6

CHILD = f"""
import json, os, signal, sys
import torch
torch.set_num_threads(1)
torch.manual_seed({PROCESS_SEED})
from fluxflow.checkpoints.step_files import StepFiles
from fluxflow.config import load_config
from fluxflow.train.pipeline import run_pipeline

published = []
def publish_then_die(self, say=print, publish=StepFiles.publish_latest):
    publish(self, say)
    published.append(self.step.name)
    if published.count("flow") == {KILL_AFTER}:
        os.kill(os.getpid(), signal.SIGKILL)
StepFiles.publish_latest = publish_then_die
run_pipeline(load_config(json.load(open(sys.argv[1]))).config)
print("CHILD FINISHED", flush=True)
"""


def raw(out: str) -> dict:
    return tiny_raw(out, STEPS, dataset_size=24, log_interval=1, checkpoint_save_interval=2, no_samples=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The outcomes of the same pipeline run once, uninterrupted, in a local directory."""
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    torch.manual_seed(PROCESS_SEED)
    with one_thread():
        return run_pipeline(tiny_config(out, STEPS, dataset_size=24, log_interval=1, checkpoint_save_interval=2,
                                        no_samples=True))


def records(lines: str) -> list:
    return [(r["epoch"], r["batch"], r["global_step"], r["metrics"]) for r in map(json.loads, lines.splitlines())]


def test_a_pipeline_on_s3_killed_mid_step_resumes_and_ends_like_an_uninterrupted_run_and_generates_from_it(
        s3, uninterrupted, tmp_path, monkeypatch, capsys):
    uri = "s3://fluxflow/killed"
    store = fsspec.filesystem("s3")
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(raw(uri)))
    monkeypatch.setenv("FLUXFLOW_CACHE_DIR", str(tmp_path / "node1"))  # the killed run's staging directory
    child = subprocess.run([sys.executable, "-c", CHILD, str(config_file)], cwd=REPO, capture_output=True, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)), timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert store.exists("fluxflow/killed/checkpoints/flow/latest.pt")
    assert not store.exists("fluxflow/killed/checkpoints/flow/ref.json")
    assert store.exists("fluxflow/killed/.lock")  # a kill leaves the lock object behind

    monkeypatch.setenv("FLUXFLOW_CACHE_DIR", str(tmp_path / "node2"))  # the run again, on a node that has nothing
    torch.manual_seed(PROCESS_SEED)
    resumed, printed = run_captured(tiny_config(uri, STEPS, dataset_size=24, log_interval=1,
                                                checkpoint_save_interval=2, no_samples=True))

    assert "Took over the lock s3://fluxflow/killed/.lock: its holder, pid " in printed
    assert "Skipping steps: warm" in printed and "Skipping step warm: already complete" in printed
    assert not list((tmp_path / "node2").rglob("warm/final.pt"))  # a skipped step's checkpoint is not downloaded
    assert "Resuming from checkpoint: step=2 (flow), epoch=1, batch=4" in printed
    assert [o.result.trained for o in resumed] == [False, True]
    final = resumed[1].ref
    assert final.uri == "s3://fluxflow/killed/checkpoints/flow/final.pt"
    reference = load_weights(uninterrupted[1].ref.uri)
    weights = load_weights(final.uri)  # downloaded, checked against its sha256 record
    for part in ("models", "ema", "optimizers", "schedulers"):
        assert_same_tensors(reference[part], weights[part], part)

    # the store holds what a reader needs: ref.json naming final.pt and its hash, the metrics of every batch once
    recorded = json.loads(store.cat_file("fluxflow/killed/checkpoints/flow/ref.json"))
    assert recorded["ref"]["uri"] == final.uri and recorded["ref"]["sha256"] == final.sha256
    local_metrics = Path(uninterrupted[1].ref.uri).parents[2] / "graph" / "training_metrics_flow.jsonl"
    assert records(store.cat_file("fluxflow/killed/graph/training_metrics_flow.jsonl").decode()) == \
        records(local_metrics.read_text())
    assert not store.exists("fluxflow/killed/.lock")  # released at the end
    assert not store.exists("fluxflow/killed/checkpoints/flow/latest.prev.pt")

    # fluxflow-generate reads the checkpoint from the store: the same images as from the uninterrupted run's file
    monkeypatch.setenv("FLUXFLOW_CACHE_DIR", str(tmp_path / "node3"))
    capsys.readouterr()
    for source, folder in ((final.uri, "from-s3"), (uninterrupted[1].ref.uri, "local")):
        assert cli_generate.main(["--checkpoint", source, "--prompt", "a red circle", "--steps", "3", "--device",
                                  "cpu", "--output", str(tmp_path / folder)]) == 0, capsys.readouterr().err
    images = sorted((tmp_path / "from-s3").iterdir())
    assert images and [p.read_bytes() for p in images] == [
        (tmp_path / "local" / p.name).read_bytes() for p in images]
