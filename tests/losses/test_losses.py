"""Each loss against a hand computation; R1 against a per-sample double-backward reference; LPIPS offline."""
import math

import pytest
import torch
import torch.nn.functional as F

from fluxflow.losses.image_stats import IMAGE_STAT_LOSSES, soft_histogram
from fluxflow.losses import (adaptive_weight, hinge_d_loss, hinge_g_loss, kl_loss, kl_weight,
                             r1_penalty, reconstruction_loss, rectified_flow_loss)
from fluxflow.models import Discriminator


def test_reconstruction_loss_weights_l1_and_mse():
    x_hat, x = torch.tensor([[1.0, -2.0], [3.0, 4.0]]), torch.zeros(2, 2)
    # |d| mean = 10/4 = 2.5, d² mean = 30/4 = 7.5
    torch.testing.assert_close(reconstruction_loss(x_hat, x, l1_weight=0.5, mse_weight=2.0), torch.tensor(16.25))
    torch.testing.assert_close(reconstruction_loss(x_hat, x, 1.0, 0.0), torch.tensor(2.5))


def kl_inputs():
    # [B=2, C=2, 1, 1]: channel 0 has means 1 and 3 (unit variance), channel 1 zero mean, variances 2 and 1.
    mean = torch.tensor([[1.0, 0.0], [3.0, 0.0]]).view(2, 2, 1, 1).requires_grad_(True)
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]]).view(2, 2, 1, 1).requires_grad_(True)
    return mean, logvar


def test_kl_is_nats_per_channel_summed_and_free_bits_clamp_each_channel():
    mean, logvar = kl_inputs()
    ch0 = (0.5 * 1 + 0.5 * 9) / 2                        # 0.5·μ² averaged over the batch = 2.5
    ch1 = (0.5 * (2.0 - 1.0 - math.log(2.0)) + 0.0) / 2  # ≈ 0.0767
    raw, clamped = kl_loss(mean, logvar, free_bits=0.5)
    torch.testing.assert_close(raw, torch.tensor(ch0 + ch1))
    torch.testing.assert_close(clamped, torch.tensor(ch0 + 0.5))  # channel 1 lifted to its 0.5-nat budget
    clamped.backward()
    assert mean.grad[:, 0].abs().sum() > 0 and (logvar.grad[:, 1] == 0).all()  # under budget: no pressure
    raw0, clamped0 = kl_loss(*kl_inputs(), free_bits=0.0)
    torch.testing.assert_close(raw0, clamped0)


def test_kl_averages_over_spatial_positions_not_sums():
    mean = torch.ones(1, 3, 4, 4)
    raw, _ = kl_loss(mean, torch.zeros_like(mean))
    torch.testing.assert_close(raw, torch.tensor(3 * 0.5))


def test_kl_weight_warms_up_linearly_then_holds():
    assert [kl_weight(s, 0.1, 100) for s in (0, 50, 100, 1000)] == pytest.approx([0.0, 0.05, 0.1, 0.1])
    assert kl_weight(0, 0.1, 0) == pytest.approx(0.1)


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 − real) = [0, .5, 2] → 5/6; relu(1 + fake) = [0, 1, 2] → 1
    torch.testing.assert_close(hinge_d_loss(real, fake), torch.tensor(5 / 6 + 1.0))
    torch.testing.assert_close(hinge_g_loss(fake), torch.tensor(1 / 3))


def test_r1_of_linear_discriminator_is_squared_weight_norm_over_pixels():
    disc = torch.nn.Conv2d(3, 1, 1, bias=True)
    real = torch.randn(4, 3, 5, 5)
    expected = disc.weight.square().sum() / 25  # ∇ₓ mean(logits) = w / 25 at each of the 25 pixels
    torch.testing.assert_close(r1_penalty(disc, real), expected)


