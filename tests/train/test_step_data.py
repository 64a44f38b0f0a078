"""The step's data (fluxflow/train/step_data.py): what a step trains on and the errors it gives before training."""
from __future__ import annotations

import pytest
import torch
from helpers_tiny import VAE_STEP, tiny_config

from fluxflow.errors import DataError
from fluxflow.train import step_data


def test_a_training_split_of_one_item_is_one_item_fewer_than_a_batch(tmp_path, monkeypatch):
    """Reachable with a webdataset, whose shards validation does not read: it said "has 1 items"."""
    one = [(torch.zeros(3, 16, 16), "a caption")]
    monkeypatch.setattr(step_data, "build_dataset", lambda *args, **kwargs: one)
    config = tiny_config(tmp_path / "out", [VAE_STEP])
    with pytest.raises(DataError, match=r"has 1 item, fewer than one batch of \d+;"):
        step_data.load_step_data(config, config.step("warm"), torch.device("cpu"))
