"""Numbers in the config: true/false is not a number, numbers are finite, whole numbers fit in 64 bits; `--set` of a
list item says to set the list whole; a step lr that every optimizer of the step overrides is reported unused."""
from __future__ import annotations

import pytest
from helpers_tiny import VAE_STEP, tiny_raw

from flows import cli_train
from fluxflow.config import ConfigError, load_config

STEPS = [dict(VAE_STEP), {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff_full": True}]
WARM = "training.pipeline.steps.warm"


def problems(tmp_path, overrides) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(tiny_raw(tmp_path, STEPS), overrides)
    return [str(issue) for issue in raised.value.issues]


@pytest.mark.parametrize("override,path", [
    ("training.batch_size=true", "training.batch_size"),
    ("training.n_epochs=true", "training.n_epochs"),
    ("training.seed=false", "training.seed"),
    ("training.lr=true", "training.lr"),
    ("output.log_interval=true", "output.log_interval"),
    ("model.patch_size=true", "model.patch_size"),  # a Literal[1, 2]: true == 1 in Python
    ("training.pipeline.datasets={shapes: {type: shapes, size: true}}", "training.pipeline.datasets.shapes.size"),
    (f"{WARM}.batch_size=true", "training.pipeline.steps[0].batch_size"),
    (f"{WARM}.kl_beta=false", "training.pipeline.steps[0].kl_beta"),
    ("training.pipeline.defaults.max_steps=true", "training.pipeline.defaults.max_steps"),
    (f"{WARM}.optimization.optimizers.vae.betas=[true, 0.9]", "training.pipeline.steps[0].optimization.optimizers"
                                                              ".vae.betas[0]"),
    ("promotion.seeds=[0, true]", "promotion.seeds[1]"),
    (f"{WARM}.resources.custom={{node_a: true}}", "training.pipeline.steps[0].resources.custom.node_a"),
    (f"{WARM}.resources.memory=true", "training.pipeline.steps[0].resources.memory"),  # before parse_bytes
])
def test_true_or_false_is_not_a_number(tmp_path, override, path):
    found = problems(tmp_path, [override])
    got = "False" if "false" in override else "True"
    assert found == [f"{path}: must be a number, not true/false (got {got}) (from --set {override.partition('=')[0]})"]


def test_true_and_false_stay_valid_for_switches(tmp_path):
    config = load_config(tiny_raw(tmp_path, STEPS), ["training.compile=true", f"{WARM}.use_lpips=false"]).config
    assert config.training.compile is True and config.resolved_steps()[0].use_lpips is False


@pytest.mark.parametrize("override,path", [
    ("training.batch_size=1e23", "training.batch_size"),
    ("training.batch_size=100000000000000000000000", "training.batch_size"),
    (f"{WARM}.max_steps=1e19", "training.pipeline.steps[0].max_steps"),
    (f"{WARM}.resources.memory=1e30", "training.pipeline.steps[0].resources.memory"),
])
def test_a_whole_number_past_64_bits_is_refused_in_one_line(tmp_path, override, path):
    found = problems(tmp_path, [override])
    assert len(found) == 1 and found[0].startswith(f"{path}: must fit in 64 bits (at most 9223372036854775807)"), found


def test_a_whole_number_written_as_a_float_is_still_a_whole_number(tmp_path):
    config = load_config(tiny_raw(tmp_path, STEPS), ["training.batch_size=2.0", f"{WARM}.max_steps=1e3"]).config
    assert [(s.batch_size, s.max_steps) for s in config.resolved_steps()] == [(2, 1000), (2, 2)]


@pytest.mark.parametrize("override,path", [
    ("training.lr=.nan", "training.lr"),
    ("training.lr=.inf", "training.lr"),
    (f"{WARM}.lr=-.inf", "training.pipeline.steps[0].lr"),
    (f"{WARM}.kl_beta=.inf", "training.pipeline.steps[0].kl_beta"),
    (f"{WARM}.t_logit_mean=.nan", "training.pipeline.steps[0].t_logit_mean"),
    (f"{WARM}.transition_on={{mode: loss_threshold, metric: vae_loss, threshold: .nan}}",
     "training.pipeline.steps[0].transition_on.threshold"),
    (f"{WARM}.optimization.optimizers.vae.betas=[.nan, 0.9]",
     "training.pipeline.steps[0].optimization.optimizers.vae.betas[0]"),
    ("promotion.min_improvement=.nan", "promotion.min_improvement"),
    (f"{WARM}.resources.gpus=.inf", "training.pipeline.steps[0].resources.gpus"),  # was an OverflowError
])
def test_a_number_that_is_not_finite_is_refused_naming_the_field(tmp_path, override, path):
    found = problems(tmp_path, [override])
    assert len(found) == 1 and found[0].startswith(f"{path}: Input should be a finite number"), found


@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_a_memory_size_that_is_not_finite_is_refused_in_one_line(tmp_path, value):  # .inf was an OverflowError
    assert problems(tmp_path, [f"{WARM}.resources.memory={value}"]) == [
        f"training.pipeline.steps[0].resources.memory: {value[1:]} is not a size: write e.g. 4GB, 512MiB "
        f"or a number of bytes (got {value[1:]}) (from --set {WARM}.resources.memory)"]


@pytest.mark.parametrize("override,example", [(f"{WARM}.optimization.optimizers.vae.betas.0=0.5", "[0.5, ...]"),
                                              (f"{WARM}.optimization.optimizers.vae.betas.1=0.5", "[..., 0.5]")])
def test_an_item_of_a_list_cannot_be_set_and_the_message_says_how_to_set_the_list(tmp_path, override, example):
    key = override.partition("=")[0]
    assert problems(tmp_path, [override]) == [
        f"--set {key}: an item of a list cannot be set; set the whole list, e.g. {key.rpartition('.')[0]}={example}"]


def test_an_item_of_a_list_in_the_file_cannot_be_set_and_the_message_shows_the_list_with_it(tmp_path):
    steps = [dict(VAE_STEP, optimization={"optimizers": {"vae": {"betas": [0.9, 0.99]}}})]
    with pytest.raises(ConfigError) as raised:
        load_config(tiny_raw(tmp_path, steps), [f"{WARM}.optimization.optimizers.vae.betas.1=0.95"])
    assert [str(issue) for issue in raised.value.issues] == [
        f"--set {WARM}.optimization.optimizers.vae.betas.1: an item of a list cannot be set; set the whole list, "
        f"e.g. {WARM}.optimization.optimizers.vae.betas=[0.9, 0.95]"]


def test_a_step_lr_that_every_optimizer_of_the_step_overrides_is_reported_unused(tmp_path):
    gan = {"name": "gan", "n_epochs": 1, "train_vae": True, "gan_training": True, "lr": 3e-4,
           "optimization": {"optimizers": {"vae": {"lr": 1e-4}, "discriminator": {"lr": 2e-4}}}}
    warm = dict(VAE_STEP, lr=3e-4, optimization={"optimizers": {"vae": {"lr": 1e-3}}})
    loaded = load_config(tiny_raw(tmp_path, [warm, gan]))
    assert loaded.warnings == [
        "training.pipeline.steps[0].lr: has no effect: every optimizer of the step sets its own lr (vae)",
        "training.pipeline.steps[1].lr: has no effect: every optimizer of the step sets its own lr (vae, "
        "discriminator)"]
    assert [s.optimization.optimizers["vae"].lr for s in loaded.config.resolved_steps()] == [1e-3, 1e-4]


def test_a_step_lr_that_an_optimizer_of_the_step_uses_gives_no_warning(tmp_path):
    gan = {"name": "gan", "n_epochs": 1, "train_vae": True, "gan_training": True, "lr": 3e-4,
           "optimization": {"optimizers": {"vae": {"lr": 1e-4}}}}  # the discriminator trains at the step's lr
    loaded = load_config(tiny_raw(tmp_path, [dict(VAE_STEP), gan]))
    assert loaded.warnings == []
    assert loaded.config.resolved_steps()[1].optimization.optimizers["discriminator"].lr == 3e-4


def test_an_optimizer_lr_of_the_defaults_also_overrides_the_step_lr(tmp_path):
    raw = tiny_raw(tmp_path, [dict(VAE_STEP, lr=3e-4)])
    raw["training"]["pipeline"]["defaults"] = {"optimization": {"optimizers": {"vae": {"lr": 1e-3}}}}
    assert load_config(raw).warnings == [
        "training.pipeline.steps[0].lr: has no effect: every optimizer of the step sets its own lr (vae)"]


def test_the_cli_prints_one_line_for_a_boolean_batch_size(tmp_path, capsys):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(tmp_path / "out", STEPS)))
    assert cli_train.main(["--config", str(path), "--validate-pipeline", "--quiet",
                           "--set", "training.batch_size=true"]) == 2
    err = capsys.readouterr().err
    assert "training.batch_size: must be a number, not true/false (got True)" in err and "Traceback" not in err


