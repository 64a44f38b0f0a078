"""Sample file names follow the original tool's convention; grids are WebP files with the right pixels."""
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from fluxflow.sampling.sample_files import image_grid, prompt_file_name, sample_name, save_image_grid


@pytest.mark.parametrize(
    "args, expected",
    [
        # The original tool's own examples.
        (("vae_warmup", 1, 1, 10, "abc123", "-original"), "vae_warmup_001_001_00010_abc123-original.webp"),
        (("vae_warmup", 1, 1, 20, "abc123", "-ctx"), "vae_warmup_001_001_00020_abc123-ctx.webp"),
        (("vae_warmup", 1, 1, None, "abc123", "-nr_o"), "vae_warmup_001_001_abc123-nr_o.webp"),
        (("vae_gan", 2, 5, None, "def456", "-original"), "vae_gan_002_005_def456-original.webp"),
        # The underscore form of the sampled reconstruction, and the SPADE no-context image.
        (("vae_gan", 2, 5, 127, "def456", "_ns_o"), "vae_gan_002_005_00127_def456_ns_o.webp"),
        (("spade", 12, 100, None, "0a1b2c", "-nc"), "spade_012_100_0a1b2c-nc.webp"),
        (("flow", 3, 1, None, "ff00aa", "-t2i"), "flow_003_001_ff00aa-t2i.webp"),
    ],
)
def test_sample_names_follow_the_seed_convention(args, expected):
    assert sample_name(*args) == expected


@pytest.mark.parametrize(
    "args",
    [
        ("../x", 1, 1, None, "abc", "-original"),  # a path, not a name
        ("vae", 0, 1, None, "abc", "-original"),  # 1-based
        ("vae", 1, 0, None, "abc", "-original"),
        ("vae", 1, 1, None, "ab/c", "-original"),
        ("vae", 1, 1, None, "abc", "original"),  # the suffix carries its separator
    ],
)
def test_sample_name_rejects_values_that_would_break_the_convention(args):
    with pytest.raises(ValueError):
        sample_name(*args)


def test_save_image_grid_writes_a_webp_grid_with_exact_pixels(tmp_path):
    images = torch.full((3, 3, 4, 5), -1.0)
    images[0] = 1.0  # white
    images[1, 0] = 1.0  # red
    images[2, 2] = 1.0  # blue
    path = tmp_path / "samples" / "vae_001_001_abc-original.webp"
    save_image_grid(images, path, nrow=2)
    with Image.open(path) as img:
        assert img.format == "WEBP"
        pixels = np.asarray(img.convert("RGB"))
    # 2 columns, 2 rows, padding 2: (2*(4+2)+2) x (2*(5+2)+2)
    assert pixels.shape == (14, 16, 3)
    assert (pixels[2, 2] == [255, 255, 255]).all()
    assert (pixels[2, 9] == [255, 0, 0]).all()
    assert (pixels[8, 2] == [0, 0, 255]).all()
    assert (pixels[0, 0] == [0, 0, 0]).all()  # padding
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_image_grid_maps_minus_one_to_one_onto_bytes_and_clamps():
    grid = image_grid(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0]).view(1, 1, 1, 5), nrow=1, padding=0)
    assert grid[0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_image_grid_lays_images_out_as_torchvisions_make_grid():
    # The layout of the sample grids users have seen (torchvision's), now without its import.
    from torchvision.utils import make_grid

    for count, channels, nrow, padding in itertools.product([2, 3, 5, 9], [1, 3, 4], [1, 3, 8, 20], [0, 2]):
        images = torch.rand(count, channels, 6, 5, generator=torch.Generator().manual_seed(count)) * 2 - 1
        pixels = ((images + 1) * 127.5).round().to(torch.uint8)
        expected = make_grid(pixels, nrow=nrow, padding=padding)[:channels].permute(1, 2, 0)  # [:C]: it makes 1 -> 3
        assert torch.equal(image_grid(images, nrow, padding), expected), (count, channels, nrow, padding)


def test_a_lone_image_keeps_its_border():  # make_grid would drop it; the grids of one sample always had it
    grid = image_grid(torch.ones(1, 3, 4, 5), nrow=8, padding=2)
    assert grid.shape == (8, 9, 3) and grid[2:6, 2:7].eq(255).all()
    assert grid[:2].eq(0).all() and grid[:, -2:].eq(0).all()


def test_grayscale_images_are_saved(tmp_path):
    path = tmp_path / "g.webp"
    save_image_grid(torch.zeros(2, 1, 4, 4), path, nrow=2)
    with Image.open(path) as img:
        assert img.size == (14, 8)


def test_prompt_file_name_is_a_safe_readable_slug():
    name = prompt_file_name("A red Circle, on a BLUE square!", 42)
    assert name.startswith("a_red_circle_on_a_blue_square_") and name.endswith("_seed42.webp")
    assert prompt_file_name("A red Circle, on a BLUE square!", 42) == name  # deterministic
    assert prompt_file_name("A red Circle, on a BLUE square!", 7).endswith("_seed7.webp")


@pytest.mark.parametrize("prompt", ["../../etc/passwd", "café au lait", "猫", "", "x" * 300, "a\0b\nc"])
def test_prompt_file_name_never_escapes_the_directory(prompt):
    name = prompt_file_name(prompt, 0, ".png")
    assert "/" not in name and "\\" not in name and "\0" not in name and "\n" not in name
    assert not name.startswith(".") and name.endswith("_seed0.png") and len(name) < 80


def test_prompts_with_the_same_slug_get_different_names():
    assert prompt_file_name("猫", 1) != prompt_file_name("犬", 1)
    assert prompt_file_name("Hello!", 1) != prompt_file_name("hello", 1)
