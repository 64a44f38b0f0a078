"""Sample image files: the original tool's names, and WebP grids written atomically.

Names (the original tool's documentation, "Sample Naming Convention"):

    mid-epoch:     {step}_{step_number:03d}_{epoch:03d}_{batch:05d}_{hash}{suffix}.webp
    end of epoch:  {step}_{step_number:03d}_{epoch:03d}_{hash}{suffix}.webp

step_number and epoch are 1-based; batch is the number of batches done in the epoch. The suffix carries its own
separator, because the original tool mixes them: `-original` (or `_ns_i`), `-nr_o`, `_ns_o`, `-ctx`, `-nc`.
e.g. vae_warmup_001_001_00010_abc123-original.webp, vae_gan_002_005_def456_ns_o.webp.
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata

import torch
import torch.nn.functional as F

from fluxflow.checkpoints.atomic_file import atomic_write

# The original tool's suffixes (fluxflow/sampling/samples.py says what each image is; `_ns_i` is its other name for
# the inputs, `-original`).
SEED_SUFFIXES = ("-original", "_ns_i", "-nr_o", "_ns_o", "-ctx", "-nc")

_SUFFIX = re.compile(r"[-_][A-Za-z0-9_]+")  # seed suffixes and new ones in the same style (e.g. "-t2i")
_HASH = re.compile(r"[A-Za-z0-9]+")


def sample_name(step: str, step_number: int, epoch: int, batch: int | None, hash: str, suffix: str) -> str:
    """The original tool's sample file name; `batch=None` names an end-of-epoch sample."""
    if not step or any(c in step for c in "/\\\0") or step.startswith("."):
        raise ValueError(f"step name {step!r} cannot be part of a file name")
    if step_number < 1 or epoch < 1:
        raise ValueError(f"step_number and epoch are 1-based; got step_number={step_number}, epoch={epoch}")
    if batch is not None and batch < 0:
        raise ValueError(f"batch must be >= 0 or None (end of epoch); got {batch}")
    if not _HASH.fullmatch(hash):
        raise ValueError(f"sample hash must be letters and digits; got {hash!r}")
    if not _SUFFIX.fullmatch(suffix):
        raise ValueError(f"sample suffix must start with '-' or '_' like {', '.join(SEED_SUFFIXES)}; got {suffix!r}")
    position = f"{step_number:03d}_{epoch:03d}" if batch is None else f"{step_number:03d}_{epoch:03d}_{batch:05d}"
    return f"{step}_{position}_{hash}{suffix}.webp"


def image_grid(images: torch.Tensor, nrow: int, padding: int = 2) -> torch.Tensor:
    """[B, C, H, W] in [-1, 1] -> one uint8 [H', W', C] picture, `nrow` images per row (torchvision's make_grid
    layout, but a lone image keeps its border, as it always did here)."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3, 4) or images.shape[0] == 0:
        raise ValueError(f"expected images [B, C, H, W] with C in 1, 3, 4 and B >= 1; got {tuple(images.shape)}")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    # torchvision's make_grid layout, without its import (a second of every process's start): each image with a
    # black border above and left of it, empty cells black, and the border closed on the right and at the bottom.
    count, channels, height, width = pixels.shape
    cols = min(max(1, nrow), count)
    rows = -(-count // cols)
    cells = F.pad(pixels, (padding, 0, padding, 0))
    cells = torch.cat([cells, cells.new_zeros(rows * cols - count, *cells.shape[1:])])
    grid = cells.reshape(rows, cols, channels, height + padding, width + padding).permute(2, 0, 3, 1, 4)
    grid = F.pad(grid.reshape(channels, rows * (height + padding), cols * (width + padding)), (0, padding, 0, padding))
    return grid.permute(1, 2, 0).contiguous()


def to_picture(images: torch.Tensor, nrow: int = 1, padding: int = 0):
    """Images in [-1, 1] (`[B, C, H, W]`, or one `[C, H, W]`) → one PIL picture (L, RGB or RGBA) of `image_grid`."""
    from PIL import Image

    grid = image_grid(images, nrow, padding).numpy()
    return Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)


def save_image_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8, padding: int = 2) -> None:
    """Write images in [-1, 1] as one `to_picture` grid, atomically (no half-written image is ever visible): PNG for a
    `.png` path, else lossless WebP."""
    picture = to_picture(images, nrow, padding)
    options = {"format": "PNG"} if str(path).lower().endswith(".png") else {"format": "WEBP", "lossless": True}
    # Images are cheap to draw again: atomic (rename) but without fsync, which is slow on network storage.
    atomic_write(path, lambda f: picture.save(f, **options), durable=False)


def prompt_file_name(prompt: str, seed: int, ext: str = "webp") -> str:
    """A safe, readable file name for a generated image: `<slug>_<hash8>_seed<seed>.<ext>`.

    The slug is the prompt folded to lowercase ASCII letters and digits joined by `_` (at most 48 characters); the
    8 hex characters of the prompt's sha256 keep two prompts with the same slug (long, or non-Latin) apart.
    """
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text).strip("_")[:48].rstrip("_") or "prompt"
    digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]
    return f"{slug}_{digest}_seed{int(seed)}.{ext.lstrip('.')}"
