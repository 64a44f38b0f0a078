"""Invalid configs: every rule names the path of the field at fault, and all problems come out together."""
import textwrap
from pathlib import Path

import pytest
import yaml

from fluxflow.config import ConfigError, load_config
from fluxflow.config.file_checks import LPIPS_BACKBONE_FILE


def problems(tmp_path: Path, text: str) -> dict[str, str]:
    """{path: message} of the ConfigError raised for this YAML (fails the test if it loads)."""
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return {issue.path: issue.message for issue in caught.value.issues}


def cfg(*steps: dict, pipeline: dict | None = None, training: dict | None = None, **sections) -> str:
    """A config YAML with these steps, extra keys for training.pipeline and training, and other sections."""
    body = {**sections, "training": {**(training or {}), "pipeline": {"steps": list(steps), **(pipeline or {})}}}
    return yaml.safe_dump(body, sort_keys=False)


def vae(**fields) -> dict:
    """A valid VAE step named 'a', with fields added or replaced (None removes one)."""
    step = {"name": "a", "n_epochs": 1, "train_vae": True, **fields}
    return {k: v for k, v in step.items() if v is not None}


def opt(group: str = "vae", **params) -> dict:
    return {"optimizers": {group: params}}


def sched(**params) -> dict:
    return {"schedulers": {"vae": params}}


def threshold(**fields) -> dict:
    return {"mode": "loss_threshold", "metric": "vae_loss", "threshold": 0.1, **fields}


S = "training.pipeline.steps"
ONLY = {"train_vae": None}  # a step with no mode of its own

