"""Per-prompt diversity: does each seed draw a different image of a prompt, as the real images of that caption differ?

A gain in adherence could be bought by collapsing every seed onto one image per prompt. For each of a few prompts,
the model draws several images, each from its own noise (one batch in which every prompt appears DIVERSITY_SEEDS
times: one sampler call instead of one per seed, since at these sizes a call's cost is mostly per step); their
spread is the mean pairwise RMS pixel distance (images in [-1, 1]). The real images of the same caption give the
spread the data has; the figures are

    diversity_gen    mean over prompts of the generated images' spread
    diversity_real   the same for real images of those captions (where the data has several per caption)
    diversity_ratio  diversity_gen / diversity_real: about 1 when seeds vary as much as the data, 0 when they do not

A model that ignores its noise draws the same pixels for every seed: each distance is a difference of equal
tensors, so diversity_gen is exactly 0. Pixel distance is cheap and needs no weights; it sees position, size and
colour changes, which is what varies between `shapes` images of one caption.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

DIVERSITY_PROMPTS = 8  # prompts measured (the first distinct captions of the held-out split)
DIVERSITY_SEEDS = 4  # images per prompt, one per sampler seed
DIVERSITY_SEED = 1000  # the sampler seed of the batch (apart from the evaluation's own seeds)


def spread(images: torch.Tensor) -> float:
    """Mean pairwise RMS distance between the K images `[K, C, H, W]` (0 for K < 2 identical or not)."""
    flat = images.flatten(1).double()
    dists = [((flat[i] - flat[j]) ** 2).mean().sqrt() for i in range(len(flat)) for j in range(i + 1, len(flat))]
    return float(torch.stack(dists).mean()) if dists else 0.0


def prompt_diversity(generate: Callable[[list[str], int], torch.Tensor], prompts: list[str],
                     real: list[torch.Tensor] | None = None, seeds: int = DIVERSITY_SEEDS,
                     seed: int = DIVERSITY_SEED) -> dict[str, float]:
    """`generate(texts, seed) -> [len(texts), C, H, W]`, each row drawn from its own noise, is called once with every
    prompt `seeds` times; `real[p]`: real images `[K, C, H, W]` of prompt p's caption (None: no real spread, only
    diversity_gen)."""
    if not prompts or seeds < 2:
        return {}
    images = generate([p for p in prompts for _ in range(seeds)], seed).cpu()
    drawn = images.view(len(prompts), seeds, *images.shape[1:])  # [P, S, C, H, W]
    gen = sum(spread(per_prompt) for per_prompt in drawn) / len(prompts)
    out = {"diversity_gen": gen}
    if real is not None:
        out["diversity_real"] = sum(spread(r) for r in real) / len(real)
        if out["diversity_real"] > 0:
            out["diversity_ratio"] = gen / out["diversity_real"]
    return out


def real_sets(holdout_set, captions: list[str], images: torch.Tensor) -> tuple[list[str], list[torch.Tensor] | None]:
    """The prompts to measure and their real images: on `shapes`, the first DIVERSITY_PROMPTS distinct held-out
    captions with DIVERSITY_SEEDS renderings each (shapes.caption_variant); elsewhere the captions that have at least
    two of `images` (at most DIVERSITY_SEEDS each), or (none has) the first distinct captions with no real spread."""
    distinct = list(dict.fromkeys(captions))
    if hasattr(holdout_set, "variant_images"):
        prompts = distinct[:DIVERSITY_PROMPTS]
        return prompts, [holdout_set.variant_images(captions.index(c), DIVERSITY_SEEDS) for c in prompts]
    groups = {c: [i for i, cap in enumerate(captions) if cap == c] for c in distinct}
    repeated = [c for c in distinct if len(groups[c]) >= 2][:DIVERSITY_PROMPTS]
    if repeated:
        return repeated, [images[groups[c][:DIVERSITY_SEEDS]].cpu() for c in repeated]
    return distinct[:DIVERSITY_PROMPTS], None
