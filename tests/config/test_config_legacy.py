"""Configs written for the original tool keep validating: keys with a meaning here are mapped, the others warned."""
import re
import textwrap
from pathlib import Path

import pytest

from fluxflow.config import ConfigError, FolderDataset, load_config
from fluxflow.config.modes import step_metrics

# The original tool's config.example.yaml (fluxflow-training), without its comments.
ORIGINAL_EXAMPLE = """
model:
  model_type: "bezier"
  model_version: "0.7.0"
  vae_dim: 128
  feature_maps_dim: 128
  feature_maps_dim_disc: 8
  text_embedding_dim: 1024
  pretrained_bert_model: null
  baseline_activation: "silu"
  baseline_flow_blocks: 17
data:
  data_path: "/path/to/your/images"
  captions_file: "/path/to/your/captions.txt"
  fixed_prompt_prefix: null
  use_webdataset: false
  webdataset_token: null
  webdataset_url: "hf://datasets/jackyhate/text-to-image-2M/data_512_2M/*.tar"
  webdataset_size: 2000000
  dataloader_max_retries: 5
  img_size: 1024
  channels: 3
  tokenizer_name: "distilbert-base-uncased"
  reduced_min_sizes: null
training:
  n_epochs: 100
  batch_size: 1
  workers: 8
  lr: 0.00001
  lr_min: 0.01
  training_steps: 1
  use_fp16: false
  initial_clipping_norm: 1.0
  preserve_lr: true
  train_vae: true
  gan_training: true
  use_lpips: false
  train_spade: true
  spade_training_mode: full
  train_diff: false
  train_diff_full: false
  kl_beta: 0.001
  kl_warmup_steps: 5000
  kl_free_bits: 0.0
  lambda_adv: 0.5
  lambda_lpips: 0.1
optimization:
  optim_sched_config: null
output:
  output_path: "outputs/flux"
  log_interval: 10
  checkpoint_save_interval: 50
  samples_per_checkpoint: 1
  no_samples: false
  test_image_address: ["template.png"]
  sample_captions: ["an orange banana"]
  sample_sizes: [256, 512, [768, 512], "1024x1024"]
  generate_diagrams: true
  log_level: "INFO"
  log_file: null
model_checkpoint: null
"""


def load_yaml(tmp_path: Path, text: str):
    path = tmp_path / "legacy.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_the_original_example_config_validates_and_maps_what_has_a_meaning(tmp_path):
    loaded = load_yaml(tmp_path, ORIGINAL_EXAMPLE)
    cfg = loaded.config
    folder = FolderDataset(type="folder", path="/path/to/your/images", captions_file="/path/to/your/captions.txt")
    assert cfg.training.pipeline.datasets == {"default": folder}
    assert cfg.training.precision == "fp32"  # use_fp16: false
    assert cfg.output.sample_sizes == [256, 512, 1024]  # 768x512 dropped with a warning, "1024x1024" is square
    (step,) = cfg.resolved_steps()
    assert (step.name, step.n_epochs, step.batch_size, step.workers, step.lr, step.dataset) == (
        "train", 100, 1, 8, 1e-5, "default")
    assert (step.train_vae, step.gan_training, step.train_spade, step.kl_beta, step.kl_warmup_steps) == (
        True, True, True, 0.001, 5000)
    assert step.grad_clip == 1.0  # training.initial_clipping_norm


def test_keys_with_no_effect_here_are_warned_about_with_the_reason(tmp_path):
    warnings = "\n".join(load_yaml(tmp_path, ORIGINAL_EXAMPLE).warnings)
    for key in ("model_type", "baseline_flow_blocks", "tokenizer_name", "webdataset_url", "lr_min", "preserve_lr",
                "samples_per_checkpoint", "test_image_address", "generate_diagrams",
                "log_level", "768x512"):
        assert key in warnings, key
    assert "no tokenizer is downloaded" in warnings
    # null / false values ask for nothing, so there is nothing to warn about
    for key in ("pretrained_bert_model", "fixed_prompt_prefix", "reduced_min_sizes", "log_file", "use_webdataset",
                "optim_sched_config", "initial_clipping_norm"):  # the last one is mapped: grad_clip
        assert key not in warnings, key


