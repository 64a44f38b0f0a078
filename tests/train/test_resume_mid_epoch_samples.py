"""A hard kill after a mid-epoch checkpoint and before (or during) the samples of that batch: the same command again
resumes after that batch, makes those samples first, and ends with the sample files and lines of an uninterrupted
run: no sample lost, none twice.

The epoch end's analog is tests/train/test_resume_epoch_end.py. The run is killed in a child process (SIGKILL, as an
OOM kill or a lost node ends it: slow), or dies at the same call in this process (fast), the resume runs here.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers_tiny import load_weights, one_torch_thread, tiny_config
from killed_pipeline import killed_run, logged_lines, sample_files, uninterrupted_run
from test_runner_resume import StopAt

import fluxflow.train.step_report as step_report
from fluxflow.output_layout import samples_dir
from fluxflow.runtime.stop_request import StepInterrupted
from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# One epoch of 4 batches (global steps 1-4), a checkpoint every 2: latest.pt at batch 2, then batch 2's samples; the
# epoch's end saves and samples again.
STEPS = [{"name": "s", "n_epochs": 1, "max_steps": 4, "train_vae": True}]
SETTINGS = {"checkpoint_save_interval": 2}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return uninterrupted_run(tmp_path_factory.mktemp("uninterrupted") / "out", STEPS, SETTINGS)


def batch_2_samples(out: Path) -> list[str]:
    return [name for name in sample_files(out) if name.startswith("s_001_001_00002_")]


class Died(BaseException):
    """A death at a chosen call, in this process: the files it leaves are those a kill -9 there leaves."""


def die(*args, **kwargs):
    raise Died


def test_a_run_dead_after_a_mid_epoch_checkpoint_before_its_samples_ends_with_the_samples_of_an_uninterrupted_run(
        tmp_path, uninterrupted, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as patched:
        patched.setattr(step_report, "write_samples", die)
        with pytest.raises(Died):
            run_pipeline(tiny_config(out, STEPS, **SETTINGS))
    meta = load_weights(out / "checkpoints" / "s" / "latest.pt")["pipeline_metadata"]
    assert (meta["current_step_epoch"], meta["batch"]) == (0, 2), "not dead after batch 2's checkpoint"

    run_pipeline(tiny_config(out, STEPS, **SETTINGS))

    assert batch_2_samples(uninterrupted), sorted(sample_files(uninterrupted))
    assert sample_files(out) == sample_files(uninterrupted)
    assert logged_lines(out) == logged_lines(uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("where, env", [
    ("write_samples:1", {}),  # batch 2's latest.pt saved, its samples not made
    ("-", {"FLUXFLOW_TEST_KILL_AT": "batch3_rank0"}),  # after batch 2's samples were made, with no checkpoint since
])
def test_a_kill_after_a_mid_epoch_checkpoint_then_the_same_command_ends_with_the_samples_of_an_uninterrupted_run(
        tmp_path, uninterrupted, capsys, where, env):
    out = tmp_path / "out"
    killed_run(tmp_path, out, where, STEPS, SETTINGS, env)
    meta = load_weights(out / "checkpoints" / "s" / "latest.pt")["pipeline_metadata"]
    assert (meta["current_step_epoch"], meta["batch"]) == (0, 2), "not killed after batch 2's checkpoint"

    run_pipeline(tiny_config(out, STEPS, **SETTINGS))

    assert "Resuming from checkpoint: step=1 (s), epoch=1, batch=2" in capsys.readouterr().out
    assert batch_2_samples(uninterrupted), sorted(sample_files(uninterrupted))
    assert sample_files(out) == sample_files(uninterrupted)
    assert logged_lines(out) == logged_lines(uninterrupted)


def test_a_stop_request_at_a_mid_epoch_checkpoint_leaves_its_samples_to_the_resume(tmp_path, uninterrupted):
    out = tmp_path / "out"
    with pytest.raises(StepInterrupted, match="s interrupted at epoch 1, batch 2"):
        run_pipeline(tiny_config(out, STEPS, **SETTINGS), tracker=StopAt(out, "s", 1, 2))
    sampled_before_the_resume = sorted(p.name for p in samples_dir(out).glob("*"))

    run_pipeline(tiny_config(out, STEPS, **SETTINGS))

    assert sample_files(out) == sample_files(uninterrupted)
    assert logged_lines(out) == logged_lines(uninterrupted)
    assert sampled_before_the_resume == [], "the stop waited for samples the resume makes again"
