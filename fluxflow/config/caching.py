"""Whether a step trains from cached latents / cached text-encoder outputs, and why not. No torch here: the step runner
and the `--validate-pipeline` summary ask the same functions.

A cache holds what a frozen network computes from the training items, once (fluxflow/cache/): the compressor's
posterior for the latent cache, the text encoder's outputs for the text cache. It is valid only while that network
does not change, i.e. in a flow step that does not train it, and only for a dataset whose items have an index
(shapes, folder; a webdataset stream has none). `cache_latents` / `cache_text` default to on where valid; set false
to encode on the fly. Caches change no number the step computes (tests/cache/test_latent_cache.py), so they are left out
of the step key (fluxflow/checkpoints/step_files.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxflow.config import modes
from fluxflow.storage.location import output_root

CACHE_FIELDS: tuple[str, ...] = ("cache_latents", "cache_text")
INDEXED_DATASETS: tuple[str, ...] = ("shapes", "folder")


# The caches' folders under cache_root: what step_cache.py builds and what --validate-pipeline names.
LATENT_CACHE_DIR, TEXT_CACHE_DIR = "latent_cache", "text_cache"


def cache_root(config: Any) -> Path:
    """Where latent_cache/ and text_cache/ live: `output.cache_dir`, else the output directory."""
    return Path(config.output.cache_dir) if config.output.cache_dir else output_root(config)


@dataclass(frozen=True)
class CacheChoice:
    on: bool
    why_off: str = ""  # empty when on
    requested: bool | None = None  # what the step said (None: the default)


def latent_cache_choice(step: Any, dataset_type: str) -> CacheChoice:
    """Latents from the cache when the step trains the flow model and not the compressor the latents come from."""
    blocker = _common_blocker(step, "cache_latents", dataset_type)
    if blocker is None and "compressor" in modes.trained_components(step):
        blocker = "the compressor trains in this step, so its latents change with every update"
    if blocker is None and modes.touches_vae(step):  # e.g. a decoder-only fine-tune beside the flow (freeze)
        blocker = "the VAE trains in this step on the images themselves"
    return CacheChoice(blocker is None, blocker or "", step.cache_latents)


def text_cache_choice(step: Any, dataset_type: str) -> CacheChoice:
    """Text-encoder outputs from the cache when the text encoder is frozen in this flow step (train_diff without
    `unfreeze: [text_encoder]`). CFG dropout swaps rows for the flow model's learned null text after the encoder,
    so cached outputs train the same."""
    blocker = _common_blocker(step, "cache_text", dataset_type)
    if blocker is None and "text_encoder" in modes.trained_components(step):
        why = "train_diff_full" if step.train_diff_full else "unfreeze: [text_encoder]"
        blocker = f"the text encoder trains in this step ({why}), so its outputs change with every update"
    return CacheChoice(blocker is None, blocker or "", step.cache_text)


def _common_blocker(step: Any, field: str, dataset_type: str) -> str | None:
    if getattr(step, field) is False:
        return f"{field}: false"
    if not modes.has_flow_mode(step):
        return "only flow steps (train_diff, train_diff_full) train from caches"
    if dataset_type not in INDEXED_DATASETS:
        return f"a {dataset_type} stream has no item index to cache by; it is encoded on the fly"
    return None


def describe_choice(choice: CacheChoice, where: Path) -> str:
    """'on (in <where>)', 'off (cache_latents: false)', or 'off, although requested: <why>' for the validation
    summary."""
    if choice.on:
        return f"on (in {where})"
    return f"off, although requested: {choice.why_off}" if choice.requested else f"off ({choice.why_off})"
