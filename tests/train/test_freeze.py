"""`freeze` takes components away from what a step's modes train: a decoder-only VAE/GAN fine-tune (compressor
frozen) trains the expander and the discriminator and leaves the compressor bit-identical; a later step's `unfreeze`
trains it again; a step whose freeze leaves nothing to train is refused, naming what it froze."""
from __future__ import annotations


import pytest
import torch
from helpers_tiny import load_weights, one_torch_thread, tiny_raw

from fluxflow.config import ConfigError, load_config
from fluxflow.config.summary import format_summary
from fluxflow.models import build_component
from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

S = "training.pipeline.steps"
WARM = {"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True}
# Decoder-only fine-tune: the compressor frozen through the defaults, as the original tool's "freeze encoder".
DECODER = {"name": "decoder", "n_epochs": 1, "max_steps": 2, "train_vae": True, "gan_training": True}
BOTH = {"name": "both", "n_epochs": 1, "max_steps": 2, "train_vae": True, "gan_training": True,
        "unfreeze": ["compressor"]}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def optimized_count(checkpoint: dict, group: str) -> int:
    """How many parameters the saved optimizer of `group` updates."""
    return sum(len(g["params"]) for g in checkpoint["optimizers"][group]["param_groups"])


def pipeline_raw(out, *steps: dict, defaults: dict | None = None) -> dict:
    raw = tiny_raw(out, list(steps), no_samples=True)
    if defaults:
        raw["training"]["pipeline"]["defaults"] = defaults
    return raw


def test_a_frozen_compressor_stays_bit_identical_and_a_later_unfreeze_trains_it(tmp_path, one_torch_thread):
    out = tmp_path / "out"
    # `freeze: [compressor]` inherited from the defaults by every step; the first and the last step unfreeze it.
    raw = pipeline_raw(out, dict(WARM, unfreeze=["compressor"]), DECODER, BOTH, defaults={"freeze": ["compressor"]})
    run_pipeline(load_config(raw).config)
    saved = {s: load_weights(out / "checkpoints" / s / "final.pt") for s in ("warm", "decoder", "both")}
    models = {s: c["models"] for s, c in saved.items()}

    assert same(models["warm"]["compressor"], models["decoder"]["compressor"]), "the frozen compressor changed"
    assert same(saved["warm"]["ema"]["compressor"]["shadow"], saved["decoder"]["ema"]["compressor"]["shadow"])
    assert not same(models["warm"]["expander"], models["decoder"]["expander"]), "the expander did not train"
    assert "discriminator" in saved["decoder"]["optimizers"]  # D trains as usual
    expander_params = sum(1 for _ in build_component("expander", load_config(raw).config.model, 3).parameters())
    assert optimized_count(saved["decoder"], "vae") == expander_params  # no optimizer state for the compressor
    assert not same(models["decoder"]["compressor"], models["both"]["compressor"]), "unfreeze did not train it"


def test_freezing_what_a_vae_gan_step_trains_validates_and_the_summary_shows_what_it_trains(tmp_path):
    config = load_config(pipeline_raw(tmp_path, WARM, dict(DECODER, freeze=["compressor"]), BOTH)).config
    steps = {s.name: s for s in config.resolved_steps()}
    assert steps["decoder"].freeze == ["compressor"]
    text = format_summary(config)
    decoder = text.split("Step 2: decoder")[1].split("Step 3")[0]
    assert "Trains: expander, discriminator\n" in decoder and "Freeze: compressor" in decoder
    assert "Trains: compressor, expander, discriminator" in text.split("Step 3: both")[1]


@pytest.mark.parametrize("step,defaults,inherited", [
    (dict(WARM, freeze=["compressor", "expander"]), None, False),
    (WARM, {"freeze": ["expander", "compressor"]}, True),
])
def test_a_freeze_that_leaves_nothing_to_train_is_refused_naming_what_it_froze(tmp_path, step, defaults, inherited):
    with pytest.raises(ConfigError) as caught:
        load_config(pipeline_raw(tmp_path, step, defaults=defaults))
    found = {issue.path: issue.message for issue in caught.value.issues}
    message = found[f"{S}[0].freeze"]
    assert "nothing is left to train" in message and "compressor, expander" in message
    assert ("inherited from training.pipeline.defaults" in message) is inherited


def test_a_frozen_discriminator_is_the_generators_fixed_critic(tmp_path, one_torch_thread):
    out = tmp_path / "out"
    run_pipeline(load_config(pipeline_raw(out, WARM, dict(DECODER, freeze=["discriminator"]))).config)
    before = load_weights(out / "checkpoints" / "warm" / "final.pt")["models"]
    saved = load_weights(out / "checkpoints" / "decoder" / "final.pt")
    assert "discriminator" not in saved["optimizers"]
    assert not same(before["expander"], saved["models"]["expander"])


def test_a_vae_step_with_its_compressor_frozen_trains_the_expander_alone(tmp_path, one_torch_thread):
    out = tmp_path / "out"
    raw = pipeline_raw(out, WARM, {"name": "decoder", "n_epochs": 1, "max_steps": 2, "train_vae": True,
                                   "freeze": ["compressor"]})
    run_pipeline(load_config(raw).config)
    before = load_weights(out / "checkpoints" / "warm" / "final.pt")["models"]
    saved = load_weights(out / "checkpoints" / "decoder" / "final.pt")
    assert same(before["compressor"], saved["models"]["compressor"])
    changed = {name for name in ("compressor", "expander", "flow_processor", "text_encoder")
               if name in before and not same(before[name], saved["models"][name])}
    assert changed == {"expander"}
    assert set(saved["optimizers"]) == {"vae"}
