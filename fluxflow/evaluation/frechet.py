"""`fd_ours`: a Fréchet distance in the features of a small CNN trained on this run's own training images.

It is not FID and must never be called that: FID uses ImageNet Inception-v3 features, which we cannot download and
which know nothing of 32-pixel procedural shapes. Here the feature network learns what the training captions say
about the training images, so its features separate exactly what a caption can ask for (colour, shape, position,
background, or the words of a folder dataset's captions). Numbers are comparable between runs that share the dataset
config and data (the cache key below), not across datasets, and not with published FIDs.

The feature network:
- input: images resized to at most FEATURE_SIZE pixels; three stride-2 convs, a 4x4 map, a FEATURE_DIM vector;
- objective: multi-label prediction of the VOCAB_SIZE most frequent caption words that are not in every caption
  (a bag of words; for `shapes` these are its colours, shapes, backgrounds and positions);
- training: N_TRAIN training images spread over the whole split (`spread_items`), fixed seed, on the CPU in fp32, in
  seconds; the global RNG is left untouched;
- cached on disk, keyed by a hash of the dataset config, its training split's files (a folder's or a webdataset's
  `fingerprint()`: names, captions, sizes, modification times), image size and this recipe (`feature_net_<hash>.pt`).

The distance is ‖μ_a − μ_b‖² + tr(Σ_a) + tr(Σ_b) − 2·tr((Σ_a Σ_b)^½), computed in float64 with eigendecompositions
(no scipy): tr((Σ_a Σ_b)^½) is the sum of the square roots of the eigenvalues of Σ_a^½ Σ_b Σ_a^½. With N images
of D = FEATURE_DIM features the estimate is biased upwards for small N; compare runs at the same N.
"""
from __future__ import annotations

import functools
import itertools
import logging
import math
import re
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fluxflow.checkpoints.io import load_checkpoint, save_checkpoint
from fluxflow.checkpoints.step_key import json_sha256
from fluxflow.data import epoch_permutation, train_fingerprint
from fluxflow.runtime.global_rng import GLOBAL_RNG
from fluxflow.runtime.torch_threads import one_torch_thread

log = logging.getLogger("fluxflow.evaluation")
RECIPE_VERSION = 1  # bump when anything below changes what the cached network computes
FEATURE_SIZE = 64
FEATURE_DIM = 32  # small D keeps the covariance estimate usable with a few dozen held-out images
VOCAB_SIZE = 64
N_TRAIN = 2048
EPOCHS = 5
BATCH = 64
LR = 3e-3
SEED = 1234
SPREAD_SEED = 0  # of the permutation `spread_items` takes items at: fixed, so the sets are too


