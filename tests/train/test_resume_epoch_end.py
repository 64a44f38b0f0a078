"""A hard kill at an epoch's end, after its latest.pt and before (or during) its samples and evaluation: the same
command again resumes at the next epoch, makes that epoch end's samples and evaluation first, and ends with the files
of an uninterrupted run: no evaluation line or sample lost, none twice.

The run is killed in a child process (SIGKILL, as an OOM kill or a lost node ends it), the resume runs here.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers_tiny import load_weights, one_torch_thread, tiny_config
from killed_pipeline import killed_run, logged_lines, sample_files, uninterrupted_run
from test_runner_resume import StopAt

from fluxflow.output_layout import samples_dir
from fluxflow.runtime.stop_request import StepInterrupted
from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

# 3 batches per epoch (global steps 1-3, 4-6, 7-9), evaluated at every epoch's end. Checkpoints at epoch ends only:
# a run killed in epoch 2 resumes from epoch 1's end.
STEPS = [{"name": "s", "n_epochs": 3, "max_steps": 3, "train_vae": True, "eval_interval": 1}]
SETTINGS = {"checkpoint_save_interval": 100}
BATCHES = 3  # max_steps: batches per epoch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    return uninterrupted_run(tmp_path_factory.mktemp("uninterrupted") / "out", STEPS, SETTINGS)


@pytest.mark.parametrize("where, env, saved_epoch", [
    ("write_samples:1", {}, 1),  # during epoch 1's samples: neither they nor its evaluation made
    ("evaluate_step:1", {}, 1),  # during epoch 1's evaluation: its line not written
    ("-", {"FLUXFLOW_TEST_KILL_AT": "batch4_rank0"}, 1),  # after epoch 1's end was made, with no checkpoint since
    ("write_samples:3", {}, 3),  # during the last epoch's samples: the step completed, not final.pt
])
def test_a_kill_at_an_epoch_end_then_the_same_command_ends_with_the_lines_and_samples_of_an_uninterrupted_run(
        tmp_path, uninterrupted, capsys, where, env, saved_epoch):
    out = tmp_path / "out"
    killed_run(tmp_path, out, where, STEPS, SETTINGS, env)
    meta = load_weights(out / "checkpoints" / "s" / "latest.pt")["pipeline_metadata"]
    assert (meta["current_step_epoch"], meta["batch"]) == (saved_epoch, 0), "not killed after that epoch's end"

    run_pipeline(tiny_config(out, STEPS, **SETTINGS))

    # at the step's end (its 3 epochs): its last epoch, every batch done, not an epoch 4 it does not have
    epoch, batch = (saved_epoch + 1, 0) if saved_epoch < 3 else (3, BATCHES)
    assert f"Resuming from checkpoint: step=1 (s), epoch={epoch}, batch={batch}" in capsys.readouterr().out
    assert logged_lines(out) == logged_lines(uninterrupted)
    assert sample_files(out) == sample_files(uninterrupted)


def test_a_stop_request_at_an_epoch_end_leaves_its_samples_and_evaluation_to_the_resume(tmp_path, uninterrupted):
    out = tmp_path / "out"
    with pytest.raises(StepInterrupted, match="s interrupted at epoch 2, batch 0"):
        run_pipeline(tiny_config(out, STEPS, **SETTINGS), tracker=StopAt(out, "s", 1, 3))
    sampled_before_the_resume = list(samples_dir(out).glob("*"))

    run_pipeline(tiny_config(out, STEPS, **SETTINGS))

    assert logged_lines(out) == logged_lines(uninterrupted)
    assert sample_files(out) == sample_files(uninterrupted)
    assert sampled_before_the_resume == [], "the stop waited for samples the resume makes again"
