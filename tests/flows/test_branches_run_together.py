"""Branches that the flow runs at the same time (threads of one process) end with the weights and losses that each
gets when run alone: nothing one branch does to per-process state (torch's global generator, its thread count) may
reach the other.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_tiny import tiny_raw

from flows import together as together_env

pytestmark = pytest.mark.slow

WARM = {"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True}
# Two flow branches with evaluation each epoch (its feature network is fitted on one thread, in a forked generator)
# and samples, so each branch's evaluation lands while the other trains.
BRANCHES = {
    "flow_a": {"name": "flow_a", "n_epochs": 2, "train_diff": True, "eval_interval": 1, "after": "warm"},
    "flow_b": {"name": "flow_b", "n_epochs": 2, "train_diff": True, "eval_interval": 1, "after": "warm",
               "optimization": {"optimizers": {"flow": {"type": "AdamW", "lr": 3e-4}}}},
}


@pytest.fixture(autouse=True)
def _prefect(prefect_api):
    """Every test here talks to the session's Prefect test API."""


def run(tmp_path: Path, name: str, steps: list[dict]) -> Path:
    from flows.pipeline_flow import pipeline_flow

    raw = tiny_raw(tmp_path / name, steps, dataset_size=16)
    raw["tracking"] = {"experiment_name": f"{tmp_path.name}-{name}"}
    state = pipeline_flow(raw, return_state=True)
    assert state.is_completed(), state.message
    return tmp_path / name


def tensors(value, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, by its path in the nested dicts/lists."""
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list | tuple) else []
    found: dict[str, torch.Tensor] = {}
    for key, inner in items:
        found.update(tensors(inner, f"{prefix}/{key}"))
    return found


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit for bit, NaN where the other has NaN (the transition monitor's unfilled ring buffer is NaN)."""
    if a.is_floating_point() and b.is_floating_point() and a.shape == b.shape:
        nan = a.isnan()
        return torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan])
    return torch.equal(a, b)


# The process-wide generators' states a checkpoint records for resume (fluxflow/checkpoints/rng_state.py): training
# draws from none of them (batches draw from the step's own generator), and Python's and numpy's are drawn from by
# whatever else runs in the process (Prefect, MLflow), so they differ between runs whatever the branches do.
PROCESS_RNG = ("/pipeline_metadata/rng/",)


def records(output: Path, step: str) -> list[dict]:
    """The step's JSONL records (losses, gradient norms, evaluation metrics) without their wall-clock fields."""
    lines = (output / "graph" / f"training_metrics_{step}.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("timestamp", "session_id")} for line in lines]


@pytest.mark.parametrize("checked,beside", [("flow_a", "flow_b"), ("flow_b", "flow_a")])
def test_a_branch_run_beside_another_ends_with_the_weights_and_losses_it_gets_alone(
        checked, beside, tmp_path, mlflow_store_module, run_step_calls, monkeypatch):
    """`checked` is the step after the parent in both configs: a fresh component's weights are seeded with the step's
    seed + its depth in the pipeline's tree (fluxflow/train/trainer.py), the same in both configs. The branches meet
    at their start (flows/together.py): left to their timing, one could end before the other began on a busy machine,
    and the test proved nothing."""
    _, ran = run_step_calls
    (tmp_path / "met").mkdir()
    monkeypatch.setenv(together_env.ENV, f"{tmp_path / 'met'}:{checked},{beside}")
    together = run(tmp_path, "together", [WARM, BRANCHES[checked], BRANCHES[beside]])
    monkeypatch.delenv(together_env.ENV)
    (a_start, a_end), (b_start, b_end) = ran[checked], ran[beside]
    assert a_start < b_end and b_start < a_end, "the branches did not overlap: the test proves nothing"
    alone = run(tmp_path, "alone", [WARM, BRANCHES[checked]])

    got = tensors(torch.load(together / "checkpoints" / checked / "final.pt", map_location="cpu", weights_only=False))
    want = tensors(torch.load(alone / "checkpoints" / checked / "final.pt", map_location="cpu", weights_only=False))
    assert got.keys() == want.keys()
    moved = [key for key in want if not key.startswith(PROCESS_RNG) and not same(got[key], want[key])]
    assert not moved, f"{len(moved)} of {len(want)} tensors differ from the branch alone, e.g. {moved[:5]}"
    logged = records(alone, checked)
    assert any("flow_loss" in r["metrics"] for r in logged)
    assert any("eval_fd_ours_cfg" in r["metrics"] for r in logged)
    assert records(together, checked) == logged