class FeatureNet(nn.Module):
    """Why this shape: the 4x4 map keeps where things are (position is in the captions; global pooling lost it and
    learned half as well), and it trains to >99 % per-word accuracy on held-out `shapes` in seconds. BatchNorm, not
    GroupNorm: GroupNorm's CPU kernels made training 4x slower, and in eval mode (the only mode features are taken
    in) BatchNorm is a fixed affine map, so an image's features do not depend on its batch."""

    def __init__(self, channels: int, vocab_size: int, dim: int = FEATURE_DIM):
        super().__init__()
        layers, c_in = [], channels
        for c_out in (16, 32, 32):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.SiLU()]
            c_in = c_out
        self.trunk = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c_in * 16, dim))
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(dim, vocab_size))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(fit_size(images.float()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def fit_size(images: torch.Tensor) -> torch.Tensor:
    """Images larger than FEATURE_SIZE are area-downsampled to it (the features see the same scale at any size)."""
    side = images.shape[-1]
    if side <= FEATURE_SIZE:
        return images
    return F.interpolate(images, size=(FEATURE_SIZE, FEATURE_SIZE), mode="area")


def caption_words(caption: str) -> set[str]:
    """The runs of letters of any script ("красный", "café"; a CJK phrase is one run): `[a-z]+` found no word at all
    in captions that are not in English, which stopped every flow step on such a folder (see feature_net_for)."""
    return set(re.findall(r"[^\W\d_]+", caption.lower()))


def caption_vocabulary(captions: list[str], size: int = VOCAB_SIZE) -> list[str]:
    """The `size` most frequent words that are missing from at least one caption (a word in every caption tells the
    network nothing); ties broken alphabetically, so the list is a function of the captions only."""
    counts = Counter(w for c in captions for w in caption_words(c))
    informative = [(-n, w) for w, n in counts.items() if n < len(captions)]
    return [w for _, w in sorted(informative)[:size]]


def first_items(dataset, n: int) -> tuple[torch.Tensor, list[str]]:
    """The first `n` (image, caption) items of a map-style or iterable dataset, as a stacked batch."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return _stacked(list(itertools.islice(dataset, n)))
    return _stacked([dataset[i] for i in range(min(n, len(dataset)))])


def spread_items(dataset, n: int) -> tuple[torch.Tensor, list[str]]:
    """`n` (image, caption) items spread over all of `dataset`, as a stacked batch, in index order: what the feature
    network learns from and what evaluation scores. A map-style dataset with more than `n` items gives those at the
    first `n` places of a fixed permutation (seed SPREAD_SEED: the same items at every evaluation, step and
    hypothesis, and the items for a smaller `n` among those for a larger one). Why: a folder's index order is its
    sorted file names, so its first items left whole classes out when names are grouped (`cat_0001.jpg` ...
    `zebra_0999.jpg`: 2048 of 3 x 1100 had no zebra, so "zebra" was no feature, and 256 of its held-out images none
    either, so drawing zebras badly cost nothing). Datasets whose items are independent random draws already
    (`items_drawn_at_random`: shapes) and streams give their first `n`, as before."""
    if isinstance(dataset, torch.utils.data.IterableDataset) or getattr(dataset, "items_drawn_at_random", False) \
            or len(dataset) <= n:
        return first_items(dataset, n)
    picked = sorted(epoch_permutation(len(dataset), SPREAD_SEED, 0)[:n].tolist())
    return _stacked([dataset[i] for i in picked])


def _stacked(items: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    if not items:
        raise ValueError("the dataset is empty: no images to take")
    images, captions = zip(*items)
    return torch.stack(images), list(captions)


def train_feature_net(images: torch.Tensor, captions: list[str], *,
                      epochs: int = EPOCHS) -> tuple[FeatureNet, list[str]]:
    """A FeatureNet trained on CPU, deterministically, without touching the global RNG. Returns (net, vocabulary)."""
    vocab = caption_vocabulary(captions)
    if not vocab:
        raise ValueError("the training captions have no informative words (every caption is identical)")
    targets = torch.tensor([[float(w in words) for w in vocab] for words in map(caption_words, captions)])
    images = fit_size(images.float().cpu())
    # One thread: the same float reduction order on any machine (so the same network), and for convs this small
    # it is also the fastest (2 threads took 3-10x longer per batch on a 2-core machine).
    with one_torch_thread():
        return _fit(images, targets, epochs, SEED), vocab


def _fit(images: torch.Tensor, targets: torch.Tensor, epochs: int, seed: int) -> FeatureNet:
    # callers may hold no_grad (evaluation does)
    with GLOBAL_RNG, torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)
        net = FeatureNet(images.shape[1], targets.shape[1])
        opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
        g = torch.Generator().manual_seed(seed)
        net.train()
        for _ in range(epochs):
            order = torch.randperm(images.shape[0], generator=g)
            for idx in order.split(BATCH):
                if idx.numel() < 2:  # BatchNorm needs two samples
                    continue
                loss = F.binary_cross_entropy_with_logits(net(images[idx]), targets[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    return net.eval().requires_grad_(False)


def cache_key(ds_cfg, img_size: int, channels: int, files: str | None = None) -> str:
    """Hash of what the cached network depends on: the dataset config, the training split's `files` (its
    `fingerprint()`; None where the config fixes the data, shapes, whose keys stay those made before files were in
    them), the image size and this recipe. With `files`, also how its N_TRAIN items are chosen (`spread_items`'s
    permutation): a network cached when a folder gave its first items by name is not found, and is trained again
    (a webdataset's once too, on the items its stream gave before). Shapes gives the items it always gave, so its
    keys (and networks) are those of before."""
    if hasattr(ds_cfg, "model_dump"):
        ds_cfg = ds_cfg.model_dump(mode="json")
    recipe = {"version": RECIPE_VERSION, "feature_size": FEATURE_SIZE, "dim": FEATURE_DIM, "vocab": VOCAB_SIZE,
              "n_train": N_TRAIN, "epochs": EPOCHS, "batch": BATCH, "lr": LR, "seed": SEED}
    inputs = {"dataset": ds_cfg, "img_size": img_size, "channels": channels, "recipe": recipe}
    if files is None:
        return json_sha256(inputs, 16, compact=False)
    return json_sha256({**inputs, "files": files, "items": f"spread:{SPREAD_SEED}"}, 16, compact=False)


def feature_net_for(train_set, ds_cfg, img_size: int, channels: int, cache_dir: str | Path) -> FeatureNet | None:
    """The feature network of this dataset config and training data: loaded from `cache_dir` when trained before,
    else trained on N_TRAIN training images spread over the split (`spread_items`) and saved there (atomically: a
    crash never leaves half a file). None, with a warning, when their captions have no word that some of them lack
    (one caption for every image, as a DreamBooth-style folder has): there is nothing to learn, and fd_ours is left
    out of the metrics instead of stopping the step (a ValueError there failed every flow step on such a folder,
    retried, exit 1). `train_set` may be a function that builds the split.

    The split's files are in the key, as in the latent cache's (fluxflow/cache/fingerprint.py): keyed on the config
    alone, a folder whose captions were edited, or shards regenerated at their paths, were scored by a step trained
    again in the same output directory with the network of the old data. A webdataset's are had from its shard list:
    a cached network is found without building its split (which reads every shard)."""
    build = functools.cache(train_set) if callable(train_set) else lambda: train_set
    path = Path(cache_dir) / f"feature_net_{cache_key(ds_cfg, img_size, channels, train_fingerprint(ds_cfg, build))}.pt"
    if path.exists():
        state = load_checkpoint(path)
        net = FeatureNet(int(state["channels"]), len(state["vocab"]))
        net.load_state_dict(state["weights"])
        return net.eval().requires_grad_(False)
    images, captions = spread_items(build(), N_TRAIN)
    if not caption_vocabulary(captions):
        log.warning("fd_ours is not computed: the training captions have no word that some of them lack (e.g. one "
                    "caption for every image)")
        return None
    net, vocab = train_feature_net(images, captions)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"weights": net.state_dict(), "vocab": vocab, "channels": images.shape[1]}, path)
    return net


@torch.no_grad()
def extract_features(net: FeatureNet, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """`[N, FEATURE_DIM]` float64 features of images in [-1, 1], computed on the images' device."""
    net = net.to(images.device)
    return torch.cat([net.features(chunk).double() for chunk in images.split(batch_size)]).cpu()


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets `[N, D]` (N ≥ 2 each)."""
    a, b = features_a.double(), features_b.double()
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least 2 feature vectors on each side")
    if not (a.isfinite().all() and b.isfinite().all()):  # a diverged model's nan images: eigh raised, and the step
        return math.nan  # failed its evaluation (retried, a traceback) instead of reporting nan, as psnr does
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)  # D = 1: [1, 1]
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp_min(0).sqrt()) @ vectors.T  # Σ_a^½
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * cross
    return max(float(fd), 0.0)


def fd_ours(net: FeatureNet, real: torch.Tensor, generated: torch.Tensor) -> float:
    """fd_ours between real and generated images (both [N, C, H, W] in [-1, 1])."""
    return frechet_distance(extract_features(net, real), extract_features(net, generated.to(real.device)))
