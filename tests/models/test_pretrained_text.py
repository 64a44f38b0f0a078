"""A pretrained frozen text encoder (`model.text_encoder: {type: pretrained, path}`): validated without torch or
transformers, loaded offline from a local directory, frozen, out of checkpoints, and trained through by a flow step
whose checkpoint fluxflow-generate uses on its own."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers_tiny import TINY_MODEL, VAE_STEP, one_torch_thread, tiny_config, tiny_raw
from pretrained_fixture import tiny_clip_dir, write_stub_pretrained

from fluxflow.config import ConfigError, load_config

__all__ = ["one_torch_thread", "tiny_clip_dir"]

FLOW_STEP = {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff": True, "cfg_dropout": 0.5}


def pretrained_model(path, **sizes) -> dict:
    model = {k: v for k, v in TINY_MODEL.items() if k != "text_embedding_dim"}
    return dict(model, text_encoder={"type": "pretrained", "path": str(path)}, **sizes)


def issues_of(raw: dict) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_config(raw)
    return {issue.path: issue.message for issue in info.value.issues}


def test_a_missing_directory_is_a_validation_error_without_torch_or_transformers(tmp_path):
    missing = tmp_path / "no-such-encoder"
    raw = tiny_raw(tmp_path, [FLOW_STEP], model=pretrained_model(missing))
    code = ("import json, sys; from fluxflow.config import ConfigError, load_config\n"
            f"raw = json.loads({json.dumps(json.dumps(raw))})\n"
            "try:\n    load_config(raw); issues = []\n"
            "except ConfigError as e:\n    issues = [[i.path, i.message] for i in e.issues]\n"
            "print(json.dumps({'issues': issues,\n"
            "                  'imported': [m for m in ('torch', 'transformers') if m in sys.modules]}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert [path for path, _ in out["issues"]] == ["model.text_encoder.path"]
    assert str(missing) in out["issues"][0][1] and "not found" in out["issues"][0][1]
    assert out["imported"] == []  # what keeps validation fast: its time is measured in bench/, not asserted here


def test_without_transformers_a_pretrained_encoder_is_refused_naming_the_extra(tmp_path, monkeypatch, capsys):
    """transformers is the `pretrained` extra: validation (fluxflow-train) refuses the config before any training."""
    import yaml

    from flows import cli_train

    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` finds when it is not installed
    directory = write_stub_pretrained(tmp_path / "enc", width=32)
    issues = issues_of(tiny_raw(tmp_path, [FLOW_STEP], model=pretrained_model(directory)))
    assert "pip install 'fluxflow-pipelines[pretrained]'" in issues["model.text_encoder.type"]
    config_file = tmp_path / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(tiny_raw(tmp_path, [FLOW_STEP], model=pretrained_model(directory))))
    assert cli_train.main(["--config", str(config_file), "--validate-pipeline"]) == 2
    err = capsys.readouterr().err
    assert "model.text_encoder.type" in err and "fluxflow-pipelines[pretrained]" in err and "Traceback" not in err
    # The byte encoder needs no transformers.
    assert load_config(tiny_raw(tmp_path, [FLOW_STEP])).config.model.text_encoder.type == "byte"


def test_loading_a_pretrained_encoder_without_transformers_names_the_extra(tiny_clip_dir, monkeypatch):
    from fluxflow.config.file_checks import UnusablePretrained
    from fluxflow.models import PretrainedTextEncoder

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UnusablePretrained, match=r"fluxflow-pipelines\[pretrained\]"):
        PretrainedTextEncoder(str(tiny_clip_dir), 8)


@pytest.mark.parametrize("damage,expected", [
    ("no_config", "no config.json"), ("bert", "model_type 'bert' is not a supported text encoder"),
    ("no_tokenizer", "no tokenizer"), ("no_weights", "no weights")])
def test_unusable_directory_contents_name_the_field_and_the_path(tmp_path, damage, expected):
    directory = write_stub_pretrained(tmp_path / "enc", model_type="bert" if damage == "bert" else "clip_text_model")
    removed = {"no_config": "config.json", "no_tokenizer": "tokenizer.json", "no_weights": "model.safetensors"}
    if damage in removed:
        (directory / removed[damage]).unlink()
    issues = issues_of(tiny_raw(tmp_path, [FLOW_STEP], model=pretrained_model(directory)))
    assert list(issues) == ["model.text_encoder.path"]
    assert expected in issues["model.text_encoder.path"] and str(directory) in issues["model.text_encoder.path"]


@pytest.mark.parametrize("config_json,expected", [
    ({"model_type": ["clip_text_model"]}, "model_type ['clip_text_model'] is not a supported text encoder"),
    ({"model_type": "clip", "text_config": [64]}, "no embedding width"), ([1, 2], "model_type None")])
def test_a_config_json_of_the_wrong_shape_is_an_issue_naming_the_path(tmp_path, config_json, expected):
    """A config.json with a list where a name or a section belongs: was a TypeError / AttributeError traceback."""
    directory = write_stub_pretrained(tmp_path / "enc")
    (directory / "config.json").write_text(json.dumps(config_json))
    issues = issues_of(tiny_raw(tmp_path, [FLOW_STEP], model=pretrained_model(directory)))
    assert expected in issues["model.text_encoder.path"] and str(directory) in issues["model.text_encoder.path"]


def test_the_text_width_is_derived_from_the_encoder_and_must_fit(tmp_path):
    directory = write_stub_pretrained(tmp_path / "enc", width=48, max_positions=40)
    config = tiny_config(tmp_path, [FLOW_STEP], model=pretrained_model(directory))
    assert config.model.text_embedding_dim == 48
    assert config.model.model_dump()["text_encoder"] == {"type": "pretrained", "path": str(directory)}
    issues = issues_of(tiny_raw(tmp_path, [FLOW_STEP], model=pretrained_model(directory, text_embedding_dim=64,
                                                                                text_max_len=41)))
    assert "width 48" in issues["model.text_embedding_dim"]
    assert "40 positions" in issues["model.text_max_len"]


def test_a_pretrained_encoder_stays_frozen(tmp_path):
    directory = write_stub_pretrained(tmp_path / "enc", width=32)
    steps = [dict(FLOW_STEP, train_diff=False, train_diff_full=True),
             dict(FLOW_STEP, name="b", unfreeze=["text_encoder"])]
    issues = issues_of(tiny_raw(tmp_path, steps, model=pretrained_model(directory)))
    assert set(issues) == {"training.pipeline.steps[0].train_diff_full", "training.pipeline.steps[1].unfreeze[0]"}
    assert all("stays frozen" in message for message in issues.values())


def test_the_byte_encoder_stays_the_default_and_out_of_the_dumps(tmp_path):
    plain = tiny_config(tmp_path, [VAE_STEP])
    explicit = tiny_config(tmp_path, [VAE_STEP], model=dict(TINY_MODEL, text_encoder={"type": "byte"}))
    assert plain.model.text_encoder.type == "byte"
    assert "text_encoder" not in plain.model.model_dump()  # step keys of existing configs do not change
    assert explicit.model.model_dump() == plain.model.model_dump()
    issues = issues_of(tiny_raw(tmp_path, [VAE_STEP], model=dict(TINY_MODEL, text_encoder={"type": "byte",
                                                                                            "path": "x"})))
    assert list(issues) == ["model.text_encoder.path"]


@pytest.mark.slow  # imports transformers (~4 s)
def test_the_pretrained_encoder_loads_offline_frozen_and_out_of_state_dicts(tiny_clip_dir):
    import torch

    from fluxflow.models import PretrainedTextEncoder, build_component

    config = tiny_config("unused", [FLOW_STEP], model=pretrained_model(tiny_clip_dir))
    encoder = build_component("text_encoder", config.model, 3)
    assert isinstance(encoder, PretrainedTextEncoder)
    ids, mask = encoder.tokenize(["a red circle", "a blue square on a gray background", ""])
    assert ids.shape == mask.shape == (3, config.model.text_max_len) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [5, 9, 2]  # <s> words </s>; the empty caption keeps <s> </s>
    tokens, pooled = encoder(ids, mask)
    assert tokens.shape == (3, config.model.text_max_len, 32) and pooled.shape == (3, 32)
    assert torch.all(tokens[~mask] == 0) and torch.isfinite(tokens).all()
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.model.training  # dropout never switches on
    assert encoder.state_dict() == {}
    byte_weights = build_component("text_encoder", tiny_config("unused").model, 3).state_dict()
    with pytest.raises(ValueError, match="pretrained one"):
        encoder.load_state_dict(byte_weights)


def test_token_count_says_when_a_text_is_longer_than_either_encoder_reads(tiny_clip_dir):
    """fluxflow-generate warns about a prompt whose end is cut (flows/cli_generate.py): each encoder's count is the
    length its tokenize would have without truncation."""
    from fluxflow.models import build_component

    for model in (pretrained_model(tiny_clip_dir), dict(TINY_MODEL)):
        encoder = build_component("text_encoder", tiny_config("unused", [FLOW_STEP], model=model).model, 3)
        short, long = "a red circle", " ".join(["red"] * encoder.max_len)
        _, mask = encoder.tokenize([short, long])
        assert encoder.token_count(short) == mask[0].sum() < encoder.max_len
        assert encoder.token_count(long) > encoder.max_len == mask[1].sum()  # cut to max_len


@pytest.mark.slow  # three CLIP directories written and loaded: ~3 s
def test_the_cache_key_of_a_pretrained_encoder_changes_with_its_weights(tmp_path):
    """Its state_dict is empty (the weights stay in the directory), but the text cache's key must see them: other
    weights saved under the same directory name must not reuse a stale cache."""
    from fluxflow.cache.fingerprint import module_sha256
    from fluxflow.models import build_component
    from pretrained_fixture import write_tiny_clip

    def key(seed: int, where: str) -> str:
        directory = write_tiny_clip(tmp_path / where / "encoder", seed=seed)
        config = tiny_config("unused", [FLOW_STEP], model=pretrained_model(directory))
        return module_sha256(build_component("text_encoder", config.model, 3))

    first = key(0, "first")
    assert key(0, "again") == first
    assert key(1, "other") != first


@pytest.mark.slow
def test_a_flow_step_trains_with_it_and_generate_uses_the_checkpoint_alone(tmp_path, tiny_clip_dir):
    import torch

    from fluxflow.checkpoints.io import load_checkpoint
    from fluxflow.sampling.generate import generate, load_text_to_image
    from fluxflow.train.pipeline import run_pipeline

    config = tiny_config(tmp_path / "out", [VAE_STEP, FLOW_STEP], model=pretrained_model(tiny_clip_dir),
                         no_samples=True)
    outcomes = run_pipeline(config)
    assert [o.result.outcome for o in outcomes] == ["epochs_done", "epochs_done"]
    flow = outcomes[1].result.final_metrics
    assert torch.isfinite(torch.tensor(flow["flow_loss"]))
    state = load_checkpoint(outcomes[1].ref.uri)
    assert state["model_config"]["text_encoder"] == {"type": "pretrained", "path": str(tiny_clip_dir)}
    assert state["models"]["text_encoder"] == {} and "text_encoder" not in state["ema"]
    assert state["models"]["flow_processor"]["proj_out.weight"].abs().sum() > 0  # zero at init: it trained
    model = load_text_to_image(outcomes[1].ref.uri)  # no config: the checkpoint names the encoder's directory
    image = generate(model, "a red circle", seed=0, steps=2)
    assert image.shape == (3, 16, 16) and torch.isfinite(image).all()
