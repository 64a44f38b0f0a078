"""The mapping from a step's modes to components, optimizer groups, metrics and summary labels."""
from types import SimpleNamespace

import pytest

from fluxflow.config import modes


def step(**on):
    values = {m: False for m in modes.ALL_MODES} | {"unfreeze": []}
    return SimpleNamespace(**(values | on))


CASES = [
    # modes, trained components, optimizer groups, metrics, labels
    (dict(train_vae=True), {"compressor", "expander"}, {"vae"}, ["vae_loss", "kl_loss"], ["VAE"]),
    (dict(train_vae=True, gan_training=True, use_lpips=True), {"compressor", "expander", "discriminator"},
     {"vae", "discriminator"}, ["vae_loss", "kl_loss", "g_loss", "d_loss", "lpips_loss"], ["VAE", "GAN", "LPIPS"]),
    (dict(gan_training=True, train_spade=True), {"compressor", "expander", "discriminator"}, {"vae", "discriminator"},
     ["vae_loss", "kl_loss", "g_loss", "d_loss"], ["GAN", "SPADE"]),
    (dict(train_diff=True), {"flow_processor"}, {"flow"}, ["flow_loss"], ["Flow"]),
    (dict(train_diff_full=True), {"flow_processor", "text_encoder"}, {"flow", "text_encoder"}, ["flow_loss"],
     ["Flow+Text"]),
    (dict(train_diff=True, unfreeze=["text_encoder"]), {"flow_processor", "text_encoder"}, {"flow", "text_encoder"},
     ["flow_loss"], ["Flow"]),
]


@pytest.mark.parametrize("on,trained,groups,metrics,labels", CASES)
def test_modes_map_to_components_groups_metrics_and_labels(on, trained, groups, metrics, labels):
    s = step(**on)
    assert modes.trained_components(s) == trained
    assert modes.optimizer_groups(s) == groups
    assert modes.step_metrics(s) == metrics
    assert modes.mode_labels(s) == labels
    assert trained <= modes.required_components(s)


def test_a_flow_step_needs_the_frozen_vae_and_text_encoder_it_does_not_train():
    s = step(train_diff=True)
    assert modes.required_components(s) == {"compressor", "expander", "text_encoder", "flow_processor"}
    assert modes.trained_components(s) == {"flow_processor"}


def test_gan_only_steps_cannot_watch_vae_loss_which_stays_zero():
    s = step(gan_training=True)
    assert "vae_loss" in modes.step_metrics(s)
    assert modes.threshold_metrics(s) == ["kl_loss", "g_loss", "d_loss"]


def test_lpips_loss_is_only_produced_with_reconstruction():
    assert "lpips_loss" not in modes.step_metrics(step(gan_training=True, use_lpips=True))


def test_groups_cover_each_component_once():
    members = [c for group in modes.OPTIMIZER_GROUPS.values() for c in group]
    assert sorted(members) == sorted(modes.COMPONENTS)


def test_unfreeze_can_only_add_components_the_step_sends_a_gradient_to():
    assert modes.trainable_components(step(train_diff=True)) == {"flow_processor", "text_encoder"}
    assert modes.trainable_components(step(train_vae=True)) == {"compressor", "expander"}


@pytest.mark.parametrize("on,vae_mode,touches", [
    (dict(train_vae=True), True, True),
    (dict(gan_training=True), True, True),
    (dict(use_lpips=True, train_diff=True), False, True),  # a modifier alone: no VAE trainer, still VAE output
    (dict(train_spade=True), False, True),
    (dict(train_diff=True), False, False),
])
def test_a_vae_modifier_touches_the_vae_without_running_its_trainer(on, vae_mode, touches):
    s = step(**on)
    assert modes.has_vae_mode(s) is vae_mode
    assert modes.touches_vae(s) is touches