def test_a_boolean_number_does_not_hide_the_other_problems_of_its_section(tmp_path):
    assert problems(tmp_path, ["training.batch_size=true", "training.pipeline.datasets={shapes: {type: shape}}",
                               "training.n_epochs=0"]) == [
        "training.batch_size: must be a number, not true/false (got True) (from --set training.batch_size)",
        "training.n_epochs: Input should be greater than or equal to 1 (got 0) (from --set training.n_epochs)",
        "training.pipeline.datasets.shapes.type: must be one of 'shapes', 'folder', 'webdataset' (got 'shape') "
        "(did you mean 'shapes'?) (from --set training.pipeline.datasets)"]


def test_an_lr_of_the_defaults_that_no_step_trains_at_is_reported_unused(tmp_path):
    """Only a step's own lr was checked: `defaults.lr: 0.5` with every optimizer setting its own trained nothing at
    0.5, unsaid."""
    warm = dict(VAE_STEP, optimization={"optimizers": {"vae": {"lr": 1e-3}}})
    raw = tiny_raw(tmp_path, [warm])
    raw["training"]["pipeline"]["defaults"] = {"lr": 0.5}
    assert load_config(raw).warnings == [
        "training.pipeline.defaults.lr: has no effect: every step sets its own lr or every optimizer of it does"]
    raw["training"]["pipeline"]["steps"] = [dict(VAE_STEP)]  # its optimizer trains at the defaults' lr
    assert load_config(raw).warnings == []


