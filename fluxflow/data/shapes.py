"""`shapes`: the built-in procedural dataset — one coloured shape on a plain background, with a caption that says so.

Item `i` is a pure function of `(seed, stream, i)`: nothing is stored, any index is O(1), and two processes (or a
resumed run) see the same pixels. The training split is stream 0; the held-out split is stream 1, a disjoint random
stream, so evaluation images are never trained on; stream 2 is for validating the analyser.

Captions have one canonical, parseable form (`parse_caption` inverts it):

    "a red circle on a dark blue background, top left"
    "an orange star on a black background, center"

Shapes are drawn with PIL at 2-4x the output size and box-downsampled, so edges are anti-aliased by exact area
coverage. Sizes (40-50 % of the image side) keep colour and shape recognisable at 32x32 and still readable at 16x16.
The analyser in `fluxflow.evaluation.shapes_analyser` reads these images back with the same geometry.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from fluxflow.data.transforms import to_tensor

# Foreground colours: saturated and pairwise far apart in RGB (nearest-colour classification stays unambiguous).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 35),
    "orange": (250, 135, 10),
    "yellow": (245, 225, 40),
    "green": (40, 195, 60),
    "cyan": (20, 215, 225),
    "blue": (40, 90, 250),
    "purple": (165, 60, 225),
    "white": (245, 245, 245),
}
# Backgrounds: dark or muted, disjoint from the foreground palette, so the shape always stands out.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 20),
    "gray": (105, 105, 110),
    "dark blue": (20, 30, 95),
    "dark red": (95, 20, 30),
    "dark green": (20, 75, 35),
    "brown": (95, 60, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
# 3x3 grid of shape centres, in image-side units; the analyser classifies a centre to the nearest of these.
GRID: tuple[float, float, float] = (0.3, 0.5, 0.7)
POSITIONS: tuple[str, ...] = ("top left", "top center", "top right", "middle left", "center", "middle right",
                              "bottom left", "bottom center", "bottom right")  # row-major: index = 3 * row + col
SIZE_RANGE = (0.40, 0.50)  # shape extent as a fraction of the image side
CENTER_JITTER = 0.02  # keeps positions well inside their grid cell (boundaries at 0.4 / 0.6)
COLOR_JITTER = 10  # per-channel +-, so no two images share exact colours

STREAM_TRAIN, STREAM_HOLDOUT, STREAM_VALIDATION = 0, 1, 2  # validation: the analyser's own accuracy check
STREAM_UNSEEN = 3  # images of held-out colour x shape pairs only (fluxflow/config/heldout_pairs.py)


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one item. Geometry is in units of the image side (0..1)."""

    color: str
    shape: str
    background: str
    position: str
    cx: float
    cy: float
    size: float
    fg: tuple[int, int, int]
    bg: tuple[int, int, int]

    @property
    def caption(self) -> str:
        return caption_for(self.color, self.shape, self.background, self.position)


Pairs = tuple[tuple[str, str], ...]  # (colour, shape) pairs a stream draws from


def scene(seed: int, index: int, stream: int = STREAM_TRAIN, pairs: Pairs | None = None) -> Scene:
    """The scene of item `index`: a pure function of (seed, stream, index, pairs). `pairs`: the (colour, shape)
    pairs to draw from, uniformly (None: every pair, drawn as shape then colour, the stream every run before
    held-out pairs existed saw)."""
    if seed < 0 or index < 0 or not 0 <= stream < 256:
        raise ValueError(f"seed and index must be >= 0 and stream in [0, 256), got {seed}, {index}, {stream}")
    # One integer key per item: Random(int) seeds Mersenne Twister from all of its bits (fast, platform-independent).
    rng = random.Random((seed << 64) | (stream << 56) | index)
    if pairs is None:
        shape = rng.choice(SHAPES)
        color = rng.choice(tuple(COLORS))
    else:
        color, shape = rng.choice(pairs)
    background = rng.choice(tuple(BACKGROUNDS))
    row, col = rng.randrange(3), rng.randrange(3)
    return _jittered(rng, color, shape, background, 3 * row + col)


def _jittered(rng: random.Random, color: str, shape: str, background: str, cell: int) -> Scene:
    """The scene in grid `cell` with size, centre and colours drawn from `rng` (in this order)."""
    row, col = divmod(cell, 3)
    size = rng.uniform(*SIZE_RANGE)
    cx = GRID[col] + rng.uniform(-CENTER_JITTER, CENTER_JITTER)
    cy = GRID[row] + rng.uniform(-CENTER_JITTER, CENTER_JITTER)
    fg, bg = (tuple(min(max(v + rng.randint(-COLOR_JITTER, COLOR_JITTER), 0), 255) for v in rgb)
              for rgb in (COLORS[color], BACKGROUNDS[background]))
    return Scene(color, shape, background, POSITIONS[cell], cx, cy, size, fg, bg)


def caption_for(color: str, shape: str, background: str, position: str) -> str:
    """The canonical caption; `color` "" leaves the colour out (word dropout)."""
    subject = f"{color} {shape}".lstrip()
    return f"{'an' if subject[0] in 'aeiou' else 'a'} {subject} on a {background} background, {position}"


_CAPTION = re.compile(r"^an? (?P<color>[a-z]+) (?P<shape>[a-z]+) on a (?P<background>[a-z ]+) background, "
                      r"(?P<position>[a-z ]+)$")


