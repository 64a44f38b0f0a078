"""The text cache: a train_diff step (text encoder frozen) trains from cached text-encoder outputs exactly as it
trains by encoding its captions every batch, and a changed text encoder gets a new cache."""
from __future__ import annotations

import pytest
import torch
from cache_fixtures import assert_trains_the_same, flow_setup
from helpers_tiny import one_torch_thread

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FROZEN_TEXT = {"train_diff": True, "cfg_dropout": 0.5}  # many rows swapped for the null text: that path is covered


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16 autocast: the features are stored in bfloat16
def test_a_flow_step_trains_the_same_from_the_text_cache_as_by_encoding_captions(tmp_path, precision):
    live, cached = assert_trains_the_same(tmp_path, FROZEN_TEXT, dataset_size=24, precision=precision)
    assert cached.text_cache is not None and cached.cached_latents and live.text_cache is None
    assert cached.text_cache.store.fields["tokens"][1] == {"fp32": "float32", "bf16": "bfloat16"}[precision]


def test_the_text_cache_holds_each_distinct_caption_once_with_the_encoders_outputs(tmp_path):
    trainer, data, _, _ = flow_setup(tmp_path, FROZEN_TEXT, caches=True, dataset_size=24)
    captions = data.captions
    assert trainer.text_cache.store.rows == len(captions) == len(set(captions))
    picked = [data.train_set[i][1] for i in (3, 0, 3)]
    tokens, pooled, mask = trainer.text_cache.features(picked, trainer.ctx.device)
    ids, want_mask = trainer.tokenize(picked)
    want_tokens, want_pooled = trainer.models["text_encoder"](ids, want_mask)
    assert torch.equal(mask, want_mask)
    torch.testing.assert_close(tokens, want_tokens, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled, want_pooled, rtol=1e-5, atol=1e-6)


def test_a_changed_text_encoder_builds_a_new_text_cache(tmp_path):
    said: list[str] = []
    first, _, _, _ = flow_setup(tmp_path, FROZEN_TEXT, caches=True, said=said)
    text_encoder = {k: v.clone() for k, v in first.models["text_encoder"].state_dict().items()}
    text_encoder["pos"] += 0.05
    flow_setup(tmp_path, FROZEN_TEXT, caches=True, said=said, state={"models": {"text_encoder": text_encoder}})
    assert len(list((tmp_path / "text_cache").iterdir())) == 2
    assert sum(line.startswith("Text cache") and "computing" in line for line in said) == 2


def test_cached_caption_features_reach_a_gpu_pinned_and_without_blocking_the_host(tmp_path, monkeypatch):
    """Read from the memory map into pageable memory, their copy made the host wait for the GPU's queue every batch.
    (No GPU here: the copy is recorded, not made.)"""
    trainer, data, _, _ = flow_setup(tmp_path, FROZEN_TEXT, caches=True, dataset_size=24)
    moves = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: moves.append("pinned") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, target=None, non_blocking=False: moves.append(
        (str(target), non_blocking)) or self)
    trainer.text_cache.features([data.train_set[0][1]], torch.device("cuda"))
    assert moves == ["pinned", ("cuda", True)] * 3
