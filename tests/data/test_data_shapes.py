"""The built-in `shapes` dataset: deterministic, O(1) random access, captions that say what is drawn."""
from types import SimpleNamespace

import pytest
import torch

from fluxflow.data import build_dataset, parse_caption
from fluxflow.data.shapes import COLORS, SHAPES, ShapesDataset, scene


def attributes(s) -> dict[str, str]:
    return {"color": s.color, "shape": s.shape, "background": s.background, "position": s.position}


def shapes_cfg(size=64, seed=3, holdout=8):
    return SimpleNamespace(type="shapes", size=size, seed=seed, holdout=holdout)


@pytest.mark.parametrize("img_size", [16, 32])
def test_items_are_images_in_minus_one_one_with_captions(img_size):
    ds = build_dataset(shapes_cfg(), img_size, 3, "train")
    image, caption = ds[5]
    assert image.shape == (3, img_size, img_size) and image.dtype == torch.float32
    assert -1.0 <= image.min() < image.max() <= 1.0
    assert isinstance(caption, str) and " background, " in caption
    assert len(ds) == 64


def test_item_is_a_pure_function_of_seed_and_index():
    a = ShapesDataset(10**9, seed=11, img_size=16)  # a billion items costs nothing: nothing is stored
    b = ShapesDataset(5, seed=11, img_size=16)
    for i in (0, 3, 4):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    assert a[999_999_999][0].shape == (3, 16, 16)
    other_seed = ShapesDataset(5, seed=12, img_size=16)
    assert any(not torch.equal(a[i][0], other_seed[i][0]) for i in range(5))


def test_caption_parses_back_to_the_attributes_of_the_item():
    ds = ShapesDataset(50, seed=0, img_size=16)
    for i in range(50):
        assert parse_caption(ds[i][1]) == attributes(scene(0, i)) == attributes(ds.scene(i))
    assert parse_caption("a photo of a cat") is None
    assert parse_caption("a red hexagon on a black background, center") is None


def test_dataset_varies_every_attribute():
    attrs = [attributes(scene(1, i)) for i in range(400)]
    assert {a["shape"] for a in attrs} == set(SHAPES) and len(SHAPES) >= 3
    assert {a["color"] for a in attrs} == set(COLORS) and len(COLORS) >= 5
    assert len({a["background"] for a in attrs}) >= 5
    assert len({a["position"] for a in attrs}) == 9


def test_edges_are_antialiased():
    s = scene(0, 0)
    image = ShapesDataset(1, 0, 32)[0][0]
    pixels = {tuple(p) for p in ((image + 1) * 127.5).round().to(torch.int64).reshape(3, -1).T.tolist()}
    assert s.fg in pixels and s.bg in pixels
    assert len(pixels) > 2, "only two colours: the shape was not anti-aliased"


def test_holdout_is_a_disjoint_stream():
    train = build_dataset(shapes_cfg(), 16, 3, "train")
    holdout = build_dataset(shapes_cfg(), 16, 3, "holdout")
    assert len(holdout) == 8
    train_images = {train[i][0].numpy().tobytes() for i in range(len(train))}
    assert not any(holdout[i][0].numpy().tobytes() in train_images for i in range(len(holdout)))
    # the holdout does not depend on the training size: growing the dataset never moves images between splits
    bigger = build_dataset(shapes_cfg(size=1000), 16, 3, "holdout")
    assert all(torch.equal(holdout[i][0], bigger[i][0]) for i in range(len(holdout)))


def test_single_channel_and_out_of_range_index():
    ds = build_dataset(shapes_cfg(size=4), 16, 1, "train")
    assert ds[0][0].shape == (1, 16, 16)
    assert ds[-1][1] == ds[3][1]
    with pytest.raises(IndexError):
        ds[4]
    assert ds.skipped == 0


def test_unknown_type_and_split_are_rejected():
    with pytest.raises(ValueError, match="unknown dataset type"):
        build_dataset(SimpleNamespace(type="imagenet"), 16, 3, "train")
    with pytest.raises(ValueError, match="split"):
        build_dataset(shapes_cfg(), 16, 3, "validation")