def test_loss_and_ema_fields_a_step_never_reads_are_said_and_the_defaults_ones_are_not(tmp_path):
    """`lambda_adv` on a step without a GAN, flow-objective knobs on a VAE step...: accepted without a word."""
    warm = dict(VAE_STEP, lambda_adv=0.9, r1_gamma=5, cfg_dropout=0.5, t_shift=3.0, lambda_lpips=0.7, kl_beta=1e-3,
                on_missed="fail")
    gan = {"name": "gan", "n_epochs": 1, "gan_training": True, "adaptive_adv_weight": True}  # GAN only: no recon
    flow = {"name": "flow", "n_epochs": 1, "train_diff_full": True, "kl_beta": 1e-3, "min_snr_gamma": 3.0,
            "ema_decay": 0.99}
    raw = tiny_raw(tmp_path, [warm, gan, flow])
    raw["training"]["pipeline"]["defaults"] = {"lambda_adv": 0.3}  # for the steps that have a GAN: not said
    assert load_config(raw).warnings == [
        "training.pipeline.steps[0].lambda_adv: has no effect: the step has no GAN (gan_training)",
        "training.pipeline.steps[0].lambda_lpips: has no effect: the step has no LPIPS term (use_lpips)",
        "training.pipeline.steps[0].r1_gamma: has no effect: the step has no GAN (gan_training)",
        "training.pipeline.steps[0].cfg_dropout: has no effect: the step trains no flow model (train_diff, "
        "train_diff_full)",
        "training.pipeline.steps[0].t_shift: has no effect: the step trains no flow model (train_diff, "
        "train_diff_full)",
        "training.pipeline.steps[0].on_missed: has no effect: it applies to a loss_threshold transition; this step "
        "runs its n_epochs",
        "training.pipeline.steps[1].adaptive_adv_weight: has no effect: it balances the reconstruction loss's "
        "gradient at the trained expander: it needs train_vae and the expander not frozen",
        "training.pipeline.steps[2].kl_beta: has no effect: the step trains no VAE (train_vae, gan_training)",
        "training.pipeline.steps[2].min_snr_gamma: has no effect: loss_weighting is not min_snr"]


def test_image_statistics_weights_and_switches_that_do_nothing_are_said(tmp_path):
    """`lambda_histogram` on a flow step, `lambda_contrast` without `train_contrast`: accepted without a word."""
    vae = dict(VAE_STEP, lambda_contrast=2.0, train_histogram=True, lambda_histogram=0.5, train_coarseness=False)
    flow = {"name": "flow", "n_epochs": 1, "train_diff": True, "lambda_histogram": 0.5}
    assert load_config(tiny_raw(tmp_path, [vae, flow])).warnings == [
        "training.pipeline.steps[0].lambda_contrast: has no effect: train_contrast is off",
        "training.pipeline.steps[1].lambda_histogram: has no effect: the step has no reconstruction loss (train_vae)"]