def test_r1_value_and_parameter_gradient_match_per_sample_double_backward():
    torch.manual_seed(0)
    disc = Discriminator(3, 4).double()
    real = torch.randn(3, 3, 16, 16, dtype=torch.float64)

    penalty = r1_penalty(disc, real)
    penalty.backward()
    got = {n: p.grad.clone() for n, p in disc.named_parameters() if p.grad is not None}
    assert len(got) > 4  # the penalty trains D's weights (its final bias has no input gradient: no grad)
    disc.zero_grad(set_to_none=True)

    per_sample = []
    for i in range(real.shape[0]):  # reference: one sample at a time, explicit create_graph
        xi = real[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(disc(xi).mean(), xi, create_graph=True)
        per_sample.append(g.pow(2).sum())
    reference = torch.stack(per_sample).mean()
    reference.backward()
    torch.testing.assert_close(penalty.double(), reference)
    ref = {n: p.grad for n, p in disc.named_parameters() if p.grad is not None}
    assert ref.keys() == got.keys()
    for name, g in got.items():
        torch.testing.assert_close(g, ref[name])
    assert real.grad is None  # the caller's tensor is not touched


def test_r1_of_a_patch_discriminator_is_the_r1_of_its_average_pooled_scalar_d():
    # The hinge losses average the patch logits; R1 is the penalty of that D(x), StyleGAN2's scalar D with an
    # average pool as head, whatever the number of patches (the patch sum would make it 64² times larger here).
    torch.manual_seed(0)
    disc = Discriminator(3, 4).double()
    pooled = torch.nn.Sequential(disc, torch.nn.AdaptiveAvgPool2d(1))  # [B, 1, 1, 1]: one logit per sample
    real = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert disc(real).shape[-2:] == (8, 8)
    torch.testing.assert_close(r1_penalty(disc, real), r1_penalty(pooled, real))


def test_adaptive_weight_is_gradient_norm_ratio_clamped_and_detached():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    rec = (w * torch.tensor([3.0, 4.0])).sum()   # ∇ = (3, 4), norm 5
    g = (w * torch.tensor([0.6, 0.8])).sum()     # ∇ = (.6, .8), norm 1
    weight = adaptive_weight(rec, g, w, eps=0.0)
    torch.testing.assert_close(weight, torch.tensor(5.0))
    assert not weight.requires_grad
    (rec + weight * g).backward()  # graphs were retained for the caller
    torch.testing.assert_close(w.grad, torch.tensor([6.0, 8.0]))
    g_tiny = (w * 1e-9).sum()
    assert adaptive_weight((w * 3).sum(), g_tiny, w, max_weight=100.0).item() == 100.0


class RecordingVelocity(torch.nn.Module):
    def __init__(self, x0):
        super().__init__()
        self.x0, self.seen = x0, {}

    def forward(self, x_t, t, tokens, mask, pooled, drop):
        self.seen.update(x_t=x_t, t=t, drop=drop)
        return (x_t - self.x0) / t.view(-1, 1, 1, 1)  # exact v = noise − x0 under t = 1 noise


def test_rectified_flow_loss_uses_t1_noise_convention_and_logit_normal_t():
    x0 = torch.randn(5, 2, 4, 4)
    oracle = RecordingVelocity(x0)
    drop = torch.tensor([True, False, False, True, False])
    loss = rectified_flow_loss(oracle, x0, None, None, None, drop, torch.Generator().manual_seed(3))
    assert loss.dim() == 0 and loss.item() < 1e-8  # the exact velocity has zero loss
    # Same draws, in the same order, by hand: t = sigmoid(randn), then the noise.
    gen = torch.Generator().manual_seed(3)
    t = torch.sigmoid(torch.randn(5, generator=gen))
    noise = torch.randn(x0.shape, generator=gen)
    torch.testing.assert_close(oracle.seen["t"], t)
    torch.testing.assert_close(oracle.seen["x_t"], (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise)
    assert oracle.seen["drop"] is drop
    zero = rectified_flow_loss(lambda *a: torch.zeros_like(x0), x0, None, None, None, None,
                               torch.Generator().manual_seed(3))
    torch.testing.assert_close(zero, (noise - x0).square().mean())


# ---- LPIPS: real loading code, random-weight backbone under a temporary TORCH_HOME, no network ----

@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("LPIPS tried to download something")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_lpips_backbone_path_follows_torch_home_then_xdg(monkeypatch, tmp_path):
    from fluxflow.losses import lpips_backbone_path
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert lpips_backbone_path() == tmp_path / "th/hub/checkpoints/alexnet-owt-7be5be79.pth"
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lpips_backbone_path() == tmp_path / "xdg/torch/hub/checkpoints/alexnet-owt-7be5be79.pth"


def test_lpips_missing_backbone_names_the_file(torch_home, no_network):
    from fluxflow.losses import LPIPSLoss
    with pytest.raises(FileNotFoundError) as err:
        LPIPSLoss()
    assert str(torch_home / "hub/checkpoints/alexnet-owt-7be5be79.pth") in str(err.value)


def test_lpips_loads_backbone_from_disk_frozen_and_pinned_to_eval(torch_home, no_network):
    import torchvision
    from fluxflow.losses import LPIPSLoss
    torch.manual_seed(0)
    backbone = torchvision.models.alexnet(weights=None).state_dict()
    path = torch_home / "hub/checkpoints/alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.save(backbone, path)

    parent = torch.nn.ModuleDict({"lpips": LPIPSLoss()})
    loss = parent["lpips"]
    torch.testing.assert_close(loss.net.net.slice1[0].weight, backbone["features.0.weight"])
    torch.testing.assert_close(loss.net.net.slice5[0].bias, backbone["features.10.bias"])
    assert not any(p.requires_grad for p in loss.parameters())
    parent.train()
    assert not any(m.training for m in loss.modules())  # lin-layer dropout stays off

    a = torch.rand(2, 3, 32, 32) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1).requires_grad_(True)
    assert loss(a, a).item() == 0.0
    d = loss(b, a)
    assert d.dim() == 0 and d.item() > 0
    d.backward()
    assert b.grad.abs().sum() > 0  # gradients reach the images
    torch.testing.assert_close(loss(b, a), d)  # deterministic: no dropout


def test_lpips_reads_the_rgb_of_grey_and_rgba_images(torch_home, no_network):
    """data.channels 4 failed every batch of a use_lpips step and every VAE evaluation (which scores LPIPS whenever
    the backbone is on disk) with a shape error: the alpha channel is left to the pixel losses."""
    import torchvision
    from fluxflow.losses import LPIPSLoss
    torch.manual_seed(0)
    path = torch_home / "hub/checkpoints/alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    loss = LPIPSLoss()
    rgba = torch.rand(2, 4, 32, 32) * 2 - 1
    other = torch.cat([(rgba[:, :3] + 0.3 * torch.randn(2, 3, 32, 32)).clamp(-1, 1), -rgba[:, 3:]], dim=1)
    torch.testing.assert_close(loss(other, rgba), loss(other[:, :3], rgba[:, :3]))
    grey, grey_other = rgba[:, :1], other[:, :1]
    torch.testing.assert_close(loss(grey_other, grey), loss(grey_other.repeat(1, 3, 1, 1), grey.repeat(1, 3, 1, 1)))


@pytest.mark.parametrize("name", sorted(IMAGE_STAT_LOSSES))
def test_each_image_statistics_term_is_zero_on_the_image_itself_and_pulls_a_changed_one_back(name):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    loss = IMAGE_STAT_LOSSES[name]
    assert float(loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    changed = {"colorstats": x * 0.5 + 0.3, "histogram": (x * 0.5 + 0.3), "contrast": x * 0.3,
               "coarseness": F.avg_pool2d(x, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)}[name]
    x_hat = changed.clone().requires_grad_(True)
    value = loss(x_hat, x)
    assert float(value.detach()) > 0.01
    value.backward()
    stepped = (x_hat - 0.5 * x_hat.grad / x_hat.grad.abs().max()).detach()  # a small step down the gradient
    assert float(loss(stepped, x)) < float(value)


def test_the_soft_histogram_sums_to_one_and_has_a_gradient_where_a_hard_one_has_none():
    x = torch.tensor([[[[-1.0, -0.2, 0.31, 1.0]]]], requires_grad=True)
    hist = soft_histogram(x, bins=5)
    assert torch.allclose(hist.sum(-1), torch.ones(1, 1))
    (hist * torch.arange(5.0)).sum().backward()  # the histogram's mean bin moves with the values
    assert x.grad.abs().sum() > 0
