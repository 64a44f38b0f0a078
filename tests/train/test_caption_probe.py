"""A flow step's start looks at the captions of its first batches: none at all stops it, a few empty ones do not."""
from types import SimpleNamespace

import pytest
import torch

from fluxflow.errors import DataError
from fluxflow.train.step_data import CAPTION_PROBE, captioned_batches

STEP = SimpleNamespace(name="flow", dataset="wds")


def batches(captions: list[str], size: int = 4):
    return iter([(torch.zeros(len(captions[i:i + size])), captions[i:i + size]) for i in range(0, len(captions), size)])


def test_data_without_any_caption_stops_a_flow_step_before_it_trains_and_a_few_empty_captions_do_not():
    with pytest.raises(DataError, match=f"none of the first {CAPTION_PROBE} samples of dataset 'wds' has a caption"):
        next(captioned_batches(batches([""] * 200), STEP))
    with pytest.raises(DataError, match="none of the first 6 samples"):  # an epoch shorter than the probe
        next(captioned_batches(batches([""] * 6), STEP))
    some = [""] * (CAPTION_PROBE - 1) + ["a caption"] + [""] * 100  # classifier-free guidance's dropped captions
    assert sum(len(c) for _, c in captioned_batches(batches(some), STEP)) == len(some)  # every batch, unchanged
    assert list(captioned_batches(iter([]), STEP)) == []
