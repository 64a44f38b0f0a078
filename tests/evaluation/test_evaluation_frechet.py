"""fd_ours: the Fréchet distance itself, the caption-supervised feature network, and its on-disk cache."""
import math
import os

import pytest
import torch
from PIL import Image
from test_data_webdataset import png_bytes, write_shard

from fluxflow.checkpoints.io import load_checkpoint
from fluxflow.data import build_dataset
from fluxflow.evaluation import frechet
from fluxflow.evaluation.frechet import (cache_key, caption_vocabulary, fd_ours, feature_net_for, first_items,
                                         frechet_distance, train_feature_net)

SHAPES = {"type": "shapes", "size": 256, "seed": 3, "holdout": 48}


def gaussian(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_frechet_distance_matches_the_closed_form():
    a = gaussian(200, 1, 0)
    b = gaussian(200, 1, 1) * 3 + 2
    # 1-D: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2 with the sample statistics.
    expected = float((a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    # b = 2a + 3 in D dims: mu_b - mu_a = mu_a + 3 and S_b = 4 S_a, so FD = |mu_a + 3|^2 + tr(S) + 4 tr(S) - 4 tr(S).
    a = gaussian(100, 5, 2)
    expected = float((a.mean(0) + 3).square().sum() + torch.cov(a.T).trace())
    assert frechet_distance(a, 2 * a + 3) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_is_zero_for_identical_sets_and_symmetric():
    a, b = gaussian(30, 8, 0), gaussian(30, 8, 1)  # fewer samples than dims + 1 would make it singular: still fine
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(a[:1], b)


def test_frechet_distance_of_non_finite_features_is_nan_not_an_error():
    """A diverged model draws nan images: torch.linalg.eigh raised, the flow step failed its evaluation on every retry
    (no final.pt), where the VAE step of the same model reported eval_psnr nan."""
    real = torch.randn(8, 4, dtype=torch.float64)
    drawn = real.clone()
    drawn[3, 1] = float("nan")
    assert math.isnan(frechet_distance(real, drawn)) and math.isnan(frechet_distance(drawn, real))
    drawn[3, 1] = float("inf")
    assert math.isnan(frechet_distance(real, drawn))


def test_vocabulary_keeps_informative_words_in_a_fixed_order():
    captions = ["a red circle", "a blue circle", "a red square", "a red star"]
    # "a" is in every caption (no information); ties are broken alphabetically.
    assert caption_vocabulary(captions) == ["red", "circle", "blue", "square", "star"]
    assert caption_vocabulary(list(reversed(captions))) == caption_vocabulary(captions)


def test_feature_net_training_is_deterministic_and_leaves_the_global_rng_alone():
    images, captions = first_items(build_dataset(SHAPES, 16, 3, "train"), 64)
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    net_a, vocab = train_feature_net(images, captions, epochs=1)
    assert torch.equal(torch.rand(3), expected_next)
    net_b, _ = train_feature_net(images, captions, epochs=1)
    for (name, p), q in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(p, q), name
    assert set(vocab) >= {"red", "circle", "left"}


def test_trained_features_tell_real_images_from_noise(tmp_path):
    train = build_dataset(SHAPES, 16, 3, "train")
    net = feature_net_for(train, SHAPES, 16, 3, tmp_path)
    real_a = first_items(build_dataset(SHAPES, 16, 3, "holdout"), 48)[0]
    real_b = first_items(build_dataset({**SHAPES, "seed": 4}, 16, 3, "holdout"), 48)[0]
    noise = torch.rand(real_a.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    same_distribution = fd_ours(net, real_a, real_b)
    assert fd_ours(net, real_a, noise) > 5 * same_distribution
    assert fd_ours(net, real_a, real_a) == pytest.approx(0.0, abs=1e-6)


def test_feature_net_is_cached_per_dataset_config(tmp_path, monkeypatch):
    train = build_dataset(SHAPES, 16, 3, "train")
    first = feature_net_for(train, SHAPES, 16, 3, tmp_path)
    assert len(list(tmp_path.glob("feature_net_*.pt"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although a cached network exists")

    monkeypatch.setattr(frechet, "train_feature_net", no_training)
    again = feature_net_for(train, SHAPES, 16, 3, tmp_path)
    x = first_items(build_dataset(SHAPES, 16, 3, "holdout"), 4)[0]
    assert torch.equal(first.features(x), again.features(x))
    assert cache_key({**SHAPES, "seed": 4}, 16, 3) != cache_key(SHAPES, 16, 3)
    assert cache_key(SHAPES, 32, 3) != cache_key(SHAPES, 16, 3)
    # Pinned: a changed key would retrain every cached feature network.
    assert cache_key({"kind": "shapes", "n": 8}, 32, 3) == "f7a0230452cad6fb"


def test_captions_in_any_script_have_words():
    # was []: [a-z]+ saw no word in them, and every flow step on such a folder stopped (see the next test)
    assert caption_vocabulary(["красный круг", "синий круг", "un café noir"]) == [
        "круг", "café", "noir", "un", "красный", "синий"]  # the most frequent first


def test_one_caption_for_every_image_leaves_fd_ours_out_instead_of_stopping_the_step(tmp_path, caplog):
    images = torch.rand(6, 3, 16, 16) * 2 - 1
    same = [(image, "a photo of sks dog") for image in images]  # a DreamBooth-style folder
    assert feature_net_for(same, {"kind": "folder"}, 16, 3, tmp_path) is None  # was ValueError: no informative words
    assert not list(tmp_path.iterdir()) and "fd_ours is not computed" in caplog.text


def cached_vocabularies(cache_dir) -> list[list[str]]:
    return sorted(load_checkpoint(path)["vocab"] for path in cache_dir.glob("feature_net_*.pt"))


def test_a_folder_whose_captions_or_images_changed_gets_its_own_feature_net_and_the_same_one_reuses_it(
        tmp_path, monkeypatch):
    """The network learns the training captions' words: after the captions were edited, a step trained again in the
    same output directory was scored with the network of the old ones (fd_ours 27 % off, nothing said)."""
    photos, cache = tmp_path / "photos", tmp_path / "eval_cache"
    photos.mkdir()
    for i in range(10):
        Image.new("RGB", (16, 16), (25 * i, 90, 200 - 20 * i)).save(photos / f"p{i}.png")
    ds_cfg = {"type": "folder", "path": str(photos), "captions_file": "captions.txt", "holdout": 2}

    def caption(words):
        (photos / "captions.txt").write_text("".join(f"p{i}.png\t{words[i % 2]}\n" for i in range(10)))

    def train_set():
        return build_dataset(ds_cfg, 16, 3, "train")

    caption(["a red circle", "a blue square"])
    feature_net_for(train_set, ds_cfg, 16, 3, cache)
    caption(["a dog sleeping indoors", "a cat jumping outside"])
    feature_net_for(train_set, ds_cfg, 16, 3, cache)  # was: the first network, loaded
    assert [v for v in cached_vocabularies(cache) if "dog" in v] and len(cached_vocabularies(cache)) == 2

    trained = train_set().items[0][0]
    Image.new("RGB", (20, 20), (0, 0, 0)).save(photos / trained)  # a training image replaced under its name
    feature_net_for(train_set(), ds_cfg, 16, 3, cache)
    assert len(cached_vocabularies(cache)) == 3

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although nothing changed")

    monkeypatch.setattr(frechet, "train_feature_net", no_training)
    feature_net_for(train_set, ds_cfg, 16, 3, cache)  # the same data (a resumed or re-run step): its own network


def test_a_webdataset_regenerated_at_the_same_paths_gets_its_own_feature_net(tmp_path):
    def write(words, mtime_ns):
        for s in range(2):
            write_shard(tmp_path / f"w-{s}.tar", {f"{s}/{i}": {"png": png_bytes(20 * i + s),
                                                               "txt": words[i % 2].encode()} for i in range(6)})
            os.utime(tmp_path / f"w-{s}.tar", ns=(mtime_ns, mtime_ns))  # of the same size: told by the time alone

    ds_cfg = {"type": "webdataset", "urls": str(tmp_path / "w-{0..1}.tar"), "holdout": 2}
    write(["a red circle", "a blue square"], 10**18)
    feature_net_for(build_dataset(ds_cfg, 16, 3, "train"), ds_cfg, 16, 3, tmp_path / "cache")
    write(["a dog sleeping indoors", "a cat jumping outside"], 10**18 + 10**9)  # a second later
    feature_net_for(build_dataset(ds_cfg, 16, 3, "train"), ds_cfg, 16, 3, tmp_path / "cache")  # was: the first one
    assert [v for v in cached_vocabularies(tmp_path / "cache") if "dog" in v]


def test_a_cached_feature_net_of_a_webdataset_is_found_without_building_its_training_split(tmp_path, monkeypatch):
    """Each evaluation (promotion: twice per version) built the split to fingerprint it: without `length`, that reads
    every shard's headers, over the network for remote shards. The key comes from the expanded shard list now."""
    for s in range(2):
        write_shard(tmp_path / f"w-{s}.tar", {f"{s}/{i}": {"png": png_bytes(20 * i + s),
                                                           "txt": ["a red circle", "a blue square"][i % 2].encode()}
                                              for i in range(6)})
    ds_cfg = {"type": "webdataset", "urls": str(tmp_path / "w-{0..1}.tar"), "holdout": 2}
    built = build_dataset(ds_cfg, 16, 3, "train")
    trained = feature_net_for(built, ds_cfg, 16, 3, tmp_path / "cache")
    [cached] = (tmp_path / "cache").glob("feature_net_*.pt")
    assert cached.name == f"feature_net_{cache_key(ds_cfg, 16, 3, built.fingerprint())}.pt"  # the key as before

    def not_built():
        raise AssertionError("the training split was built")

    monkeypatch.setattr(frechet, "train_feature_net", lambda *a: pytest.fail("retrained although cached"))
    again = feature_net_for(not_built, ds_cfg, 16, 3, tmp_path / "cache")
    assert list((tmp_path / "cache").glob("feature_net_*.pt")) == [cached]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), trained.state_dict().values()))


def class_named_folder(root, per_class: int = 10, holdout: int = 3) -> dict:
    """A folder whose files are named by class, as many are (`cat_000.png` ... `zebra_009.png`): sorted by name, the
    classes come one after another. Each class has its own colour; the config of the folder is returned."""
    root.mkdir()
    lines = []
    for k, word in enumerate(("cat", "dog", "zebra")):
        for i in range(per_class):
            Image.new("RGB", (8, 8), (90 * k, 8 * i, 200 - 90 * k)).save(root / f"{word}_{i:03d}.png")
            lines.append(f"{word}_{i:03d}.png\ta photo of a {word}\n")
    (root / "captions.txt").write_text("".join(lines))
    return {"type": "folder", "path": str(root), "captions_file": "captions.txt", "holdout": holdout}


def test_the_feature_net_of_a_folder_named_by_class_learns_every_class(tmp_path, monkeypatch):
    """It learned from the first N_TRAIN training images by file name: with 3 x 1100 images named by class, 0 zebras
    among 2048, so "zebra" was no feature and drawing zebras badly cost nothing in fd_ours. Here N_TRAIN is 12 of 27
    (the first 12 by name: 9 cats or so, some dogs, no zebra)."""
    ds_cfg = class_named_folder(tmp_path / "photos")
    monkeypatch.setattr(frechet, "N_TRAIN", 12)
    trained_on = []
    train = frechet.train_feature_net
    monkeypatch.setattr(frechet, "train_feature_net",
                        lambda images, captions: trained_on.extend(captions) or train(images, captions, epochs=1))
    assert feature_net_for(build_dataset(ds_cfg, 16, 3, "train"), ds_cfg, 16, 3, tmp_path / "cache") is not None
    assert len(trained_on) == 12
    assert {caption.split()[-1] for caption in trained_on} == {"cat", "dog", "zebra"}
    assert set(cached_vocabularies(tmp_path / "cache")[0]) == {"cat", "dog", "zebra"}


def test_shapes_items_are_taken_as_they_come_and_a_folder_s_the_same_every_time(tmp_path):
    """Shapes items are independent draws: the first ones, so every shapes figure (and cached network) is as before."""
    from fluxflow.evaluation.frechet import spread_items

    shapes = build_dataset(SHAPES, 16, 3, "train")
    assert spread_items(shapes, 8)[1] == first_items(shapes, 8)[1]
    folder = build_dataset(class_named_folder(tmp_path / "photos"), 16, 3, "train")
    once, again = spread_items(folder, 12), spread_items(folder, 12)
    assert once[1] == again[1] and torch.equal(once[0], again[0])
    fewer = spread_items(folder, 6)[0]  # some of the same images
    assert all(any(torch.equal(image, kept) for kept in once[0]) for image in fewer)
    assert spread_items(folder, 100)[1] == first_items(folder, 100)[1]  # all of them: all in order
