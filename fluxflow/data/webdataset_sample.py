"""One WebDataset sample: which tar members belong to it, and its decoded (image, caption)."""
from __future__ import annotations

import io
import json
from collections.abc import Callable

import torch
from PIL import Image

from fluxflow.config.file_checks import decode_text
from fluxflow.data.transforms import load_image

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
CAPTION_EXTENSIONS = ("txt", "caption", "text")


def sample_key(member_name: str) -> tuple[str, str] | None:
    """(key, extension) by the WebDataset rule: the key is everything before the first dot of the basename."""
    directory, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def decode_sample(files: dict[str, bytes], img_size: int, channels: int,
                  on_repair: Callable[[], None] = lambda: None) -> tuple[torch.Tensor, str]:
    """(image, caption); `on_repair()` is called when the caption was not UTF-8 (kept, decoded as Latin-1)."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    if ext is None:
        raise ValueError(f"no image among {sorted(files)}")
    with Image.open(io.BytesIO(files[ext])) as img:
        image = load_image(img, img_size, channels)
    return image, _caption(files, on_repair)


def _caption(files: dict[str, bytes], on_repair: Callable[[], None]) -> str:
    for ext in CAPTION_EXTENSIONS:
        if ext in files:
            text, repaired = decode_text(files[ext])
            if repaired:
                on_repair()
            return text.strip()
    if "json" in files:
        meta = json.loads(files["json"])
        if isinstance(meta, dict):
            return str(meta.get("caption", meta.get("text", ""))).strip()
    return ""