def test_a_step_whose_vae_loss_terms_are_all_weighted_0_is_said(tmp_path):
    """It ran with a VAE loss and a gradient norm of 0.0 on every batch, its plan saying it trained the VAE."""
    silent = dict(VAE_STEP, recon_l1_weight=0, recon_mse_weight=0, kl_beta=0)
    gan_only = {"name": "gan", "n_epochs": 1, "gan_training": True, "lambda_adv": 0, "kl_beta": 0,
                "freeze": ["compressor"]}
    contrast_left = dict(VAE_STEP, name="c", recon_l1_weight=0, recon_mse_weight=0, kl_beta=0, train_contrast=True)
    assert load_config(tiny_raw(tmp_path, [silent, gan_only, contrast_left])).warnings == [
        "training.pipeline.steps[0]: trains compressor and expander with every loss term that reaches them weighted 0 "
        "(kl_beta, recon_l1_weight, recon_mse_weight): they will not change",
        "training.pipeline.steps[1]: trains expander with every loss term that reaches it weighted 0 (kl_beta, "
        "lambda_adv): it will not change"]  # steps[2] has its contrast term (0.05)
    assert load_config(tiny_raw(tmp_path, [dict(VAE_STEP, recon_l1_weight=0, kl_beta=0)])).warnings == []


def test_a_ray_address_under_the_local_executor_is_said_to_have_no_effect(tmp_path):
    raw = tiny_raw(tmp_path)
    raw["training"]["executor"] = {"address": "10.0.0.5:6379"}
    assert load_config(raw).warnings == [
        "training.executor.address: has no effect: training.executor.kind is local (the steps run in this process); "
        "set kind: ray to run them on that cluster"]


def test_n_epochs_on_a_loss_threshold_step_with_its_own_max_epochs_is_said_to_have_no_effect(tmp_path):
    watched = {"mode": "loss_threshold", "metric": "vae_loss", "threshold": 0.1}
    bounded = dict(VAE_STEP, n_epochs=5, transition_on=dict(watched, max_epochs=2))
    defaulted = dict(VAE_STEP, name="second", n_epochs=5, transition_on=watched)  # n_epochs is its max_epochs
    assert load_config(tiny_raw(tmp_path, [bounded, defaulted])).warnings == [
        "training.pipeline.steps[0].n_epochs: has no effect: its loss_threshold transition ends it by "
        "transition_on.max_epochs"]


def test_a_loss_threshold_step_with_its_own_max_epochs_needs_no_n_epochs(tmp_path):
    """n_epochs was required (nothing set it), and written on the step it was said to have no effect."""
    watched = {"mode": "loss_threshold", "metric": "vae_loss", "threshold": 0.1, "max_epochs": 3}
    step = {k: v for k, v in VAE_STEP.items() if k != "n_epochs"}
    loaded = load_config(tiny_raw(tmp_path, [dict(step, transition_on=watched)]))
    assert loaded.warnings == [] and loaded.config.resolved_steps()[0].transition_on.max_epochs == 3
    with pytest.raises(ConfigError, match="n_epochs: required: .* transition_on.max_epochs"):
        load_config(tiny_raw(tmp_path, [dict(step, transition_on={k: v for k, v in watched.items()
                                                                   if k != "max_epochs"})]))


def test_a_key_written_in_another_section_than_its_own_is_pointed_there(tmp_path):
    raw = tiny_raw(tmp_path, [dict(VAE_STEP, checkpoint_save_interval=10, metric="vae_loss", enabled=True)])
    raw["training"].update(log_interval=5, output_path="out")
    raw["training"]["distributed"] = {"seed": 1}  # not at a section's top: no guess
    with pytest.raises(ConfigError) as caught:
        load_config(raw)
    assert sorted(map(str, caught.value.issues)) == [
        "training.distributed.seed: unknown key",
        "training.log_interval: unknown key (it is a field of output: output.log_interval)",
        "training.output_path: unknown key (it is a field of output: output.output_path)",
        "training.pipeline.steps[0].checkpoint_save_interval: unknown key (it is a field of output: "
        "output.checkpoint_save_interval)",
        "training.pipeline.steps[0].enabled: unknown key",  # promotion's, not a step's
        "training.pipeline.steps[0].metric: unknown key (it is a field of the step's transition_on: "
        "transition_on.metric)"]


