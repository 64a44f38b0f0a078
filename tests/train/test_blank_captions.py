"""A blank caption (empty, or spaces) trains as classifier-free guidance's dropped captions do: its row sees the flow
model's learned null text, which is the unconditional branch every guided sample uses. Encoded, "" was an ordinary
prompt (BOS/EOS), a second "unconditional" that sampling never used, while docs/CONFIG.md said that such images train
"as classifier-free guidance's dropped captions do"."""
from __future__ import annotations

import pytest
import torch
from helpers_tiny import one_torch_thread, single_step_config

from fluxflow.cache.text_cache import TextCache
from fluxflow.models.flow_processor import FlowProcessor
from fluxflow.models.latents import measure_latent_norm
from fluxflow.sampling import text_to_image as t2i
from fluxflow.train.step_cache import text_cache
from fluxflow.train.trainer import build_trainer

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAPTIONS = ["", "a red circle on a black background, center", "   ", "a blue square on a gray background, top left"]


def recorded_drops(monkeypatch) -> list[list[bool]]:
    """The `drop` of every flow model call from now on (None: no row dropped)."""
    drops, forward = [], FlowProcessor.forward

    def recording(self, x_t, t, tokens, mask, pooled, drop=None):
        drops.append(None if drop is None else drop.tolist())
        return forward(self, x_t, t, tokens, mask, pooled, drop)

    monkeypatch.setattr(FlowProcessor, "forward", recording)
    return drops


@pytest.mark.parametrize("text", ["encoded", "cached"])
def test_a_blank_caption_trains_as_a_dropped_one_encoded_or_from_the_text_cache(tmp_path, monkeypatch, text):
    config, step = single_step_config({"train_diff": True, "cfg_dropout": 0.0}, tmp_path)
    trainer = build_trainer(config, step, None, torch.device("cpu"), max_epochs=1)
    side = config.data.img_size
    images = torch.rand(len(CAPTIONS), 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    trainer.set_latent_norm(measure_latent_norm(trainer.ctx.latent_encoder, images))
    if text == "cached":  # the frozen encoder's outputs of every caption, "" and "   " among them, looked up by caption
        trainer.text_cache = TextCache(text_cache(config, step, sorted(set(CAPTIONS)), trainer, lambda line: None))
        assert set(trainer.text_cache.row) == set(CAPTIONS)
    drops = recorded_drops(monkeypatch)
    trainer.train_batch(images, CAPTIONS, global_step=0, update=0)
    assert drops == [[True, False, True, False]]  # was [[False, False, False, False]]: cfg_dropout 0 dropped none
    trainer.train_batch(images[1::2], CAPTIONS[1::2], global_step=1, update=1)
    assert drops[1] == [False, False]  # no blank caption: only the cfg_dropout draw, as before


def test_a_blank_caption_samples_with_the_null_text_as_it_trained(monkeypatch):
    """Evaluation generates from held-out captions: a blank one is drawn from the null text it trained with, as the
    cond row of a guided pair (both rows then agree, and guidance leaves the unconditional velocity)."""
    config, _ = single_step_config({"train_diff": True})
    models = build_trainer(config, config.resolved_steps()[0], None, torch.device("cpu"), max_epochs=1).models
    channels = config.model.latent_channels
    norm = {"shift": torch.zeros(channels), "scale": torch.ones(channels)}
    drops = recorded_drops(monkeypatch)
    for guidance in (1.0, 3.0):
        t2i.text_to_image(models, CAPTIONS[:2], norm, latent_size=4, steps=1, guidance=guidance)
    assert drops == [[True, False], [True, False, True, True]]  # were [None, [False, False, True, True]]
    t2i.text_to_image(models, CAPTIONS[1::2], norm, latent_size=4, steps=1, guidance=1.0)
    assert drops[2] is None  # no blank caption: the conditional rows as before
