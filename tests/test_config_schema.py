"""Loading valid configs: defaults, deep merge of pipeline.defaults, globals, per-step overrides, resolution."""
import json
import re
import textwrap
from pathlib import Path

import pytest
from pretrained_fixture import shipped_config_raw

from fluxflow.config import ShapesDataset, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def load_yaml(tmp_path: Path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def steps_of(tmp_path: Path, text: str):
    return {s.name: s for s in load_yaml(tmp_path, text).config.resolved_steps()}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    loaded = load_config(shipped_config_raw(path))  # with a stub where a config names a pretrained text encoder
    assert loaded.config.resolved_steps()
    if path.name != "original_tool_example.yaml":  # a config of the original tool: see test_config_legacy.py
        assert loaded.warnings == []  # our own examples use no legacy keys


def test_seed_examples_resolve_as_the_seed_document_describes():
    minimal = load_config(REPO / "configs" / "seed_minimal.yaml").config.resolved_steps()
    assert [(s.name, s.n_epochs, s.train_vae, s.gan_training) for s in minimal] == [
        ("vae_warmup", 10, True, False), ("vae_gan", 20, True, True)]
    complete = load_config(REPO / "configs" / "seed_complete.yaml").config
    vae_only, vae_gan = complete.resolved_steps()
    assert (vae_only.batch_size, vae_only.workers, vae_only.max_steps) == (2, 1, 2)
    assert vae_only.freeze == ["flow_processor", "text_encoder"]
    assert vae_gan.optimization.optimizers["discriminator"].lr == pytest.approx(5e-5)
    assert vae_gan.transition_on.mode == "epoch" and vae_gan.transition_on.max_epochs == 2


def test_nothing_given_means_small_cpu_defaults_and_the_builtin_shapes_dataset(tmp_path):
    cfg = load_yaml(tmp_path, """
        training:
          pipeline:
            steps: [{name: only, n_epochs: 1, train_vae: true}]
    """).config
    assert (cfg.data.img_size, cfg.data.channels, cfg.model.vae_dim, cfg.model.patch_size) == (32, 3, 32, 2)
    assert (cfg.training.batch_size, cfg.training.workers, cfg.training.device, cfg.training.precision) == (
        8, "auto", "auto", "auto")
    assert (cfg.training.compile, cfg.training.activation_checkpointing) == (False, False)
    assert cfg.model.text_encoder.type == "byte" and "text_encoder" not in cfg.model.model_dump()
    assert cfg.training.pipeline.datasets == {"shapes": ShapesDataset(size=2048, seed=0, holdout=16)}
    assert cfg.training.pipeline.retries == 1 and cfg.training.distributed.nproc_per_node == 1
    assert cfg.output.sample_sizes is None and "a red circle" in cfg.output.sample_captions  # None: each step's size
    assert (cfg.tracking.experiment_name, cfg.tracking.tracking_uri) == ("fluxflow", None)
    step = cfg.resolved_steps()[0]
    assert step.dataset == "shapes" and step.parent is None
    assert (step.kl_beta, step.lambda_adv, step.r1_interval, step.cfg_dropout, step.ema_decay) == (
        1e-4, 0.5, 16, 0.1, 0.999)
    assert step.transition_on.window == 20 and step.on_missed == "continue"
    assert (step.grad_clip, step.gradient_accumulation_steps) == (1.0, 1)
    vae = step.optimization.optimizers["vae"]
    assert (vae.type, vae.weight_decay) == ("AdamW", 0.1)  # nanoGPT's; only matrices and kernels decay


def test_defaults_are_deep_merged_under_each_step(tmp_path):
    steps = steps_of(tmp_path, """
        training:
          pipeline:
            defaults:
              train_vae: true
              kl_beta: 0.001
              freeze: [text_encoder]
              optimization:
                optimizers:
                  vae: {type: AdamW, lr: 0.0001, weight_decay: 0.05}
            steps:
              - name: inherits
                n_epochs: 1
              - name: overrides
                n_epochs: 1
                kl_beta: 0.5
                freeze: [flow_processor]
                optimization:
                  optimizers:
                    vae: {lr: 0.0002}
    """)
    inherits, overrides = steps["inherits"], steps["overrides"]
    assert inherits.train_vae and inherits.kl_beta == 0.001 and inherits.freeze == ["text_encoder"]
    assert overrides.kl_beta == 0.5
    assert overrides.freeze == ["flow_processor"]  # lists replace, they do not concatenate
    vae = overrides.optimization.optimizers["vae"]
    assert (vae.type, vae.lr, vae.weight_decay) == ("AdamW", 0.0002, 0.05)  # only lr overridden


def test_an_optimizer_of_another_type_replaces_the_inherited_one_whole(tmp_path):
    steps = steps_of(tmp_path, """
        training:
          pipeline:
            defaults:
              optimization:
                optimizers:
                  vae: {type: AdamW, betas: [0.5, 0.9]}
            steps:
              - {name: sgd, n_epochs: 1, train_vae: true,
                 optimization: {optimizers: {vae: {type: SGD, momentum: 0.9}}}}
    """)
    vae = steps["sgd"].optimization.optimizers["vae"]
    assert (vae.type, vae.momentum, vae.betas) == ("SGD", 0.9, None)


def test_a_transition_of_another_mode_replaces_the_inherited_one_but_scheduler_mode_merges(tmp_path):
    steps = steps_of(tmp_path, """
        training:
          pipeline:
            defaults:
              train_vae: true
              transition_on: {mode: loss_threshold, metric: vae_loss, threshold: 0.1, window: 5}
              optimization:
                schedulers: {vae: {type: ReduceLROnPlateau, mode: min, patience: 3}}
            steps:
              - {name: epochs, n_epochs: 2, transition_on: {mode: epoch},
                 optimization: {schedulers: {vae: {type: CosineAnnealingLR}}}}
              - {name: tighter, n_epochs: 2, transition_on: {threshold: 0.01},
                 optimization: {schedulers: {vae: {mode: max}}}}
    """)
    assert steps["epochs"].transition_on.mode == "epoch"
    assert steps["epochs"].optimization.schedulers["vae"].model_dump(exclude_none=True) == {
        "type": "CosineAnnealingLR", "eta_min_factor": 0.1, "interval": "step",
        "warmup_steps": 0}  # nothing of the plateau scheduler inherited (its interval: epoch neither)
    tighter = steps["tighter"]
    assert (tighter.transition_on.metric, tighter.transition_on.threshold, tighter.transition_on.window) == (
        "vae_loss", 0.01, 5)
    plateau = tighter.optimization.schedulers["vae"]
    assert (plateau.type, plateau.mode, plateau.patience, plateau.interval) == ("ReduceLROnPlateau", "max", 3, "epoch")


def test_per_step_batch_size_workers_lr_max_steps_and_dataset_override_the_globals(tmp_path):
    steps = steps_of(tmp_path, """
        training:
          batch_size: 16
          workers: 2
          lr: 0.002
          n_epochs: 3
          max_steps: 50
          pipeline:
            datasets:
              small: {type: shapes, size: 64}
              big: {type: shapes, size: 4096}
            default_dataset: small
            steps:
              - {name: globals, train_vae: true}
              - {name: own, train_vae: true, n_epochs: 1, batch_size: 4, workers: 0, lr: 0.01, max_steps: 5,
                 dataset: big}
    """)
    g, own = steps["globals"], steps["own"]
    assert (g.batch_size, g.workers, g.lr, g.n_epochs, g.max_steps, g.dataset) == (16, 2, 0.002, 3, 50, "small")
    assert (own.batch_size, own.workers, own.lr, own.n_epochs, own.max_steps, own.dataset) == (4, 0, 0.01, 1, 5, "big")
    assert g.optimization.optimizers["vae"].lr == 0.002 and own.optimization.optimizers["vae"].lr == 0.01


def test_yaml_1_1_exponent_strings_are_numbers(tmp_path):
    cfg = load_yaml(tmp_path, """
        training:
          lr: 1e-4
          pipeline:
            steps:
              - {name: s, n_epochs: 1, train_vae: true, kl_beta: 5E-3, kl_free_bits: "2e-1",
                 optimization: {optimizers: {vae: {lr: 3e-4, eps: 1e-8}}}}
    """).config
    step = cfg.resolved_steps()[0]
    assert cfg.training.lr == 1e-4 and step.kl_beta == 5e-3 and step.kl_free_bits == 0.2
    assert step.optimization.optimizers["vae"].lr == 3e-4 and step.optimization.optimizers["vae"].eps == 1e-8


def test_parents_follow_file_order_unless_after_names_a_branch_point(tmp_path):
    steps = steps_of(tmp_path, """
        training:
          pipeline:
            defaults: {train_vae: true, n_epochs: 1}
            steps:
              - {name: warmup}
              - {name: spade_off, after: warmup}
              - {name: spade_on, after: warmup, train_spade: true}
              - {name: later}
    """)
    names = ("warmup", "spade_off", "spade_on", "later")
    assert [steps[n].parent for n in names] == [None, "warmup", "warmup", "spade_on"]
    assert [steps[n].index for n in names] == [0, 1, 2, 3]


def test_every_trained_group_gets_an_optimizer_and_only_configured_groups_a_scheduler(tmp_path):
    steps = steps_of(tmp_path, """
        training:
          pipeline:
            defaults:
              optimization:
                optimizers: {flow: {lr: 0.0005}}
                schedulers: {vae: {type: StepLR, step_size: 2}}
            steps:
              - {name: gan, n_epochs: 3, train_vae: true, gan_training: true}
              - {name: full, n_epochs: 4, train_diff_full: true,
                 optimization: {schedulers: {flow: {type: LinearLR, interval: epoch},
                                             text_encoder: {type: LinearLR, warmup_steps: 10}}}}
    """)
    gan, full = steps["gan"], steps["full"]
    assert list(gan.optimization.optimizers) == ["vae", "discriminator"]  # flow not trained: left out
    assert gan.optimization.schedulers["vae"].model_dump(exclude_none=True) == {
        "type": "StepLR", "interval": "step", "warmup_steps": 0, "step_size": 2, "gamma": 0.1}
    assert list(full.optimization.optimizers) == ["flow", "text_encoder"]
    assert full.optimization.optimizers["flow"].lr == 0.0005
    assert full.optimization.schedulers["flow"].total_iters == 4  # interval epoch: defaults to the step's epochs
    text_encoder = full.optimization.schedulers["text_encoder"]
    # interval step: the step's optimizer steps after the warm-up, known when it runs (fluxflow/train/lr_schedule.py)
    assert (text_encoder.interval, text_encoder.warmup_steps, text_encoder.total_iters) == ("step", 10, None)
    assert "vae" not in full.optimization.schedulers


def test_loss_threshold_max_epochs_defaults_to_n_epochs(tmp_path):
    step = steps_of(tmp_path, """
        training:
          pipeline:
            steps:
              - {name: s, n_epochs: 7, train_vae: true,
                 transition_on: {mode: loss_threshold, metric: vae_loss, threshold: 0.05}}
    """)["s"]
    t = step.transition_on
    assert (t.mode, t.metric, t.threshold, t.max_epochs, t.window) == ("loss_threshold", "vae_loss", 0.05, 7, 20)


def test_a_dumped_config_loads_back_to_the_same_config():
    """The flow can pass the config itself (JSON) instead of a path."""
    for path in CONFIGS:
        config = load_config(shipped_config_raw(path)).config
        again = load_config(json.loads(json.dumps(config.model_dump(mode="json")))).config
        assert again == config
        assert [s.model_dump() for s in again.resolved_steps()] == [s.model_dump() for s in config.resolved_steps()]


def test_resolved_step_dump_is_json_and_concrete():
    step = load_config(REPO / "configs" / "quickstart.yaml").config.resolved_steps()[0]
    dump = json.loads(json.dumps(step.model_dump()))
    for key in ("n_epochs", "batch_size", "workers", "lr", "dataset", "kl_beta", "ema_decay", "on_missed"):
        assert dump[key] is not None


def test_the_config_reference_documents_every_field():
    from fluxflow.config import (DataConfig, DistributedConfig, FolderDataset, ModelConfig, OptimizerConfig,
                                 OutputConfig, PipelineSection, SchedulerConfig, ShapesDataset, StepConfig,
                                 TrackingConfig, TrainingConfig, Transition, WebDatasetConfig)

    doc = (REPO / "docs" / "CONFIG.md").read_text()
    models = (ModelConfig, DataConfig, TrainingConfig, DistributedConfig, PipelineSection, ShapesDataset, FolderDataset,
              WebDatasetConfig, StepConfig,
              Transition, OptimizerConfig, SchedulerConfig, OutputConfig, TrackingConfig)
    documented = set(re.findall(r"`([a-z0-9_]+(?:\.[a-z0-9_]+)*)`", doc))
    words = {part for name in documented for part in name.split(".")}
    missing = [f"{m.__name__}.{f}" for m in models for f in m.model_fields if f not in words]
    assert missing == []


def test_the_config_reference_gives_each_step_field_its_default_in_the_model():
    """docs/CONFIG.md's step tables against StepSettings, the one list of step fields: where the Default column holds
    a literal (a number, true/false, null, `[]`, a `name`), it is the model's default."""
    from fluxflow.config.steps import StepSettings

    rows = re.findall(r"^\| `([a-z0-9_]+)` \| [^|]* \| ([^|]*) \|", (REPO / "docs" / "CONFIG.md").read_text(), re.M)
    literals = {"true": True, "false": False, "null": None, "`[]`": []}

    def literal(cell: str):
        if cell in literals:
            return literals[cell]
        if re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", cell):
            return float(cell)
        name = re.fullmatch(r"`([a-z_]+)`", cell)
        return name.group(1) if name else ...  # ...: not a literal (e.g. "`training.lr`", "compressor, expander")

    fields, compared = StepSettings.model_fields, []
    for name, cell in rows:
        value = literal(cell.strip())
        if name in fields and not fields[name].is_required() and value is not ...:
            compared.append((name, value, fields[name].get_default(call_default_factory=True)))
    assert [c for c in compared if c[1] != c[2]] == []
    assert len(compared) >= 30


def test_grad_clip_and_accumulation_are_step_fields_with_defaults(tmp_path):
    steps = steps_of(tmp_path, """
        training:
          pipeline:
            defaults: {train_vae: true, n_epochs: 1, grad_clip: 0.5}
            steps:
              - {name: inherits}
              - {name: unclipped, grad_clip: 0, gradient_accumulation_steps: 4}
    """)
    assert (steps["inherits"].grad_clip, steps["inherits"].gradient_accumulation_steps) == (0.5, 1)
    assert (steps["unclipped"].grad_clip, steps["unclipped"].gradient_accumulation_steps) == (0.0, 4)


def test_adagrad_adadelta_and_multisteplr_resolve_with_torch_defaults(tmp_path):
    step = steps_of(tmp_path, """
        training:
          pipeline:
            steps:
              - {name: s, n_epochs: 2, train_vae: true, gan_training: true,
                 optimization: {optimizers: {vae: {type: Adagrad, lr: 0.01}, discriminator: {type: Adadelta}},
                                schedulers: {vae: {type: MultiStepLR, milestones: [100, 200], interval: step}}}}
    """)["s"]
    opt = step.optimization
    assert opt.optimizers["vae"].model_dump(exclude_none=True) == {
        "type": "Adagrad", "lr": 0.01, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0,
        "eps": 1e-10}
    assert opt.optimizers["discriminator"].model_dump(exclude_none=True) == {
        "type": "Adadelta", "lr": 1e-4, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0}
    assert opt.schedulers["vae"].model_dump(exclude_none=True) == {
        "type": "MultiStepLR", "interval": "step", "warmup_steps": 0, "milestones": [100, 200], "gamma": 0.1}


def test_unfreeze_overrides_a_freeze_from_the_defaults_or_the_same_step(tmp_path):
    steps = steps_of(tmp_path, """
        training:
          pipeline:
            defaults: {freeze: [compressor, expander, text_encoder]}
            steps:
              - {name: flow, n_epochs: 1, train_diff: true, unfreeze: [text_encoder]}
              - {name: own, n_epochs: 1, train_vae: true, freeze: [compressor, expander, flow_processor],
                 unfreeze: [compressor, expander]}
    """)
    assert steps["flow"].freeze == ["compressor", "expander"] and steps["flow"].unfreeze == ["text_encoder"]
    assert steps["own"].freeze == ["flow_processor"]


def test_each_dataset_type_dumps_in_the_shape_step_keys_were_made_from():
    """Datasets became one model per type; their dumps (hashed into step keys, cache keys and the config hash) keep
    the one-model shape: every type's keys, None where the type has none, unset optional fields left out. A dump
    validates back to the same dataset."""
    from pydantic import TypeAdapter

    from fluxflow.config import DatasetConfig

    adapter = TypeAdapter(DatasetConfig)
    none = dict.fromkeys(("size", "seed", "path", "captions_file", "urls", "length"))
    cases = {
        "shapes": ({"type": "shapes"}, {**none, "type": "shapes", "size": 2048, "seed": 0, "holdout": 16}),
        "folder": ({"type": "folder", "path": "p", "captions_file": "c", "img_size": 16},
                   {**none, "type": "folder", "path": "p", "captions_file": "c", "holdout": 16, "img_size": 16}),
        "webdataset": ({"type": "webdataset", "urls": "a-{0..3}.tar"},
                       {**none, "type": "webdataset", "urls": "a-{0..3}.tar", "holdout": 16}),
    }
    for written, dumped in cases.values():
        dataset = adapter.validate_python(written)
        assert dataset.model_dump(mode="json") == dumped
        assert adapter.validate_python(dumped) == dataset