def test_a_replicated_step_s_own_seed_is_said_to_have_no_effect(tmp_path):
    """--set training.pipeline.steps.b.seed=7 validated, retrained nothing, and was tagged as an override."""
    steps = [dict(VAE_STEP, seed=3), {"name": "b", "n_epochs": 1, "train_vae": True, "after": "warm", "seed": 7}]
    raw = tiny_raw(tmp_path, steps)
    raw["training"]["replicates"] = {"seeds": [0, 1], "from_steps": ["b"]}
    assert load_config(raw).warnings == [
        "training.pipeline.steps[1].seed: has no effect: the step is replicated, and each replica trains with one of "
        "training.replicates.seeds",
        # warm sets its own seed and b is replicated: the written training.seed reaches no step
        "training.seed: has no effect: every step sets its own seed or is replicated (each replica trains with one "
        "of training.replicates.seeds)"]


def test_a_step_global_or_default_that_every_step_sets_for_itself_is_said_to_have_no_effect(tmp_path):
    """--set training.n_epochs=7 (or max_steps, or the defaults' n_epochs) on a config whose steps each set their own
    validated without a word and changed no step; so did training.seed with every step replicated. As for an lr
    (above), a value that reaches no step is said; one that some step takes is not."""
    steps = [dict(VAE_STEP), {"name": "b", "n_epochs": 2, "max_steps": 2, "train_vae": True}]
    overrides = ["training.n_epochs=7", "training.max_steps=50", "training.pipeline.defaults.n_epochs=7"]
    loaded = load_config(tiny_raw(tmp_path, steps), overrides)
    assert loaded.warnings == [
        "training.pipeline.defaults.n_epochs: has no effect: every step sets its own n_epochs",
        "training.n_epochs: has no effect: every step sets its own n_epochs",
        "training.max_steps: has no effect: every step sets its own max_steps"]
    assert [s.n_epochs for s in loaded.config.resolved_steps()] == [1, 2]
    del steps[1]["n_epochs"]  # b takes the defaults' n_epochs: only training.n_epochs reaches no step
    assert [w for w in load_config(tiny_raw(tmp_path, steps), overrides).warnings if "n_epochs" in w] == [
        "training.n_epochs: has no effect: every step sets its own n_epochs or training.pipeline.defaults sets it"]
    assert [w for w in load_config(tiny_raw(tmp_path, steps), overrides[:1]).warnings if "n_epochs" in w] == []
    steps[1]["n_epochs"] = 2
    replicated = load_config(tiny_raw(tmp_path, steps), ["training.replicates={seeds: [0, 1]}"]).warnings
    assert replicated == ["training.seed: has no effect: every step sets its own seed or is replicated (each replica "
                          "trains with one of training.replicates.seeds)"]
    assert load_config(tiny_raw(tmp_path, steps), ["training.replicates={seeds: [0, 1], from_steps: [b]}"]).warnings \
        == []  # warm trains at training.seed


# A key YAML reads as a number (`2024:`) or as true/false (`on:`): one issue at the key's dotted path, with the hint
# a step name written so gets.
QUOTE = "YAML reads an unquoted number as a number: quote the value"


def test_a_dataset_named_with_a_bare_number_is_one_issue_at_its_name_not_a_traceback(tmp_path):
    """`datasets: {2024: ...}` crashed validation (a TypeError in the rule on names) and, past it, the schema's
    issue said `training.pipeline.datasets[2024].[key]`, the path of a list's item."""
    raw = tiny_raw(tmp_path, STEPS)
    raw["training"]["pipeline"].update(datasets={2024: {"type": "shapes", "size": 32, "holdout": 4}},
                                       default_dataset="2024")
    with pytest.raises(ConfigError) as raised:
        load_config(raw)
    assert [str(issue) for issue in raised.value.issues] == [
        f"training.pipeline.datasets.2024: Keys should be strings (got 2024); {QUOTE}"]


def put(raw: dict, *keys):
    """raw[keys[0]]...[keys[-2]] = keys[-1]."""
    *where, key, value = keys
    for part in where:
        raw = raw[part]
    raw[key] = value


