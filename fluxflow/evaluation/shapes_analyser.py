"""Read a `shapes` image back: which colour, which shape, on which background, where. Classical and deterministic —
no learned weights — so that prompt adherence of generated samples is measured by something we can validate.

How it reads an image:
1. Background = per-channel median of the one-pixel border (shapes never cover the border; the median ignores a
   few odd pixels).
2. Foreground colour = median of the pixels far from the background, refined to the median of the pixels the
   coverage map (3) says are fully inside the shape. Colour and background are the nearest palette entries.
3. Coverage map alpha in [0, 1]: each pixel's position on the segment background -> foreground colour. Because the
   dataset anti-aliases by exact area averaging, alpha is the fraction of the pixel the shape covers.
4. Clean-up for generated (noisy, blurry) images: alpha is smoothed with a 3x3 binomial filter and its values
   stretched so that < 0.25 counts as background and > 0.75 as shape. Templates get the same treatment, so a clean
   image matches its template exactly; on noisy ones, background speckle does not inflate the area.
5. Shape = template matching: for each candidate shape, the template with the same area and centroid as the cleaned
   alpha is drawn with the dataset's own geometry and renderer; the smallest L1 difference wins. Position is the
   matched template's centre, snapped to the dataset's 3x3 grid.

`prompt_adherence` scores generated images against their captions; tests/evaluation/test_shapes_analyser.py measures
the analyser itself on fresh dataset images (the validation stream).
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from PIL import Image, ImageDraw

from fluxflow.data.shapes import BACKGROUNDS, COLORS, GRID, POSITIONS, SHAPES, draw_shape, parse_caption

MIN_CONTRAST = 0.12  # foreground-background distance (RGB in [0, 1]) below which we say "no shape found"
_SUPERSAMPLE = 4
_COLOR_NAMES, _COLOR_RGB = list(COLORS), np.array(list(COLORS.values()), dtype=np.float32) / 255
_BG_NAMES, _BG_RGB = list(BACKGROUNDS), np.array(list(BACKGROUNDS.values()), dtype=np.float32) / 255


def _nearest(names: list[str], palette: np.ndarray, rgb: np.ndarray) -> str:
    return names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))]


def _coverage(rgb: np.ndarray, bg: np.ndarray, fg: np.ndarray) -> np.ndarray:
    axis = fg - bg
    return np.clip((rgb - bg) @ axis / max(float(axis @ axis), 1e-8), 0.0, 1.0)


@functools.lru_cache(maxsize=None)
def _unit_template(shape: str) -> tuple[float, float, float]:
    """(area / size^2, centroid x offset / size, centroid y offset / size) of `shape` as the dataset draws it."""
    side, size = 1024, 800.0
    canvas = Image.new("L", (side, side), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, side / 2, side / 2, size, 255)
    mask = np.asarray(canvas, dtype=np.float64) / 255
    area = mask.sum()
    ys, xs = np.mgrid[0:side, 0:side] + 0.5
    return (area / size**2, ((xs * mask).sum() / area - side / 2) / size,
            ((ys * mask).sum() / area - side / 2) / size)


def _template(shape: str, cx: float, cy: float, size: float, h: int, w: int) -> np.ndarray:
    """Coverage map of `shape` centred at (cx, cy) pixels with extent `size` pixels, rendered like the dataset."""
    k = _SUPERSAMPLE
    canvas = Image.new("L", (w * k, h * k), 0)
    draw_shape(ImageDraw.Draw(canvas), shape, cx * k, cy * k, size * k, 255)
    return np.asarray(canvas.reduce(k), dtype=np.float32) / 255


def _clean(alpha: np.ndarray) -> np.ndarray:
    """3x3 binomial smoothing (zero outside: the background), then 0.25..0.75 stretched to 0..1."""
    p = np.pad(alpha, 1)
    rows = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    smooth = (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4
    return np.clip((smooth - 0.25) * 2.0, 0.0, 1.0)


def match_shape(alpha: np.ndarray) -> tuple[str | None, float, float]:
    """Best shape for a coverage map (the smallest L1 difference / area) and its centre (pixels)."""
    h, w = alpha.shape
    alpha = _clean(alpha)
    area = float(alpha.sum())
    if area < 1.0:
        return None, w / 2, h / 2
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    mx, my = float((xs * alpha).sum() / area), float((ys * alpha).sum() / area)
    errors, centres = {}, {}
    for shape in SHAPES:
        k, ox, oy = _unit_template(shape)
        size = (area / k) ** 0.5
        cx, cy = mx - ox * size, my - oy * size
        errors[shape] = float(np.abs(_clean(_template(shape, cx, cy, size, h, w)) - alpha).sum() / area)
        centres[shape] = (cx, cy)
    best = min(errors, key=errors.get)
    return best, *centres[best]


def _grid_index(v: float) -> int:
    return int(np.argmin([abs(v - g) for g in GRID]))


def analyse_shape_image(img: torch.Tensor) -> dict[str, str | None]:
    """{"color", "shape", "background", "position"} read from one image [3, H, W] in [-1, 1] (see the module
    docstring). Colour, shape and position are None when no foreground stands out from the background."""
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"expected a [3, H, W] image tensor, got shape {tuple(img.shape)}")
    rgb = ((img.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()  # [H, W, 3] in [0, 1]
    h, w = rgb.shape[:2]
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    bg = np.median(border, axis=0)
    result: dict[str, str | None] = {"color": None, "shape": None, "position": None,
                                     "background": _nearest(_BG_NAMES, _BG_RGB, bg)}
    dist = np.linalg.norm(rgb - bg, axis=-1)
    if np.percentile(dist, 98) < MIN_CONTRAST:  # the smallest shape covers > 2 % of the image; speckle does not
        return result
    fg = np.median(rgb[dist > 0.5 * dist.max()], axis=0)
    inside = _coverage(rgb, bg, fg) > 0.9
    if inside.any():  # refine on pixels fully inside the shape, so anti-aliased edges do not pull the median
        fg = np.median(rgb[inside], axis=0)
    alpha = _coverage(rgb, bg, fg)
    shape, cx, cy = match_shape(alpha)
    if shape is None:
        return result
    row, col = _grid_index(cy / h), _grid_index(cx / w)
    result.update(color=_nearest(_COLOR_NAMES, _COLOR_RGB, fg), shape=shape, position=POSITIONS[3 * row + col])
    return result


def prompt_adherence(images, captions: list[str]) -> dict[str, float]:
    """Fraction of images whose colour / shape / both match their caption, over the canonical `shapes` captions
    (free-text captions are left out; `n` says how many counted). `images`: [B, 3, H, W] in [-1, 1]."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    reads = [(analyse_shape_image(img), want) for img, want in zip(images, map(parse_caption, captions)) if want]
    color = [read["color"] == want["color"] for read, want in reads]
    shape = [read["shape"] == want["shape"] for read, want in reads]
    hits = {"color": sum(color), "shape": sum(shape), "color_and_shape": sum(c and s for c, s in zip(color, shape))}
    n = len(reads)
    return {"n": n, **{k: v / n if n else float("nan") for k, v in hits.items()}}
