"""The bare executor's failure rule, the flow's (fluxflow/train/pipeline_schedule.py): a failed step stops its own
subtree, sibling branches still run, and one error at the end names every problem; an interrupt stops at once.
`run_step` is replaced by a fake, so nothing trains."""
from __future__ import annotations

import pytest
from helpers_tiny import tiny_config

from fluxflow.checkpoints.ref import CheckpointRef, StepOutcome, StepResult
from fluxflow.train import pipeline
from fluxflow.train.pipeline_schedule import PipelineFailed

# base -> (a -> a_child) and (b -> b_child): two branches from base.
STEPS = [
    {"name": "base", "n_epochs": 1, "train_vae": True},
    {"name": "a", "n_epochs": 1, "train_vae": True},
    {"name": "a_child", "n_epochs": 1, "train_vae": True},
    {"name": "b", "after": "base", "n_epochs": 1, "train_vae": True},
    {"name": "b_child", "n_epochs": 1, "train_vae": True},
]


def fake_run_step(failing: dict[str, BaseException], ran: list[str]):
    def run_step(config, step_name, parent, tracker=None):
        ran.append(step_name)
        if step_name in failing:
            raise failing[step_name]
        ref = CheckpointRef(f"/x/{step_name}/final.pt", "0" * 64, step_name, "0" * 16, 1, 1)
        return StepOutcome(ref, StepResult(step_name, "epochs_done", 1))
    return run_step


def test_a_failed_branch_stops_its_subtree_while_the_sibling_branch_completes(tmp_path, monkeypatch):
    ran: list[str] = []
    monkeypatch.setattr(pipeline, "run_step", fake_run_step({"a": ValueError("boom")}, ran))
    with pytest.raises(PipelineFailed, match=r"^step a failed: boom$") as failure:
        pipeline.run_pipeline(tiny_config(tmp_path / "out", STEPS))
    assert ran == ["base", "a", "b", "b_child"]
    assert isinstance(failure.value.__cause__, ValueError)  # the step's own traceback is kept


def test_every_failed_branch_is_named_in_the_one_error(tmp_path, monkeypatch):
    ran: list[str] = []
    failing = {"a": ValueError("first"), "b_child": OSError("second")}
    monkeypatch.setattr(pipeline, "run_step", fake_run_step(failing, ran))
    with pytest.raises(PipelineFailed, match=r"^step a failed: first; step b_child failed: second$"):
        pipeline.run_pipeline(tiny_config(tmp_path / "out", STEPS))
    assert ran == ["base", "a", "b", "b_child"]


def test_an_interrupt_stops_every_branch_at_once(tmp_path, monkeypatch):
    ran: list[str] = []
    monkeypatch.setattr(pipeline, "run_step", fake_run_step({"a": KeyboardInterrupt()}, ran))
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(tiny_config(tmp_path / "out", STEPS))
    assert ran == ["base", "a"]
