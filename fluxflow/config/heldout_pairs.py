"""Captions kept out of training so that evaluation can ask whether the model composes what it learned.

`shapes`: colour x shape pairs (`holdout_pairs`). Every colour and every shape is still trained on, just never
together: "a blue triangle" is unseen while blue things and triangles are not. A list names the pairs
(`["blue triangle", "red star"]`); a count `k` draws k pairs with `holdout_pairs_seed`, never all of a colour's or a
shape's pairs (each word must stay learnable from the pairs that remain).

`folder`: captions or caption patterns (`holdout_captions`, fluxflow/config/caption_patterns.py).

The training split drops these; the `unseen` split (fluxflow.data.build_dataset) is made of them only.
"""
from __future__ import annotations

import random

# The colour and shape words of `shapes` captions (fluxflow/data/shapes.py COLORS and SHAPES, which import torch; a
# test keeps them equal): here so that validation and the plan read them without torch.
COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")
SHAPES = ("circle", "square", "triangle", "star", "cross")
Pair = tuple[str, str]  # (colour, shape)
ALL_PAIRS: tuple[Pair, ...] = tuple((c, s) for c in COLORS for s in SHAPES)


def parse_pair(text: str) -> Pair:
    """"blue triangle" -> ("blue", "triangle"); a ValueError names what is wrong."""
    words = text.strip().lower().split()
    if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
        raise ValueError(f"{text!r} is not '<colour> <shape>' (colours: {', '.join(COLORS)}; "
                         f"shapes: {', '.join(SHAPES)})")
    return words[0], words[1]


def max_heldout_pairs() -> int:
    """Most pairs a count may hold out and still leave every colour and every shape at least one trained pair."""
    return len(COLORS) * len(SHAPES) - max(len(COLORS), len(SHAPES))


def draws_pairs(spec: list[str] | int | None) -> bool:
    """Whether `holdout_pairs` draws its pairs (a positive count): the one case its `holdout_pairs_seed` acts on."""
    return isinstance(spec, int) and spec > 0


def heldout_pairs(spec: list[str] | int | None, seed: int = 0) -> tuple[Pair, ...]:
    """The held-out pairs that `spec` names (list) or draws (count, with `seed`), in a fixed order; () for None."""
    if spec is None:
        return ()
    if not isinstance(spec, int):
        return tuple(dict.fromkeys(parse_pair(p) for p in spec))  # order kept, duplicates dropped
    if not 0 <= spec <= max_heldout_pairs():
        raise ValueError(f"holdout_pairs count must be in [0, {max_heldout_pairs()}], got {spec}")
    rng = random.Random(seed)
    while True:  # rejection: a draw that takes a whole colour or shape away is drawn again (rare for small k)
        chosen = rng.sample(ALL_PAIRS, spec)
        if not untrained_words(tuple(chosen)):
            return tuple(sorted(chosen, key=ALL_PAIRS.index))


def dataset_pairs(ds) -> tuple[Pair, ...]:
    """The pairs a `shapes` dataset config (or any object with its fields) holds out: drawn with
    `holdout_pairs_seed`, which defaults to the dataset's `seed`."""
    pairs_seed = getattr(ds, "holdout_pairs_seed", None)
    seed = int(getattr(ds, "seed", 0)) if pairs_seed is None else int(pairs_seed)
    return heldout_pairs(getattr(ds, "holdout_pairs", None), seed)


def seen_pairs(heldout: tuple[Pair, ...]) -> tuple[Pair, ...]:
    """The pairs training draws from: all but `heldout`, in ALL_PAIRS order."""
    return tuple(p for p in ALL_PAIRS if p not in heldout)


def untrained_words(heldout: tuple[Pair, ...]) -> list[str]:
    """The colours and shapes of which `heldout` leaves no trained pair (a count's draw never does)."""
    remaining = seen_pairs(heldout)
    return ([c for c in COLORS if all(p[0] != c for p in remaining)]
            + [s for s in SHAPES if all(p[1] != s for p in remaining)])
