"""Model shapes, parameter counts, SPADE identity at init, text padding isolation, CFG null text, bf16 smoke."""
from types import SimpleNamespace

import pytest
import torch

from fluxflow.models import (COMPONENTS, Compressor, Discriminator, Expander, FlowProcessor, TextEncoder,
                             build_component, cfg_drop_mask, count_parameters, tokenize)
from fluxflow.models.text_encoder import BOS_ID, EOS_ID, PAD_ID


def tiny_cfg(**over):
    cfg = dict(vae_dim=8, latent_channels=4, downscale=4, feature_maps_dim=32, flow_depth=2, flow_heads=2,
               patch_size=2, text_embedding_dim=16, text_encoder_depth=1, text_max_len=24, feature_maps_dim_disc=8)
    cfg.update(over)
    return SimpleNamespace(**cfg)


def randomize_(module, std=0.2):
    """Give zero-initialised layers (adaLN-Zero, SPADE γ/β) non-zero weights so outputs depend on inputs."""
    torch.manual_seed(123)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module


@pytest.mark.parametrize("name", COMPONENTS)
def test_build_component_returns_the_named_class_with_parameters(name):
    model = build_component(name, tiny_cfg(), channels=3)
    expected = dict(compressor=Compressor, expander=Expander, flow_processor=FlowProcessor,
                    text_encoder=TextEncoder, discriminator=Discriminator)[name]
    assert isinstance(model, expected)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0


def test_build_component_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown component"):
        build_component("unet", tiny_cfg(), 3)


@pytest.mark.parametrize("downscale", [2, 4, 8])
@pytest.mark.parametrize("channels", [1, 3])
def test_vae_shapes_follow_downscale_and_channels(downscale, channels):
    cfg = tiny_cfg(downscale=downscale)
    enc, dec = build_component("compressor", cfg, channels), build_component("expander", cfg, channels)
    x = torch.randn(2, channels, 32, 32)
    mean, logvar = enc(x)
    assert mean.shape == logvar.shape == (2, 4, 32 // downscale, 32 // downscale)
    for spade in (False, True):
        assert dec(mean, spade=spade).shape == x.shape


def test_compressor_rejects_unsupported_downscale():
    with pytest.raises(ValueError, match="downscale"):
        build_component("compressor", tiny_cfg(downscale=16), 3)


def test_spade_on_equals_spade_off_at_init_and_differs_once_trained():
    dec = build_component("expander", tiny_cfg(), 3)
    z = torch.randn(2, 4, 8, 8)
    assert torch.equal(dec(z, spade=True), dec(z, spade=False))
    with torch.no_grad():
        for p in dec.spade.parameters():
            p.add_(0.1)
    assert not torch.allclose(dec(z, spade=True), dec(z, spade=False))
    # SPADE parameters are addressable by name so a step can freeze/train them separately.
    assert all(n.startswith("spade.") for n, _ in dec.named_parameters() if "gamma" in n or "beta" in n)


def test_expander_last_layer_weight_is_its_output_conv_and_receives_gradient():
    dec = build_component("expander", tiny_cfg(), 3)
    w = dec.last_layer_weight
    assert any(w is p for p in dec.parameters()) and w.shape[0] == 3  # maps to the image channels
    (grad,) = torch.autograd.grad(dec(torch.randn(2, 4, 8, 8)).square().sum(), w)
    assert grad.abs().sum() > 0


def test_discriminator_gives_patch_logits_and_has_no_batchnorm():
    disc = build_component("discriminator", tiny_cfg(), 3)
    assert disc(torch.randn(2, 3, 32, 32)).shape == (2, 1, 8, 8)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in disc.modules())


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_captions_reach_a_gpu_pinned_and_without_blocking_the_host(monkeypatch, device):
    """Tokenized on the host every batch of a flow step, they were copied from pageable memory, which makes the host
    wait for every kernel queued on the GPU: a sync per batch. (No GPU here: the copy is recorded, not made.)"""
    moves = []

    def pin_memory(self):
        moves.append("pinned")
        return self

    def to(self, target=None, non_blocking=False):
        moves.append((str(target), non_blocking))
        return self

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    tokenize(["a red circle"], max_len=8, device=torch.device(device))
    assert moves == (["pinned", ("cuda", True)] * 2 if device == "cuda" else [("cpu", False)] * 2)


def test_tokenize_bytes_with_bos_eos_pad_and_truncation():
    ids, mask = tokenize(["ab", "é", "x" * 50], max_len=6)
    assert ids.shape == mask.shape == (3, 6) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids[0].tolist() == [BOS_ID, ord("a") + 3, ord("b") + 3, EOS_ID, PAD_ID, PAD_ID]
    assert ids[1].tolist()[:4] == [BOS_ID, 0xC3 + 3, 0xA9 + 3, EOS_ID]  # "é" is two UTF-8 bytes
    assert ids[2, -1].item() == EOS_ID and mask[2].all()  # truncated, EOS kept
    assert mask[0].tolist() == [True] * 4 + [False] * 2


