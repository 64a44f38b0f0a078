"""`--set KEY=VALUE` overrides (fluxflow/config/load.py): scalars, lists, steps by name, the file's validation
messages, and the step keys (a changed value retrains, an unchanged one reuses)."""
from __future__ import annotations

import pytest
from helpers_tiny import VAE_STEP, one_torch_thread, step_keys, tiny_raw  # noqa: F401

from flows import cli_train
from fluxflow.config import ConfigError, load_config

STEPS = [dict(VAE_STEP), {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff_full": True}]


def loaded(tmp_path, overrides, steps=STEPS):
    return load_config(tiny_raw(tmp_path, steps), overrides).config


def problems(tmp_path, overrides=(), steps=STEPS) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        loaded(tmp_path, overrides, steps)
    return [str(issue) for issue in raised.value.issues]


def test_a_scalar_override_sets_the_value_and_the_steps_inherit_it(tmp_path):
    config = loaded(tmp_path, ["training.seed=7", "training.lr=2e-4"])
    assert config.training.seed == 7
    assert [(s.seed, s.lr) for s in config.resolved_steps()] == [(7, 2e-4), (7, 2e-4)]  # 2e-4 is a number


def test_a_list_value_is_read_as_yaml(tmp_path):
    config = loaded(tmp_path, ["output.sample_captions=[a cat, 'a dog: sitting']", "output.sample_sizes=[16, 32]"])
    assert config.output.sample_captions == ["a cat", "a dog: sitting"]
    assert config.output.sample_sizes == [16, 32]


def test_a_field_of_the_built_in_dataset_is_set_on_it(tmp_path):
    """A file without datasets trains on the built-in `shapes`; setting its size made a new dataset of that one field
    ("training.pipeline.datasets.shapes.type: required")."""
    raw = {"training": {"pipeline": {"steps": [dict(VAE_STEP)]}}}
    config = load_config(raw, ["training.pipeline.datasets.shapes.size=64"]).config
    shapes = config.training.pipeline.datasets["shapes"]
    assert (shapes.type, shapes.size, config.training.pipeline.default_dataset) == ("shapes", 64, "shapes")


def test_a_step_is_addressed_by_its_name_and_only_that_step_changes(tmp_path):
    config = loaded(tmp_path, ["training.pipeline.steps.flow.lr=3e-4",
                               "training.pipeline.steps.flow.optimization={optimizers: {flow: {type: AdamW, "
                               "weight_decay: 0.05}}}"])
    warm, flow = config.resolved_steps()
    assert (warm.lr, flow.lr) == (1e-4, 3e-4)
    assert flow.optimization.optimizers["flow"].weight_decay == 0.05
    assert flow.optimization.optimizers["flow"].lr == 3e-4


def test_overrides_create_missing_sections_and_apply_in_order(tmp_path):
    config = loaded(tmp_path, ["training.pipeline.defaults.kl_beta=0.5", "training.pipeline.defaults.kl_beta=0.25"])
    assert [s.kl_beta for s in config.resolved_steps()] == [0.25, 0.25]


def test_an_unknown_key_gets_the_same_message_as_in_the_file_and_names_the_override(tmp_path):
    in_file = [dict(VAE_STEP), dict(STEPS[1], lrr=1e-3)]
    assert problems(tmp_path, steps=in_file) == ["training.pipeline.steps[1].lrr: unknown key (did you mean 'lr'?)"]
    assert problems(tmp_path, ["training.pipeline.steps.flow.lrr=1e-3"]) == [
        "training.pipeline.steps[1].lrr: unknown key (did you mean 'lr'?) (from --set "
        "training.pipeline.steps.flow.lrr)"]
    assert problems(tmp_path, ["training.seeed=1"]) == [
        "training.seeed: unknown key (did you mean 'seed'?) (from --set training.seeed)"]


def test_an_invalid_value_is_reported_like_the_file(tmp_path):
    assert problems(tmp_path, ["training.pipeline.steps.flow.lr=2"]) == [
        "training.pipeline.steps[1].lr: Input should be less than or equal to 1 (got 2) (from --set "
        "training.pipeline.steps.flow.lr)"]


def test_a_problem_an_override_or_parameter_made_names_it_as_the_caller_does(tmp_path):
    """Under "1 problem in configs/tiny_test.yaml:" an override's value was blamed on the file, and so was the flow's
    `device` parameter (as `training.device`), where its `output_dir` was already named as the flow's parameter. The
    flow's names are resolve_run_config's defaults; `fluxflow-train` passes its options'."""
    from fluxflow.config.run_config import resolve_run_config

    def refused(**given) -> str:
        with pytest.raises(ConfigError) as raised:
            resolve_run_config("configs/tiny_test.yaml", **given)
        return str(raised.value)

    assert refused(overrides=["training.nosuchfield=1"]) == (
        "1 problem in configs/tiny_test.yaml:\n  - training.nosuchfield: unknown key (from overrides "
        "training.nosuchfield)")
    assert refused(overrides=["training.nosuchfield=1"], overrides_name="--set").endswith(
        "(from --set training.nosuchfield)")
    assert refused(overrides=["training.pipeline.steps.nope.lr=1"]).endswith(
        "  - overrides training.pipeline.steps.nope.lr: no step named 'nope' (steps: vae_warmup, vae_gan)")
    assert refused(device="gpu") == (
        "1 problem in configs/tiny_test.yaml:\n  - device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')")
    assert refused(device="gpu", device_name="--device").endswith("  - --device: Input should be 'auto', 'cpu' or "
                                                                  "'cuda' (got 'gpu')")
    # Checked when the run starts, not by validation: the data folder an override names.
    folder = tmp_path / "images"
    folder.mkdir()
    (tmp_path / "captions.txt").write_text("a.png\ta red circle\n")
    moved = ["training.pipeline.datasets.shapes={type: folder, path: %s, captions_file: %s}"
             % (folder, tmp_path / "captions.txt"), f"training.pipeline.datasets.shapes.path={tmp_path / 'gone'}"]
    assert refused(overrides=moved).endswith(
        f"  - training.pipeline.datasets.shapes.path: image folder {tmp_path / 'gone'} does not exist (from "
        "overrides training.pipeline.datasets.shapes.path)")
    # A problem of the file's own is still the file's.
    assert refused(overrides=["training.seed=1"], device="gpu").endswith("  - device: Input should be 'auto', 'cpu' "
                                                                          "or 'cuda' (got 'gpu')")


def test_an_empty_output_dir_or_device_is_refused_not_taken_as_unset():
    """A deployment run with `output_dir=""` trained into the config's own output folder, where another run's steps
    are "already complete"; `fluxflow-train --output-dir ""` is refused the same way."""
    from fluxflow.config.run_config import resolve_run_config

    with pytest.raises(ConfigError) as raised:
        resolve_run_config("configs/tiny_test.yaml", output_dir="")
    assert str(raised.value) == ("1 problem in configs/tiny_test.yaml:\n  - output_dir: expected a value, got an "
                                 "empty one")
    with pytest.raises(ConfigError) as raised:
        resolve_run_config("configs/tiny_test.yaml", output_dir="", device="", output_dir_name="--output-dir")
    assert [str(issue) for issue in raised.value.issues] == ["--output-dir: expected a value, got an empty one",
                                                             "device: expected a value, got an empty one"]


def test_an_output_directory_mlflow_cannot_search_for_is_refused_before_the_run(tmp_path, monkeypatch):
    """The run's MLflow records are found by its absolute output directory, and MLflow's filters cannot quote a value
    holding both ' and ": every step's record was dropped after training and the run ended in a traceback. Known only
    where the run resolves (a relative path takes the working directory's quotes)."""
    from fluxflow.config.run_config import resolve_run_config

    both = tmp_path / "o'b\"c"
    with pytest.raises(ConfigError, match=r"  - --output-dir: cannot contain both ' and \" \(MLflow's search filters"):
        resolve_run_config("configs/tiny_test.yaml", output_dir=str(both / "run"), output_dir_name="--output-dir")
    both.mkdir()
    monkeypatch.chdir(both)
    raw = tiny_raw("run")
    with pytest.raises(ConfigError, match=r"  - output.output_path: cannot contain both ' and \""):
        resolve_run_config(raw)
    assert resolve_run_config(raw, output_dir=str(tmp_path / "o'b")).config.output.output_path == str(tmp_path / "o'b")


def test_a_problem_in_a_section_an_override_created_names_the_override(tmp_path):
    """An override that made a section whose content is then invalid was not named: the file was blamed for an
    optimizer group, a dataset without its type and replicates without seeds that only the command wrote."""
    assert problems(tmp_path, ["training.pipeline.steps.warm.optimization.optimizers.vaee.lr=0.5"]) == [
        "training.pipeline.steps[0].optimization.optimizers.vaee: no optimizer group is named 'vaee' (did you mean "
        "'vae'?); optimizer groups: vae, discriminator, flow, text_encoder (from --set "
        "training.pipeline.steps.warm.optimization.optimizers.vaee.lr)"]
    assert problems(tmp_path, ["training.pipeline.datasets.shapess.size=8",
                               "training.pipeline.default_dataset=shapes"]) == [
        "training.pipeline.datasets.shapess.type: required: one of 'shapes', 'folder', 'webdataset' (from --set "
        "training.pipeline.datasets.shapess.size)"]
    assert problems(tmp_path, ["training.replicates.from_steps=[flow]"]) == [
        "training.replicates.seeds: required (from --set training.replicates.from_steps)"]
    # A section the file has is still the file's: the override wrote only its own key.
    raw = tiny_raw(tmp_path, STEPS)
    raw["training"]["replicates"] = {"seeds": [0, 0]}
    with pytest.raises(ConfigError) as raised:
        load_config(raw, ["training.replicates.from_steps=[flow]"])
    assert [str(issue) for issue in raised.value.issues] == [
        "training.replicates.seeds: seeds must be distinct (the same seed twice trains the same replicate twice)"]


@pytest.mark.parametrize("override,message", [
    ("training.pipeline.steps.flw.lr=1", "--set training.pipeline.steps.flw.lr: no step named 'flw' (did you mean "
                                         "'flow'?) (steps: warm, flow)"),
    ("training.seed.x=1", "--set training.seed.x: training.seed is a number, not a section"),
    ("training.seed", "--set training.seed: expected KEY=VALUE with a dotted KEY, e.g. training.seed=1 or "
                      "training.pipeline.steps.flow.lr=3e-4"),
    ("training..seed=1", "--set training..seed=1: expected KEY=VALUE with a dotted KEY, e.g. training.seed=1 or "
                         "training.pipeline.steps.flow.lr=3e-4"),
    ("training.seed=[1", "--set training.seed: the value is broken YAML"),
    ("output.output_path={date}/x", "--set output.output_path: the value is broken YAML: expected '<document start>', "
                                    "but found '<scalar>' line 1, column 7: {date}/x ^; YAML reads a value that starts "
                                    'with { as a mapping: quote it, e.g. "{date}/run"'),
    # validation messages write a step's path with its index, and users copy it: was "unknown key (did you mean
    # 'steps'?)"
    ("training.pipeline.steps[1].lr=1e-3", "--set training.pipeline.steps[1].lr: a step is addressed by its name, "
                                           "not its index: training.pipeline.steps.flow.lr=..."),
])
def test_an_override_that_cannot_be_placed_names_itself(tmp_path, override, message):
    found = problems(tmp_path, [override])
    assert len(found) == 1 and found[0].startswith(message), found


def test_an_override_under_a_value_that_is_not_a_section_says_its_type_not_the_value(tmp_path):
    """The value was echoed ("tracking.tracking_uri is 'http://alice:s3cretPW@...', not a section"): it may be a
    secret, which from_overrides' own rule keeps out of every message."""
    uri = "http://alice:s3cretPW@127.0.0.1:5999"
    found = problems(tmp_path, [f"tracking.tracking_uri={uri}", "tracking.tracking_uri.x=1"])
    assert found == ["--set tracking.tracking_uri.x: tracking.tracking_uri is a string, not a section"]


def test_every_override_that_cannot_be_placed_is_named_not_only_the_first(tmp_path):
    found = problems(tmp_path, ["training.pipeline.steps.flw.lr=1", "training.seed", "training.seed=[1"])
    assert found[:2] == [
        "--set training.pipeline.steps.flw.lr: no step named 'flw' (did you mean 'flow'?) (steps: warm, flow)",
        "--set training.seed: expected KEY=VALUE with a dotted KEY, e.g. training.seed=1 or "
        "training.pipeline.steps.flow.lr=3e-4"]
    assert len(found) == 3 and found[2].startswith("--set training.seed: the value is broken YAML: ")


def test_a_changed_value_changes_the_step_keys_and_an_unchanged_one_keeps_them(tmp_path):
    plain = step_keys(loaded(tmp_path, []))
    assert step_keys(loaded(tmp_path, ["training.pipeline.steps.flow.lr=1e-4"])) == plain  # the value it had
    assert step_keys(loaded(tmp_path, ["training.seed=0"])) == plain
    flow_lr = step_keys(loaded(tmp_path, ["training.pipeline.steps.flow.lr=3e-4"]))
    assert flow_lr["warm"] == plain["warm"] and flow_lr["flow"] != plain["flow"]
    seeded = step_keys(loaded(tmp_path, ["training.seed=1"]))
    assert seeded["warm"] != plain["warm"] and seeded["flow"] != plain["flow"]


def test_a_changed_override_retrains_and_an_unchanged_one_reuses(tmp_path, one_torch_thread):  # noqa: F811
    from fluxflow.train.pipeline import run_pipeline

    def trained(overrides) -> bool:
        config = load_config(tiny_raw(tmp_path, [dict(VAE_STEP, max_steps=1)], no_samples=True,
                                      dataset_size=8), overrides).config
        [(_, result)] = run_pipeline(config)
        return result.trained

    assert trained(["training.seed=1"])
    assert not trained(["training.seed=1"])
    assert trained(["training.seed=2"])
    assert trained(["training.pipeline.steps.warm.kl_beta=0.5"])
    assert not trained(["training.pipeline.steps.warm.kl_beta=0.5", "training.seed=0"])


def test_the_cli_validates_with_the_overrides_and_refuses_a_bad_one(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    import yaml

    path.write_text(yaml.safe_dump(tiny_raw(tmp_path / "out", STEPS)))
    assert cli_train.main(["--config", str(path), "--validate-pipeline", "--quiet",
                           "--set", "training.pipeline.steps.flow.n_epochs=3"]) == 0
    assert cli_train.main(["--config", str(path), "--validate-pipeline", "--quiet",
                           "--set", "training.pipeline.steps.flow.n_epohcs=3"]) == 2
    err = capsys.readouterr().err
    assert "training.pipeline.steps[1].n_epohcs: unknown key (did you mean 'n_epochs'?) (from --set " \
           "training.pipeline.steps.flow.n_epohcs)" in err
    assert "Traceback" not in err


def test_a_mapping_value_adds_a_section_such_as_seed_replicates(tmp_path):
    config = loaded(tmp_path, ["training.replicates={seeds: [0, 1], from_steps: [flow]}"])
    assert [(s.name, s.seed, s.hypothesis) for s in config.resolved_steps()] == [
        ("warm", 0, "warm"), ("flow-seed0", 0, "flow"), ("flow-seed1", 1, "flow")]


def test_the_help_examples_of_set_change_the_quickstart_with_no_warning():
    """`--help` showed `--set training.pipeline.steps.flow.lr=3e-4`, which on configs/quickstart.yaml only warned that
    it has no effect (each of its optimizers sets its own lr)."""
    import re
    from pathlib import Path

    text = next(a.help for a in cli_train.build_parser()._actions if a.dest == "overrides")
    examples = re.findall(r"--set (\S+=\S+)", text)
    assert len(examples) == 2, text
    loaded = load_config(Path(__file__).parents[2] / "configs" / "quickstart.yaml", examples)
    assert loaded.warnings == []
    assert loaded.config.step("flow").n_epochs == 20 and loaded.config.training.seed == 1


@pytest.mark.parametrize("value", ["&a [*a]", "&a {x: *a}", "&a {<<: *a}", "[&a [1, [*a]]]"])
def test_a_value_whose_alias_refers_to_itself_names_the_override(tmp_path, value):
    """Was a RecursionError traceback (`--set "training.seed=&a [*a]"`)."""
    found = problems(tmp_path, [f"training.seed={value}"])
    assert len(found) == 1 and found[0].startswith(
        "--set training.seed: the value is broken YAML: the alias *a refers to itself"), found


def test_a_step_and_a_dataset_with_a_numeric_name_are_addressed_by_it(tmp_path):
    raw = tiny_raw(tmp_path, [dict(VAE_STEP, name="1"), dict(STEPS[1], name="2")])
    raw["training"]["pipeline"]["datasets"] = {"2024": dict(raw["training"]["pipeline"]["datasets"]["shapes"])}
    raw["training"]["pipeline"]["default_dataset"] = "2024"
    config = load_config(raw, ["training.pipeline.steps.1.lr=3e-4", "training.pipeline.datasets.2024.size=8"]).config
    assert [(s.name, s.lr) for s in config.resolved_steps()] == [("1", 3e-4), ("2", 1e-4)]
    assert config.training.pipeline.datasets["2024"].size == 8


def test_a_dataset_with_a_numeric_name_can_be_added_by_an_override(tmp_path):
    """It was refused as "an item of a list cannot be set; set the whole list, e.g. training.pipeline.datasets=[...":
    the name read as a list index in a mapping of names."""
    config = loaded(tmp_path, ["training.pipeline.datasets.2024={type: shapes, size: 16, holdout: 4}",
                               "training.pipeline.datasets.2025.type=shapes", "training.pipeline.datasets.2025.size=20",
                               "training.pipeline.steps.flow.dataset='2024'"])
    assert (config.training.pipeline.datasets["2024"].size, config.training.pipeline.datasets["2025"].type) == (
        16, "shapes")
    assert config.resolved_steps()[1].dataset == "2024"


def test_a_numeric_name_the_file_left_unquoted_gets_the_files_message_not_a_list_one(tmp_path):
    """YAML reads `2024:` and `name: 1` as numbers. The override said "an item of a list cannot be set" for the
    dataset and "no step named '1' (steps: none)" for the step, hiding the file's problem: quote the name."""
    raw = tiny_raw(tmp_path, [dict(VAE_STEP, name=1)])
    raw["training"]["pipeline"]["datasets"] = {2024: dict(raw["training"]["pipeline"]["datasets"]["shapes"])}
    raw["training"]["pipeline"]["default_dataset"] = "2024"
    with pytest.raises(ConfigError) as raised:
        load_config(raw, ["training.pipeline.steps.1.lr=3e-4", "training.pipeline.datasets.2024.size=8"])
    assert [str(issue) for issue in raised.value.issues] == [
        "training.pipeline.datasets.2024: Keys should be strings (got 2024); YAML reads an unquoted number as a "
        "number: quote the value",
        "training.pipeline.steps[0].name: Input should be a valid string (got 1); YAML reads an unquoted number as a "
        "number: quote the value"]
