"""Images from a trained checkpoint: EMA weights where the checkpoint has them, the trained text encoder, and the same
text → flow sampler → expander composition the training samples use (fluxflow.sampling.text_to_image).

Every image depends only on (checkpoint, prompt, seed, steps, guidance, size): it is drawn on its own with a generator
seeded by its seed, so the file `prompt_file_name(prompt, seed)` can be made again, alone, with the same result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from fluxflow.checkpoints.io import load_checkpoint
from fluxflow.checkpoints.verify import damaged_entry
from fluxflow.config.file_checks import UnusablePretrained
from fluxflow.errors import CheckpointError
from fluxflow.runtime.device import resolve_device
from fluxflow.storage.location import local_path, remote_uri
from fluxflow.models import build_component
from fluxflow.sampling.sample_files import prompt_file_name, save_image_grid
from fluxflow.sampling.text_to_image import text_to_image
from fluxflow.checkpoints.step_state import saved_expander_spade, saved_flow_shift

GENERATION_COMPONENTS = ("text_encoder", "flow_processor", "expander")
# The largest image side, as a multiple of the training size. The flow model has seen only the training grid of
# positions; 4× its side is already 16× the tokens and 256× the work of each self-attention, and a size far past that
# filled the memory instead of being refused (`--size 100000` on a 16 px model: 10 GB for its first noise tensor).
MAX_SIZE_FACTOR = 4


class GenerationError(Exception):
    """The checkpoint cannot generate images (no trained flow processor, unknown model sizes, bad size)."""


@dataclass
class TextToImageModel:
    models: dict[str, nn.Module]
    latent_norm: dict[str, torch.Tensor]
    model_config: Any  # fluxflow.config.ModelConfig
    img_size: int  # the training image size: the default output size
    spade: bool  # decode as the expander was trained: with SPADE when the step that last trained it used SPADE
    channels: int = 3  # image channels the expander writes
    flow_shift: float = 1.0  # the timestep shift the flow trained with, which its sampler follows


def build_text_to_image(weights: dict[str, dict[str, torch.Tensor]], latent_norm: dict[str, torch.Tensor],
                        model_config: Any, img_size: int, channels: int, spade: bool, device: str | None,
                        flow_shift: float, misfit: str) -> TextToImageModel:
    """The generation components built from `model_config` with `weights` (a state dict per component) on `device`,
    in eval mode: the one assembly behind a checkpoint (`load_text_to_image`) and an export
    (fluxflow/sampling/export.py). Weights of other sizes (wrong shapes, missing or unexpected keys) are a
    GenerationError starting with `misfit` and load_state_dict's last line, the first shape that differs (the lines
    before it list every missing and unexpected key)."""
    target = resolve_device(device)
    models = {}
    for name in GENERATION_COMPONENTS:
        try:
            module = build_component(name, model_config, channels)
        except UnusablePretrained as exc:  # its directory is gone, or transformers is not installed
            raise GenerationError(f"cannot load the text encoder: {exc}") from None
        try:
            module.load_state_dict(weights[name])
        except RuntimeError as exc:
            raise GenerationError(f"{misfit}: {str(exc).strip().splitlines()[-1].strip()}") from None
        models[name] = module.to(target).eval().requires_grad_(False)
    return TextToImageModel(models, {k: v.to(target) for k, v in latent_norm.items()}, model_config, img_size, spade,
                            channels, flow_shift)


def load_text_to_image(checkpoint: str | Path, model_config: Any = None, img_size: int | None = None,
                       device: str | None = None, name: str | None = None) -> TextToImageModel:
    """The generation components of `checkpoint` on `device`, EMA weights preferred, in eval mode.

    `model_config`/`img_size` come from the checkpoint when it records them (`model_config`, `data`), else from the
    caller (the pipeline's config file). `name`: how messages call the checkpoint (the URI of a local copy).
    """
    from fluxflow.config import ModelConfig

    state = load_checkpoint(checkpoint)
    local = local_path(checkpoint) if remote_uri(checkpoint) is None else None
    damaged = damaged_entry(local) if local is not None else None  # a remote one was sha256-checked by its fetch
    checkpoint = name or checkpoint
    if damaged:
        raise CheckpointError(f"checkpoint {checkpoint} is damaged: its entry {damaged} does not match the checksum "
                              "written with it (a changed or corrupted copy); use an intact copy")
    missing = [name for name in GENERATION_COMPONENTS if name not in state.get("models", {})]
    if missing or not state.get("latent_norm"):
        raise GenerationError(f"checkpoint {checkpoint} has no trained text-to-image model (missing: "
                              f"{', '.join(missing) or 'latent_norm'}); use the checkpoint of a flow step")
    recorded = state.get("model_config")
    if recorded is not None:
        model_config = ModelConfig.model_validate(recorded)
    if model_config is None:
        raise GenerationError(f"checkpoint {checkpoint} does not record its model sizes: pass the pipeline's "
                              "config file (--config)")
    data = state.get("data") or {}
    img_size = int(data.get("img_size") or img_size or 0)
    channels = int(data.get("channels") or 3)
    ema = state.get("ema", {})  # the weights samples use: a component's EMA shadow where the checkpoint keeps one
    weights = {name: ema[name]["shadow"] if ema.get(name) else state["models"][name] for name in GENERATION_COMPONENTS}
    return build_text_to_image(weights, state["latent_norm"], model_config, img_size, channels,
                               saved_expander_spade(state), device, saved_flow_shift(state),
                               misfit=f"checkpoint {checkpoint} does not fit the model sizes of the config")


def size_problem(model: TextToImageModel, size: int) -> str | None:
    """Why `model` cannot draw images of `size` px ("must be ..."), or None; the caller names the size: "image size"
    here, fluxflow-generate's flag `--size` there."""
    multiple = model.model_config.downscale * model.model_config.patch_size
    if size < 1 or size % multiple:
        return f"must be a positive multiple of {multiple} (downscale × patch_size); got {size}"
    largest = MAX_SIZE_FACTOR * model.img_size
    if model.img_size and size > largest:
        return (f"must be at most {largest} ({MAX_SIZE_FACTOR}× the {model.img_size} px the model was trained at: a "
                "larger one is far from what it learned, and the cost of its attention grows with the size's 4th "
                f"power); got {size}")
    return None


def generate(model: TextToImageModel, prompt: str, seed: int, *, steps: int = 25, guidance: float = 3.0,
             size: int | None = None) -> torch.Tensor:
    """One image `[C, H, W]` in [-1, 1] for `prompt`, drawn with `seed`."""
    size = model.img_size if size is None else size  # not `or`: a size of 0 is an error, not the default
    if problem := size_problem(model, size):
        raise GenerationError(f"image size {problem}")
    cfg = model.model_config
    return text_to_image(model.models, [prompt], model.latent_norm, latent_size=size // cfg.downscale, steps=steps,
                         guidance=guidance, seed=seed, spade=model.spade, shift=model.flow_shift)[0]


def unread_prompt_ends(model: TextToImageModel, prompts: list[str]) -> list[tuple[str, int]]:
    """(prompt, its token count) of each prompt longer than the text encoder reads (`model.text_max_len` tokens): its
    end changes nothing in the image, and two prompts that differ only there draw the same image under two names."""
    encoder = model.models["text_encoder"]
    counts = ((prompt, encoder.token_count(prompt)) for prompt in dict.fromkeys(prompts))
    return [(prompt, count) for prompt, count in counts if count > encoder.max_len]


def planned_files(prompts: list[str], output_dir: str | Path, *, n: int = 1, seed: int = 0,
                  ext: str = "webp") -> list[tuple[str, int, Path]]:
    """(prompt, seed, file) of every image `generate_files` writes, in its order: `n` seeds per prompt, each prompt
    once (a repeated prompt names the same files, which would be drawn and written twice). Known before the model
    loads, so a caller can check the files first (fluxflow-generate refuses to replace existing ones)."""
    out = Path(output_dir)
    return [(prompt, image_seed, out / prompt_file_name(prompt, image_seed, ext))
            for prompt in dict.fromkeys(prompts) for image_seed in range(seed, seed + n)]


def generate_files(model: TextToImageModel, prompts: list[str], output_dir: str | Path, *, n: int = 1,
                   seed: int = 0, steps: int = 25, guidance: float = 3.0, size: int | None = None,
                   ext: str = "webp") -> Iterator[Path]:
    """Draws and writes the images of `planned_files`, yielding each file as it is written: a caller shows progress
    and, when interrupted, knows what is done. Each file is written whole or not at all (atomic_write: an interrupt
    while saving leaves no half image), replacing a file of that name."""
    for prompt, image_seed, path in planned_files(prompts, output_dir, n=n, seed=seed, ext=ext):
        image = generate(model, prompt, image_seed, steps=steps, guidance=guidance, size=size)
        # Made only once an image is made (atomic_write creates it): a refused size leaves no empty folder.
        save_image_grid(image, path, nrow=1, padding=0)
        yield path
