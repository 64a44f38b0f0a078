"""Exact resume after a real `kill -9`, and the run lock, with the pipeline running in a child process.

The child runs `run_pipeline` on a tiny 2-step config (VAE warm-up -> VAE+GAN with a StepLR schedule) through a
tracker that sleeps after each logged batch, so that the test can catch it mid-epoch: it watches the GAN step's
latest.pt until one is saved in the middle of the second epoch, then sends SIGKILL. Re-running in this process must
print the original tool's resume line for that batch and end exactly where an uninterrupted run in another directory
ends. A stop request (what the flow makes of Ctrl-C) saves the batch reached and resumes there just as exactly.

Faults (issue 13): SIGKILL of the child's process group at random moments (before the first checkpoint too) and
between a step's final.pt and its ref.json, then the same command until it completes; a torn latest.pt.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers_tiny import load_weights, one_thread, one_torch_thread, tiny_config, tiny_raw

from fluxflow.checkpoints.io import sha256_file
from fluxflow.checkpoints.latest import load_latest, previous_of
from fluxflow.train.pipeline import run_pipeline
from fluxflow.checkpoints.lock import RunLock, RunLockedError
from fluxflow.errors import CheckpointError
from fluxflow.train.step_run import run_step
from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request, request_stop
from fluxflow.train.tracking import ConsoleJsonlTracker

__all__ = ["one_torch_thread"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
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
import json, os, signal, sys, time
import torch
torch.set_num_threads(1)
torch.manual_seed(PROCESS_SEED)  # the same global RNG state as the reference run in the test
from fluxflow.checkpoints.step_files import StepFiles
from fluxflow.config import load_config
from fluxflow.train.pipeline import run_pipeline
from fluxflow.train.tracking import ConsoleJsonlTracker

if len(sys.argv) > 3:  # die like kill -9 between this step's final.pt and its ref.json
    def write_ref_or_die(self, ref, result, write_ref=StepFiles.write_ref):
        if self.step.name == sys.argv[3]:
            os.kill(os.getpid(), signal.SIGKILL)
        write_ref(self, ref, result)
    StepFiles.write_ref = write_ref_or_die

HOLD_AT = os.environ.get("HOLD_AT")  # "step,epoch,batch": stop there and wait to be killed

class SlowTracker(ConsoleJsonlTracker):
    def log_metrics(self, metrics, progress):
        super().log_metrics(metrics, progress)
        if HOLD_AT == f"{progress.step_name},{progress.epoch},{progress.batch}":
            time.sleep(600)
        time.sleep(float(sys.argv[2]))

config = load_config(json.load(open(sys.argv[1]))).config
run_pipeline(config, tracker=SlowTracker(config.output.output_path))
print("CHILD FINISHED", flush=True)
""".replace("PROCESS_SEED", str(PROCESS_SEED))


def raw_config(out: Path) -> dict:
    return tiny_raw(out, STEPS, log_interval=1, checkpoint_save_interval=2, no_samples=True)


