"""A pretrained text encoder's local Hugging Face directory, read without torch or transformers.

`model.text_encoder: {type: pretrained, path: DIR}` names a directory written by `save_pretrained` (or a snapshot of
a hub repository): `config.json`, the weights, and the tokenizer's files. Validation reads `config.json` only, so it
stays fast; fluxflow/models/pretrained_text.py loads the model with transformers (`local_files_only=True`: nothing
is ever downloaded).

Supported: CLIP text models (`clip_text_model`, or a whole `clip` model whose text tower is used) and T5-family
encoders (`t5`, `mt5`, `umt5`; the encoder half is used). The width of their token embeddings (`hidden_size` or
`d_model`) is the flow model's text width: `model.text_embedding_dim` is derived from it.

transformers is an optional dependency (the `pretrained` extra of pyproject.toml): a config that names a pretrained
encoder where it is not installed is refused by validation, and loading one says which extra to install.
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# config.json `model_type` -> family (how the model is loaded and pooled).
FAMILIES = {"clip_text_model": "clip", "clip": "clip", "t5": "t5", "mt5": "t5", "umt5": "t5"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class PretrainedText:
    family: str  # "clip" or "t5"
    width: int  # embedding width of the encoder's output tokens
    max_positions: int | None  # longest token sequence (CLIP's learned positions); None: no fixed limit (T5)


def pretrained_text_path(model_cfg) -> str | None:
    """The directory of `model_cfg`'s pretrained text encoder; None for the byte encoder (or an object, such as an
    older checkpoint's model_config, that has no `text_encoder`)."""
    te = getattr(model_cfg, "text_encoder", None)
    return te.path if te is not None and te.type == "pretrained" else None


class UnusablePretrained(ValueError):
    """The directory is missing or does not hold a supported text encoder, or transformers is not installed; the
    message says what is wrong."""


def require_transformers() -> None:
    """UnusablePretrained naming the extra to install when transformers is missing (found without importing it:
    validation stays fast)."""
    if importlib.util.find_spec("transformers") is None:
        raise UnusablePretrained("a pretrained text encoder needs the transformers package, which is not installed: "
                                 "pip install 'fluxflow-pipelines[pretrained]'")


def inspect_pretrained(path: str | Path) -> PretrainedText:
    """What the flow model needs to know about the encoder in `path`; UnusablePretrained if it cannot be used."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise UnusablePretrained(f"directory not found: {path} (nothing is downloaded: put a save_pretrained "
                                 "directory there, see docs/CONFIG.md)")
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnusablePretrained(f"no config.json in {path}: not a Hugging Face model directory") from None
    except (OSError, ValueError) as exc:
        raise UnusablePretrained(f"cannot read {directory / 'config.json'}: {exc}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    family = FAMILIES.get(model_type)
    if family is None:
        raise UnusablePretrained(f"{path}: model_type {model_type!r} is not a supported text encoder (supported: "
                                 f"{', '.join(FAMILIES)})")
    if not any((directory / name).is_file() for name in WEIGHT_FILES):
        raise UnusablePretrained(f"{path}: no weights ({' or '.join(WEIGHT_FILES)})")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise UnusablePretrained(f"{path}: no tokenizer ({' or '.join(TOKENIZER_FILES)}); the tokenizer is loaded "
                                 "from the model's directory")
    section = config.get("text_config", config) if model_type == "clip" else config
    width = section.get("hidden_size" if family == "clip" else "d_model")
    if not isinstance(width, int) or width < 1:
        raise UnusablePretrained(f"{directory / 'config.json'}: no embedding width (hidden_size / d_model)")
    positions = section.get("max_position_embeddings") if family == "clip" else None
    return PretrainedText(family, width, positions if isinstance(positions, int) else None)


def with_pretrained_width(raw: dict[str, Any]) -> dict[str, Any]:
    """The config file's dict with `model.text_embedding_dim` filled from a pretrained encoder's config.json when the
    file leaves it out (the width is the encoder's). Done once, where a file is loaded, so that validating a config
    never reads files; a different value or an unusable directory is reported by file_checks.text_encoder_issues."""
    model = raw.get("model")
    te = model.get("text_encoder") if isinstance(model, dict) else None
    if not isinstance(te, dict) or te.get("type") != "pretrained" or not isinstance(te.get("path"), str) \
            or "text_embedding_dim" in model:
        return raw
    try:
        return {**raw, "model": {**model, "text_embedding_dim": inspect_pretrained(te["path"]).width}}
    except UnusablePretrained:
        return raw
