"""PSNR / SSIM / LPIPS of held-out reconstructions: fixed data range, per-image means, batching-invariant."""
import math

import pytest
import torch
from torch import nn

from fluxflow.evaluation.reconstruction import (lpips_if_available, per_image_psnr, per_image_ssim,
                                                reconstruction_metrics)


class Identity(nn.Module):
    """A 'VAE' whose posterior mean is the image and whose decoder adds a per-call offset (known error)."""

    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.offset = offset

    def forward(self, x, spade=None):
        if spade is None:  # compressor call: (mean, logvar)
            return x, torch.zeros_like(x)
        return x + self.offset


def images(n=6, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g) * 1.6 - 0.8  # stays inside [-1, 1] after small offsets


def test_psnr_uses_fixed_range_on_unit_scale():
    x = images()
    # An offset of 0.2 on [-1, 1] is 0.1 on [0, 1]: MSE 0.01, PSNR 20 dB whatever the images' own range.
    assert torch.allclose(per_image_psnr(x + 0.2, x), torch.full((6,), 20.0), atol=1e-3)
    assert torch.allclose(per_image_psnr(x * 0.1 + 0.2, x * 0.1), torch.full((6,), 20.0), atol=1e-3)


def test_psnr_is_the_mean_of_per_image_values_not_of_pooled_error():
    x = images(2)
    x_hat = x.clone()
    x_hat[0] += 0.2  # 20 dB
    x_hat[1] += 0.02  # 40 dB
    out = reconstruction_metrics(Identity(), _Fixed(x_hat), x)
    assert out["psnr"] == pytest.approx(30.0, abs=1e-2)  # pooled MSE would give ~23 dB


class _Fixed(nn.Module):
    """A decoder that returns given images (matched to the input batch by position)."""

    def __init__(self, out):
        super().__init__()
        self.out, self.pos = out, 0

    def forward(self, z, spade=False):
        chunk = self.out[self.pos:self.pos + z.shape[0]]
        self.pos += z.shape[0]
        return chunk


def test_ssim_is_one_for_identical_images_and_lower_with_noise_even_below_window_size():
    for side in (32, 8):
        x = images(side=side)
        assert torch.allclose(per_image_ssim(x, x), torch.ones(6), atol=1e-5)
        noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
        assert (per_image_ssim(noisy, x) < 0.9).all()


def test_metrics_do_not_depend_on_batching():
    x = images(7)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
    one = reconstruction_metrics(Identity(), _Fixed(noisy), x, batch_size=1)
    many = reconstruction_metrics(Identity(), _Fixed(noisy), x, batch_size=4)
    assert one["psnr"] == pytest.approx(many["psnr"], rel=1e-5)
    assert one["ssim"] == pytest.approx(many["ssim"], rel=1e-5)


def test_reconstructions_are_clamped_to_image_range():
    x = torch.ones(2, 3, 16, 16) * 0.9
    out = reconstruction_metrics(Identity(), Identity(offset=5.0), x)  # decoder overshoots to 5.9 -> clamped to 1
    assert out["psnr"] == pytest.approx(-10 * math.log10(0.05 ** 2), abs=1e-2)


def test_lpips_is_the_image_weighted_mean_when_a_module_is_given():
    x = images(3) * 0.5  # offsets below stay inside [-1, 1] (no clamping)
    target = x + torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1, 1)

    class MeanAbs(nn.Module):  # stands in for LPIPSLoss' contract: the batch mean of a per-image distance
        def forward(self, a, b):
            return (a - b).abs().mean()

    out = reconstruction_metrics(Identity(), _Fixed(target), x, batch_size=2, lpips=MeanAbs())
    assert out["lpips"] == pytest.approx(0.2, abs=1e-5)  # chunks (0.1, 0.2) and (0.3): weighted, not 0.225


def test_no_lpips_without_its_backbone_on_disk(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert lpips_if_available("cpu") is None
    out = reconstruction_metrics(Identity(), Identity(0.1), images(2), lpips=lpips_if_available("cpu"))
    assert set(out) == {"psnr", "ssim"}


def test_empty_holdout_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        reconstruction_metrics(Identity(), Identity(), torch.zeros(0, 3, 8, 8))


@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (3, 3, 64, 48), (2, 1, 8, 8), (2, 3, 5, 7), (1, 4, 3, 3),
                                   (2, 3, 1, 1)])
def test_psnr_and_ssim_are_torchmetrics_to_the_last_bit(shape):
    # Written here instead of imported (its import cost every evaluating process 2.5 s); figures logged before must
    # still compare, so the reference is the library itself, on the same [0, 1] images, range and windows.
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from fluxflow.evaluation.reconstruction import SSIM_KERNEL, to_unit

    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g) * 2 - 1
    x_hat = (x + 0.2 * torch.randn(shape, generator=g)).clamp(-1, 1)
    side = min(shape[-2:])
    kernel = min(SSIM_KERNEL, side if side % 2 else side - 1)
    assert torch.equal(per_image_psnr(x_hat, x), peak_signal_noise_ratio(
        to_unit(x_hat), to_unit(x), data_range=1.0, reduction="none", dim=(1, 2, 3)))
    assert torch.equal(per_image_ssim(x_hat, x), structural_similarity_index_measure(
        to_unit(x_hat), to_unit(x), data_range=1.0, reduction="none", kernel_size=kernel,
        sigma=1.5 * kernel / SSIM_KERNEL))


def test_evaluating_and_writing_samples_import_neither_torchmetrics_nor_torchvision_nor_scipy(tmp_path):
    # What a trainer process pays at its first evaluation (2.5 s of imports before); a fresh process, since this
    # one has them imported by other tests.
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from fluxflow.evaluation.reconstruction import reconstruction_metrics\n"
        "from fluxflow.sampling.sample_files import save_image_grid\n"
        "class Same(torch.nn.Module):\n"
        "    def forward(self, x, spade=None):\n"
        "        return (x, x) if spade is None else x\n"
        "x = torch.rand(3, 3, 16, 16) * 2 - 1\n"
        "print(reconstruction_metrics(Same(), Same(), x))\n"
        f"save_image_grid(x, {str(tmp_path / 'grid.webp')!r}, nrow=2)\n"
        "print(sorted(m for m in ('torchmetrics', 'torchvision', 'scipy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.splitlines()[-1] == "[]", out.stdout
    assert (tmp_path / "grid.webp").is_file()
