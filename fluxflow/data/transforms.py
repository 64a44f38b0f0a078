"""From a decoded PIL image to the model's input: `img_size` square, `channels` channels, float in [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def pil_mode(channels: int) -> str:
    try:
        return _MODES[channels]
    except KeyError:
        raise ValueError(f"channels must be one of {sorted(_MODES)}, got {channels}") from None


def convert_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert to the mode for `channels`. Transparent pixels become white, not whatever colour they hid."""
    mode = pil_mode(channels)
    if img.mode == mode:
        return img
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha and mode != "RGBA":
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        img = flat
    return img.convert(mode)


def to_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """[C, H, W] float32 in [-1, 1]."""
    img = convert_channels(img, channels)
    arr = np.array(img, dtype=np.uint8)  # a writable copy, so torch can share it without another one
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def load_image(img: Image.Image, img_size: int, channels: int) -> torch.Tensor:
    """Decode (the file must already be open), fit to `img_size` and convert: the one path every file-backed
    dataset uses. Raises whatever PIL raises for a corrupt file; callers decide how to skip it."""
    if img.format == "JPEG":
        # JPEG can decode at 1/2, 1/4, 1/8 scale for free: never decode more pixels than the crop needs.
        img.draft("RGB" if channels != 1 else "L", (img_size, img_size))
    img.load()
    img = convert_channels(img, channels)
    if img.size != (img_size, img_size):  # the shorter side scaled to `img_size` (antialiased), the centre cut out
        img = ImageOps.fit(img, (img_size, img_size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
    return to_tensor(img, channels)
