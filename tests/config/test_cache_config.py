"""Which steps train from the latent and text caches (on by default where valid), what --validate-pipeline says
about them, and that switching them changes no step key."""
from pathlib import Path

from helpers_tiny import step_keys
from fluxflow.config import load_config
from fluxflow.config.caching import latent_cache_choice, text_cache_choice
from fluxflow.config.summary import format_summary

REPO = Path(__file__).resolve().parents[2]


def config_of(*steps: dict, dataset: dict | None = None):
    datasets = {"d": dataset or {"type": "shapes"}}
    return load_config({"training": {"pipeline": {"datasets": datasets,
                                                  "steps": [{"n_epochs": 1, **s} for s in steps]}}}).config


def choices(step: dict, dataset: dict | None = None):
    config = config_of({"name": "s", **step}, dataset=dataset)
    resolved, kind = config.step("s"), config.dataset_for(config.step("s")).type
    return latent_cache_choice(resolved, kind), text_cache_choice(resolved, kind)


def test_the_quickstart_flow_step_trains_from_cached_latents_by_default():
    config = load_config(REPO / "configs" / "quickstart.yaml").config
    flow = config.step("flow")
    latents, text = latent_cache_choice(flow, "shapes"), text_cache_choice(flow, "shapes")
    assert latents.on and latents.requested is None
    assert not text.on and "train_diff_full" in text.why_off  # its text encoder trains
    summary = format_summary(config)
    assert "Latent cache: on (in outputs/quickstart/latent_cache)" in summary
    assert "Text cache: off (the text encoder trains in this step (train_diff_full)" in summary
    assert summary.count("Latent cache") == 1  # VAE steps do not mention caches they cannot use


def test_a_frozen_text_encoder_is_cached_unless_unfrozen():
    assert all(c.on for c in choices({"train_diff": True}))
    latents, text = choices({"train_diff": True, "unfreeze": ["text_encoder"]})
    assert latents.on and not text.on and "unfreeze: [text_encoder]" in text.why_off


def test_a_step_that_trains_the_compressor_encodes_on_the_fly():
    latents, text = choices({"train_vae": True, "train_diff": True})
    assert not latents.on and "the compressor trains in this step" in latents.why_off
    assert text.on  # its text encoder is still frozen


def test_switched_off_and_invalid_requests_are_explained_in_the_summary():
    config = config_of({"name": "vae", "train_vae": True, "cache_latents": True},
                       {"name": "flow", "train_diff": True, "cache_latents": False})
    summary = format_summary(config)
    assert "Latent cache: off, although requested: only flow steps (train_diff, train_diff_full) train from " \
           "caches" in summary
    assert "Latent cache: off (cache_latents: false)" in summary
    assert "Text cache: on (in outputs/run/text_cache)" in summary


def test_webdataset_streams_are_encoded_on_the_fly():
    latents, text = choices({"train_diff": True, "cache_latents": True},
                            dataset={"type": "webdataset", "urls": "shards/{0..3}.tar"})
    assert not latents.on and latents.requested and "no item index" in latents.why_off
    assert not text.on


def test_cache_switches_change_no_step_key():
    default = config_of({"name": "a", "train_vae": True}, {"name": "b", "train_diff": True})
    switched = config_of({"name": "a", "train_vae": True},
                         {"name": "b", "train_diff": True, "cache_latents": False, "cache_text": False})
    assert step_keys(default) == step_keys(switched)
    assert step_keys(default) != step_keys(config_of({"name": "a", "train_vae": True},
                                                     {"name": "b", "train_diff": True, "cfg_dropout": 0.2}))


def test_output_cache_dir_moves_the_caches_out_of_the_output_directory(tmp_path):
    config = load_config({"training": {"pipeline": {"steps": [{"name": "f", "n_epochs": 1, "train_diff": True}]}},
                          "output": {"output_path": str(tmp_path / "run"),
                                     "cache_dir": str(tmp_path / "shared")}}).config
    assert f"Latent cache: on (in {tmp_path / 'shared' / 'latent_cache'})" in format_summary(config)


def test_a_step_that_trains_the_vae_beside_the_flow_reads_images_even_with_the_compressor_frozen():
    latents, _ = choices({"train_diff": True, "train_vae": True, "freeze": ["compressor"]})
    assert not latents.on and "VAE trains in this step" in latents.why_off
