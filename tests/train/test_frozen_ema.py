"""A frozen component with an EMA is one network in its step: after a train_diff_full step, a train_diff step trains
the flow on the text encoder's EMA weights, keys its text cache on them and samples with them (as the latent side
encodes with the EMA compressor)."""
from __future__ import annotations

import json

import torch
from helpers_tiny import load_weights, one_torch_thread, tiny_config

from fluxflow.cache.fingerprint import module_sha256
from fluxflow.models import build_component
from fluxflow.train.pipeline import run_pipeline
from fluxflow.train.trainer import build_trainer

__all__ = ["one_torch_thread"]

FULL = {"name": "full", "n_epochs": 1, "max_steps": 3, "train_diff_full": True}
FLOW = {"name": "flow", "n_epochs": 1, "max_steps": 1, "train_diff": True}
CAPTIONS = ["a red circle", "a blue square"]


def text_encoder(config, weights: dict) -> torch.nn.Module:
    module = build_component("text_encoder", config.model, config.data.channels)
    module.load_state_dict(weights)
    return module.eval()


def test_a_frozen_text_encoder_with_an_ema_trains_caches_and_samples_as_its_ema(tmp_path, one_torch_thread):
    out = tmp_path / "out"
    config = tiny_config(out, [FULL, FLOW], no_samples=True)
    run_pipeline(config)
    state = load_weights(out / "checkpoints" / "full" / "final.pt")
    ema = text_encoder(config, state["ema"]["text_encoder"]["shadow"])
    raw = text_encoder(config, state["models"]["text_encoder"])
    assert module_sha256(ema) != module_sha256(raw)  # the EMA lags the trained weights

    trainer = build_trainer(config, config.resolved_steps()[1], state, torch.device("cpu"), max_epochs=1)
    ids, mask = trainer.tokenize(CAPTIONS)
    trained_on = trainer.text_features(CAPTIONS).pooled
    assert torch.allclose(trained_on, ema(ids, mask)[1])  # what the flow learns from...
    assert torch.allclose(trainer.sampling_models()["text_encoder"](ids, mask)[1], trained_on)  # ...and samples with
    assert not torch.allclose(trained_on, raw(ids, mask)[1])

    (meta,) = (out / "text_cache").glob("*/meta.json")  # the train_diff step's text cache
    assert json.loads(meta.read_text())["key_inputs"]["encoder"] == module_sha256(ema)
