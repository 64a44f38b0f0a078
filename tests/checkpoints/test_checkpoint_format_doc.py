"""The checkpoint format docs/ARCHITECTURE.md lists ("Checkpoint format") is the one a step writes: the same keys at
the top and in `pipeline_metadata`, and among them every key of the original tool's format (the seed document's
"Checkpoint Format"), so that a user's scripts that read its checkpoints find them."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers_tiny import load_weights, one_torch_thread, tiny_config

from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"
SEED_KEYS = {"epoch", "global_step", "models", "optimizers", "schedulers", "ema", "pipeline_metadata"}
SEED_METADATA_KEYS = {"current_step", "current_step_name", "step_start_epoch", "current_step_epoch", "step_metrics"}


def documented_keys() -> tuple[set[str], set[str]]:
    """(top-level keys, pipeline_metadata keys) of the python block under the doc's "Checkpoint format" heading."""
    section = DOC.read_text().split("## Checkpoint format", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python", 1)[1].split("```", 1)[0]
    return (set(re.findall(r'^  "(\w+)":', block, re.M)), set(re.findall(r'^    "(\w+)":', block, re.M)))


def test_documented_checkpoint_format_holds_the_seed_keys():
    top, metadata = documented_keys()
    assert SEED_KEYS <= top and SEED_METADATA_KEYS <= metadata


@pytest.mark.usefixtures("one_torch_thread")
def test_a_steps_checkpoints_have_exactly_the_documented_keys(tmp_path):
    config = tiny_config(tmp_path / "out", [{"name": "warm", "n_epochs": 1, "max_steps": 1, "train_vae": True}],
                         no_samples=True)
    (outcome,) = run_pipeline(config)
    top, metadata = documented_keys()
    for name in ("latest.pt", "final.pt"):
        state = load_weights(Path(outcome.ref.uri).with_name(name))
        assert set(state) == top, name
        assert set(state["pipeline_metadata"]) == metadata, name
