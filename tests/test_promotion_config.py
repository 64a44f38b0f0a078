"""The retraining loop's settings (fluxflow/config/promotion.py) and its decision rule (flows/promotion.py `decide`):
which steps are registered, under which name, on which metric a new version wins, and when it takes the alias."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from fluxflow.config import ConfigError, load_config
from fluxflow.config.promotion import promotion_metric, registered_steps
from fluxflow.config.summary import format_summary

REPO = Path(__file__).resolve().parents[1]
FLOW = {"name": "flow", "n_epochs": 1, "train_diff": True}


def config(*steps: dict, **sections) -> dict:
    return {"training": {"pipeline": {"steps": [{"name": "warm", "n_epochs": 1, "train_vae": True}, *steps]}},
            **sections}


def problems(raw: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        load_config(raw)
    return {issue.path: issue.message for issue in caught.value.issues}


def test_the_quickstart_registers_its_flow_step_under_its_experiment_name_and_promotes_on_adherence():
    cfg = load_config(REPO / "configs" / "quickstart.yaml").config
    assert registered_steps(cfg) == ["flow"]
    assert cfg.tracking.model_name == "fluxflow-quickstart"
    assert promotion_metric(cfg, "flow") == ("eval_adherence_both", "maximize")
    assert cfg.promotion.alias == "champion" and cfg.promotion.enabled
    assert ("Registered model: fluxflow-quickstart (step flow); a new version becomes 'champion' when its "
            "eval_adherence_both is higher by more than 0") in format_summary(cfg)


def test_leaves_that_make_no_images_from_text_are_not_registered():
    cfg = load_config(REPO / "configs" / "hypotheses.yaml").config  # two VAE branches
    assert registered_steps(cfg) == []
    assert "Registered model" not in format_summary(cfg)


def test_every_text_to_image_leaf_is_registered_and_a_step_below_a_flow_step_counts():
    cfg = load_config(config(FLOW, {"name": "a", "after": "flow", "n_epochs": 1, "train_vae": True},
                             {"name": "b", "after": "flow", "n_epochs": 1, "train_diff": True},
                             {"name": "vae_only", "after": "warm", "n_epochs": 1, "train_vae": True})).config
    assert registered_steps(cfg) == ["a", "b"]


def test_named_model_chosen_steps_and_a_folder_dataset_fall_back_to_the_frechet_distance():
    raw = config(FLOW, {"name": "more", "n_epochs": 1, "train_diff": True},
                 tracking={"registered_model": "nightly", "register_steps": ["flow"]},
                 promotion={"min_improvement": 0.01})
    raw["training"]["pipeline"]["datasets"] = {"real": {"type": "folder", "path": "x", "captions_file": "y"}}
    cfg = load_config(raw).config
    assert cfg.tracking.model_name == "nightly" and registered_steps(cfg) == ["flow"]
    assert promotion_metric(cfg, "flow") == ("eval_fd_ours_cfg", "minimize")
    assert "when its eval_fd_ours_cfg is lower by more than 0.01" in format_summary(cfg)


def test_bad_settings_name_their_field():
    found = problems(config(FLOW, tracking={"register_steps": ["warm", "flw"]}))
    assert "trains no text-to-image model" in found["tracking.register_steps[0]"]
    assert "did you mean 'flow'" in found["tracking.register_steps[1]"]
    assert "did you mean 'eval_fd_ours_cfg'" in problems(config(FLOW, promotion={"metric": "fd_ours_cfg"}))[
        "promotion.metric"]
    assert "would promote worse models" in problems(config(FLOW, promotion={"metric": "eval_fd_ours_cfg",
                                                                            "direction": "maximize"}))[
        "promotion.direction"]
    assert "not 'latest'" in problems(config(FLOW, promotion={"alias": "latest"}))["promotion.alias"]
    assert "did you mean 'shapes'" in problems(config(FLOW, promotion={"dataset": "shape"}))["promotion.dataset"]
    folder = config(FLOW, promotion={"metric": "eval_adherence_both"})
    folder["training"]["pipeline"]["datasets"] = {"real": {"type": "folder", "path": "x", "captions_file": "y"}}
    assert "`shapes` datasets only" in problems(folder)["promotion.metric"]
    assert "unknown key" in problems(config(FLOW, promotion={"metrc": "x"}))["promotion.metrc"]


def test_the_config_reference_documents_every_promotion_field():
    from fluxflow.config.promotion import PromotionConfig

    text = (REPO / "docs" / "CONFIG.md").read_text()
    for field in [*PromotionConfig.model_fields, "registered_model", "register_steps"]:
        assert f"`{field}`" in text, field


@pytest.mark.parametrize("value, champion, direction, min_improvement, promoted, why", [
    (0.5, None, "maximize", 0.0, True, "no champion yet"),
    (0.6, 0.5, "maximize", 0.0, True, "better by 0.1"),
    (0.5, 0.5, "maximize", 0.0, False, "not better"),
    (0.4, 0.5, "maximize", 0.0, False, "worse by 0.1"),
    (0.4, 0.5, "minimize", 0.0, True, "better by 0.1"),
    (0.55, 0.5, "maximize", 0.1, False, "better by only 0.05"),
    (0.65, 0.5, "maximize", 0.1, True, "more than the 0.1 required"),
    (math.nan, 0.5, "minimize", 0.0, False, "not a number"),
    (0.4, math.nan, "minimize", 0.0, True, "champion's value nan"),
])
def test_a_new_version_wins_only_when_better_by_more_than_the_minimum(value, champion, direction, min_improvement,
                                                                       promoted, why):
    from flows.promotion import decide

    decided, reason = decide(value, champion, direction, min_improvement)
    assert decided is promoted and why in reason


def test_the_promotion_section_round_trips_through_yaml(tmp_path):
    raw = config(FLOW, promotion={"seeds": [0, 1], "n_images": 32, "sampler_steps": 10, "enabled": False})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml").config
    assert (cfg.promotion.seeds, cfg.promotion.n_images, cfg.promotion.sampler_steps) == ([0, 1], 32, 10)
    assert "promotion off" in format_summary(cfg)
