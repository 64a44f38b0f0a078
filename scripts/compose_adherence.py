"""Adherence of `shapes` flow checkpoints on seen and on held-out colour x shape pairs, at several guidance scales.

A run's own evaluation scores 64 seen and 64 unseen captions at guidance 3 (fluxflow/evaluation/evaluate.py). This
scores the first N of each (default 256: the sampling error of a fraction near 0.8 drops from about ±0.05 to ±0.025)
at each `--guidance`, plus the diversity figure at the first guidance, with the evaluation's sampler settings:

    .venv/bin/python scripts/compose_adherence.py outputs/compose/checkpoints/flow/final.pt --guidance 1 3 5

One line per checkpoint and guidance: seen colour / shape / both, unseen colour / shape / both.
"""
from __future__ import annotations

import argparse

import torch

from fluxflow.config import load_config
from fluxflow.data import build_dataset
from fluxflow.evaluation.adherence import adherence_of, generate
from fluxflow.evaluation.diversity import prompt_diversity, real_sets
from fluxflow.evaluation.evaluate import EVAL_SAMPLER_STEPS, EVAL_SEED
from fluxflow.evaluation.frechet import first_items
from fluxflow.sampling.generate import load_text_to_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--config", default="configs/compose.yaml", help="the pipeline whose held-out data to use")
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--n", type=int, default=256, help="seen and unseen captions to score, each")
    parser.add_argument("--guidance", type=float, nargs="+", default=[3.0])
    args = parser.parse_args()
    config = load_config(args.config).config
    size, channels = config.data.img_size, config.data.channels
    ds_cfg = config.training.pipeline.datasets[args.dataset].model_copy(update={"holdout": args.n})
    holdout = build_dataset(ds_cfg, size, channels, "holdout")
    seen_images, seen = first_items(holdout, args.n)
    _, unseen = first_items(build_dataset(ds_cfg, size, channels, "unseen"), args.n)
    prompts, real = real_sets(holdout, seen, seen_images)
    for path in args.checkpoints:
        model = load_text_to_image(path, config.model, size, "cpu")
        sample = dict(latent_size=size // config.model.downscale, steps=EVAL_SAMPLER_STEPS, spade=model.spade,
                      shift=model.flow_shift)
        for k, guidance in enumerate(args.guidance):
            with torch.no_grad():
                found = {name: adherence_of(generate(model.models, captions, model.latent_norm, guidance=guidance,
                                                     seed=EVAL_SEED, **sample), captions)
                         for name, captions in (("seen", seen), ("unseen", unseen))}
                line = ", ".join(f"{name} {f['adherence_color']:.3f}/{f['adherence_shape']:.3f}/"
                                 f"{f['adherence_both']:.3f}" for name, f in found.items())
                if k == 0:
                    div = prompt_diversity(lambda texts, seed: generate(model.models, texts, model.latent_norm,
                                                                        guidance=guidance, seed=seed, **sample),
                                           prompts, real)
                    line += f", diversity_ratio {div['diversity_ratio']:.3f}"
            print(f"{path}: guidance {guidance:g}, n {len(seen)}+{len(unseen)}, {line}", flush=True)


if __name__ == "__main__":
    main()
