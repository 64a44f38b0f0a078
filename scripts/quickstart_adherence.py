"""Prompt adherence of `shapes` flow checkpoints on more held-out captions than a run's own evaluation uses.

A quickstart run evaluates on its 64 held-out captions. At that size one run's `eval_adherence_shape` carries a
sampling error of about ±0.04 (binomial, p ≈ 0.85), and the training itself is chaotic: the same code with another
`training.seed` moves it by more than that (README, "How much one quickstart run tells"). This script scores
checkpoints on the first N captions of the same held-out stream (default 512), with the evaluation's own sampler
settings (25 steps, guidance 3, seed 0), so runs can be compared on the model rather than on the draw:

    .venv/bin/python scripts/quickstart_adherence.py outputs/quickstart/checkpoints/flow/final.pt [more.pt ...]

With N = 64 it reproduces the run's own `eval_adherence_*` exactly.
"""
from __future__ import annotations

import argparse

import torch

from fluxflow.config import load_config
from fluxflow.data import build_dataset
from fluxflow.evaluation.adherence import adherence_of, generate
from fluxflow.evaluation.evaluate import EVAL_GUIDANCE, EVAL_SAMPLER_STEPS, EVAL_SEED
from fluxflow.evaluation.frechet import first_items
from fluxflow.sampling.generate import load_text_to_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--config", default="configs/quickstart.yaml", help="the pipeline whose held-out data to use")
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--n", type=int, default=512, help="held-out captions to score")
    args = parser.parse_args()
    config = load_config(args.config).config
    size, channels = config.data.img_size, config.data.channels
    ds_cfg = config.training.pipeline.datasets[args.dataset].model_copy(update={"holdout": args.n})
    _, captions = first_items(build_dataset(ds_cfg, size, channels, "holdout"), args.n)
    for path in args.checkpoints:
        model = load_text_to_image(path, config.model, size, "cpu")
        with torch.no_grad():
            images = generate(model.models, captions, model.latent_norm, latent_size=size // config.model.downscale,
                              guidance=EVAL_GUIDANCE, steps=EVAL_SAMPLER_STEPS, seed=EVAL_SEED, spade=model.spade,
                              shift=model.flow_shift)
        found = adherence_of(images, captions)
        print(f"{path}: n {len(captions)}, color {found['adherence_color']:.3f}, "
              f"shape {found['adherence_shape']:.3f}, both {found['adherence_both']:.3f}", flush=True)


if __name__ == "__main__":
    main()