def test_use_fp16_true_is_bf16_on_cuda_via_auto_with_a_warning(tmp_path):
    loaded = load_yaml(tmp_path, """
        training:
          use_fp16: true
          pipeline:
            steps: [{name: a, n_epochs: 1, train_vae: true}]
    """)
    assert loaded.config.training.precision == "auto"
    assert any("use_fp16" in w and "bf16" in w for w in loaded.warnings)


def test_original_loss_weights_become_defaults_of_steps_that_set_none(tmp_path):
    steps = load_yaml(tmp_path, """
        training:
          kl_beta: 0.01
          lambda_adv: 0.2
          train_vae: true
          pipeline:
            steps:
              - {name: a, n_epochs: 1, train_vae: true}
              - {name: b, n_epochs: 1, train_vae: true, kl_beta: 0.5}
    """)
    a, b = steps.config.resolved_steps()
    assert (a.kl_beta, a.lambda_adv, b.kl_beta, b.lambda_adv) == (0.01, 0.2, 0.5, 0.2)
    assert any("training.train_vae" in w and "sets its own training modes" in w for w in steps.warnings)


def test_data_path_is_ignored_with_a_warning_when_the_pipeline_declares_datasets(tmp_path):
    loaded = load_yaml(tmp_path, """
        data: {data_path: imgs, captions_file: caps.txt}
        training:
          pipeline:
            datasets: {s: {type: shapes}}
            steps: [{name: a, n_epochs: 1, train_vae: true}]
    """)
    assert list(loaded.config.training.pipeline.datasets) == ["s"]
    assert any("data_path" in w for w in loaded.warnings)


def test_data_path_without_captions_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_yaml(tmp_path, """
            data: {data_path: imgs}
            training:
              pipeline:
                steps: [{name: a, n_epochs: 1, train_vae: true}]
        """)
    assert [i.path for i in caught.value.issues] == ["data.captions_file"]


def test_later_original_step_keys_are_mapped_or_warned(tmp_path):
    loaded = load_yaml(tmp_path, """
        training:
          pipeline:
            mode: sequential
            steps:
              - {name: a, n_epochs: 1, train_vae: true, gan_training: true, cfg_dropout_prob: 0.2,
                 adaptive_weights: true, use_ema: true, gradient_accumulation_steps: 2, initial_clipping_norm: 0.5,
                 freeze: [flow, text_encoder], unfreeze: [D_img]}
    """)
    (step,) = loaded.config.resolved_steps()
    assert (step.cfg_dropout, step.adaptive_adv_weight) == (0.2, True)
    assert (step.gradient_accumulation_steps, step.grad_clip) == (2, 0.5)
    assert step.freeze == ["flow_processor", "text_encoder"] and step.unfreeze == ["discriminator"]
    text = "\n".join(loaded.warnings)
    assert "gradient_accumulation_steps" not in text and "initial_clipping_norm" not in text  # both implemented
    for key in ("training.pipeline.mode", "use_ema", "'flow' is called 'flow_processor'"):
        assert key in text, key


def test_model_keys_of_the_original_warn_and_its_sizes_are_used(tmp_path):
    loaded = load_yaml(tmp_path, """
        model: {vae_dim: 64, text_embedding_dim: 128, pretrained_bert_model: bert.pt, use_gradient_checkpointing: true}
        training:
          pipeline:
            steps: [{name: a, n_epochs: 1, train_vae: true}]
    """)
    assert (loaded.config.model.vae_dim, loaded.config.model.text_embedding_dim) == (64, 128)
    text = "\n".join(loaded.warnings)
    assert "model.pretrained_bert_model: has no effect here" in text
    # It points to the pretrained encoder that exists (it said the encoder could only be the byte-level one).
    assert "type: pretrained with a local path" in text
    assert "model.use_gradient_checkpointing: has no effect here" in text


def test_a_key_nobody_defines_is_still_an_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_yaml(tmp_path, """
            output: {sample_caption: [x]}
            training:
              pipeline:
                steps: [{name: a, n_epochs: 1, train_vae: true}]
        """)
    (issue,) = caught.value.issues
    assert issue.path == "output.sample_caption" and "did you mean 'sample_captions'?" in issue.message


