"""Prompt adherence on `shapes`: the analyser's verdict on images against their captions, and generation for it."""
import pytest
import torch

from fluxflow.config.schema import ModelConfig
from fluxflow.data import build_dataset
from fluxflow.evaluation.adherence import adherence_of, generate
from fluxflow.evaluation.frechet import first_items
from fluxflow.models import build_component

SHAPES = {"type": "shapes", "size": 16, "seed": 11, "holdout": 24}


def real_holdout(n=24, side=32):
    return first_items(build_dataset(SHAPES, side, 3, "holdout"), n)


def test_real_images_adhere_to_their_own_captions():
    images, captions = real_holdout()
    scores = adherence_of(images, captions)
    assert set(scores) == {"adherence_color", "adherence_shape", "adherence_both"}
    assert scores["adherence_both"] >= 0.95


def test_images_with_someone_elses_caption_score_low():
    images, captions = real_holdout()
    shifted = captions[1:] + captions[:1]
    scores = adherence_of(images, shifted)
    assert scores["adherence_both"] < 0.3
    assert scores["adherence_both"] <= min(scores["adherence_color"], scores["adherence_shape"])


def test_free_text_captions_cannot_be_scored():
    images, _ = real_holdout(2)
    with pytest.raises(ValueError, match="canonical"):
        adherence_of(images, ["a photo of a cat", "sunset"])


def tiny_models():
    cfg = ModelConfig(vae_dim=8, feature_maps_dim=32, flow_depth=1, flow_heads=2, text_embedding_dim=16,
                      text_encoder_depth=1, text_max_len=32)
    torch.manual_seed(0)
    models = {n: build_component(n, cfg, 3).eval() for n in ("expander", "flow_processor", "text_encoder")}
    norm = {"shift": torch.zeros(cfg.latent_channels), "scale": torch.ones(cfg.latent_channels)}
    return models, norm


def test_generation_is_one_image_per_caption_and_repeatable():
    models, norm = tiny_models()
    _, captions = real_holdout(5)
    kwargs = dict(latent_size=4, guidance=3.0, steps=2, seed=0, spade=False, batch_size=2)
    a = generate(models, captions, norm, **kwargs)
    b = generate(models, captions, norm, **kwargs)
    assert a.shape == (5, 3, 16, 16)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    c = generate(models, captions, norm, **{**kwargs, "seed": 1})
    assert not torch.equal(a, c)
