"""The torch-free parameter counts (fluxflow/config/model_sizes.py) equal the built modules' counts, exactly."""
from pathlib import Path

import pytest
import torch
from pretrained_fixture import shipped_config_raw

from fluxflow.config import ModelConfig, load_config
from fluxflow.config import model_sizes
from fluxflow.config.modes import COMPONENTS
from fluxflow.config.file_checks import pretrained_text_path
from fluxflow.models import build_component, count_parameters
from fluxflow.models.text_encoder import VOCAB_SIZE

REPO = Path(__file__).resolve().parents[2]
CONFIG_FILES = sorted((REPO / "configs").glob("*.yaml"))

# Odd sizes: widths that are not powers of two, one channel, every downscale and patch size, a text width with
# a single attention head, the shortest text, and a skip conv in every ResBlock that changes width.
ODD_SIZES = {
    "defaults": (ModelConfig(), 3),
    "narrowest": (ModelConfig(vae_dim=1, latent_channels=1, downscale=2, feature_maps_dim=4, flow_depth=1,
                              flow_heads=1, patch_size=1, text_embedding_dim=1, text_encoder_depth=1, text_max_len=2,
                              feature_maps_dim_disc=1), 1),
    "odd_widths": (ModelConfig(vae_dim=3, latent_channels=5, downscale=8, feature_maps_dim=12, flow_depth=3,
                               flow_heads=3, patch_size=2, text_embedding_dim=7, text_encoder_depth=3,
                               text_max_len=9, feature_maps_dim_disc=5), 4),
    "wide_vae_spade_hidden": (ModelConfig(vae_dim=24, latent_channels=8, downscale=8, feature_maps_dim=96,
                                          flow_depth=2, flow_heads=6, text_embedding_dim=130, text_encoder_depth=2,
                                          text_max_len=77, feature_maps_dim_disc=17), 2),
}


def sizes_of_config_files():
    for path in CONFIG_FILES:
        config = load_config(shipped_config_raw(path)).config
        yield pytest.param(config.model, config.data.channels, id=path.name)


def sizes_by_name():
    for name, (model, channels) in ODD_SIZES.items():
        yield pytest.param(model, channels, id=name)


@pytest.mark.parametrize("model,channels", [*sizes_by_name(), *sizes_of_config_files()])
@pytest.mark.parametrize("component", COMPONENTS)
def test_the_computed_count_equals_the_built_modules_count(component, model, channels):
    if component == "text_encoder" and pretrained_text_path(model):
        assert model_sizes.component_parameters(component, model, channels) is None
        pytest.skip("a pretrained text encoder's size is its directory's (not computed; the stub holds no model)")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        built = count_parameters(build_component(component, model, channels))
    assert model_sizes.component_parameters(component, model, channels) == built


def test_parameter_counts_cover_every_component_in_order():
    counts = model_sizes.parameter_counts(ModelConfig(), 3)
    assert list(counts) == list(COMPONENTS)
    assert all(count > 0 for count in counts.values())


def test_the_mirrored_vocabulary_is_the_tokenizers():
    assert model_sizes.TEXT_VOCAB_SIZE == VOCAB_SIZE


def test_sizes_the_model_refuses_are_refused_alike():
    model = ModelConfig(feature_maps_dim=30, flow_heads=4)
    with pytest.raises(ValueError, match="divisible by 4"):
        model_sizes.component_parameters("flow_processor", model, 3)
    with pytest.raises(ValueError, match="unknown component"):
        model_sizes.component_parameters("unet", model, 3)
