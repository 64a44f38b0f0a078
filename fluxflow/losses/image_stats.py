"""The original tool's image-statistics regularisers of a VAE step (`train_colorstats`, `train_histogram`,
`train_contrast`, `train_coarseness`): each compares a reconstruction x̂ with its image x, both [B, C, H, W] in
[-1, 1], and returns a 0-dim fp32 loss. They pull global statistics that an L1/MSE loss averages away: the colour
cast, the tonal distribution, the contrast and how fine the texture is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

HISTOGRAM_BINS = 32
COARSENESS_PATCH = 4  # pixels per side of the patches whose variance is matched
_EPS = 1e-4


def colorstats_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per image and channel, the mean and the standard deviation matched (L1)."""
    x_hat, x = x_hat.float(), x.float()
    dims = (2, 3)
    return (x_hat.mean(dims) - x.mean(dims)).abs().mean() + (x_hat.std(dims) - x.std(dims)).abs().mean()


def soft_histogram(x: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """[B, C, bins] per image and channel, each row summing to 1: every value in [-1, 1] is split between its two
    nearest bin centres in proportion to its distance (linear binning). Unlike a hard count, the split moves with
    the value, so the histogram has a gradient."""
    position = (x.float().clamp(-1, 1).flatten(2) + 1) * 0.5 * (bins - 1)  # [B, C, N] in [0, bins - 1]
    low = position.detach().floor().clamp(max=bins - 2)
    upper_share = position - low  # differentiable in x
    hist = x.new_zeros((*position.shape[:2], bins), dtype=torch.float32)
    hist = hist.scatter_add(2, low.long(), 1 - upper_share).scatter_add(2, low.long() + 1, upper_share)
    return hist / position.shape[-1]


def histogram_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Distance between the cumulative soft histograms of x̂ and x, per image and channel (mean |CDF difference|,
    a 1-D Wasserstein distance in bin units / bins)."""
    cdf_hat, cdf = soft_histogram(x_hat).cumsum(-1), soft_histogram(x).cumsum(-1)
    return (cdf_hat - cdf).abs().mean()


def contrast_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """|log ratio| of the RMS contrasts (standard deviation of the channel-mean luminance) of x̂ and x, per image."""
    def rms_contrast(images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(1).flatten(1).std(1)

    return (torch.log(rms_contrast(x_hat) + _EPS) - torch.log(rms_contrast(x) + _EPS)).abs().mean()


def coarseness_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Local texture matched: the variance inside each COARSENESS_PATCH² window (non-overlapping), per channel, L1."""
    size = max(1, min(COARSENESS_PATCH, x.shape[-1], x.shape[-2]))

    def patch_variance(images: torch.Tensor) -> torch.Tensor:
        images = images.float()
        return (F.avg_pool2d(images.square(), size) - F.avg_pool2d(images, size).square()).clamp_min(0)

    return (patch_variance(x_hat) - patch_variance(x)).abs().mean()


IMAGE_STAT_LOSSES = {"colorstats": colorstats_loss, "histogram": histogram_loss, "contrast": contrast_loss,
                     "coarseness": coarseness_loss}
