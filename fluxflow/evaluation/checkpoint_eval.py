"""Evaluation of a finished text-to-image checkpoint on a pipeline's held-out data: how a new model version and the
current champion are compared (flows/promotion.py), both measured here with the same images, captions and seeds.

    metrics = evaluate_checkpoint("outputs/run/checkpoints/flow/final.pt", config, "shapes", seeds=[0, 1])

The weights are the ones `fluxflow-generate` uses (EMA where the checkpoint has them: sampling/generate.py), the
metrics those of a flow step's evaluation (evaluate.flow_metrics), named as in MLflow (`eval_fd_ours_cfg`, ...) and
averaged over the seeds. The images are generated at the evaluation data's size, so checkpoints trained at another
size are measured on the same footing (or refused, when their model cannot make that size).
"""
from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import torch

from fluxflow.data import build_dataset
from fluxflow.evaluation.diversity import real_sets
from fluxflow.evaluation.evaluate import EVAL_SAMPLER_STEPS, MAX_EVAL_IMAGES, eval_items, fd_measurable, flow_metrics
from fluxflow.evaluation.frechet import feature_net_for
from fluxflow.output_layout import eval_cache_dir
from fluxflow.runtime.device import resolve_device
from fluxflow.runtime.global_rng import GLOBAL_RNG
from fluxflow.sampling.generate import GenerationError, load_text_to_image
from fluxflow.storage.location import output_root


def evaluate_checkpoint(checkpoint: str | Path, config, dataset: str, *, seeds: list[int] = (0,),
                        n_images: int = MAX_EVAL_IMAGES, sampler_steps: int = EVAL_SAMPLER_STEPS,
                        size: int | None = None) -> dict[str, float]:
    """`eval_*` metrics of `checkpoint` on `n_images` of the held-out split of `config`'s `dataset`
    (evaluate.eval_items: the same ones for every checkpoint), each the mean over `seeds`, its images made at `size`
    (None: the size its step trained at, recorded in the checkpoint; two checkpoints compared are measured at one
    size), on the config's device. The fd_ours feature
    network is the pipeline's eval_cache/ one, which the flow step's own evaluation already trained."""
    target = resolve_device(config.training.device)
    model = load_text_to_image(checkpoint, config.model, config.data.img_size, str(target))
    cfg = model.model_config
    size = size or model.img_size
    if size % (cfg.downscale * cfg.patch_size):
        raise GenerationError(f"checkpoint {checkpoint} cannot make {size}x{size} images (its model needs a multiple "
                              f"of {cfg.downscale * cfg.patch_size}): it is not comparable on this evaluation set")
    ds_cfg = config.training.pipeline.datasets[dataset]
    channels = config.data.channels
    holdout_set = build_dataset(ds_cfg, size, channels, "holdout")
    images, captions, unseen = eval_items(holdout_set, ds_cfg, size, channels, n_images, target)
    if images is None and unseen is None:
        raise ValueError(f"dataset {dataset!r} has no held-out images (holdout: 0): nothing to evaluate on")
    real = real_sets(holdout_set, captions, images) if images is not None else None
    cache = eval_cache_dir(output_root(config))
    # The training split (its files key the feature network: frechet.feature_net_for), built only when a Fréchet
    # distance is measured, and then only to train the network or list a folder, and quiet: the steps said what its
    # captions file lacks (built for each version compared, it said it twice more).
    train_set = functools.partial(build_dataset, ds_cfg, size, channels, "train", report=False)
    net = feature_net_for(train_set, ds_cfg, size, channels, cache) if fd_measurable(images, unseen) else None
    totals: Counter[str] = Counter()
    for seed in seeds:
        sample = dict(latent_size=size // cfg.downscale, steps=sampler_steps, seed=seed, spade=model.spade,
                      shift=model.flow_shift)
        with GLOBAL_RNG, torch.random.fork_rng(devices=[target] if target.type == "cuda" else []), torch.no_grad():
            found = flow_metrics(model.models, images, captions, model.latent_norm, sample, net,
                                 shapes=ds_cfg.type == "shapes", unseen=unseen, real=real)
        totals.update(found)
    return {f"eval_{key}": value / len(seeds) for key, value in totals.items()}
