"""Exact resume after a real `kill -9`, and the run lock, with the pipeline running in a child process.

The child runs `run_pipeline` on a tiny 2-step config (VAE warm-up -> VAE+GAN with a StepLR schedule) through a
tracker that sleeps after each logged batch, so that the test can catch it mid-epoch: it watches the GAN step's
latest.pt until one is saved in the middle of the second epoch, then sends SIGKILL. Re-running in this process must
print the seed's resume line for that batch and end exactly where an uninterrupted run in another directory ends.
A stop request (what the flow makes of Ctrl-C) saves the batch reached and resumes there just as exactly.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers_tiny import load_weights, one_torch_thread, tiny_config, tiny_raw

from fluxflow.checkpoints.io import CheckpointError
from fluxflow.train.pipeline import run_pipeline
from fluxflow.checkpoints.lock import RunLock, RunLockedError
from fluxflow.train.step_run import run_step
from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request, request_stop
from fluxflow.train.tracking import ConsoleJsonlTracker

__all__ = ["one_torch_thread"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
STEPS = [
    {"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True},
    {"name": "gan", "n_epochs": 2, "train_vae": True, "gan_training": True, "r1_interval": 3,
     "optimization": {"schedulers": {"vae": {"type": "StepLR", "step_size": 1, "gamma": 0.5}}}},
]  # gan: 32 shapes / batch 4 = 8 batches per epoch

# Fresh weights are drawn from the process's global torch RNG, which a fresh process seeds at random (see
# test_runner.py::test_the_same_config_trains_the_same_weights_in_any_process). Both runs seed it alike so that
# the comparison below is about resuming, not about initialisation.
PROCESS_SEED = 1234

CHILD = """
import json, sys, time
import torch
torch.set_num_threads(1)
torch.manual_seed(PROCESS_SEED)  # the same global RNG state as the reference run in the test
from fluxflow.config import load_config
from fluxflow.train.pipeline import run_pipeline
from fluxflow.train.tracking import ConsoleJsonlTracker

class SlowTracker(ConsoleJsonlTracker):
    def log_metrics(self, metrics, progress):
        super().log_metrics(metrics, progress)
        time.sleep(float(sys.argv[2]))

config = load_config(json.load(open(sys.argv[1]))).config
run_pipeline(config, tracker=SlowTracker(config.output.output_path))
print("CHILD FINISHED", flush=True)
""".replace("PROCESS_SEED", str(PROCESS_SEED))


def raw_config(out: Path) -> dict:
    return tiny_raw(out, STEPS, log_interval=1, checkpoint_save_interval=2, no_samples=True)


def start_child(tmp_path: Path, out: Path, sleep_s: float) -> subprocess.Popen:
    config_file = tmp_path / f"{out.name}.json"
    config_file.write_text(json.dumps(raw_config(out)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(config_file), str(sleep_s)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def kill(child: subprocess.Popen) -> str:
    with contextlib.suppress(ProcessLookupError):
        os.kill(child.pid, signal.SIGKILL)
    output, _ = child.communicate(timeout=30)
    return output.decode(errors="replace")


def wait_for(child: subprocess.Popen, ready, what: str, timeout_s: float = 180.0):
    """Poll `ready()` until it returns something truthy; fail with the child's output if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = ready()
        if found:
            return found
        if child.poll() is not None:
            pytest.fail(f"child exited (rc {child.returncode}) before {what}:\n{kill(child)}")
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}:\n{kill(child)}")


def mid_second_epoch(latest: Path):
    """The metadata of latest.pt when it was saved in the middle of the GAN step's second epoch, else None."""
    if not latest.exists():
        return None
    try:
        meta = load_weights(latest)["pipeline_metadata"]
    except (CheckpointError, FileNotFoundError):
        return None
    return meta if meta["current_step_epoch"] == 1 and meta["batch"] > 0 and not meta["completed"] else None


