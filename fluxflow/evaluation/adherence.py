"""Prompt adherence on `shapes`: generate one image per held-out caption, read it back with the deterministic
analyser (`shapes_analyser.analyse_shape_image`), and count how often colour, shape, and both match the caption.

The analyser is validated on real `shapes` images before its verdict on generated ones means anything: evaluation
runs `adherence_of` on the real held-out images of the same captions too, so every report carries the analyser's own
accuracy (`analyser_accuracy_*`) next to the model's adherence (a model cannot be measured above that ceiling).
"""
from __future__ import annotations

import torch
from torch import nn

from fluxflow.evaluation.shapes_analyser import prompt_adherence
from fluxflow.sampling.text_to_image import text_to_image

# Keys in the evaluation dict ← keys of `shapes_analyser.prompt_adherence`.
ADHERENCE_KEYS = {"adherence_color": "color", "adherence_shape": "shape", "adherence_both": "color_and_shape"}


def generate(models: dict[str, nn.Module], captions: list[str], latent_norm: dict[str, torch.Tensor], *,
             latent_size: int, guidance: float, steps: int, seed: int, spade: bool, shift: float = 1.0,
             batch_size: int = 64) -> torch.Tensor:
    """One image per caption `[N, C, H, W]` in [-1, 1], in batches; batch k uses seed `seed + k`, so the images do
    not depend on anything but the captions, the weights and the seed."""
    return torch.cat([text_to_image(models, captions[start:start + batch_size], latent_norm, latent_size=latent_size,
                                    steps=steps, guidance=guidance, seed=seed + k, spade=spade,
                                    shift=shift).cpu()
                      for k, start in enumerate(range(0, len(captions), batch_size))])


def adherence_of(images: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """{"adherence_color", "adherence_shape", "adherence_both"}: fractions of `images` matching their caption."""
    scores = prompt_adherence(images, captions)
    if scores["n"] == 0:
        raise ValueError("no canonical `shapes` caption among the held-out captions: adherence is undefined")
    return {key: float(scores[src]) for key, src in ADHERENCE_KEYS.items()}
