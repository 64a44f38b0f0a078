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

REPO = Path(__file__).resolve().parents[2]
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
    cfg = load_config(config(FLOW, {"name": "a", "after": "flow", "n_epochs": 1, "train_vae": True,
                                    "freeze": ["compressor"]},
                             {"name": "b", "after": "flow", "n_epochs": 1, "train_diff": True},
                             {"name": "vae_only", "after": "warm", "n_epochs": 1, "train_vae": True})).config
    assert registered_steps(cfg) == ["a", "b"]


def test_a_step_below_a_flow_step_that_trains_the_compressor_is_not_registered():
    """It drops the latent normalisation (the next flow step measures it again): its checkpoint cannot make images
    from text, and registering it failed with a traceback after every step had trained."""
    retune = {"name": "retune", "after": "flow", "n_epochs": 1, "train_vae": True}
    assert registered_steps(load_config(config(FLOW, retune)).config) == []
    assert registered_steps(load_config(config(FLOW, retune, dict(FLOW, name="flow2", after="retune"))).config) == [
        "flow2"]
    found = problems(config(FLOW, retune, tracking={"register_steps": ["retune"]}))
    assert found == {"tracking.register_steps[0]": "step 'retune' comes after flow step 'flow', but it trains the "
                                                   "compressor, which drops the latent normalisation the model "
                                                   "decodes with (a flow step after it measures one again): nothing "
                                                   "to register"}
    decoder = {"name": "decoder", "after": "retune", "n_epochs": 1, "train_vae": True, "freeze": ["compressor"]}
    found = problems(config(FLOW, retune, decoder, tracking={"register_steps": ["decoder"]}))
    assert "step 'decoder' comes after flow step 'flow', but 'retune' trains the compressor" in found[
        "tracking.register_steps[0]"]


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


def test_promotion_can_use_held_out_pair_adherence_where_the_evaluation_set_holds_pairs_out():
    raw = config(FLOW, promotion={"metric": "eval_adherence_unseen_both"})
    assert "sets no holdout_pairs" in problems(raw)["promotion.metric"]
    raw["training"]["pipeline"]["datasets"] = {"shapes": {"type": "shapes", "holdout_pairs": ["blue triangle"]}}
    assert promotion_metric(load_config(raw).config, "flow") == ("eval_adherence_unseen_both", "maximize")


def test_held_out_caption_distance_on_a_dataset_that_cannot_hold_captions_out_is_a_problem_not_a_crash():
    """`eval_fd_ours_unseen_cfg` scores a folder's `holdout_captions`; a `shapes` or `webdataset` evaluation set has
    no such field (it raised AttributeError: a traceback instead of exit 2)."""
    raw = config(FLOW, promotion={"metric": "eval_fd_ours_unseen_cfg"})
    assert "folder datasets with holdout_captions" in problems(raw)["promotion.metric"]
    raw["training"]["pipeline"]["datasets"] = {"web": {"type": "webdataset", "urls": "shards/{0..1}.tar"}}
    assert "folder datasets with holdout_captions" in problems(raw)["promotion.metric"]
    raw["training"]["pipeline"]["datasets"] = {"real": {"type": "folder", "path": "x", "captions_file": "y"}}
    assert "sets no holdout_captions" in problems(raw)["promotion.metric"]
    raw["training"]["pipeline"]["datasets"]["real"]["holdout_captions"] = ["*blue triangle*"]
    assert promotion_metric(load_config(raw).config, "flow") == ("eval_fd_ours_unseen_cfg", "minimize")


def test_a_promotion_evaluation_set_without_held_out_images_is_a_problem_not_a_failed_run():
    """Promotion evaluates the registered version on the held-out split: with `holdout: 0` the run trained every
    step, registered the version, then its promote task failed with a ValueError traceback (exit 1)."""
    raw = config(FLOW)
    raw["training"]["pipeline"]["datasets"] = {"shapes": {"type": "shapes", "holdout": 0}}
    assert "promotion evaluates" in problems(raw)["training.pipeline.datasets.shapes.holdout"]
    raw["promotion"] = {"enabled": False}
    assert registered_steps(load_config(raw).config) == ["flow"]
    raw["promotion"] = {"dataset": "other"}
    raw["training"]["pipeline"]["datasets"]["other"] = {"type": "shapes", "holdout": 4}
    raw["training"]["pipeline"]["default_dataset"] = "shapes"
    assert load_config(raw).config.promotion.dataset == "other"