def start_child(tmp_path: Path, out: Path, sleep_s: float, die_at_ref_of: str | None = None,
                hold_at: str = "") -> subprocess.Popen:
    """The pipeline in a child process that sleeps `sleep_s` after each logged batch; with `hold_at`
    ("step,epoch,batch") it stops after logging that batch until it is killed, so a kill lands there on any load."""
    config_file = tmp_path / f"{out.name}.json"
    config_file.write_text(json.dumps(raw_config(out)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), HOLD_AT=hold_at)
    args = [str(config_file), str(sleep_s)] + ([die_at_ref_of] if die_at_ref_of else [])
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def kill(child: subprocess.Popen) -> str:
    """SIGKILL to the child's whole process group (it runs in a session of its own); its output."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
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


def records(out: Path, step: str = "gan") -> list:
    """The metrics file of a step as (epoch, batch, global_step, metrics) tuples."""
    lines = (out / "graph" / f"training_metrics_{step}.jsonl").read_text().splitlines()
    return [(r["epoch"], r["batch"], r["global_step"], r["metrics"]) for r in map(json.loads, lines)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[list, Path]:
    """(outcomes, output directory) of the pipeline run once without interruption: what every fault must end in."""
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    torch.manual_seed(PROCESS_SEED)
    with one_thread():
        outcomes = run_pipeline(tiny_config(out, STEPS, log_interval=1, checkpoint_save_interval=2, no_samples=True))
    return outcomes, out


def assert_same_final_weights(reference: str | Path, resumed: str | Path) -> None:
    a, b = load_weights(reference), load_weights(resumed)
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"])
    for part in ("models", "ema", "optimizers", "schedulers"):
        assert_same_tensors(a[part], b[part], part)


def test_kill_9_mid_epoch_then_rerun_resumes_at_the_saved_batch_and_ends_like_an_uninterrupted_run(tmp_path,
                                                                                                  uninterrupted):
    reference, reference_out = uninterrupted
    killed_out = tmp_path / "killed"

    # the child holds after gan's epoch 2 batch 5, past the checkpoint at batch 4: a loaded CI machine once let
    # a merely slowed child finish the epoch between two polls
    child = start_child(tmp_path, killed_out, sleep_s=0.05, hold_at="gan,2,5")
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
    assert f"Resuming from checkpoint: step=2 (gan), epoch={saved_epoch + 1}, batch={saved_batch}" in printed
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


def stop_at_gan_epoch_2_batch_5(out: Path) -> str:
    """Run the pipeline into `out` until a stop request at gan's epoch 2, batch 5 (not a multiple of
    checkpoint_save_interval: only the stop can have saved it); what it printed."""
    torch.manual_seed(PROCESS_SEED)
    buffer = io.StringIO()
    stop = pytest.raises(StepInterrupted, match="gan interrupted at epoch 2, batch 5")
    with contextlib.redirect_stdout(buffer), stop:
        run_pipeline(tiny_config(out, STEPS, log_interval=1, checkpoint_save_interval=2, no_samples=True),
                     tracker=StopAt(out, "gan", 2, 5))
    return buffer.getvalue()


def test_a_stop_request_saves_the_batch_reached_and_the_next_run_resumes_there_exactly(tmp_path,
                                                                                        uninterrupted):
    reference, _ = uninterrupted
    stopped_out = tmp_path / "stopped"
    config = functools.partial(tiny_config, steps=STEPS, log_interval=1, checkpoint_save_interval=2, no_samples=True)
    printed = stop_at_gan_epoch_2_batch_5(stopped_out)
    saved = r"Interrupted step gan at epoch 2, batch 5: saved \S+/checkpoints/gan/latest.pt"
    assert re.search(saved, printed)
    meta = load_weights(stopped_out / "checkpoints" / "gan" / "latest.pt")["pipeline_metadata"]
    assert (meta["current_step_epoch"], meta["batch"], meta["completed"]) == (1, 5, False)
    assert not (stopped_out / "checkpoints" / "gan" / "final.pt").exists()

    clear_stop_request()
    jsonl = stopped_out / "graph" / "training_metrics_gan.jsonl"
    with jsonl.open("a") as f:  # and a kill cut the append of a line short: the resume drops it (it failed on it)
        f.write('{"session_id": "x", "global_st')
    resumed, printed = run_captured(config(stopped_out))
    assert "Resuming from checkpoint: step=2 (gan), epoch=2, batch=5" in printed
    assert (resumed[1].ref.global_step, resumed[1].ref.epoch) == (18, 3)
    assert_same_final_weights(reference[1].ref.uri, resumed[1].ref.uri)
    assert all(isinstance(json.loads(line), dict) for line in jsonl.read_text().splitlines())


def test_a_step_queued_when_the_stop_was_requested_does_not_start(tmp_path):
    request_stop()
    with pytest.raises(StepInterrupted, match="step warm not started"):
        run_step(tiny_config(tmp_path / "out", STEPS, no_samples=True), "warm")
    assert not (tmp_path / "out" / "checkpoints" / "warm" / "latest.pt").exists()


def logged_global_step(out: Path) -> int:
    """The highest global_step in the metrics files (0 before the first line)."""
    found = [0]
    for path in (out / "graph").glob("training_metrics_*.jsonl") if (out / "graph").exists() else []:
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line being written
                found.append(json.loads(line)["global_step"])
    return max(found)


def newest_checkpoint(out: Path, step: str) -> dict | None:
    """The metadata (and global_step) of what a re-run resumes `step` from, read as the runner reads it."""
    state = load_latest(out / "checkpoints" / step / "latest.pt", say=lambda line: None)
    return None if state is None else dict(state["pipeline_metadata"], global_step=state["global_step"])


def kill_at(child: subprocess.Popen, out: Path, global_step: int, delay_s: float) -> str:
    """SIGKILL the child's process group `delay_s` after it logged `global_step` (a moment inside a batch, a save
    or a log); its output."""
    try:
        wait_for(child, lambda: logged_global_step(out) >= global_step, f"global_step {global_step}")
        time.sleep(delay_s)
    finally:
        output = kill(child)
    assert child.returncode == -signal.SIGKILL and "CHILD FINISHED" not in output, output
    return output


def finish_child(child: subprocess.Popen) -> str:
    output, _ = child.communicate(timeout=300)
    return output.decode(errors="replace")


def test_sigkill_at_random_moments_then_the_same_command_completes_bit_identical(tmp_path, uninterrupted):
    """warm: 2 batches (global steps 1-2), gan: 2 epochs of 8 (3-18), a checkpoint every 2 batches. Kills of the
    process group: in warm before its first checkpoint, at two random moments of gan, then between gan's final.pt and
    its ref.json; after each, the same command resumes from the newest checkpoint."""
    reference, reference_out = uninterrupted
    out = tmp_path / "killed"
    rng = random.Random(13)  # random moments, reproducible
    first, second = sorted(rng.sample(range(3, 18), 2))
    plan = [(1, 0.0), (first, rng.uniform(0, 0.2)), (second, rng.uniform(0, 0.2)), (None, None)]
    expected = None  # what the next run must print about where it starts
    for global_step, delay_s in plan:
        if global_step is None:  # runs to gan's end and dies between its final.pt and ref.json
            child = start_child(tmp_path, out, sleep_s=0.0, die_at_ref_of="gan")
            output = finish_child(child)
            assert child.returncode == -signal.SIGKILL, output
        else:
            # held after gan's last batch: on a loaded machine a late kill lands there, never after the step's end
            output = kill_at(start_child(tmp_path, out, sleep_s=0.15, hold_at="gan,2,8"), out, global_step, delay_s)
        if expected:
            assert expected in output, (expected, output)
        if global_step is None:
            break
        step, index = ("warm", 1) if global_step <= 2 else ("gan", 2)  # counted from 1
        saved, logged = newest_checkpoint(out, step), logged_global_step(out)
        if global_step == 1:
            assert saved is None, "the first kill came after warm's first checkpoint"
            expected = "Starting step: warm, epoch 1, batch 0"
        else:  # nothing trained before the newest checkpoint is lost: at most one save interval is trained again
            assert saved is not None and logged - saved["global_step"] <= 2, (global_step, delay_s, saved, output)
            expected = (f"Resuming from checkpoint: step={index} ({step}), epoch={saved['current_step_epoch'] + 1}, "
                        f"batch={saved['batch']}")

    gan_dir = out / "checkpoints" / "gan"
    assert (gan_dir / "final.pt").exists() and not (gan_dir / "ref.json").exists()
    final_sha = sha256_file(gan_dir / "final.pt")
    gan_lines = records(out)

    last = start_child(tmp_path, out, sleep_s=0.0)
    printed = finish_child(last)
    assert last.returncode == 0 and "CHILD FINISHED" in printed, printed
    assert "Skipping step warm" in printed
    assert f"Completing step gan: {gan_dir / 'final.pt'} was written but the run stopped before ref.json" in printed
    assert "Re-running step" not in printed
    assert not (gan_dir / "superseded").exists()
    assert sha256_file(gan_dir / "final.pt") == final_sha  # completed, not retrained
    assert records(out) == gan_lines  # no batch trained again, no line logged twice
    assert json.loads((gan_dir / "ref.json").read_text())["ref"]["sha256"] == final_sha

    for step in ("warm", "gan"):
        assert records(out, step) == records(reference_out, step)
    for outcome in reference:
        assert_same_final_weights(outcome.ref.uri, out / "checkpoints" / outcome.result.step_name / "final.pt")


def test_a_torn_latest_pt_falls_back_to_the_previous_checkpoint_and_ends_bit_identical(tmp_path, uninterrupted):
    reference, _ = uninterrupted
    out = tmp_path / "torn"
    config = functools.partial(tiny_config, steps=STEPS, log_interval=1, checkpoint_save_interval=2, no_samples=True)
    stop_at_gan_epoch_2_batch_5(out)  # latest.pt holds batch 5, latest.prev.pt the interval checkpoint of batch 4
    latest = out / "checkpoints" / "gan" / "latest.pt"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])  # torn, as a filesystem without atomic rename can leave it

    clear_stop_request()
    resumed, printed = run_captured(config(out))
    assert re.search(rf"latest.pt cannot be used \(checkpoint {latest} is corrupt, truncated .*\); resuming from the "
                     rf"previous checkpoint {previous_of(latest)}\n", printed), printed
    assert "Resuming from checkpoint: step=2 (gan), epoch=2, batch=4" in printed
    assert_same_final_weights(reference[1].ref.uri, resumed[1].ref.uri)
    assert not previous_of(latest).exists()  # no use once the step is final


def test_when_both_checkpoints_are_torn_the_step_trains_again_from_its_parent_and_ends_bit_identical(
        tmp_path, uninterrupted):
    reference, _ = uninterrupted
    out = tmp_path / "torn"
    config = functools.partial(tiny_config, steps=STEPS, log_interval=1, checkpoint_save_interval=2, no_samples=True)
    torch.manual_seed(PROCESS_SEED)
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(StepInterrupted):
        run_pipeline(config(out), tracker=StopAt(out, "gan", 1, 5))
    latest = out / "checkpoints" / "gan" / "latest.pt"
    for path in (latest, previous_of(latest)):
        path.write_bytes(path.read_bytes()[:100])
    clear_stop_request()
    resumed, printed = run_captured(config(out))
    [kept] = (latest.parent / "corrupt").iterdir()
    assert sorted(p.name for p in kept.iterdir()) == ["latest.prev.pt", "latest.pt"]
    assert re.search(rf"No checkpoint of this step can be used \(checkpoint {latest} is corrupt.*; and checkpoint "
                     rf"{previous_of(latest)} is corrupt.*\): moved to {kept} as evidence\. Lost: ", printed), printed
    assert "Starting step: gan, epoch 1, batch 0" in printed
    assert_same_final_weights(reference[1].ref.uri, resumed[1].ref.uri)