def test_text_encoder_shapes_and_padding_does_not_leak():
    enc = build_component("text_encoder", tiny_cfg(), 3).eval()
    ids, mask = tokenize(["a red circle", "blue"], max_len=16)
    tokens, pooled = enc(ids, mask)
    assert tokens.shape == (2, 16, 16) and pooled.shape == (2, 16)
    # Longer padding, and garbage ids in the padding, change nothing for the real tokens.
    ids_long, mask_long = tokenize(["a red circle", "blue"], max_len=24)
    ids_long[~mask_long] = torch.randint(3, 259, ids_long[~mask_long].shape)
    tokens_long, pooled_long = enc(ids_long, mask_long)
    torch.testing.assert_close(pooled_long, pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens_long[:, :16][mask], tokens[mask], atol=1e-5, rtol=1e-5)
    assert (tokens_long[~mask_long] == 0).all()
    # The text itself does matter.
    _, pooled_other = enc(*tokenize(["a red square", "blue"], max_len=16))
    assert not torch.allclose(pooled_other[0], pooled[0])


def flow_inputs(cfg, b=2):
    enc = build_component("text_encoder", cfg, 3)
    ids, mask = tokenize(["a red circle", "a big blue square in the top left"][:b], cfg.text_max_len)
    tokens, pooled = enc(ids, mask)
    return tokens.detach(), mask, pooled.detach()


def test_flow_processor_outputs_velocity_of_latent_shape_and_zero_at_init():
    cfg = tiny_cfg()
    flow = build_component("flow_processor", cfg, 3)
    tokens, mask, pooled = flow_inputs(cfg)
    x = torch.randn(2, 4, 8, 8)
    v = flow(x, torch.rand(2), tokens, mask, pooled)
    assert v.shape == x.shape
    assert (v == 0).all()  # adaLN-Zero: the untrained model predicts no motion


def test_flow_processor_depends_on_t_and_text_and_drop_uses_null_text():
    cfg = tiny_cfg()
    flow = randomize_(build_component("flow_processor", cfg, 3))
    tokens, mask, pooled = flow_inputs(cfg)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.7])
    v = flow(x, t, tokens, mask, pooled)
    # t is continuous: a shift far below 1/999 (the old integer-timestep grid) still changes the velocity.
    assert (v - flow(x, t + 1e-4, tokens, mask, pooled)).abs().max() > 1e-4
    swapped = flow(x, t, tokens.flip(0), mask.flip(0), pooled.flip(0))
    assert not torch.allclose(v, swapped)
    # Dropped rows ignore their text: the same whatever the text, and different from the conditioned rows.
    drop = torch.tensor([True, False])
    v_drop = flow(x, t, tokens, mask, pooled, drop)
    v_drop_swapped = flow(x, t, tokens.flip(0), mask.flip(0), pooled.flip(0), drop)
    torch.testing.assert_close(v_drop[0], v_drop_swapped[0])
    torch.testing.assert_close(v_drop[1], v[1])
    assert not torch.allclose(v_drop[0], v[0])


def test_null_text_receives_gradient_only_from_dropped_rows():
    cfg = tiny_cfg()
    flow = randomize_(build_component("flow_processor", cfg, 3))
    tokens, mask, pooled = flow_inputs(cfg)
    x, t = torch.randn(2, 4, 8, 8), torch.rand(2)
    flow(x, t, tokens, mask, pooled, torch.tensor([False, False])).square().sum().backward()
    assert flow.null_pooled.grad is None or (flow.null_pooled.grad == 0).all()
    flow.zero_grad()
    flow(x, t, tokens, mask, pooled, torch.tensor([True, False])).square().sum().backward()
    assert flow.null_pooled.grad.abs().sum() > 0 and flow.null_tokens.grad.abs().sum() > 0


def test_flow_processor_rejects_latents_not_divisible_by_patch():
    cfg = tiny_cfg()
    flow = build_component("flow_processor", cfg, 3)
    tokens, mask, pooled = flow_inputs(cfg)
    with pytest.raises(ValueError, match="patch_size"):
        flow(torch.randn(2, 4, 7, 7), torch.rand(2), tokens, mask, pooled)


def test_cfg_drop_mask_is_bool_on_device_deterministic_and_has_rate_p():
    gen = lambda: torch.Generator("cpu").manual_seed(7)  # noqa: E731
    m1, m2 = cfg_drop_mask(4000, 0.1, "cpu", gen()), cfg_drop_mask(4000, 0.1, "cpu", gen())
    assert m1.dtype == torch.bool and m1.shape == (4000,) and m1.device.type == "cpu"
    assert torch.equal(m1, m2)
    assert 0.08 < m1.float().mean().item() < 0.12
    assert not cfg_drop_mask(10, 0.0, "cpu").any() and cfg_drop_mask(10, 1.0, "cpu").all()


def test_every_model_runs_forward_and_backward_under_cpu_bf16_autocast():
    cfg = tiny_cfg()
    m = {n: randomize_(build_component(n, cfg, 3), 0.05) for n in COMPONENTS}
    x = torch.randn(2, 3, 32, 32)
    ids, mask = tokenize(["red", "blue"], cfg.text_max_len)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean, logvar = m["compressor"](x)
        x_hat = m["expander"](mean, spade=True)
        logits = m["discriminator"](x_hat)
        tokens, pooled = m["text_encoder"](ids, mask)
        v = m["flow_processor"](mean, torch.rand(2), tokens, mask, pooled, torch.tensor([True, False]))
        loss = x_hat.float().mean() + logits.float().mean() + v.float().mean() + logvar.float().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert x_hat.shape == x.shape and v.shape == mean.shape and logits.shape == (2, 1, 8, 8)
    for name, model in m.items():  # every parameter (SPADE and null text included) took part
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, (name, missing)