FLOW = {"name": "a", "n_epochs": 1, "train_diff": True}  # a step whose checkpoint is registered
FOUR_PROCESSES_ON_RAY = {"executor": {"kind": "ray"}, "distributed": {"nodes": 2, "nproc_per_node": 2}}
CASES = {
    "name required": (cfg(vae(name=None)), f"{S}[0].name", "required"),
    "n_epochs required": (cfg(vae(n_epochs=None)), f"{S}[0].n_epochs", "required"),
    "n_epochs positive": (cfg(vae(n_epochs=0)), f"{S}[0].n_epochs", "greater than or equal to 1"),
    "duplicate names": (cfg(vae(), vae()), f"{S}[1].name", "duplicate step name 'a'"),
    "path separator in name": (cfg(vae(name="x/y")), f"{S}[0].name", "file names"),
    "no training mode": (cfg(vae(**ONLY, freeze=["text_encoder"])), f"{S}[0]", "no training mode"),
    "spade alone": (cfg(vae(**ONLY, train_spade=True)), f"{S}[0].train_spade", "needs train_vae or gan_training"),
    "lpips without reconstruction": (cfg(vae(**ONLY, gan_training=True, use_lpips=True)), f"{S}[0].use_lpips",
                                     "needs train_vae"),
    "freeze everything a step trains": (cfg(vae(freeze=["flow_processor", "expander", "compressor"])),
                                        f"{S}[0].freeze", "nothing is left to train"),
    "image statistics without reconstruction": (cfg(vae(**ONLY, train_diff=True, train_histogram=True)),
                                                f"{S}[0].train_histogram", "needs train_vae"),
    "unfreeze without gradient": (cfg(vae(unfreeze=["discriminator"])), f"{S}[0].unfreeze[0]", "gets no gradient"),
    "unknown component": (cfg(vae(freeze=["text_encodr"])), f"{S}[0].freeze[0]", "did you mean 'text_encoder'?"),
    "unknown optimizer type": (cfg(vae(optimization=opt(type="Adamw"))), f"{S}[0].optimization.optimizers.vae.type",
                               "'AdamW', 'Adam', 'SGD', 'RMSprop', 'Adagrad' or 'Adadelta'"),
    "optimizer lr range": (cfg(vae(optimization=opt(lr=-1))), f"{S}[0].optimization.optimizers.vae.lr",
                           "greater than 0"),
    "optimizer betas range": (cfg(vae(optimization=opt(betas=[0.9, 1.5]))),
                              f"{S}[0].optimization.optimizers.vae.betas[1]", "less than 1"),
    "parameter of another optimizer": (cfg(vae(optimization=opt(type="AdamW", momentum=0.9))),
                                       f"{S}[0].optimization.optimizers.vae.momentum", "not a parameter of AdamW"),
    "nesterov without momentum": (cfg(vae(optimization=opt(type="SGD", nesterov=True))),
                                  f"{S}[0].optimization.optimizers.vae.nesterov", "needs momentum > 0"),
    "unknown optimizer group": (cfg(vae(optimization=opt("vea", lr=0.1))), f"{S}[0].optimization.optimizers.vea",
                                "no optimizer group is named 'vea' (did you mean 'vae'?)"),
    "optimizer for an untrained group": (cfg(vae(optimization=opt("flow", lr=0.1))),
                                         f"{S}[0].optimization.optimizers.flow", "does not train flow_processor"),
    "unknown scheduler type": (cfg(vae(optimization=sched(type="OneCycleLR"))),
                               f"{S}[0].optimization.schedulers.vae.type", "CosineAnnealingLR"),
    "StepLR without step_size": (cfg(vae(optimization=sched(type="StepLR"))),
                                 f"{S}[0].optimization.schedulers.vae.step_size", "required for StepLR"),
    "scheduler gamma range": (cfg(vae(optimization=sched(type="ExponentialLR", gamma=2))),
                              f"{S}[0].optimization.schedulers.vae.gamma", "less than or equal to 1"),
    "parameter of another scheduler": (cfg(vae(optimization=sched(type="StepLR", step_size=2, eta_min_factor=0.1))),
                                       f"{S}[0].optimization.schedulers.vae.eta_min_factor", "not a parameter"),
    "plateau factor below one": (cfg(vae(optimization=sched(type="ReduceLROnPlateau", factor=1.0))),
                                 f"{S}[0].optimization.schedulers.vae.factor", "must be < 1"),
    "MultiStepLR without milestones": (cfg(vae(optimization=sched(type="MultiStepLR"))),
                                      f"{S}[0].optimization.schedulers.vae.milestones", "required for MultiStepLR"),
    "milestones positive": (cfg(vae(optimization=sched(type="MultiStepLR", milestones=[0, 5]))),
                            f"{S}[0].optimization.schedulers.vae.milestones[0]", "greater than or equal to 1"),
    "plateau per optimizer step": (cfg(vae(optimization=sched(type="ReduceLROnPlateau", interval="step"),
                                           transition_on=threshold())),
                                   f"{S}[0].optimization.schedulers.vae.interval", "use interval: epoch"),
    "scheduler interval values": (cfg(vae(optimization=sched(interval="batch"))),
                                  f"{S}[0].optimization.schedulers.vae.interval", "'step' or 'epoch'"),
    "warmup_steps not negative": (cfg(vae(optimization=sched(warmup_steps=-1))),
                                  f"{S}[0].optimization.schedulers.vae.warmup_steps", "greater than or equal to 0"),
    "parameter of another optimizer (Adagrad)": (cfg(vae(optimization=opt(type="Adagrad", betas=[0.9, 0.99]))),
                                                 f"{S}[0].optimization.optimizers.vae.betas",
                                                 "not a parameter of Adagrad"),
    "grad_clip not negative": (cfg(vae(grad_clip=-1.0)), f"{S}[0].grad_clip", "greater than or equal to 0"),
    "accumulation at least one": (cfg(vae(gradient_accumulation_steps=0)), f"{S}[0].gradient_accumulation_steps",
                                  "greater than or equal to 1"),
    "plateau without a metric": (cfg(vae(optimization=sched(type="ReduceLROnPlateau"))),
                                 f"{S}[0].optimization.schedulers.vae.type", "needs mode: loss_threshold"),
    "unknown transition mode": (cfg(vae(transition_on={"mode": "plateau"})), f"{S}[0].transition_on.mode",
                                "'epoch' or 'loss_threshold'"),
    "threshold metric required": (cfg(vae(transition_on=threshold(metric=None))), f"{S}[0].transition_on.metric",
                                  "required for mode: loss_threshold"),
    "threshold value required": (cfg(vae(transition_on=threshold(threshold=None))),
                                 f"{S}[0].transition_on.threshold", "required for mode: loss_threshold"),
    "metric the step does not produce": (cfg(vae(transition_on=threshold(metric="flow_loss"))),
                                         f"{S}[0].transition_on.metric", "not produced by this step"),
    "vae_loss in GAN-only mode": (cfg(vae(**ONLY, gan_training=True, transition_on=threshold())),
                                  f"{S}[0].transition_on.metric", "always 0 in GAN-only mode"),
    "unknown metric": (cfg(vae(transition_on=threshold(metric="vae_los"))), f"{S}[0].transition_on.metric",
                       "did you mean 'vae_loss'?"),
    "max_epochs at least one": (cfg(vae(transition_on=threshold(max_epochs=0))), f"{S}[0].transition_on.max_epochs",
                                "greater than or equal to 1"),
    "threshold in epoch mode": (cfg(vae(transition_on={"threshold": 0.1})), f"{S}[0].transition_on.threshold",
                                "only used with mode: loss_threshold"),
    "window in epoch mode": (cfg(vae(transition_on={"window": 5})), f"{S}[0].transition_on.window",
                             "only used with mode: loss_threshold"),  # was accepted, ignored, and retrained it
    "on_missed values": (cfg(vae(on_missed="stop")), f"{S}[0].on_missed", "'continue' or 'fail'"),
    "max_steps positive": (cfg(vae(max_steps=0)), f"{S}[0].max_steps", "greater than or equal to 1"),
    "unknown dataset": (cfg(vae(dataset="shape")), f"{S}[0].dataset", "did you mean 'shapes'?"),
    "unknown default dataset": (cfg(vae(), pipeline={"datasets": {"s": {"type": "shapes"}}, "default_dataset": "t"}),
                                "training.pipeline.default_dataset", "no dataset is named 't'"),
    "folder dataset needs a path": (cfg(vae(), pipeline={"datasets": {"f": {"type": "folder", "captions_file": "c"}}}),
                                    "training.pipeline.datasets.f.path", "required for a folder dataset"),
    "field of another dataset type": (cfg(vae(), pipeline={"datasets": {"f": {"type": "shapes", "urls": "x.tar"}}}),
                                      "training.pipeline.datasets.f.urls", "not a field of a shapes dataset"),
    "unknown parent": (cfg(vae(), vae(name="b", after="aa")), f"{S}[1].after",
                       "no step is named 'aa' (did you mean 'a'?)"),
    "parent is itself": (cfg(vae(after="a")), f"{S}[0].after", "cannot start from itself"),
    "after cycle": (cfg(vae(after="b"), vae(name="b", after="a")), f"{S}[0].after", "cycle (a -> b -> a"),
    "cycle through file order": (cfg(vae(after="c"), vae(name="b"), vae(name="c")), f"{S}[0].after", "cycle"),
    "unknown step key": (cfg(vae(**ONLY, trian_vae=True)), f"{S}[0].trian_vae", "did you mean 'train_vae'?"),
    "unknown section key": (cfg(vae(), modle={"vae_dim": 8}), "modle", "did you mean 'model'?"),
    "another tool's name for a key": (cfg(vae(learning_rate=0.1)), f"{S}[0].learning_rate",
                                      "did you mean 'lr'?"),
    "unknown nested key": (cfg(vae(transition_on={"mod": "epoch"})), f"{S}[0].transition_on.mod",
                           "did you mean 'mode'?"),
    "unknown dataset key": (cfg(vae(), pipeline={"datasets": {"s": {"type": "shapes", "szie": 3}}}),
                            "training.pipeline.datasets.s.szie", "did you mean 'size'?"),
    "yes as a name": ("training:\n  pipeline:\n    steps: [{name: yes, n_epochs: 1, train_vae: true}]\n",
                      f"{S}[0].name", "quote the value"),
    "a number as a name": ("training:\n  pipeline:\n    steps: [{name: 2024, n_epochs: 1, train_vae: true}]\n",
                           f"{S}[0].name", "YAML reads an unquoted number as a number: quote the value"),
    "image size vs downscale and patch": (cfg(vae(), data={"img_size": 36}), "data.img_size", "multiple of 8"),
    "sample size vs downscale and patch": (cfg(vae(), output={"sample_sizes": [32, 20]}), "output.sample_sizes[1]",
                                           "multiple of 8"),
    "flow width vs heads": (cfg(vae(), model={"feature_maps_dim": 130, "flow_heads": 4}), "model.feature_maps_dim",
                            "divisible by 4 and by model.flow_heads"),
    "downscale values": (cfg(vae(), model={"downscale": 3}), "model.downscale", "2, 4 or 8"),
    "channels values": (cfg(vae(), data={"channels": 2}), "data.channels", "1, 3 or 4"),
    "device values": (cfg(vae(), training={"device": "gpu"}), "training.device", "'auto', 'cpu' or 'cuda'"),
    "nproc at least one": (cfg(vae(), training={"distributed": {"nproc_per_node": 0}}),
                           "training.distributed.nproc_per_node", "greater than or equal to 1"),
    "nodes at least one": (cfg(vae(), training={"distributed": {"nodes": 0}}), "training.distributed.nodes",
                           "greater than or equal to 1"),
    "batch split over the processes": (cfg(vae(batch_size=6), training=FOUR_PROCESSES_ON_RAY),
                                       f"{S}[0].batch_size", "not divisible by the step's 4 processes"),
    "missing starting checkpoint": (cfg(vae(), model_checkpoint="nowhere/start.pt"), "model_checkpoint",
                                    "file not found"),
    "starting checkpoint is a folder": (cfg(vae(), model_checkpoint="/"), "model_checkpoint",  # was "file not found"
                                        "/ is a folder, not a regular file"),
    "step-only key in defaults": (cfg(vae(), pipeline={"defaults": {"after": "a"}}), "training.pipeline.defaults.after",
                                  "is set per step"),
    # MLflow's own rules for names (mlflow/utils/validation.py), which it applies only once the run reaches it.
    "empty experiment name": (cfg(vae(), tracking={"experiment_name": ""}), "tracking.experiment_name",
                              "must not be empty"),
    "slash in registered model": (cfg(vae(), tracking={"registered_model": "bad name/with slash"}),
                                  "tracking.registered_model", "cannot contain '/' or ':'"),
    "colon in registered model": (cfg(vae(), tracking={"registered_model": "a:b"}), "tracking.registered_model",
                                  "cannot contain '/' or ':'"),
    "blank registered model": (cfg(vae(), tracking={"registered_model": " "}), "tracking.registered_model",
                               "must not be blank"),
    # MLflow takes these, and then its models:/ URIs and search filters fail on them, after training.
    "at sign in registered model": (cfg(vae(), tracking={"registered_model": "a@b"}), "tracking.registered_model",
                                    "cannot contain '@' (a models:/ URI"),
    "query and fragment in registered model": (cfg(vae(), tracking={"registered_model": "a?b#c"}),
                                               "tracking.registered_model", "cannot contain '?' or '#'"),
    "both quotes in registered model": (cfg(vae(), tracking={"registered_model": "q'b\"c"}),
                                        "tracking.registered_model", "cannot contain both ' and \""),
    "at sign in the experiment as the model": (cfg(FLOW, tracking={"experiment_name": "team@exp"}),
                                               "tracking.experiment_name", "is also the registered model's name"),
    "experiment name as the registered model": (cfg(FLOW, tracking={"experiment_name": "team/exp"}),
                                                "tracking.experiment_name", "is also the registered model's name"),
    "no steps": (cfg(), "training.pipeline.steps", "at least one step"),
    # An explicit null where the default is a value: one problem, not a crash resolving the steps that inherit it.
    "null batch size": (cfg(vae(), training={"batch_size": None}), "training.batch_size", "valid integer"),
    "null seed": (cfg(vae(), training={"seed": None}), "training.seed", "valid integer"),
    "mapping in a freeze list": (cfg(vae(freeze=[{"a": 1}])), f"{S}[0].freeze[0]", "valid string"),
    # numpy's SeedSequence refuses a negative seed: every step would fail at its start, after the run began.
    "negative seed": (cfg(vae(), training={"seed": -1}), "training.seed", "greater than or equal to 0"),
    "negative dataset seed": (cfg(vae(dataset="s"), pipeline={"datasets": {"s": {"type": "shapes", "seed": -3}}}),
                              "training.pipeline.datasets.s.seed", "greater than or equal to 0"),
    "no pipeline": ("training: {batch_size: 2}\n", "training.pipeline", "declare the steps under training.pipeline"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_invalid_config_names_the_field(tmp_path, case):
    text, path, fragment = CASES[case]
    found = problems(tmp_path, text)
    assert path in found, f"{path} not among {found}"
    assert fragment in found[path]


def test_all_problems_are_reported_together_in_file_order(tmp_path):
    text = """
        model: {vae_dimm: 8}
        training:
          batch_size: 0
          pipeline:
            steps:
              - {name: a, n_epochs: 1, train_vae: true, freeze: [compressor, expander]}
              - {name: b, n_epochs: x, train_vae: true}
              - {name: c, n_epochs: 1, train_diff: true,
                 transition_on: {mode: loss_threshold, metric: vae_loss, threshold: 1}}
    """
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    paths = [issue.path for issue in caught.value.issues]
    assert paths == ["model.vae_dimm", "training.batch_size", f"{S}[0].freeze", f"{S}[1].n_epochs",
                     f"{S}[2].transition_on.metric"]
    text = str(caught.value)
    assert text.startswith(f"5 problems in {path}:") and all(p in text for p in paths)


def test_a_broken_step_does_not_hide_the_problems_of_the_others(tmp_path):
    found = problems(tmp_path, cfg(vae(n_epochs="one"), vae(name="b", freeze=["expandr"])))
    assert set(found) == {f"{S}[0].n_epochs", f"{S}[1].freeze[0]"}


def test_problems_inherited_from_defaults_say_so(tmp_path):
    found = problems(tmp_path, """
        training:
          pipeline:
            defaults: {freeze: [compresor]}
            steps: [{name: a, n_epochs: 1, train_vae: true}]
    """)
    assert "inherited from training.pipeline.defaults" in found[f"{S}[0].freeze[0]"]


@pytest.mark.parametrize(("text", "path", "message"), [
    ("training:\n", "training", "is empty: declare the steps under training.pipeline.steps (see "
                                 "configs/quickstart.yaml)"),
    ("model:\ntraining: {pipeline: {steps: [{name: a, n_epochs: 1, train_vae: true}]}}\n", "model",
     "must be a section of keys (got None); an empty section: leave the key out, or give it keys"),
    ("training: {pipeline: {steps: [flow]}}\n", f"{S}[0]", "must be a section of keys (got 'flow')"),
    ("training: {pipeline: {steps: {vae: {n_epochs: 1, train_vae: true}}}}\n", S,
     "must be a list of steps, each starting with `- name: ...`, not a mapping by name"),
])
def test_a_section_of_the_wrong_kind_is_said_without_class_names(tmp_path, text, path, message):
    """Was pydantic's "Input should be a valid dictionary or instance of TrainingConfig" (StepConfig, ModelConfig),
    and steps written as a mapping by name only "Input should be a valid list"."""
    assert problems(tmp_path, text) == {path: message}


def test_a_top_level_x_key_holds_an_anchored_block_and_is_not_read(tmp_path):
    """A block kept only for its anchor had nowhere to go: every top-level key is a section ("base: unknown key")."""
    text = """
        x-vae: &vae {n_epochs: 1, train_vae: true}
        training:
          pipeline:
            steps: [{<<: *vae, name: a}, {<<: *vae, name: b, kl_beta: 0.5}]
    """
    path = tmp_path / "anchors.yaml"
    path.write_text(textwrap.dedent(text))
    a, b = load_config(path).config.resolved_steps()
    assert (a.name, a.train_vae, b.name, b.kl_beta) == ("a", True, "b", 0.5)
    assert problems(tmp_path, text.replace("x-vae", "base")) == {
        "base": "unknown key (a block kept only to be repeated by an anchor goes under a key starting with x-: "
                "x-base: &b {...})"}


def test_a_transition_metric_inherited_from_defaults_says_so(tmp_path):
    """The step was blamed for a metric it does not set (freeze and train_spade messages said where it came from)."""
    found = problems(tmp_path, """
        training:
          pipeline:
            defaults: {transition_on: {mode: loss_threshold, metric: flow_loss, threshold: 0.1}}
            steps: [{name: a, n_epochs: 1, train_vae: true}]
    """)
    assert found == {f"{S}[0].transition_on.metric": "'flow_loss' is not produced by this step; it can watch: "
                                                     "vae_loss, kl_loss (inherited from training.pipeline.defaults)"}


def test_pipeline_given_as_a_list_says_steps_is_missing(tmp_path):
    found = problems(tmp_path, """
        training:
          pipeline:
            - name: step1
              n_epochs: 1
              train_vae: true
    """)
    assert list(found) == ["training.pipeline"]
    assert "is a list" in found["training.pipeline"] and "'steps:'" in found["training.pipeline"]


def test_an_experiment_name_mlflow_refuses_as_a_model_name_is_fine_with_its_own_model_or_nothing_registered(
        tmp_path):
    for tracking in ({"experiment_name": "team/exp", "registered_model": "m"},
                     {"experiment_name": "team/exp", "register_steps": []}):
        path = tmp_path / "config.yaml"
        path.write_text(cfg(FLOW, tracking=tracking))
        assert load_config(path).config.tracking.experiment_name == "team/exp"


def test_missing_file_broken_yaml_duplicate_keys_and_empty_file_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    cases = {"broken.yaml": "training: [unclosed\n", "dup.yaml": "training: {}\ntraining: {}\n", "empty.yaml": "",
             "list.yaml": "- a\n- b\n"}
    expected = {"broken.yaml": "broken YAML", "dup.yaml": "duplicate key 'training'", "empty.yaml": "is empty",
                "list.yaml": "must be a mapping"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=expected[name]):
            load_config(tmp_path / name)


def test_a_step_reused_through_a_yaml_merge_key_is_read_with_its_own_keys_on_top(tmp_path):
    """`<<: *anchor`, YAML's way to repeat a block, was refused as broken YAML (no constructor for the merge tag)."""
    path = tmp_path / "merged.yaml"
    path.write_text("training:\n  pipeline:\n    steps:\n"
                    "      - &warm {name: warm, n_epochs: 1, train_vae: true}\n"
                    "      - <<: *warm\n        name: gan\n        gan_training: true\n"
                    "      - <<: *warm\n        name: gan\n        name: again\n")
    with pytest.raises(ConfigError, match="duplicate key 'name'"):  # written twice beside the merge: still an error
        load_config(path)
    path.write_text(path.read_text().replace("        name: gan\n        name: again\n", "        name: again\n"))
    steps = load_config(path).config.resolved_steps()
    assert [(s.name, s.train_vae, s.gan_training, s.n_epochs) for s in steps] == [
        ("warm", True, False, 1), ("gan", True, True, 1), ("again", True, False, 1)]


def test_an_override_of_a_step_made_from_a_shared_block_changes_that_step_only(tmp_path):
    path = tmp_path / "shared.yaml"
    path.write_text("training:\n  pipeline:\n    steps:\n"
                    "      - &warm {name: warm, n_epochs: 1, train_vae: true, optimization: &opt {optimizers: "
                    "{vae: {type: AdamW, lr: 1.0e-3}}}}\n"
                    "      - <<: *warm\n        name: gan\n        gan_training: true\n"
                    "      - {name: again, after: warm, n_epochs: 1, train_vae: true, optimization: *opt}\n")
    overrides = ["training.pipeline.steps.warm.optimization.optimizers.vae.lr=5e-2"]
    lrs = [s.optimization.optimizers["vae"].lr for s in load_config(path, overrides).config.resolved_steps()]
    assert lrs == [5e-2, 1e-3, 1e-3]  # was 5e-2 for all three: the alias and the merge key shared warm's mapping


def test_lpips_without_its_backbone_file_names_the_file_and_where_it_must_be(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    config = cfg(vae(use_lpips=True), vae(name="b", use_lpips=True))
    found = problems(tmp_path, config)
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / LPIPS_BACKBONE_FILE
    assert LPIPS_BACKBONE_FILE in found[f"{S}[0].use_lpips"] and str(expected) in found[f"{S}[0].use_lpips"]
    assert "use_lpips: false" in found[f"{S}[0].use_lpips"]
    assert f"{S}[0].use_lpips" in found[f"{S}[1].use_lpips"]  # the long explanation once

    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"placeholder")
    (tmp_path / "ok.yaml").write_text(config)
    assert load_config(tmp_path / "ok.yaml").config.resolved_steps()[0].use_lpips


def test_dataset_and_step_problems_are_found_even_when_another_section_is_broken(tmp_path):
    found = problems(tmp_path, """
        output: {log_interval: 0}
        training:
          batch_size: many
          pipeline:
            datasets:
              a: {type: shapes}
              b: {type: folder, path: imgs}
            steps:
              - {name: s1, n_epochs: 1, train_vae: true}
              - {name: s2, n_epochs: 1, train_vae: true, dataset: c}
    """)
    assert set(found) == {"output.log_interval", "training.batch_size", "training.pipeline.datasets.b.captions_file",
                          f"{S}[0].dataset", f"{S}[1].dataset"}
    assert "several entries and no default_dataset" in found[f"{S}[0].dataset"]


def test_an_object_store_output_path_is_accepted_and_a_bad_uri_is_refused_by_name(tmp_path):
    (tmp_path / "s3.yaml").write_text(cfg(vae(), output={"output_path": "s3://bucket/run"}))
    assert load_config(tmp_path / "s3.yaml").config.output.output_path == "s3://bucket/run"
    for uri, why in [("nosuch://bucket/run", "unknown storage protocol nosuch://"),
                     ("s3:///run", "names no bucket"), ("s3://", "names no bucket"),
                     ("memory://x/run", "not storage other processes")]:
        assert why in problems(tmp_path, cfg(vae(), output={"output_path": uri}))["output.output_path"]
    found = problems(tmp_path, cfg(vae(), output={"output_path": "s3://b/run", "cache_dir": "s3://b/cache"}))
    assert "must be a local or mounted directory" in found["output.cache_dir"]


@pytest.mark.parametrize("absent, named", [("ray", "needs Ray: not installed"),
                                            ("prefect_ray", "needs prefect-ray: not installed")])
@pytest.mark.parametrize("distributed", [{}, {"nodes": 2}])
def test_the_ray_executor_without_ray_installed_names_the_field(tmp_path, monkeypatch, absent, named, distributed):
    """At validation (exit 2, `--validate-pipeline` too), one or several nodes: found at the run's start instead, it
    was a ModuleNotFoundError traceback, exit 1."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == absent else find_spec(name, *a))
    ray = {"distributed": distributed, "executor": {"kind": "ray"}}
    found = problems(tmp_path, cfg(vae(), training=ray))
    assert set(found) == {"training.executor.kind"}
    assert named in found["training.executor.kind"] and "fluxflow-pipelines[cluster]" in found["training.executor.kind"]
    monkeypatch.undo()
    load_config(yaml.safe_load(cfg(vae(), training=ray)))  # with both: valid


def test_a_multi_node_config_needs_the_ray_executor(tmp_path):
    found = problems(tmp_path, cfg(vae(), training={"distributed": {"nodes": 2}}))
    assert "needs training.executor.kind: ray" in found["training.distributed.nodes"]


def test_held_out_compositions_the_data_cannot_make_are_config_problems(tmp_path):
    """A count beyond 32 of the 40 pairs, a pair of unknown words, a `re:` pattern that is no regular expression:
    refused at validation (exit 2, the field named), not at the step's start (a ValueError or re.error, retried, a
    traceback, exit 1)."""
    shapes = {"type": "shapes", "holdout_pairs": 33}
    folder = {"type": "folder", "path": "x", "captions_file": "y", "holdout_captions": ["*blue*", "re:(unclosed"]}
    found = problems(tmp_path, cfg(vae(), pipeline={"datasets": {"s": shapes, "f": folder}, "default_dataset": "s"}))
    assert "0 to 32" in found["training.pipeline.datasets.s.holdout_pairs"]
    assert found["training.pipeline.datasets.f.holdout_captions"].startswith(  # was "Value error, 're:(unclosed' ..."
        "'re:(unclosed' is not a regular expression (missing ), unterminated subpattern")
    shapes["holdout_pairs"] = ["blue triangle", "purple unicorn"]
    found = problems(tmp_path, cfg(vae(), pipeline={"datasets": {"s": shapes}}))
    assert "'purple unicorn' is not '<colour> <shape>'" in found["training.pipeline.datasets.s.holdout_pairs"]
    shapes["holdout_pairs"] = [f"{colour} {shape}" for colour in ("red", "blue") for shape in
                               ("circle", "square", "triangle", "star", "cross")]
    found = problems(tmp_path, cfg(vae(), pipeline={"datasets": {"s": shapes}}))  # was the step's ValueError
    assert "holds out every pair of red, blue: each colour" in found["training.pipeline.datasets.s.holdout_pairs"]
    shapes["holdout_pairs"] = ["Blue Triangle", "white cross"]
    assert load_config(yaml.safe_load(cfg(vae(), pipeline={"datasets": {"s": shapes}}))).config


@pytest.mark.parametrize("pairs", [3.5, "blue triangle", [1, 2], True])
def test_held_out_pairs_of_another_type_are_one_problem_naming_the_field(tmp_path, pairs):
    """Were two or three problems named after pydantic's union members (`holdout_pairs.list[str]: Input should be a
    valid list`, `holdout_pairs.int: ...`)."""
    shapes = {"type": "shapes", "holdout_pairs": pairs}
    with pytest.raises(ConfigError) as raised:
        load_config(yaml.safe_load(cfg(vae(), pipeline={"datasets": {"s": shapes}})))
    [issue] = raised.value.issues
    assert issue.path == "training.pipeline.datasets.s.holdout_pairs"
    assert issue.message.startswith("must be a number, not true/false" if pairs is True else
                                    "must be a list of '<colour> <shape>' pairs, e.g. [blue triangle, red star], or a "
                                    "count of pairs to draw")


def test_the_config_knows_the_words_of_the_shapes_dataset():
    from fluxflow.config import heldout_pairs
    from fluxflow.data.shapes import COLORS, SHAPES

    assert (heldout_pairs.COLORS, heldout_pairs.SHAPES) == (tuple(COLORS), SHAPES)
    max_heldout_pairs = heldout_pairs.max_heldout_pairs
    assert max_heldout_pairs() == 32


def test_train_spade_on_a_step_that_freezes_the_expander_is_refused(tmp_path):
    """It trained no SPADE, the plan said SPADE, and the frozen expander's EMA (which the step decodes with) was
    updated towards its live weights all through the step."""
    found = problems(tmp_path, cfg(vae(gan_training=True, train_spade=True, freeze=["expander"])))
    assert found == {"training.pipeline.steps[0].train_spade":
                     "trains the expander's SPADE, but the step freezes the expander (freeze); unfreeze it or leave "
                     "train_spade out"}
    assert load_config(yaml.safe_load(cfg(vae(gan_training=True, train_spade=True, freeze=["compressor"])))).config


def test_a_shapes_dataset_smaller_than_a_batch_is_a_problem_of_its_size(tmp_path):
    """Validation said ✅; the run failed at that step's start (after the steps before it had trained), advising to
    lower a holdout that shapes does not take from `size`."""
    shapes = {"type": "shapes", "size": 3, "holdout": 2}
    found = problems(tmp_path, cfg(vae(batch_size=4), pipeline={"datasets": {"s": shapes}}))
    assert found == {"training.pipeline.datasets.s.size": "3 items are fewer than one batch of 4 (step a); raise "
                                                           "size or lower batch_size"}
    shapes.update(size=1, holdout=0)  # was "1 items are fewer"
    assert problems(tmp_path, cfg(vae(batch_size=4), pipeline={"datasets": {"s": shapes}})) == {
        "training.pipeline.datasets.s.size": "1 item is fewer than one batch of 4 (step a); raise size or lower "
                                             "batch_size"}
    shapes.update(size=4, holdout=2)
    assert load_config(yaml.safe_load(cfg(vae(batch_size=4), pipeline={"datasets": {"s": shapes}}))).config


@pytest.mark.parametrize("path", ["", "  "])
def test_an_empty_output_path_is_refused(tmp_path, path):
    """It trained into the working directory (checkpoints/, samples/, caches), where `--output-dir ""` is refused."""
    assert problems(tmp_path, cfg(vae(), output={"output_path": path})) == {
        "output.output_path": f"is empty: name the run's folder (e.g. outputs/run; . for the working directory) "
                              f"(got {path!r})"}


HINT = 'YAML reads a value that starts with { as a mapping: quote it, e.g. "{date}/run"'


@pytest.mark.parametrize("value", ["{date}", "{date}-run"])
def test_an_unquoted_placeholder_at_a_values_start_says_to_quote_it(tmp_path, value):
    """docs/CONFIG.md recommends {date} in output_path; unquoted at the start of a value, YAML reads a mapping: the
    errors were "Input should be a valid string" or "expected <block end>, but found '<scalar>'" in
    "<unicode string>", neither saying what to do."""
    text = cfg(vae()) + f"output:\n  output_path: {value}\n"
    [(path, message)] = problems(tmp_path, text).items()
    assert message.endswith(f"; {HINT}") and "<unicode string>" not in message, message
    assert path == ("output.output_path" if value == "{date}" else "(file)")
    assert load_config(yaml.safe_load(text.replace(value, f'"{value}"'))).config


def test_sizes_below_a_latent_of_two_are_refused(tmp_path):
    """img_size 8 at downscale 8 (a 1x1 latent) trained a VAE whose output ignored its image, then failed the flow
    step's cache; sample_sizes 0 or -16 passed as multiples of 8 and failed the first sample."""
    model = {"downscale": 8, "patch_size": 1}
    found = problems(tmp_path, cfg(vae(), model=model, data={"img_size": 8},
                                   output={"sample_sizes": [0, -16, 16, 24]}))
    least = "must be at least 16: a latent side of 2 or more at model.downscale 8"
    assert found == {"data.img_size": f"8 {least}", "output.sample_sizes[0]": f"0 {least}",
                     "output.sample_sizes[1]": f"-16 {least}"}
    assert load_config(yaml.safe_load(cfg(vae(), model=model, data={"img_size": 16}))).config


@pytest.mark.parametrize("channels", [1, 4])
def test_a_flow_step_on_shapes_needs_rgb_images(tmp_path, channels):
    """The shapes evaluation reads colours from RGB images: with 1 or 4 channels the flow step trained, then failed its
    evaluation (a traceback, a retry, no final.pt), and every rerun the same way. A VAE step on shapes is fine."""
    flow = {"name": "f", "n_epochs": 1, "train_diff_full": True, "after": "a"}
    assert problems(tmp_path, cfg(vae(), flow, data={"channels": channels})) == {
        "data.channels": f"is {channels}, but the shapes dataset's evaluation reads the colours of RGB images, and "
                         "flow step f is evaluated on it: set 3, or train that step on a folder dataset"}
    assert load_config(yaml.safe_load(cfg(vae(), data={"channels": channels}))).config


@pytest.mark.parametrize("text", ["training:\n  seed: &a [*a]\n", "training: &a {pipeline: *a}\n",
                                  "model: &a {<<: *a}\n", "output: &a {x: [1, {y: *a}]}\n"],
                         ids=["list", "mapping", "merge-key", "deeper"])
def test_a_yaml_alias_inside_its_own_anchor_is_one_issue_naming_the_file(tmp_path, text):
    """`seed: &a [*a]` was a RecursionError traceback, a mapping 'found unconstructable recursive node' and a merge of
    itself nothing at all."""
    path = tmp_path / "self.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.source == str(path) and len(raised.value.issues) == 1
    assert str(raised.value.issues[0]).startswith("(file): broken YAML: the alias *a refers to itself")