def test_a_single_mode_config_without_n_epochs_trains_one_epoch_as_the_original_did(tmp_path):
    (step,) = load_yaml(tmp_path, "training: {train_diff: true}\n").config.resolved_steps()
    assert (step.name, step.n_epochs, step.train_diff) == ("train", 1, True)


def test_use_fp16_must_be_a_boolean(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_yaml(tmp_path, "training: {use_fp16: maybe, train_vae: true}\n")
    assert [i.path for i in caught.value.issues] == ["training.use_fp16"]


REPO = Path(__file__).resolve().parents[2]
ORIGINAL_PIPELINE = REPO / "configs" / "original_tool_example.yaml"


def keys_in(node) -> set[str]:
    """Every mapping key anywhere in a parsed YAML document."""
    if isinstance(node, dict):
        return set(node) | {k for value in node.values() for k in keys_in(value)}
    if isinstance(node, list):
        return {k for value in node for k in keys_in(value)}
    return set()


def named_keys(warning: str) -> list[str]:
    """The keys a warning names: `path.key: ...` or `path.{a, b}: ...`."""
    path = warning.split(": ", 1)[0]
    if path.endswith("}"):
        return path[path.rindex("{") + 1:-1].split(", ")
    return [re.sub(r"\[\d+\]$", "", path.rsplit(".", 1)[-1])]


def test_the_original_tools_pipeline_example_validates_with_warnings_that_each_name_their_key():
    import yaml

    loaded = load_config(ORIGINAL_PIPELINE)
    written = keys_in(yaml.safe_load(ORIGINAL_PIPELINE.read_text()))
    assert loaded.warnings
    for warning in loaded.warnings:
        assert set(named_keys(warning)) <= written, warning
    text = "\n".join(loaded.warnings)
    for key in ("use_ema", "spade_training_mode", "num_train_timesteps", "start_step", "instance_noise_std", "lr_min",
                "transition_on.value", "train_kl: false", "dataset type noise", "optimizer type Lion"):
        assert key in text, key


def test_the_original_tools_item_10_keys_that_mean_something_here_are_implemented():
    config = load_config(ORIGINAL_PIPELINE).config
    warmup, gan, flow = config.resolved_steps()
    assert (warmup.kl_beta, warmup.gradient_accumulation_steps, warmup.grad_clip) == (0.0, 4, 1.0)
    assert (gan.grad_clip, gan.recon_mse_weight, gan.adaptive_adv_weight, flow.cfg_dropout) == (0.5, 0.1, True, 0.1)
    assert warmup.optimization.optimizers["vae"].type == "Adagrad"
    assert gan.optimization.optimizers["discriminator"].type == "Adadelta"
    assert warmup.optimization.schedulers["vae"].milestones == [5, 8]
    lion = flow.optimization.optimizers["flow"]
    assert (lion.type, lion.lr, lion.weight_decay, lion.betas) == ("AdamW", 5e-5, 0.01, (0.9, 0.999))
    # unfreeze overrides a freeze of the same step and one inherited from the defaults
    assert gan.freeze == ["flow_processor", "text_encoder"] and flow.freeze == ["compressor", "expander"]
    assert "text_encoder" in flow.unfreeze
    datasets = config.training.pipeline.datasets
    assert datasets["photos"] == FolderDataset(type="folder", path="/path/to/your/images",
                                               captions_file="/path/to/your/captions.txt")
    assert (datasets["noise"].type, datasets["noise"].size, warmup.dataset) == ("shapes", 1000, "noise")


def test_use_ema_false_is_reported_because_ema_is_always_kept(tmp_path):
    loaded = load_yaml(tmp_path, """
        training:
          pipeline:
            steps: [{name: a, n_epochs: 1, train_vae: true, use_ema: false, train_colorstats: false}]
    """)
    assert [w for w in loaded.warnings if "use_ema" in w]
    assert not [w for w in loaded.warnings if "train_colorstats" in w]  # false asks for what happens here


def test_original_metric_names_are_mapped(tmp_path):
    (step,) = load_yaml(tmp_path, """
        training:
          pipeline:
            steps:
              - {name: a, n_epochs: 1, train_vae: true,
                 transition_on: {mode: loss_threshold, metric: recon, threshold: 0.1, max_epochs: 3}}
    """).config.resolved_steps()
    assert step.transition_on.metric == "vae_loss"


def test_train_kl_must_be_a_boolean(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_yaml(tmp_path, """
            training:
              pipeline:
                steps: [{name: a, n_epochs: 1, train_vae: true, train_kl: maybe}]
        """)
    assert [i.path for i in caught.value.issues] == ["training.pipeline.steps[0].train_kl"]


def test_the_original_tools_schedulers_step_per_epoch_with_a_warning_and_new_configs_per_update(tmp_path):
    loaded = load_config(ORIGINAL_PIPELINE)
    warmup, gan, flow = loaded.config.resolved_steps()
    # StepLR(step_size=10) halves D's lr every 10 epochs, as in the original tool, not every 10 updates
    assert gan.optimization.schedulers["discriminator"].interval == "epoch"
    assert [s.interval for s in (warmup.optimization.schedulers["vae"], gan.optimization.schedulers["vae"],
                                 flow.optimization.schedulers["flow"])] == ["epoch"] * 3
    said = [w for w in loaded.warnings if "interval: epoch, as the original tool" in w]
    assert any(w.startswith("training.pipeline.steps[1].optimization.schedulers.discriminator:") for w in said)
    assert len(said) == 4

    new = load_yaml(tmp_path, """
        training:
          pipeline:
            steps:
              - {name: a, n_epochs: 1, train_vae: true, gan_training: true,
                 optimization: {schedulers: {discriminator: {type: StepLR, step_size: 10}}}}
    """)
    assert new.config.resolved_steps()[0].optimization.schedulers["discriminator"].interval == "step"
    assert not any("interval" in w for w in new.warnings)


def test_an_interval_written_in_an_original_tool_config_is_kept(tmp_path):
    loaded = load_yaml(tmp_path, """
        training:
          lr_min: 0.1
          pipeline:
            defaults: {optimization: {schedulers: {vae: {interval: step}}}}
            steps:
              - {name: a, n_epochs: 1, train_vae: true, gan_training: true,
                 optimization: {schedulers: {vae: {type: StepLR, step_size: 3},
                                             discriminator: {type: StepLR, step_size: 3, interval: step}}}}
    """)
    schedulers = loaded.config.resolved_steps()[0].optimization.schedulers
    assert schedulers["vae"].interval == "step" and schedulers["discriminator"].interval == "step"
    assert not any("interval: epoch" in w for w in loaded.warnings)


def test_the_original_tools_image_statistics_switches_turn_on_its_regularisers_in_vae_steps():
    loaded = load_config(ORIGINAL_PIPELINE)
    warmup, gan, flow = loaded.config.resolved_steps()
    terms = ("colorstats", "histogram", "contrast", "coarseness")
    assert all(getattr(warmup, f"train_{t}") for t in terms)  # from the defaults, in train_vae steps
    assert [m for m in step_metrics(warmup) if m.split("_")[0] in terms] == [f"{t}_loss" for t in terms]
    assert not [m for m in step_metrics(flow) if m.split("_")[0] in terms]  # no effect in a flow step
    assert not any("train_colorstats" in w for w in loaded.warnings)


def removed_section_keys() -> list[tuple[str, str]]:
    """(section, key) of the model/data/training/output keys docs/CONFIG.md says are removed with a warning: in its
    "Removed with a warning" paragraph a group starts with `section.key` and runs to the next `;`."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md").read_text()
    paragraph = doc.split("Removed with a warning", 1)[1].split("\n\n", 1)[0]
    found = []
    for group in paragraph.split(";"):
        names = re.findall(r"`([\w.*]+)`", re.sub(r"\([^)]*\)", "", group))  # not the asides in parentheses
        first = re.fullmatch(r"(model|data|training|output)\.(\w+)", names[0]) if names else None
        if first:
            found += [(first[1], key) for key in [first[2], *names[1:]] if "*" not in key]
    return found


@pytest.mark.parametrize("section, key", removed_section_keys())
def test_each_key_the_docs_call_removed_is_warned_about_as_having_no_effect(tmp_path, section, key):
    """A key in that list that is mapped instead (training.initial_clipping_norm: every step's grad_clip) would tell
    a user the value is thrown away when it is used."""
    raw = {"training": {"pipeline": {"steps": [{"name": "s", "n_epochs": 1, "train_vae": True}]}}}
    raw.setdefault(section, {})[key] = 1
    warnings = load_config(raw).warnings
    pattern = rf"{section}\.({key}|\{{[^}}]*\b{key}\b[^}}]*\}}): ha(s|ve) no effect here"
    assert any(re.match(pattern, w) for w in warnings), warnings


def test_training_initial_clipping_norm_is_every_steps_grad_clip():
    raw = {"training": {"initial_clipping_norm": 0.5,
                        "pipeline": {"steps": [{"name": "s", "n_epochs": 1, "train_vae": True}]}}}
    assert [s.grad_clip for s in load_config(raw).config.resolved_steps()] == [0.5]


def test_a_step_scheduler_of_another_type_than_the_defaults_one_steps_per_epoch_too(tmp_path):
    """It replaces the defaults' entry whole (their `interval: epoch` with it), and was left per update, unsaid."""
    loaded = load_yaml(tmp_path, """
        training:
          use_fp16: false
          pipeline:
            defaults: {optimization: {schedulers: {vae: {type: CosineAnnealingLR}}}}
            steps:
              - {name: a, n_epochs: 1, train_vae: true}
              - {name: b, n_epochs: 1, train_vae: true,
                 optimization: {schedulers: {vae: {type: StepLR, step_size: 10, gamma: 0.5}}}}
    """)
    a, b = loaded.config.resolved_steps()
    assert [a.optimization.schedulers["vae"].interval, b.optimization.schedulers["vae"].interval] == ["epoch"] * 2
    assert any(w.startswith("training.pipeline.steps[1].optimization.schedulers.vae: interval: epoch")
               for w in loaded.warnings)


def test_a_clipping_norm_of_the_defaults_wins_over_the_global_one_under_its_original_name():
    """As kl_beta's does: the global initial_clipping_norm became the defaults' grad_clip first, and the defaults'
    own initial_clipping_norm was then said to have no effect "because grad_clip is given"."""
    raw = {"training": {"initial_clipping_norm": 2.0, "kl_beta": 0.1,
                        "pipeline": {"defaults": {"initial_clipping_norm": 0.5, "kl_beta": 0.001},
                                     "steps": [{"name": "a", "n_epochs": 1, "train_vae": True}]}}}
    loaded = load_config(raw)
    (step,) = loaded.config.resolved_steps()
    assert (step.grad_clip, step.kl_beta) == (0.5, 0.001)
    # The global ones are said to be shadowed (they were dropped without a word); nothing of the defaults' own.
    assert loaded.warnings == [
        "training.kl_beta: has no effect: training.pipeline.defaults sets kl_beta",
        "training.initial_clipping_norm: has no effect: training.pipeline.defaults sets grad_clip"]


def test_original_global_loss_keys_every_step_sets_for_itself_are_said_to_have_no_effect():
    """The same clash on a step (mse_weight beside recon_mse_weight) was said; the global's was not."""
    raw = {"training": {"lambda_adv": 0.9, "kl_beta": 0.5,
                        "pipeline": {"steps": [{"name": "a", "n_epochs": 1, "gan_training": True, "lambda_adv": 0.2},
                                               {"name": "b", "n_epochs": 1, "train_vae": True}]}}}
    assert load_config(raw).warnings == []  # b takes lambda_adv (no GAN: unused there, and not written on it)
    raw["training"]["pipeline"]["steps"][1]["lambda_adv"] = 0.3
    raw["training"]["pipeline"]["steps"][1]["gan_training"] = True
    assert load_config(raw).warnings == ["training.lambda_adv: has no effect: every step sets its own lambda_adv"]
