"""Invalid configs: every rule names the path of the field at fault, and all problems come out together."""
import textwrap
from pathlib import Path

import pytest

from fluxflow.config import ConfigError, load_config
from fluxflow.config.assets import LPIPS_BACKBONE_FILE


def problems(tmp_path: Path, text: str) -> dict[str, str]:
    """{path: message} of the ConfigError raised for this YAML (fails the test if it loads)."""
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return {issue.path: issue.message for issue in caught.value.issues}


def steps_yaml(*steps: str, extra: str = "") -> str:
    """A config whose pipeline has these steps (each a YAML flow mapping), plus extra top-level YAML."""
    body = "\n".join(f"      - {s}" for s in steps)
    return f"training:\n  pipeline:\n    steps:\n{body}\n{extra}"


S = "training.pipeline.steps"
VAE = "train_vae: true"

CASES = {
    "name required": (steps_yaml(f"{{n_epochs: 1, {VAE}}}"), f"{S}[0].name", "required"),
    "n_epochs required": (steps_yaml(f"{{name: a, {VAE}}}"), f"{S}[0].n_epochs", "required"),
    "n_epochs positive": (steps_yaml(f"{{name: a, n_epochs: 0, {VAE}}}"), f"{S}[0].n_epochs", "greater than or equal to 1"),
    "duplicate names": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}", f"{{name: a, n_epochs: 1, {VAE}}}"),
                        f"{S}[1].name", "duplicate step name 'a'"),
    "path separator in name": (steps_yaml(f"{{name: x/y, n_epochs: 1, {VAE}}}"), f"{S}[0].name", "file names"),
    "no training mode": (steps_yaml("{name: a, n_epochs: 1, freeze: [text_encoder]}"), f"{S}[0]", "no training mode"),
    "spade alone": (steps_yaml("{name: a, n_epochs: 1, train_spade: true}"), f"{S}[0].train_spade",
                    "needs train_vae or gan_training"),
    "lpips without reconstruction": (steps_yaml("{name: a, n_epochs: 1, gan_training: true, use_lpips: true}"),
                                     f"{S}[0].use_lpips", "needs train_vae"),
    "freeze a trained component": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, freeze: [flow_processor, expander]}}"),
                                   f"{S}[0].freeze[1]", "expander is trained by this step"),
    "freeze and unfreeze": (steps_yaml("{name: a, n_epochs: 1, train_diff: true, freeze: [text_encoder], "
                                       "unfreeze: [text_encoder]}"), f"{S}[0].unfreeze[0]", "in both freeze and unfreeze"),
    "unfreeze without gradient": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, unfreeze: [discriminator]}}"),
                                  f"{S}[0].unfreeze[0]", "gets no gradient"),
    "unknown component": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, freeze: [text_encodr]}}"),
                          f"{S}[0].freeze[0]", "did you mean 'text_encoder'?"),
    "unknown optimizer type": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, optimization: {{optimizers: {{vae: {{type: Adamw}}}}}}}}"),
                               f"{S}[0].optimization.optimizers.vae.type", "'AdamW', 'Adam', 'SGD' or 'RMSprop'"),
    "optimizer lr range": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, optimization: {{optimizers: {{vae: {{lr: -1}}}}}}}}"),
                           f"{S}[0].optimization.optimizers.vae.lr", "greater than 0"),
    "optimizer betas range": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, optimization: {{optimizers: {{vae: {{betas: [0.9, 1.5]}}}}}}}}"),
                              f"{S}[0].optimization.optimizers.vae.betas[1]", "less than 1"),
    "parameter of another optimizer": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, optimization: {{optimizers: {{vae: {{type: AdamW, momentum: 0.9}}}}}}}}"),
                                       f"{S}[0].optimization.optimizers.vae.momentum", "not a parameter of AdamW"),
    "unknown optimizer group": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, optimization: {{optimizers: {{vea: {{lr: 0.1}}}}}}}}"),
                                f"{S}[0].optimization.optimizers.vea", "did you mean 'vae'?"),
    "optimizer for an untrained group": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, optimization: {{optimizers: {{flow: {{lr: 0.1}}}}}}}}"),
                                         f"{S}[0].optimization.optimizers.flow", "does not train flow_processor"),
    "unknown scheduler type": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, optimization: {{schedulers: {{vae: {{type: OneCycleLR}}}}}}}}"),
                               f"{S}[0].optimization.schedulers.vae.type", "CosineAnnealingLR"),
    "StepLR without step_size": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, optimization: {{schedulers: {{vae: {{type: StepLR}}}}}}}}"),
                                 f"{S}[0].optimization.schedulers.vae.step_size", "required for StepLR"),
    "scheduler gamma range": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, optimization: {{schedulers: {{vae: {{type: ExponentialLR, gamma: 2}}}}}}}}"),
                              f"{S}[0].optimization.schedulers.vae.gamma", "less than or equal to 1"),
    "plateau factor below one": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, optimization: {{schedulers: {{vae: {{type: ReduceLROnPlateau, factor: 1.0}}}}}}}}"),
                                 f"{S}[0].optimization.schedulers.vae.factor", "must be < 1"),
    "unknown transition mode": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, transition_on: {{mode: plateau}}}}"),
                                f"{S}[0].transition_on.mode", "'epoch' or 'loss_threshold'"),
    "threshold metric required": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, transition_on: {{mode: loss_threshold, threshold: 0.1}}}}"),
                                  f"{S}[0].transition_on.metric", "required for mode: loss_threshold"),
    "threshold value required": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, transition_on: {{mode: loss_threshold, metric: vae_loss}}}}"),
                                 f"{S}[0].transition_on.threshold", "required for mode: loss_threshold"),
    "metric the step does not produce": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, transition_on: {{mode: loss_threshold, metric: flow_loss, threshold: 0.1}}}}"),
                                         f"{S}[0].transition_on.metric", "not produced by this step"),
    "vae_loss in GAN-only mode": (steps_yaml("{name: a, n_epochs: 1, gan_training: true, transition_on: {mode: loss_threshold, metric: vae_loss, threshold: 0.1}}"),
                                  f"{S}[0].transition_on.metric", "always 0 in GAN-only mode"),
    "unknown metric": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, transition_on: {{mode: loss_threshold, metric: vae_los, threshold: 0.1}}}}"),
                       f"{S}[0].transition_on.metric", "did you mean 'vae_loss'?"),
    "max_epochs at least one": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, transition_on: {{mode: loss_threshold, metric: vae_loss, threshold: 0.1, max_epochs: 0}}}}"),
                                f"{S}[0].transition_on.max_epochs", "greater than or equal to 1"),
    "threshold in epoch mode": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, transition_on: {{threshold: 0.1}}}}"),
                                f"{S}[0].transition_on.threshold", "only used with mode: loss_threshold"),
    "on_missed values": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, on_missed: stop}}"), f"{S}[0].on_missed", "'continue' or 'fail'"),
    "max_steps positive": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, max_steps: 0}}"), f"{S}[0].max_steps", "greater than or equal to 1"),
    "unknown dataset": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, dataset: shape}}"), f"{S}[0].dataset", "did you mean 'shapes'?"),
    "unknown default dataset": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}", extra="    datasets: {s: {type: shapes}}\n    default_dataset: t\n"),
                                "training.pipeline.default_dataset", "no dataset is named 't'"),
    "folder dataset needs a path": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}", extra="    datasets: {f: {type: folder, captions_file: c.txt}}\n"),
                                    "training.pipeline.datasets.f.path", "required for a folder dataset"),
    "field of another dataset type": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}", extra="    datasets: {f: {type: shapes, urls: x.tar}}\n"),
                                      "training.pipeline.datasets.f.urls", "not a field of a shapes dataset"),
    "unknown parent": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}", f"{{name: b, n_epochs: 1, {VAE}, after: aa}}"),
                       f"{S}[1].after", "no step is named 'aa' (did you mean 'a'?)"),
    "parent is itself": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, after: a}}"), f"{S}[0].after", "cannot start from itself"),
    "after cycle": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, after: b}}", f"{{name: b, n_epochs: 1, {VAE}, after: a}}"),
                    f"{S}[0].after", "cycle (a -> b -> a"),
    "cycle through file order": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, after: c}}", f"{{name: b, n_epochs: 1, {VAE}}}",
                                            f"{{name: c, n_epochs: 1, {VAE}}}"), f"{S}[0].after", "cycle"),
    "unknown step key": (steps_yaml(f"{{name: a, n_epochs: 1, trian_vae: true}}"), f"{S}[0].trian_vae", "did you mean 'train_vae'?"),
    "unknown section key": ("modle: {vae_dim: 8}\n" + steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}"), "modle", "did you mean 'model'?"),
    "unknown nested key": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}, transition_on: {{mod: epoch}}}}"),
                           f"{S}[0].transition_on.mod", "did you mean 'mode'?"),
    "unknown dataset key": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}", extra="    datasets: {s: {type: shapes, szie: 3}}\n"),
                            "training.pipeline.datasets.s.szie", "did you mean 'size'?"),
    "yes as a name": (steps_yaml(f"{{name: yes, n_epochs: 1, {VAE}}}"), f"{S}[0].name", "quote the value"),
    "image size vs downscale and patch": ("data: {img_size: 36}\n" + steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}"),
                                          "data.img_size", "multiple of 8"),
    "flow width vs heads": ("model: {feature_maps_dim: 130, flow_heads: 4}\n" + steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}"),
                            "model.feature_maps_dim", "divisible by 4 and by model.flow_heads"),
    "downscale values": ("model: {downscale: 3}\n" + steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}"), "model.downscale", "2, 4 or 8"),
    "device values": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}").replace("training:\n", "training:\n  device: gpu\n"),
                      "training.device", "'auto', 'cpu' or 'cuda'"),
    "nproc at least one": (steps_yaml(f"{{name: a, n_epochs: 1, {VAE}}}").replace("training:\n", "training:\n  distributed: {nproc_per_node: 0}\n"),
                           "training.distributed.nproc_per_node", "greater than or equal to 1"),
    "no steps": ("training:\n  pipeline:\n    steps: []\n", "training.pipeline.steps", "at least one step"),
    "no pipeline": ("training: {batch_size: 2}\n", "training.pipeline", "declare the steps under training.pipeline.steps"),
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
              - {name: a, n_epochs: 1, train_vae: true, freeze: [compressor]}
              - {name: b, n_epochs: x, train_vae: true}
              - {name: c, n_epochs: 1, train_diff: true, transition_on: {mode: loss_threshold, metric: vae_loss, threshold: 1}}
    """
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    paths = [issue.path for issue in caught.value.issues]
    assert paths == ["model.vae_dimm", "training.batch_size", f"{S}[0].freeze[0]", f"{S}[1].n_epochs",
                     f"{S}[2].transition_on.metric"]
    text = str(caught.value)
    assert text.startswith(f"5 problems in {path}:") and all(p in text for p in paths)


def test_a_broken_step_does_not_hide_the_problems_of_the_others(tmp_path):
    found = problems(tmp_path, steps_yaml("{name: a, n_epochs: one, train_vae: true}",
                                          "{name: b, n_epochs: 1, train_vae: true, freeze: [expander]}"))
    assert set(found) == {f"{S}[0].n_epochs", f"{S}[1].freeze[0]"}


def test_problems_inherited_from_defaults_say_so(tmp_path):
    found = problems(tmp_path, """
        training:
          pipeline:
            defaults: {freeze: [compressor]}
            steps: [{name: a, n_epochs: 1, train_vae: true}]
    """)
    assert "inherited from training.pipeline.defaults" in found[f"{S}[0].freeze[0]"]


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


def test_lpips_without_its_backbone_file_names_the_file_and_where_it_must_be(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    config = steps_yaml("{name: a, n_epochs: 1, train_vae: true, use_lpips: true}",
                        "{name: b, n_epochs: 1, train_vae: true, use_lpips: true}")
    found = problems(tmp_path, config)
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / LPIPS_BACKBONE_FILE
    assert LPIPS_BACKBONE_FILE in found[f"{S}[0].use_lpips"] and str(expected) in found[f"{S}[0].use_lpips"]
    assert "use_lpips: false" in found[f"{S}[0].use_lpips"]
    assert f"{S}[0].use_lpips" in found[f"{S}[1].use_lpips"]  # the long explanation once

    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"placeholder")
    (tmp_path / "ok.yaml").write_text(config)
    assert load_config(tmp_path / "ok.yaml").config.resolved_steps()[0].use_lpips
