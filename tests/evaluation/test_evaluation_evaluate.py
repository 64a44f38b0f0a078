"""evaluate_step: which metrics each kind of step gets, and that evaluating changes nothing about training."""
import math

import pytest
import torch
from PIL import Image
from test_evaluation_frechet import class_named_folder

from fluxflow.config import ConfigError, load_config
from fluxflow.data import build_dataset
from fluxflow.evaluation.evaluate import eval_items, evaluate_step
from fluxflow.models.latents import measure_latent_norm
from fluxflow.models import build_component

MODEL = {"vae_dim": 8, "feature_maps_dim": 32, "flow_depth": 1, "flow_heads": 2, "text_embedding_dim": 16,
         "text_encoder_depth": 1, "text_max_len": 48}
STEPS = [{"name": "vae", "n_epochs": 1, "train_vae": True}, {"name": "flow", "n_epochs": 1, "train_diff": True}]


def config_for(dataset: dict):
    return load_config({"model": MODEL, "data": {"img_size": 16}, "tracking": {"register_steps": []},  # no promotion
                        "training": {"batch_size": 4, "pipeline": {"datasets": {"d": dataset}, "steps": STEPS}}}).config


def setup(dataset: dict):
    config = config_for(dataset)
    torch.manual_seed(0)
    models = {n: build_component(n, config.model, 3)
              for n in ("compressor", "expander", "flow_processor", "text_encoder")}
    ds = config.dataset_for(config.step("vae"))
    train = build_dataset(ds, 16, 3, "train")
    holdout = build_dataset(ds, 16, 3, "holdout")
    norm = measure_latent_norm(models["compressor"], torch.stack([train[i][0] for i in range(4)]))
    return config, models, train, holdout, norm


SHAPES = {"type": "shapes", "size": 64, "seed": 0, "holdout": 6}


def test_vae_step_gets_reconstruction_metrics_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-lpips"))  # no backbone: no lpips key, no substitute
    config, models, train, holdout, norm = setup(SHAPES)
    out = evaluate_step(config.step("vae"), models, holdout, train, config, norm, "cpu", tmp_path, spade=False)
    assert set(out) == {"psnr", "ssim"}
    assert all(math.isfinite(v) for v in out.values())
    assert not list(tmp_path.glob("feature_net_*")), "a VAE step has no use for the fd_ours network"


def test_flow_step_on_shapes_gets_adherence_and_fd_with_and_without_cfg(tmp_path):
    config, models, train, holdout, norm = setup(SHAPES)
    out = evaluate_step(config.step("flow"), models, holdout, train, config, norm, "cpu", tmp_path, spade=False)
    assert set(out) == {"adherence_color", "adherence_shape", "adherence_both", "analyser_accuracy_holdout",
                        "fd_ours_cfg", "fd_ours_nocfg", "diversity_gen", "diversity_real", "diversity_ratio"}
    assert out["diversity_real"] > 0  # the real renderings of one caption differ (size, position, colour jitter)
    assert 0.0 <= out["adherence_both"] <= min(out["adherence_color"], out["adherence_shape"])
    assert out["analyser_accuracy_holdout"] >= 5 / 6  # the analyser reads the real 16 px held-out images
    assert out["fd_ours_cfg"] >= 0 and out["fd_ours_nocfg"] >= 0
    assert len(list(tmp_path.glob("feature_net_*.pt"))) == 1


def test_evaluation_is_repeatable_and_leaves_training_state_alone(tmp_path):
    config, models, train, holdout, norm = setup(SHAPES)
    for name, m in models.items():
        m.train(name == "flow_processor")
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    first = evaluate_step(config.step("flow"), models, holdout, train, config, norm, "cpu", tmp_path, spade=False)
    assert torch.equal(torch.rand(4), expected_next), "evaluation consumed the global RNG"
    assert {n: m.training for n, m in models.items()} == {n: n == "flow_processor" for n in models}
    again = evaluate_step(config.step("flow"), models, holdout, train, config, norm, "cpu", tmp_path, spade=False)
    assert again == pytest.approx(first)


def folder_dataset(root):
    lines = []
    for i in range(12):
        color = (i * 20, 255 - i * 20, 128)
        Image.new("RGB", (16, 16), color).save(root / f"img{i}.png")
        lines.append(f"img{i}.png\t{'a bright' if i % 2 else 'a dull'} square number {i % 3}")
    (root / "captions.txt").write_text("\n".join(lines) + "\n")
    return {"type": "folder", "path": str(root), "captions_file": "captions.txt", "holdout": 4}