@pytest.mark.parametrize("keys,issues", [
    ((1, 2), [f"1: Keys should be strings (got 1); {QUOTE}"]),
    (("model", 1, 2), [f"model.1: Keys should be strings (got 1); {QUOTE}"]),
    (("training", "pipeline", "steps", 0, 3, 1), [f"training.pipeline.steps[0].3: Keys should be strings (got 3); "
                                                  f"{QUOTE}"]),
    (("training", "pipeline", "datasets", "shapes", 5, 1),
     [f"training.pipeline.datasets.shapes.5: Keys should be strings (got 5); {QUOTE}"]),
    (("training", "pipeline", "steps", 0, "resources", {"custom": {1: 2}}),
     [f"training.pipeline.steps[0].resources.custom.1: Keys should be strings (got 1); {QUOTE}"]),
    (("training", "pipeline", "steps", 1, "optimization", {"optimizers": {2: {"type": "AdamW"}}}),
     [f"training.pipeline.steps[1].optimization.optimizers.2: Keys should be strings (got 2); {QUOTE}"]),
    (("training", "pipeline", "steps", 0, "transition_on", {True: 1}),  # `on:` is true in YAML 1.1
     ["training.pipeline.steps[0].transition_on.True: Keys should be strings (got True); YAML reads unquoted "
      "yes/no/on/off as true/false: quote the value"]),
    (("training", "pipeline", "datasets", {"shapes": {"type": "shapes"}, 7: {"type": "shapes", "size": 0}}),
     [f"training.pipeline.datasets.7: Keys should be strings (got 7); {QUOTE}",  # and its value under that name
      "training.pipeline.datasets.7.size: Input should be greater than or equal to 1 (got 0)"]),
])
def test_a_key_read_as_a_number_is_named_by_its_dotted_path_list_positions_keep_their_index(tmp_path, keys, issues):
    """An int in a path was always written as a list position: `model[1]: Keys should be strings`."""
    raw = tiny_raw(tmp_path, STEPS)
    put(raw, *keys)
    with pytest.raises(ConfigError) as raised:
        load_config(raw)
    assert [str(issue) for issue in raised.value.issues] == issues


def test_whether_a_step_reads_its_lr_is_known_only_from_its_resolution():
    """It keeps a finished step's weights key (an unread lr is left out of it): a step validated again from its dump
    would have guessed, and two processes could disagree on reusing the step."""
    from fluxflow.config import ResolvedStep

    raw = tiny_raw("out", [dict(VAE_STEP, optimization={"optimizers": {"vae": {"lr": 1e-3}}})])
    step = load_config(raw).config.resolved_steps()[0]
    assert step.lr_read is False and step.model_copy(update={"index": 3}).lr_read is False
    with pytest.raises(RuntimeError, match="was not made by resolve_step"):
        ResolvedStep.model_validate(step.model_dump()).lr_read


@pytest.mark.parametrize("key,path", [
    (f"{WARM}.resources.memory", "training.pipeline.steps[0].resources.memory"),
    ("training.pipeline.defaults.resources.memory", "training.pipeline.defaults.resources.memory")])
@pytest.mark.parametrize("value", ["0.5", "2.5"])
def test_a_memory_size_that_is_not_a_whole_number_of_bytes_is_refused_naming_the_field(tmp_path, key, path, value):
    """Memory is in bytes (docs/CONFIG.md): 0.5 was truncated to 0 bytes, and the step ran with no memory reserved."""
    assert problems(tmp_path, [f"{key}={value}"]) == [
        f"{path}: {value} is not a whole number of bytes (memory is in bytes): write e.g. {value}GB or 512MiB "
        f"(got {value}) (from --set {key})"]


def test_a_fraction_of_a_unit_reserves_at_least_what_it_says():
    from flows.ray_steps import step_request

    def reserved(memory) -> float:
        step = {"name": "a", "n_epochs": 1, "train_vae": True, "resources": {"memory": memory}}
        config = load_config({"training": {"executor": {"kind": "local"}, "pipeline": {"steps": [step]}}}).config
        return step_request(config.resolved_steps()[0], 1, False)["memory"]

    assert reserved("0.5GB") == 5e8 and reserved("0.5GiB") == 2**29 and reserved(2048.0) == 2048
    assert reserved("0.0001KB") == 1  # a tenth of a byte: rounded up, not down to no reservation
