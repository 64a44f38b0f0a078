"""Evaluation of a pipeline step on its held-out split: what the step runner logs at the end of a step (and every
`eval_interval` epochs).

- VAE steps (fluxflow.config.modes.touches_vae): `psnr`, `ssim` of posterior-mean
  reconstructions, and `lpips` when the LPIPS backbone is on disk (reconstruction.py).
- Flow steps: `fd_ours_cfg` and `fd_ours_nocfg` (frechet.py), generated from the held-out captions with guidance
  EVAL_GUIDANCE and 1.0; on a `shapes` dataset also `adherence_color`, `adherence_shape`, `adherence_both` of the
  CFG images and `analyser_accuracy_holdout`, the analyser's own colour-and-shape accuracy on the real held-out
  images (adherence.py). With held-out compositions (a `shapes` dataset's `holdout_pairs`:
  fluxflow/config/heldout_pairs.py) the same on the `unseen` split: `adherence_unseen_color`, `_shape`, `_both` and
  `analyser_accuracy_unseen` (on a folder with `holdout_captions`: `fd_ours_unseen_cfg`); the held-out split then
  has seen pairs only, and may be empty (`holdout: 0`): the unseen split is scored alone.
  And `diversity_gen`, `diversity_real`, `diversity_ratio`: seed-to-seed spread against the data's (diversity.py).

Evaluation is a pure function of the weights, the data and fixed seeds: models are switched to eval mode and back,
and the global RNG state is restored afterwards, so evaluating never changes what training does next (exact resume
stays exact). Pass the weights you want measured; the step runner passes the EMA weights it samples with.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from fluxflow.data import build_dataset
from fluxflow.evaluation.adherence import adherence_of, generate
from fluxflow.evaluation.diversity import prompt_diversity, real_sets
from fluxflow.evaluation.frechet import fd_ours, feature_net_for, spread_items
from fluxflow.evaluation.reconstruction import lpips_if_available, reconstruction_metrics
from fluxflow.config.modes import has_flow_mode, touches_vae
from fluxflow.runtime.global_rng import GLOBAL_RNG

log = logging.getLogger("fluxflow.evaluation")

MAX_EVAL_IMAGES = 256  # held-out images used at most (time grows linearly; fd_ours needs a few dozen at least)
EVAL_SAMPLER_STEPS = 25
EVAL_GUIDANCE = 3.0
EVAL_SEED = 0

def evaluate_step(step, models: dict[str, nn.Module], holdout_set, train_set, config,
                  latent_norm: dict[str, torch.Tensor] | None, device: torch.device | str,
                  cache_dir: str | Path, *, spade: bool, shift: float = 1.0) -> dict[str, float]:
    """The step's evaluation metrics on (at most MAX_EVAL_IMAGES of) `holdout_set`; {} when nothing applies.
    `spade`: the expander decodes with SPADE (fluxflow.config.modes.expander_spade); `shift`: the flow's timestep
    shift, which its sampler follows."""
    device = torch.device(device)
    ds_cfg = config.dataset_for(step)
    images, captions, unseen = eval_items(holdout_set, ds_cfg, step.img_size, config.data.channels, MAX_EVAL_IMAGES,
                                          device, unseen=has_flow_mode(step))
    if images is None and unseen is None:
        log.warning("Step %s: the held-out split of dataset %r is empty; no evaluation metrics", step.name,
                    step.dataset)  # it said "holdout: 0" whatever the config held
        return {}
    if images is None:
        log.warning("Step %s: the held-out split of dataset %r is empty; only its unseen split is evaluated",
                    step.name, step.dataset)
    was_training = {name: m.training for name, m in models.items()}
    try:
        for m in models.values():
            m.eval()
        with GLOBAL_RNG, torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            metrics: dict[str, float] = {}
            if images is not None and touches_vae(step) and {"compressor", "expander"} <= set(models):
                metrics.update(reconstruction_metrics(models["compressor"], models["expander"], images,
                                                      spade=spade, lpips=lpips_if_available(device)))
            if has_flow_mode(step) and latent_norm is None:
                log.warning("Step %s: no latent normalisation yet; flow metrics skipped", step.name)
            elif has_flow_mode(step):
                sample = dict(latent_size=step.img_size // config.model.downscale, steps=EVAL_SAMPLER_STEPS,
                              seed=EVAL_SEED, spade=spade, shift=shift)
                measurable = fd_measurable(images, unseen)
                if not measurable:  # fd_ours_* were left out without a word
                    log.warning("Step %s: dataset %r holds out one image to score; the Fréchet distance (fd_ours_*) "
                                "needs two or more and is left out (raise its holdout)", step.name, step.dataset)
                net = (feature_net_for(train_set, ds_cfg, step.img_size, config.data.channels, cache_dir)
                       if measurable else None)
                norm = {k: v.to(device) for k, v in latent_norm.items()}
                real = real_sets(holdout_set, captions, images) if images is not None else None
                metrics.update(flow_metrics(models, images, captions, norm, sample, net, shapes=ds_cfg.type == "shapes",
                                            unseen=unseen, real=real))
            return metrics
    finally:
        for name, m in models.items():
            m.train(was_training[name])


def fd_measurable(images: torch.Tensor | None, unseen: tuple[torch.Tensor, list[str]] | None) -> bool:
    """Whether a Fréchet distance can be measured (two images or more) on the held-out images or the unseen ones:
    the feature network is worth loading or training."""
    unseen_images = unseen[0] if unseen is not None else None
    return any(real is not None and real.shape[0] >= 2 for real in (images, unseen_images))


def eval_items(holdout_set, ds_cfg, img_size: int, channels: int, n: int, device: torch.device | str, *,
               unseen: bool = True) -> tuple[torch.Tensor | None, list[str], tuple[torch.Tensor, list[str]] | None]:
    """`n` images (on `device`) and captions of `holdout_set` (None and [] when it is empty), and of the dataset's
    held-out compositions (None without any, or not `unseen`), which are scored even when the held-out split is
    empty: a folder with `holdout: 0` and `holdout_captions` keeps those images out of training for this. Each set is
    spread over its split (frechet.spread_items: the same items every time), not its first `n` by file name."""
    images, captions = _spread_on(holdout_set, n, device) or (None, [])
    unseen_items = _spread_on(build_dataset(ds_cfg, img_size, channels, "unseen"), n, device) if unseen else None
    return images, captions, unseen_items


def _spread_on(dataset, n: int, device: torch.device | str) -> tuple[torch.Tensor, list[str]] | None:
    """frechet.spread_items, its images on `device`; None for an empty dataset."""
    if len(dataset) == 0:
        return None
    images, captions = spread_items(dataset, n)
    return images.to(device), captions


def flow_metrics(models: dict[str, nn.Module], images: torch.Tensor | None, captions: list[str],
                 latent_norm: dict[str, torch.Tensor], sample: dict, net=None, *, shapes: bool,
                 unseen: tuple[torch.Tensor, list[str]] | None = None,
                 real: tuple[list[str], list[torch.Tensor] | None] | None = None) -> dict[str, float]:
    """The text-to-image metrics of `models` on real `images` and their `captions`: images generated with `sample`
    (latent_size, steps, seed, spade, shift of adherence.generate) with EVAL_GUIDANCE and 1.0, scored by the feature
    network `net` (fd_ours; none: skipped) and, on `shapes`, by the analyser (`images` None: an empty held-out split,
    only `unseen` is scored). `unseen`: real images and captions of the held-out compositions, scored the same way
    under `*_unseen*` names; `real`: diversity.real_sets's prompts and real images (None: no diversity figure)."""
    metrics: dict[str, float] = {}
    if images is not None:
        with_cfg = generate(models, captions, latent_norm, guidance=EVAL_GUIDANCE, **sample)
        without_cfg = generate(models, captions, latent_norm, guidance=1.0, **sample)
        if shapes:
            metrics.update(adherence_of(with_cfg, captions))
            metrics["analyser_accuracy_holdout"] = adherence_of(images.cpu(), captions)["adherence_both"]
        if net is not None and images.shape[0] >= 2:
            metrics["fd_ours_cfg"] = fd_ours(net, images, with_cfg)
            metrics["fd_ours_nocfg"] = fd_ours(net, images, without_cfg)
    if unseen is not None:  # adherence on `shapes`, else the Fréchet distance; with guidance only
        unseen_images, unseen_captions = unseen
        drawn = generate(models, unseen_captions, latent_norm, guidance=EVAL_GUIDANCE, **sample)
        if shapes:
            metrics.update({key.replace("adherence_", "adherence_unseen_"): v
                            for key, v in adherence_of(drawn, unseen_captions).items()})
            metrics["analyser_accuracy_unseen"] = adherence_of(unseen_images.cpu(), unseen_captions)["adherence_both"]
        elif net is not None and unseen_images.shape[0] >= 2:
            metrics["fd_ours_unseen_cfg"] = fd_ours(net, unseen_images, drawn)
    if real is not None:  # (prompts, their real images)
        metrics.update(prompt_diversity(  # prompt_diversity picks the sampler seed
            lambda texts, seed: generate(models, texts, latent_norm, guidance=EVAL_GUIDANCE, **sample | {"seed": seed}),
            *real))
    return metrics
