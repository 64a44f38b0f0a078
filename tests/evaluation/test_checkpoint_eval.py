"""evaluate_checkpoint (what promotion measures a version with) on a `folder` dataset after the pipeline trained on
it: what the folder's captions file lacks was said by the steps, and is not said again for each version compared; a
folder without a held-out split is scored on its held-out captions."""
import contextlib
import io
import logging

import pytest
import torch
from helpers_tiny import one_torch_thread, tiny_raw
from PIL import Image

from fluxflow.config import load_config
from fluxflow.evaluation.checkpoint_eval import evaluate_checkpoint
from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]


def test_evaluating_a_checkpoint_does_not_say_the_captions_file_problems_again(tmp_path, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        Image.new("RGB", (16, 16), (20 * i, 90, 255 - 20 * i)).save(photos / f"img{i:02d}.png")
    (photos / "captions.txt").write_text("".join(f"img{i:02d}.png\ta {('red', 'blue')[i % 2]} photo number {i}\n"
                                                 for i in range(12)) + "a line without a tab\n")
    raw = tiny_raw(tmp_path / "out", [{"name": "vae", "n_epochs": 1, "max_steps": 1, "train_vae": True},
                                      {"name": "flow", "after": "vae", "n_epochs": 1, "max_steps": 1,
                                       "train_diff": True}], no_samples=True)
    raw["training"]["pipeline"]["datasets"] = {"photos": {"type": "folder", "path": str(photos),
                                                          "captions_file": "captions.txt", "holdout": 4}}
    raw["training"]["pipeline"]["default_dataset"] = "photos"
    config = load_config(raw).config
    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        outcomes = run_pipeline(config)

    def said() -> int:
        return sum("line(s) of captions.txt without a tab" in r.getMessage() for r in caplog.records)

    assert said() == 2  # once by each step
    for _ in range(2):  # a new version, then the champion (promotion's two evaluations): said 2 times more before
        evaluate_checkpoint(outcomes[1].ref.uri, config, "photos", seeds=[0], n_images=4, sampler_steps=1)
    assert said() == 2


def test_a_checkpoint_of_a_folder_without_a_held_out_split_is_scored_on_its_held_out_captions(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(12):
        Image.new("RGB", (16, 16), (20 * i, 90, 255 - 20 * i)).save(photos / f"img{i:02d}.png")
    (photos / "captions.txt").write_text("".join(f"img{i:02d}.png\ta {('red', 'blue')[i % 2]} "
                                                 f"{('circle', 'square', 'star')[i // 2 % 3]}\n" for i in range(12)))
    raw = tiny_raw(tmp_path / "out", [{"name": "flow", "n_epochs": 1, "max_steps": 1, "train_diff": True}],
                   no_samples=True)
    raw["training"]["pipeline"]["datasets"] = {"photos": {"type": "folder", "path": str(photos), "holdout": 0,
                                                          "captions_file": "captions.txt",
                                                          "holdout_captions": ["*red circle*"]}}
    raw["training"]["pipeline"]["default_dataset"] = "photos"
    raw["promotion"] = {"enabled": False}  # promotion needs held-out images (validation says so)
    config = load_config(raw).config
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        [outcome] = run_pipeline(config)
    # The step's own evaluation and a version's (promotion, fluxflow-compare) both score the unseen captions.
    assert "eval_fd_ours_unseen_cfg" in outcome.result.final_metrics
    assert set(evaluate_checkpoint(outcome.ref.uri, config, "photos", seeds=[0], n_images=4,
                                   sampler_steps=1)) == {"eval_fd_ours_unseen_cfg"}
