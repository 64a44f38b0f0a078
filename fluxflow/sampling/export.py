"""A trained text-to-image model as plain files: safetensors weights and a JSON file that says how to build it.

    <folder>/config.json        how to build and run the models (below)
    <folder>/model.safetensors  the sampling weights (EMA where the checkpoint kept them), keys `<component>.<name>`
    <folder>/text_encoder/      a pretrained text encoder's directory, copied as it is (only for one)

config.json:

    format, format_version   "fluxflow-text-to-image", 1
    weights                  the safetensors file's name
    weights_sha256           the sha256 of that file, checked before it is loaded (a flipped bit drew silently wrong
                             images); absent in exports written before it: loaded unchecked
    model                    the `model:` sizes the components are built from (fluxflow/config/schema.py
                             ModelConfig, without its text_encoder)
    text_encoder             {"kind": "byte"} (trained, its weights in the safetensors file) or
                             {"kind": "pretrained", "family": "clip" | "t5", "directory": "text_encoder"} (frozen, its
                             weights in that sub-folder, loaded with transformers)
    image                    {"size", "channels"}: the training image size (the default output size) and channels
    latent_norm              {"shift": [...], "scale": [...]}: per latent channel, latent = (mean - shift) / scale
    spade                    whether the expander decodes with SPADE (as the step that last trained it did)
    flow_shift               the timestep shift the flow trained with (t_shift at its size), which the sampler's
                             schedule follows; 1.0 when absent (exports written before it)
    source                   where the weights came from (the checkpoint file or registered model version, and
                             the checkpoint's sha256), for the record: {"checkpoint": ...} or {"model":
                             "models:/NAME/3"}, with "asked": "models:/NAME@ALIAS" where an alias named it

Why these files: safetensors holds only a JSON header and raw tensor bytes, so loading it runs no code, and any
framework or model hub reads it; the folder can be pushed to a hub as it is. The training checkpoint (final.pt)
stays the format to resume from: it also holds optimizer, scheduler and RNG state that an exported model does not.
Latent normalisation values are float32 written as JSON numbers, which read back to the same float32 bits.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from fluxflow.checkpoints.atomic_file import atomic_write
from fluxflow.checkpoints.io import sha256_file
from fluxflow.config.file_checks import inspect_pretrained, not_a_regular_file, pretrained_text_path
from fluxflow.config.steps import shift_range_problem
from fluxflow.sampling.generate import GENERATION_COMPONENTS, GenerationError, TextToImageModel, build_text_to_image

FORMAT, FORMAT_VERSION = "fluxflow-text-to-image", 1
CONFIG_FILE, WEIGHTS_FILE, TEXT_ENCODER_DIR = "config.json", "model.safetensors", "text_encoder"


def export_weights(model: TextToImageModel, folder: str | Path, source: dict[str, Any] | None = None,
                   put_in_place: Callable[[Callable[[], None]], None] | None = None) -> Path:
    """Write `model` (as `load_text_to_image` gives it: the sampling weights) to the new or empty `folder`; returns
    the folder. The files go to a hidden folder beside it that is renamed to `folder` once complete, so an export
    stopped part way (Ctrl-C, a full disk) leaves nothing: it left a folder without config.json, which the next try
    refused as not empty. `put_in_place(move)`, where given, runs that rename (fluxflow-export: Ctrl-C held off
    there and ignored after it)."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise GenerationError(f"export folder {out} is a file, not a folder: choose a new folder")
    if out.exists() and any(out.iterdir()):
        raise GenerationError(f"export folder {out} exists and is not empty: choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not mkdtemp, whose 0700 the export would keep: a plain mkdir gets the permissions the user's umask gives.
    staging = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.partial"
    staging.mkdir()
    try:
        write_export(model, staging, source)

        def move() -> None:
            if out.exists():
                out.rmdir()  # empty, as checked above
            os.rename(staging, out)
        (put_in_place or (lambda run: run()))(move)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def write_export(model: TextToImageModel, out: Path, source: dict[str, Any] | None) -> None:
    """The files of an export (the module docstring) into the existing folder `out`."""
    from safetensors.torch import save

    tensors = {f"{name}.{key}": value.detach().cpu().contiguous()
               for name in GENERATION_COMPONENTS for key, value in model.models[name].state_dict().items()}
    data = save(tensors, metadata={"format": "pt"})  # "pt": how Hugging Face tools tell torch weights apart
    weights_sha256 = hashlib.sha256(data).hexdigest()
    atomic_write(out / WEIGHTS_FILE, lambda f: f.write(data))
    pretrained = pretrained_text_path(model.model_config)
    if pretrained:  # frozen: its weights are its directory's, not the safetensors file's
        shutil.copytree(Path(pretrained).expanduser(), out / TEXT_ENCODER_DIR)
    sizes = model.model_config.model_dump(exclude={"text_encoder"})
    text_encoder = ({"kind": "pretrained", "family": inspect_pretrained(pretrained).family,
                     "directory": TEXT_ENCODER_DIR} if pretrained else {"kind": "byte"})
    config = {  # config.json: see the module docstring
        "format": FORMAT, "format_version": FORMAT_VERSION, "weights": WEIGHTS_FILE, "weights_sha256": weights_sha256,
        "model": sizes, "text_encoder": text_encoder,
        "image": {"size": model.img_size, "channels": model.channels},
        "latent_norm": {key: model.latent_norm[key].float().cpu().tolist() for key in ("shift", "scale")},
        "spade": model.spade,
        "flow_shift": model.flow_shift,
        "source": source or {},
    }
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(out / CONFIG_FILE, lambda f: f.write(text.encode("utf-8")))


def read_export_config(folder: str | Path) -> dict[str, Any]:
    """config.json of an exported folder; GenerationError naming the file when it is missing or not one."""
    path = Path(folder) / CONFIG_FILE
    if Path(folder).exists() and not Path(folder).is_dir():  # a checkpoint given as --weights
        raise GenerationError(f"{folder} is a file, not a folder written by fluxflow-export")
    if odd := not_a_regular_file(path):  # a FIFO would never end
        raise GenerationError(odd)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        mlflow_model = "; an MLflow model folder (it has an MLmodel file) is read with fluxflow-generate --model" \
            if (Path(folder) / "MLmodel").is_file() else ""
        raise GenerationError(f"{folder} is not an exported model: no {CONFIG_FILE} (write one with "
                              f"fluxflow-export){mlflow_model}") from None
    except (OSError, ValueError) as exc:
        raise GenerationError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise GenerationError(f"{path} is not a fluxflow export (its format is not {FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise GenerationError(f"{path} has format_version {config.get('format_version')!r}; this version reads "
                              f"{FORMAT_VERSION}")
    return config


def load_exported(folder: str | Path, device: str | None = None) -> TextToImageModel:
    """The model `export_weights` wrote to `folder`, on `device`, in eval mode: the same pixels as its checkpoint."""
    from pydantic import ValidationError
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from fluxflow.config import ModelConfig

    folder = Path(folder)
    config = read_export_config(folder)
    try:
        sizes = dict(config["model"])
        encoder = config["text_encoder"]
        if encoder["kind"] == "pretrained":
            sizes["text_encoder"] = {"type": "pretrained", "path": str(folder / encoder["directory"])}
        model_config = ModelConfig.model_validate(sizes)
        latent_norm = {key: torch.tensor(config["latent_norm"][key], dtype=torch.float32)
                       for key in ("shift", "scale")}
        img_size, channels = int(config["image"]["size"]), int(config["image"]["channels"])
        spade, weights_file = bool(config["spade"]), folder / config["weights"]
        flow_shift = float(config.get("flow_shift", 1.0))  # an export written before it was recorded: as it sampled
        expected = config.get("weights_sha256")  # None: an export written before it was recorded, loaded unchecked
        # Values no export writes: a wrong length failed deep in a conv, a NaN or negative shift drew black images
        for key, value in latent_norm.items():
            if value.shape != (model_config.latent_channels,) or not value.isfinite().all():
                raise ValueError(f"latent_norm.{key} must hold {model_config.latent_channels} finite numbers (one per "
                                 "latent channel)")
        if not (latent_norm["scale"] > 0).all():
            raise ValueError("latent_norm.scale must be above 0")
        if problem := shift_range_problem(flow_shift):
            raise ValueError(f"flow_shift {problem}")
    except KeyError as exc:  # its message alone is the key: "... invalid: 'model'"
        raise GenerationError(f"{folder / CONFIG_FILE} is incomplete: it has no {exc} (write the folder again with "
                              "fluxflow-export)") from None
    except (TypeError, ValueError, ValidationError) as exc:
        raise GenerationError(f"{folder / CONFIG_FILE} is incomplete or invalid: {exc}") from None
    if odd := not_a_regular_file(weights_file):
        raise GenerationError(odd)
    try:
        if expected is not None and sha256_file(weights_file) != expected:
            raise GenerationError(f"{weights_file} does not match the sha256 recorded in {folder / CONFIG_FILE} "
                                  f"({expected}): the copy is damaged; export it again or use an intact copy")
        tensors = load_file(weights_file)
    except (OSError, SafetensorError) as exc:
        raise GenerationError(f"cannot read {weights_file}: {exc}") from None
    weights: dict[str, dict[str, torch.Tensor]] = {name: {} for name in GENERATION_COMPONENTS}
    for key, value in tensors.items():
        component, _, name = key.partition(".")
        if component not in weights:
            raise GenerationError(f"{weights_file} holds {key!r}, not a weight of {', '.join(GENERATION_COMPONENTS)}")
        weights[component][name] = value
    return build_text_to_image(weights, latent_norm, model_config, img_size, channels, spade, device, flow_shift,
                               misfit=f"{weights_file} does not fit {folder / CONFIG_FILE}")