def test_flow_step_on_other_datasets_gets_fd_only(tmp_path):
    (tmp_path / "imgs").mkdir()
    config, models, train, holdout, norm = setup(folder_dataset(tmp_path / "imgs"))
    out = evaluate_step(config.step("flow"), models, holdout, train, config, norm, "cpu", tmp_path / "eval",
                        spade=False)
    assert {"fd_ours_cfg", "fd_ours_nocfg", "diversity_gen"} <= set(out)
    assert not any(key.startswith(("adherence", "analyser")) for key in out)


def test_a_folder_with_held_out_captions_gets_fd_on_them(tmp_path):
    (tmp_path / "imgs").mkdir()
    dataset = {**folder_dataset(tmp_path / "imgs"), "holdout": 4, "holdout_captions": ["*number 1"]}
    config, models, train, holdout, norm = setup(dataset)
    out = evaluate_step(config.step("flow"), models, holdout, train, config, norm, "cpu", tmp_path / "eval",
                        spade=False)
    assert out["fd_ours_unseen_cfg"] >= 0


def test_an_empty_held_out_split_still_scores_the_unseen_one(tmp_path, caplog):
    # The unseen images were kept out of training and never scored: 'the held-out split ... is empty; no evaluation
    # metrics'.
    (tmp_path / "imgs").mkdir()
    config, models, train, holdout, norm = setup({**folder_dataset(tmp_path / "imgs"), "holdout": 0,
                                                  "holdout_captions": ["*number 1"]})
    assert len(holdout) == 0
    out = evaluate_step(config.step("flow"), models, holdout, train, config, norm, "cpu", tmp_path / "eval",
                        spade=False)
    assert set(out) == {"fd_ours_unseen_cfg"} and math.isfinite(out["fd_ours_unseen_cfg"])
    assert "is empty; only its unseen split is evaluated" in caplog.text


def test_one_held_out_image_says_the_frechet_distance_is_left_out(tmp_path, caplog):
    """holdout 1: fd_ours_* were missing from the step's metrics without a word (holdout 0 is said)."""
    (tmp_path / "imgs").mkdir()
    config, models, train, holdout, norm = setup({**folder_dataset(tmp_path / "imgs"), "holdout": 1})
    out = evaluate_step(config.step("flow"), models, holdout, train, config, norm, "cpu", tmp_path / "eval",
                        spade=False)
    assert not any(key.startswith("fd_ours") for key in out)
    assert ("Step flow: dataset 'd' holds out one image to score; the Fréchet distance (fd_ours_*) needs two or more "
            "and is left out (raise its holdout)") in caplog.text


def test_held_out_pairs_of_shapes_need_held_out_images(tmp_path):
    # The shapes' unseen split draws `holdout` images: with 0 the pairs were dropped from training and never scored.
    with pytest.raises(ConfigError) as raised:
        config_for({**SHAPES, "holdout": 0, "holdout_pairs": ["red circle"]})
    [issue] = raised.value.issues
    assert issue.path == "training.pipeline.datasets.d.holdout" and "holdout_pairs are scored" in issue.message


def test_empty_holdout_gives_no_metrics(tmp_path, caplog):
    config, models, train, holdout, norm = setup({**SHAPES, "holdout": 0})
    assert evaluate_step(config.step("vae"), models, holdout, train, config, norm, "cpu", tmp_path, spade=False) == {}
    assert f"Step vae: the held-out split of dataset {config.step('vae').dataset!r} is empty" in caplog.text


def test_the_held_out_images_scored_of_a_folder_named_by_class_are_of_every_class(tmp_path):
    """Evaluation (and promotion, its `n_images`) scored the first held-out images by file name: 256 of a 600-image
    hold-out of 3 x 1100 files named by class had no zebra, so a model that drew zebras badly lost nothing. Here 8 of
    15 held out (the first 8 by name: cats and dogs only; the fixed random 8 happen to hold every class)."""
    ds_cfg = class_named_folder(tmp_path / "photos", holdout=15)
    holdout = build_dataset(ds_cfg, 16, 3, "holdout")
    assert {caption.split()[-1] for _, caption in holdout.items} == {"cat", "dog", "zebra"}
    images, captions, unseen = eval_items(holdout, ds_cfg, 16, 3, 8, "cpu")
    assert images.shape == (8, 3, 16, 16) and unseen is None
    assert {caption.split()[-1] for caption in captions} == {"cat", "dog", "zebra"}
    assert eval_items(holdout, ds_cfg, 16, 3, 8, "cpu")[1] == captions  # the same images at every evaluation