def run_captured(config) -> tuple[list, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        outcomes = run_pipeline(config)
    return outcomes, buffer.getvalue()


def assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_kill_9_mid_epoch_then_rerun_resumes_at_the_saved_batch_and_ends_like_an_uninterrupted_run(tmp_path):
    reference_out, killed_out = tmp_path / "reference", tmp_path / "killed"
    torch.manual_seed(PROCESS_SEED)
    reference = run_pipeline(tiny_config(reference_out, STEPS, log_interval=1, checkpoint_save_interval=2,
                                         no_samples=True))

    child = start_child(tmp_path, killed_out, sleep_s=0.15)
    latest = killed_out / "checkpoints" / "gan" / "latest.pt"
    try:
        wait_for(child, lambda: mid_second_epoch(latest), "a mid-epoch latest.pt in the second epoch of gan")
    finally:
        child_output = kill(child)
    assert child.returncode == -signal.SIGKILL
    assert "CHILD FINISHED" not in child_output
    meta = mid_second_epoch(latest)  # what the killed run left on disk (it may have saved once more)
    assert meta is not None, "the child got past the second epoch before it was killed"
    assert not (killed_out / "checkpoints" / "gan" / "final.pt").exists()
    saved_epoch, saved_batch = meta["current_step_epoch"], meta["batch"]

    resumed, printed = run_captured(tiny_config(killed_out, STEPS, log_interval=1, checkpoint_save_interval=2,
                                                no_samples=True))

    assert "Skipping steps: warm" in printed
    assert f"Resuming from checkpoint: step=1 (gan), epoch={saved_epoch + 1}, batch={saved_batch}" in printed
    assert f"Starting step: gan, epoch {saved_epoch + 1}, batch {saved_batch}" in printed
    assert [o.result.trained for o in resumed] == [False, True]
    assert resumed[1].result.resumed_from == (saved_epoch, saved_batch)
    assert reference[1].result.resumed_from is None

    # the same bookkeeping as the uninterrupted run
    ref_gan, res_gan = reference[1], resumed[1]
    assert (res_gan.ref.global_step, res_gan.ref.epoch) == (ref_gan.ref.global_step, ref_gan.ref.epoch) == (18, 3)
    assert (res_gan.result.outcome, res_gan.result.epochs_done) == (ref_gan.result.outcome, 2)
    a, b = load_weights(ref_gan.ref.uri), load_weights(res_gan.ref.uri)
    for key in ("epoch", "global_step"):
        assert a[key] == b[key]
    for key in ("current_step", "step_start_epoch", "current_step_epoch", "batch", "step_key"):
        assert a["pipeline_metadata"][key] == b["pipeline_metadata"][key], key

    # exact resume: per-batch randomness comes from (seed, global_step), the RNG and all training state are
    # restored, so the resumed run is bit-identical to the uninterrupted one
    for part in ("models", "ema", "optimizers", "schedulers"):
        assert_same_tensors(a[part], b[part], part)
    assert a["pipeline_metadata"]["step_metrics"] == b["pipeline_metadata"]["step_metrics"]

    # the metrics file continues: lines logged after the last checkpoint and before the kill were dropped on resume,
    # so every batch appears once, with the values of the uninterrupted run
    def records(out: Path) -> list:
        lines = (out / "graph" / "training_metrics_gan.jsonl").read_text().splitlines()
        return [(r["epoch"], r["batch"], r["global_step"], r["metrics"]) for r in map(json.loads, lines)]

    assert records(killed_out) == records(reference_out)


def test_a_second_run_on_the_same_output_fails_at_once_with_the_lock_message(tmp_path):
    out = tmp_path / "busy"
    child = start_child(tmp_path, out, sleep_s=0.5)
    try:
        wait_for(child, lambda: (out / "graph" / "training_metrics_warm.jsonl").exists(), "the first run to train")
        started = time.monotonic()
        with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {child.pid}") as info:
            run_pipeline(tiny_config(out, STEPS, log_interval=1, checkpoint_save_interval=2, no_samples=True))
        assert time.monotonic() - started < 5.0, "the second run waited instead of failing at once"
        assert str(out) in str(info.value)
        assert child.poll() is None, "the refused run disturbed the running one"
    finally:
        kill(child)
    with RunLock(out):  # kill -9 leaves no stale lock behind
        pass


class StopAt(ConsoleJsonlTracker):
    """Requests a stop, as the flow does on Ctrl-C, once the given (step, epoch, batch) has been logged."""

    def __init__(self, out: Path, step: str, epoch: int, batch: int):
        super().__init__(out)
        self.at, self.step = (step, epoch, batch), None

    def step_started(self, step, step_key, n_steps, resumed):
        super().step_started(step, step_key, n_steps, resumed)
        self.step = step.name

    def log_metrics(self, metrics, progress):
        super().log_metrics(metrics, progress)
        if (self.step, progress.epoch, progress.batch) == self.at:
            request_stop()


@pytest.fixture
def stop_request_cleared():
    clear_stop_request()
    yield
    clear_stop_request()


def test_a_stop_request_saves_the_batch_reached_and_the_next_run_resumes_there_exactly(tmp_path, stop_request_cleared):
    reference_out, stopped_out = tmp_path / "reference", tmp_path / "stopped"
    config = functools.partial(tiny_config, steps=STEPS, log_interval=1, checkpoint_save_interval=2, no_samples=True)
    torch.manual_seed(PROCESS_SEED)
    reference = run_pipeline(config(reference_out))

    # batch 5 of gan's second epoch: not a multiple of checkpoint_save_interval, so only the stop can have saved it
    torch.manual_seed(PROCESS_SEED)
    buffer = io.StringIO()
    stop = pytest.raises(StepInterrupted, match="gan interrupted at epoch 2, batch 5")
    with contextlib.redirect_stdout(buffer), stop:
        run_pipeline(config(stopped_out), tracker=StopAt(stopped_out, "gan", 2, 5))
    saved = r"Interrupted step gan at epoch 2, batch 5: saved \S+/checkpoints/gan/latest.pt"
    assert re.search(saved, buffer.getvalue())
    meta = load_weights(stopped_out / "checkpoints" / "gan" / "latest.pt")["pipeline_metadata"]
    assert (meta["current_step_epoch"], meta["batch"], meta["completed"]) == (1, 5, False)
    assert not (stopped_out / "checkpoints" / "gan" / "final.pt").exists()

    clear_stop_request()
    resumed, printed = run_captured(config(stopped_out))
    assert "Resuming from checkpoint: step=1 (gan), epoch=2, batch=5" in printed
    a, b = load_weights(reference[1].ref.uri), load_weights(resumed[1].ref.uri)
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"]) == (18, 3)
    for part in ("models", "ema", "optimizers", "schedulers"):
        assert_same_tensors(a[part], b[part], part)


def test_a_step_queued_when_the_stop_was_requested_does_not_start(tmp_path, stop_request_cleared):
    request_stop()
    with pytest.raises(StepInterrupted, match="step warm not started"):
        run_step(tiny_config(tmp_path / "out", STEPS, no_samples=True), "warm")
    assert not (tmp_path / "out" / "checkpoints" / "warm" / "latest.pt").exists()