def parse_caption(caption: str) -> dict[str, str] | None:
    """Attributes of a canonical caption, or None when it is not one (e.g. a user's free-text prompt)."""
    m = _CAPTION.match(caption.strip().lower())
    if m is None:
        return None
    attrs = m.groupdict()
    ok = (attrs["color"] in COLORS and attrs["shape"] in SHAPES and attrs["background"] in BACKGROUNDS
          and attrs["position"] in POSITIONS)
    return attrs if ok else None


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, size: float, fill) -> None:
    """Draw `shape` centred at (cx, cy) with extent `size`, in pixel coordinates of `draw`'s image (the supersampled
    canvas)."""
    h = size / 2
    if shape == "circle":
        draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
        return
    if shape == "square":
        outline = [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif shape == "triangle":  # upright, filling its size x size box
        outline = [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    elif shape == "cross":  # plus sign with arms 36 % of the extent thick
        t = 0.18 * size
        outline = [(cx - t, cy - h), (cx + t, cy - h), (cx + t, cy - t), (cx + h, cy - t), (cx + h, cy + t),
                   (cx + t, cy + t), (cx + t, cy + h), (cx - t, cy + h), (cx - t, cy + t), (cx - h, cy + t),
                   (cx - h, cy - t), (cx - t, cy - t)]
    elif shape == "star":  # five points, point up; a fat inner radius keeps the points visible at 32 px
        angles = [-math.pi / 2 + k * math.pi / 5 for k in range(10)]
        outline = [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip([h, 0.45 * h] * 5, angles)]
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    draw.polygon(outline, fill=fill)


def render_scene(s: Scene, img_size: int) -> Image.Image:
    """The RGB image of a scene at `img_size` x `img_size`, anti-aliased by box downsampling."""
    k = 4 if img_size <= 64 else 2  # canvas oversampling: 4x up to 64 px, 2x above (256 px drawn on 512 px)
    side = img_size * k
    canvas = Image.new("RGB", (side, side), s.bg)
    draw_shape(ImageDraw.Draw(canvas), s.shape, s.cx * side, s.cy * side, s.size * side, s.fg)
    return canvas.reduce(k)  # box filter: each output pixel is the exact mean of its k x k block


def dropped_words_caption(s: Scene, seed: int, index: int, p: float) -> str:
    """Word dropout for composition: with probability `p` each, the caption leaves out the colour ("a triangle on
    ...") or the shape ("a blue shape on ..."), never both. Captions that name one attribute alone teach the text
    path each word's meaning apart from the other, which a held-out pair needs. A pure function of (seed, index)."""
    rng = random.Random(f"caption-dropout:{seed}:{index}")  # str seeds hash with sha512: stable across runs
    drop_color, drop_shape = rng.random() < p, rng.random() < p
    if drop_color and drop_shape:
        drop_color, drop_shape = (True, False) if rng.random() < 0.5 else (False, True)
    if drop_color:
        return caption_for("", s.shape, s.background, s.position)
    if drop_shape:
        return caption_for(s.color, "shape", s.background, s.position)
    return s.caption


class ShapesDataset(torch.utils.data.Dataset):
    """`size` procedural items of `stream` under `seed`: (image [C, H, W] in [-1, 1], caption). `pairs`: the
    (colour, shape) pairs drawn (None: all); `caption_dropout`: see `dropped_words_caption` (0: canonical)."""

    def __init__(self, size: int, seed: int, img_size: int, channels: int = 3, stream: int = STREAM_TRAIN,
                 pairs: Pairs | None = None, caption_dropout: float = 0.0):
        if size < 0:
            raise ValueError(f"shapes dataset size must be >= 0, got {size}")
        if pairs is not None and not pairs:
            raise ValueError("shapes dataset: no colour x shape pair left to draw")
        self.size, self.seed, self.img_size, self.channels = int(size), int(seed), img_size, channels
        self.stream = stream
        self.pairs, self.caption_dropout = pairs, float(caption_dropout)
        self.skipped = 0  # the dataset protocol's count of unreadable items; procedural items never fail

    # Item i is an independent random draw of (seed, stream, i): its first n items are a fair sample already, which
    # evaluation takes as they are (fluxflow/evaluation/frechet.py spread_items), keeping every shapes figure.
    items_drawn_at_random = True

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> Scene:
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} items")
        return scene(self.seed, index % self.size, self.stream, self.pairs)

    def caption(self, index: int) -> str:
        """Item `index`'s caption without drawing its image (what the text cache encodes)."""
        return self._caption(self.scene(index), index)

    def _caption(self, s: Scene, index: int) -> str:
        if self.caption_dropout > 0:
            return dropped_words_caption(s, self.seed, index % self.size, self.caption_dropout)
        return s.caption

    def variant_images(self, index: int, k: int) -> torch.Tensor:
        """`k` real images `[k, C, H, W]` with item `index`'s caption (caption_variant): the data's own spread."""
        s = self.scene(index)
        return torch.stack([to_tensor(render_scene(caption_variant(s, j), self.img_size), self.channels)
                            for j in range(k)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        s = self.scene(index)
        return to_tensor(render_scene(s, self.img_size), self.channels), self._caption(s, index)


def caption_variant(s: Scene, k: int) -> Scene:
    """Variant `k` of scene `s` with the same caption: fresh size, position jitter and colour jitter within the
    caption's cell and colours. The real images of one caption, to measure how much they may differ (evaluation's
    diversity figure)."""
    return _jittered(random.Random(f"variant:{s.caption}:{k}"), s.color, s.shape, s.background,
                     POSITIONS.index(s.position))