def test_the_config_reference_documents_every_promotion_field():
    from fluxflow.config.promotion import PromotionConfig

    text = (REPO / "docs" / "CONFIG.md").read_text()
    for field in [*PromotionConfig.model_fields, "registered_model", "register_steps"]:
        assert f"`{field}`" in text, field


@pytest.mark.parametrize("value, champion, direction, min_improvement, promoted, why", [
    (0.5, None, "maximize", 0.0, True, "no champion yet"),
    (0.6, 0.5, "maximize", 0.0, True, "better by 0.1"),
    (0.5, 0.5, "maximize", 0.0, False, "not better: the same value as the champion's, 0.5"),
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


@pytest.mark.parametrize("values, champion, direction, promoted, why", [
    ([0.58, 0.62, 0.60], 0.5, "maximize", True, "[0.5503, 0.6497], its lower end: better by 0.05032"),
    ([0.45, 0.70, 0.60], 0.5, "maximize", False, "its lower end: worse by 0.2292"),  # 0.70 alone would win
    ([0.40, 0.42, 0.41], 0.5, "minimize", True, "its upper end: better by 0.06516"),
    ([0.70], 0.5, "maximize", False, "one replicate: no interval can be given"),
    ([0.58, 0.62, 0.60], None, "maximize", True, "no champion yet"),
])
def test_beyond_the_spread_the_replicates_interval_must_beat_the_champion(values, champion, direction, promoted, why):
    from flows.promotion import decide_beyond_spread

    decided, reason = decide_beyond_spread(values, champion, direction, 0.0)
    assert decided is promoted and why in reason, reason


def test_promotion_beyond_the_spread_moves_the_alias_to_the_best_replicate_only_when_the_hypothesis_wins(
        mlflow_store, monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows import promotion
    from flows.mlflow_names import TAG_STEP_NAME

    client = MlflowClient(mlflow_store)
    raw = config({**FLOW, "after": "warm"}, {"name": "lucky", "n_epochs": 1, "train_diff": True, "after": "warm"},
                 promotion={"beyond_spread": True, "metric": "eval_adherence_both"},
                 tracking={"registered_model": "m"})
    raw["training"]["replicates"] = {"seeds": [0, 1, 2], "from_steps": ["flow", "lucky"]}
    cfg = load_config(raw).config
    client.create_registered_model("m")
    steps = ["old", "flow-seed0", "flow-seed1", "flow-seed2", "lucky-seed0", "lucky-seed1", "lucky-seed2"]
    scores = [0.50, 0.58, 0.62, 0.60, 0.45, 0.75, 0.40]  # version 1 is the champion
    versions = [client.create_model_version("m", str(tmp_path), tags={TAG_STEP_NAME: s}).version for s in steps]
    client.set_registered_model_alias("m", "champion", versions[0])
    by_version = dict(zip(map(str, versions), scores))
    monkeypatch.setattr(promotion, "_evaluator", lambda config, client: (
        lambda version, step: {"eval_adherence_both": by_version[str(version)]}))

    decisions = {d.step: d for d in promotion.promote(cfg, client, [str(v) for v in versions[1:]])}
    assert [s for s, d in decisions.items() if d.promoted] == ["flow-seed1"]  # the best replicate of `flow`
    assert "a replicate of its hypothesis" in decisions["flow-seed0"].reason
    # lucky's best replicate (0.75) beats the new champion's 0.62, but not beyond its spread: the alias stays
    assert not decisions["lucky-seed1"].promoted and "its lower end: worse" in decisions["lucky-seed1"].reason
    assert client.get_model_version_by_alias("m", "champion").version == versions[2]


def test_promotion_beyond_the_spread_and_the_comparison_table_agree_on_the_same_numbers(mlflow_store, monkeypatch,
                                                                                         tmp_path):
    """Hypotheses a and b, 3 seeds each, in one run: a's best replicate takes the alias first (no champion yet), then
    b is measured. b beats a at every seed (by 0.055, 0.06, 0.065): the table calls b better beyond the spread
    (paired by seed; Welch's too, [+0.008, +0.112]), but promotion measured b's interval [0.518, 0.642] against a's
    luckiest seed alone (0.54) and kept a. Both now read the same interval of b − a."""
    from mlflow.tracking import MlflowClient

    from flows import promotion
    from flows.hypotheses import summarize
    from flows.mlflow_names import TAG_STEP_NAME

    a, b = [0.50, 0.52, 0.54], [0.555, 0.58, 0.605]
    table = summarize({"a": ["a-seed0", "a-seed1", "a-seed2"], "b": ["b-seed0", "b-seed1", "b-seed2"]},
                      {"a": [{"eval_adherence_both": v} for v in a], "b": [{"eval_adherence_both": v} for v in b]},
                      {"a": [0, 1, 2], "b": [0, 1, 2]})
    (verdict,) = table.differences
    assert (verdict.test, verdict.verdict, verdict.better) == ("paired by seed", "beyond the spread", "b")

    client = MlflowClient(mlflow_store)
    raw = config({**FLOW, "name": "a", "after": "warm"}, {**FLOW, "name": "b", "after": "warm"},
                 promotion={"beyond_spread": True, "metric": "eval_adherence_both"}, tracking={"registered_model": "m"})
    raw["training"]["replicates"] = {"seeds": [0, 1, 2], "from_steps": ["a", "b"]}
    client.create_registered_model("m")
    steps = [f"{h}-seed{i}" for h in "ab" for i in range(3)]
    versions = [str(client.create_model_version("m", str(tmp_path), tags={TAG_STEP_NAME: s}).version) for s in steps]
    by_version = dict(zip(versions, a + b))
    monkeypatch.setattr(promotion, "_evaluator", lambda config, client: (
        lambda version, step: {"eval_adherence_both": by_version[str(version)]}))

    decisions = {d.step: d for d in promotion.promote(load_config(raw).config, client, versions)}
    assert [s for s, d in decisions.items() if d.promoted] == ["a-seed2", "b-seed2"]
    assert "paired by seed, 3 and 3 replicates" in decisions["b-seed2"].reason
    assert str(client.get_model_version_by_alias("m", "champion").version) == versions[5]


@pytest.mark.parametrize("champion_files", ["missing", "present"])
def test_a_champion_whose_files_are_missing_is_replaced_and_one_that_fails_otherwise_keeps_the_alias(
        mlflow_store, monkeypatch, tmp_path, champion_files):
    """A champion whose files left the artifact store (a moved ./mlruns) could not be evaluated, so every new version
    was "not promoted", for good: the alias pointed at a model no one could load (fluxflow-generate refuses it). It
    scores no number now, as a NaN champion, and is replaced; one that fails for another reason still keeps it."""
    import shutil

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from flows import promotion
    from flows.mlflow_names import TAG_STEP_NAME

    client = MlflowClient(mlflow_store)
    client.create_registered_model("m")
    for folder in ("old", "new"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text("{}")
        client.create_model_version("m", str(tmp_path / folder), tags={TAG_STEP_NAME: "flow"})
    client.set_registered_model_alias("m", "champion", "1")
    if champion_files == "missing":
        shutil.rmtree(tmp_path / "old")

    def metrics(version, step):
        if version == "1":  # what model_checkpoint raised for files gone; a failure of its own for files present
            raise MlflowException("No such artifact: ''" if champion_files == "missing" else "CUDA out of memory")
        return {"eval_adherence_both": 0.6}

    monkeypatch.setattr(promotion, "_evaluator", lambda config, client: metrics)
    cfg = load_config(config({**FLOW, "after": "warm"}, tracking={"registered_model": "m"})).config
    [decision] = promotion.promote(cfg, client, ["2"])
    if champion_files == "missing":
        assert decision.promoted and decision.reason == (
            f"the champion cannot be evaluated: version 1 of 'm': its files are missing from the artifact store "
            f"({tmp_path / 'old'})")
        assert math.isnan(decision.champion_value)
        assert str(client.get_model_version_by_alias("m", "champion").version) == "2"
    else:
        assert not decision.promoted
        assert decision.reason == "the champion (version 1) could not be evaluated: CUDA out of memory"
        assert str(client.get_model_version_by_alias("m", "champion").version) == "1"


@pytest.mark.parametrize("champion, challenger, seeds", [
    ([0.60, 0.50, 0.55], [0.64, 0.53, 0.575], ([0, 1, 2], [0, 1, 2])),  # paired: better at every seed
    ([0.60, 0.50, 0.55], [0.64, 0.53, 0.575], ([0, 1, 2], [3, 4, 5])),  # other seeds: Welch's, within
    ([0.50, 0.52, 0.51], [0.60, 0.61, 0.63], ([0, 1, 2], [3, 4, 5])),  # Welch's, beyond
    ([0.60, 0.61, 0.63], [0.50, 0.52, 0.51], ([0, 1, 2], [0, 1, 2])),  # worse beyond the spread
    ([0.50, 0.55, 0.60], [0.50, 0.55, 0.60], ([0, 1, 2], [0, 1, 2])),  # the same
])
@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_promotion_s_rule_is_the_table_s_verdict(champion, challenger, seeds, direction):
    from flows.hypotheses import summarize
    from flows.promotion import decide_beyond_spread

    metric = "eval_adherence_both" if direction == "maximize" else "eval_fd_ours_cfg"
    table = summarize({"champion": ["c"] * 3, "new": ["n"] * 3},
                      {"champion": [{metric: v} for v in champion], "new": [{metric: v} for v in challenger]},
                      {"champion": seeds[0], "new": seeds[1]})
    promoted, reason = decide_beyond_spread(challenger, champion, direction, 0.0, seeds[::-1])
    assert promoted is (table.differences[0].better == "new"), reason


def test_beyond_the_spread_the_first_version_is_promoted_even_from_one_replicate():
    """With no champion there is nothing to be beyond: a model trained without replicates (or with `seeds: [0]`)
    under `beyond_spread: true` never got a champion, against "the first version of a model is promoted", and
    `models:/NAME@champion` stayed unresolvable."""
    from flows.promotion import decide_beyond_spread

    assert decide_beyond_spread([0.70], None, "maximize", 0.0) == (True, "no champion yet")
    assert decide_beyond_spread([0.70], 0.5, "maximize", 0.0)[0] is False  # a champion: one replicate is not enough


def test_beyond_the_spread_the_reason_keeps_a_narrow_interval_s_ends_apart():
    """Its reason quoted the interval with four digits: [20.7, 20.7] for replicates 20.7001, 20.7003, 20.7002."""
    from flows.promotion import decide_beyond_spread

    assert "[20.7000, 20.7004]" in decide_beyond_spread([20.7001, 20.7003, 20.7002], 20.0, "maximize", 0.0)[1]


def test_beyond_the_spread_a_replicate_that_is_not_a_number_is_not_called_the_best(mlflow_store, monkeypatch,
                                                                                     tmp_path):
    """max() over [nan, 0.58, 0.62] keeps the nan it starts with: the other replicates' reason said the diverged one
    was 'the best' that decides. The best is the best finite value; the hypothesis still is not promoted (a nan
    gives no interval)."""
    from mlflow.tracking import MlflowClient

    from flows import promotion
    from flows.mlflow_names import TAG_STEP_NAME

    client = MlflowClient(mlflow_store)
    raw = config({**FLOW, "after": "warm"}, promotion={"beyond_spread": True, "metric": "eval_adherence_both"},
                 tracking={"registered_model": "m"})
    raw["training"]["replicates"] = {"seeds": [0, 1, 2], "from_steps": ["flow"]}
    client.create_registered_model("m")
    steps, scores = ["old", "flow-seed0", "flow-seed1", "flow-seed2"], [0.50, math.nan, 0.58, 0.62]
    versions = [client.create_model_version("m", str(tmp_path), tags={TAG_STEP_NAME: s}).version for s in steps]
    client.set_registered_model_alias("m", "champion", versions[0])
    by_version = dict(zip(map(str, versions), scores))
    monkeypatch.setattr(promotion, "_evaluator", lambda config, client: (
        lambda version, step: {"eval_adherence_both": by_version[str(version)]}))

    decisions = {d.step: d for d in promotion.promote(load_config(raw).config, client, [str(v) for v in versions[1:]])}
    assert decisions["flow-seed0"].reason == f"a replicate of its hypothesis: version {versions[3]}, the best, decides"
    assert not any(d.promoted for d in decisions.values())


def test_beyond_the_spread_a_hypothesis_grown_by_new_seeds_is_decided_over_all_its_replicates(mlflow_store,
                                                                                              monkeypatch, tmp_path):
    """Seeds [0, 1], then a re-run with seeds [0, 1, 2] (to narrow a wide interval): the re-run registered seed0 and
    seed1 again (found, decided), left them out, and judged the hypothesis on seed2 alone ("one replicate: no interval
    can be given"), where fluxflow-compare shows all 3 beyond the spread. Now the hypothesis is decided over its 3
    replicates and its best (seed1, decided by the first run) takes the alias; a version is never promoted twice."""
    from mlflow.tracking import MlflowClient

    from flows import promotion
    from flows.mlflow_names import TAG_PROMOTION, TAG_STEP_NAME

    client = MlflowClient(mlflow_store)
    raw = config({**FLOW, "name": "a", "after": "warm"}, promotion={"beyond_spread": True,
                                                                   "metric": "eval_adherence_both"},
                 tracking={"registered_model": "m"})
    raw["training"]["replicates"] = {"seeds": [0, 1], "from_steps": ["a"]}
    client.create_registered_model("m")
    steps, scores = ["old", "a-seed0", "a-seed1", "a-seed2", "a-seed3"], [0.50, 0.60, 0.66, 0.64, 0.70]
    old, *a = [str(client.create_model_version("m", str(tmp_path), tags={TAG_STEP_NAME: s}).version) for s in steps]
    client.set_registered_model_alias("m", "champion", old)
    by_version = dict(zip([old, *a], scores))
    monkeypatch.setattr(promotion, "_evaluator", lambda config, client: (
        lambda version, step: {"eval_adherence_both": by_version[str(version)]}))

    def run(seeds: list[int]) -> dict[str, promotion.Decision]:
        raw["training"]["replicates"]["seeds"] = seeds
        decisions = promotion.promote(load_config(raw).config, client, a[:len(seeds)])
        for decision in decisions:
            promotion.tag_versions(client, decision)
        return {d.step: d for d in decisions}

    first = run([0, 1])  # [0.60, 0.66]: t(1) makes the interval too wide
    assert not first["a-seed1"].promoted and "interval over 2 replicates" in first["a-seed1"].reason
    second = run([0, 1, 2])
    assert list(second) == ["a-seed1", "a-seed2"]  # the best decides again; seed0, not the best, is left as it was
    assert second["a-seed1"].promoted, second["a-seed1"].reason
    assert "95 % interval over 3 replicates [0.5574, 0.7092]" in second["a-seed1"].reason
    assert second["a-seed2"].reason == f"a replicate of its hypothesis: version {a[1]}, the best, decides"
    assert str(client.get_model_version_by_alias("m", "champion").version) == a[1]
    assert client.get_model_version("m", a[0]).tags[TAG_PROMOTION + "decision"] == "not promoted"

    assert run([0, 1, 2]) == {}  # nothing new: nothing decided again
    fourth = run([0, 1, 2, 3])  # a better replicate of the champion's own hypothesis does not challenge it
    assert list(fourth) == ["a-seed3"] and not fourth["a-seed3"].promoted
    assert fourth["a-seed3"].reason == f"its hypothesis holds the champion already (version {a[1]})"
    assert str(client.get_model_version_by_alias("m", "champion").version) == a[1]
    assert client.get_model_version("m", a[1]).tags[TAG_PROMOTION + "decision"] == "promoted"


def test_promotion_beyond_the_spread_without_replicates_is_refused():
    """Accepted, it promoted the first version and then none ever again ("one replicate: no interval can be given"),
    whatever the scores, without a word at the start."""
    raw = config(FLOW, promotion={"beyond_spread": True})
    said = problems(raw)["promotion.beyond_spread"]
    assert "needs seed replicates (training.replicates with 2 or more seeds)" in said
    raw["training"]["replicates"] = {"seeds": [0]}
    assert "promotion.beyond_spread" in problems(raw)
    raw["training"]["replicates"] = {"seeds": [0, 1]}
    assert load_config(raw).config.promotion.beyond_spread
    raw["tracking"] = {"register_steps": ["flow-seed0"]}  # one replica registered: the same dead end
    assert "one registered run of a hypothesis (flow)" in problems(raw)["promotion.beyond_spread"]


def test_a_version_an_earlier_run_decided_is_not_decided_again(mlflow_store, monkeypatch, tmp_path):
    """A finished pipeline run again registers the same version (the registration finds it) and decided it again:
    the champion's "promoted (no champion yet)" became "not promoted (already the champion)"."""
    from mlflow.tracking import MlflowClient

    from flows import promotion
    from flows.mlflow_names import TAG_PROMOTION, TAG_STEP_NAME

    client = MlflowClient(mlflow_store)
    cfg = load_config(config({**FLOW, "after": "warm"}, tracking={"registered_model": "m"})).config
    client.create_registered_model("m")
    first = client.create_model_version("m", str(tmp_path), tags={TAG_STEP_NAME: "flow"}).version
    monkeypatch.setattr(promotion, "_evaluator", lambda config, client: (
        lambda version, step: {"eval_adherence_both": 0.5}))
    [decision] = promotion.promote(cfg, client, [str(first)])
    promotion.tag_versions(client, decision)
    assert decision.promoted and decision.reason == "no champion yet"
    assert promotion.promote(cfg, client, [str(first)]) == []  # the same run's version, registered again
    assert client.get_model_version("m", first).tags[TAG_PROMOTION + "reason"] == "no champion yet"


def test_the_champion_and_the_challenger_are_measured_at_the_size_the_step_trains(mlflow_store, monkeypatch, tmp_path):
    """Each version was evaluated at its own training size: a 16 px champion's score against a 32 px challenger's,
    on other images and another feature network."""
    from mlflow.tracking import MlflowClient

    from flows import promotion
    from fluxflow.evaluation import checkpoint_eval

    client = MlflowClient(mlflow_store)
    cfg = load_config(config({**FLOW, "after": "warm", "img_size": 32}, tracking={"registered_model": "m"})).config
    sizes = []
    monkeypatch.setattr(promotion, "model_checkpoint", lambda uri, tracking_uri, into: f"{uri}.pt")
    monkeypatch.setattr(checkpoint_eval, "evaluate_checkpoint", lambda checkpoint, config, dataset, **kw: (
        sizes.append((checkpoint, kw["size"])) or {"eval_adherence_both": 0.5}))
    metrics = promotion._evaluator(cfg, client)
    metrics("1", "flow"), metrics("2", "flow"), metrics("1", "flow")
    assert sizes == [("models:/m/1.pt", 32), ("models:/m/2.pt", 32)]  # once each, at the step's 32 px


def test_a_frechet_promotion_metric_on_a_hold_out_of_one_image_is_refused():
    """Accepted, the distance was never computed: every version scored nan, and none after the first could win."""
    raw = config(FLOW, promotion={"metric": "eval_fd_ours_cfg"})
    raw["training"]["pipeline"]["datasets"] = {"shapes": {"type": "shapes", "holdout": 1}}
    assert "needs 2 or more held-out images" in problems(raw)["training.pipeline.datasets.shapes.holdout"]
    raw["promotion"]["metric"] = "eval_adherence_both"  # adherence is scored per image
    assert load_config(raw).config


def test_the_diversity_ratio_cannot_rank_versions():
    """It was "maximize": a version whose seeds scattered more than the data's (an undertrained one) won."""
    from fluxflow.evaluation.direction import better_direction

    said = problems(config(FLOW, promotion={"metric": "eval_diversity_ratio"}))["promotion.metric"]
    assert said.startswith("eval_diversity_ratio is best near 1") and "cannot rank versions" in said
    assert better_direction("eval_diversity_ratio") is None  # fluxflow-compare calls neither side better


def test_a_step_registered_twice_is_refused_and_does_not_count_as_two_replicates():
    """`register_steps: [flow-seed0, flow-seed0]` passed beyond_spread's "needs seed replicates" (one step counted
    twice), after which every version was "not promoted | one replicate: no interval can be given"."""
    raw = config(FLOW, promotion={"beyond_spread": True}, tracking={"register_steps": ["flow-seed0", "flow-seed0"]})
    raw["training"]["replicates"] = {"seeds": [0, 1]}
    said = problems(raw)
    assert said["tracking.register_steps[1]"] == "'flow-seed0' is named twice (also register_steps[0])"
    assert "one registered run of a hypothesis (flow)" in said["promotion.beyond_spread"]
    raw["promotion"] = {}  # without beyond_spread the duplicate is refused as well
    assert list(problems(raw)) == ["tracking.register_steps[1]"]


def test_registering_a_replicated_step_by_its_written_name_names_its_replicas_once():
    """`register_steps: [flow]` with flow replicated said "no step is named 'flow'" without a word of its replicas,
    and added a beyond_spread problem about "one registered run of a hypothesis (flow)" built on that unknown name."""
    raw = config(FLOW, promotion={"beyond_spread": True}, tracking={"register_steps": ["flow"]})
    raw["training"]["replicates"] = {"seeds": [0, 1, 2], "from_steps": ["flow"]}
    assert problems(raw) == {"tracking.register_steps[0]": "'flow' is replicated (training.replicates): name its "
                                                           "replicas flow-seed0, flow-seed1, flow-seed2"}
    raw["tracking"]["register_steps"] = ["flwo"]  # a name that is no step at all: only that is said
    assert problems(raw) == {"tracking.register_steps[0]": "no step is named 'flwo'"}
