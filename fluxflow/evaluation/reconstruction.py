"""Reconstruction quality of the VAE on held-out images: PSNR, SSIM and LPIPS when its backbone exists.

The reconstruction is the decoder applied to the posterior mean (the `-nr_o` sample), clamped to [-1, 1]: no
sampling noise, so the number is a function of the weights only.

Both PSNR and SSIM are computed on images mapped from [-1, 1] to [0, 1], with a fixed `data_range=1.0` (never the
batch's own min/max, which would make a dark batch score differently from a bright one). For PSNR the mapping changes
nothing (it equals [-1, 1] with range 2), but SSIM's luminance term (2·μx·μy + C1) / (μx² + μy² + C1) is not
invariant to a shift: on [-1, 1] dark images have negative means and score differently. [0, 1] with range 1 is the
convention the published SSIM numbers use. Each metric is computed per image and then averaged over images
(`reduction="none"`, then a mean), so the result does not depend on how the held-out set is cut into batches.
Both are written here rather than imported from torchmetrics, which gives the same numbers (tests/evaluation) but
whose import (with torchvision and scipy) cost every process that evaluates a VAE 2.5 s (docs/PERFORMANCE.md).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DATA_RANGE = 1.0  # after mapping the [-1, 1] images to [0, 1]
SSIM_KERNEL = 11  # the usual Gaussian window (Wang et al., torchmetrics); shrunk for images smaller than it


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1], in fp32."""
    return (images.float() + 1) / 2


def per_image_psnr(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each pair of [-1, 1] images, `[B]` (inf where identical): 10·log10(range² / MSE), in natural
    logs and fp32 constants as torchmetrics computes it, so that figures logged before it was dropped still compare."""
    diff = to_unit(x_hat) - to_unit(x)
    mse = (diff * diff).sum(dim=(1, 2, 3)) / diff[0].numel()
    return (2 * torch.log(torch.tensor(DATA_RANGE)) - torch.log(mse)) * (10 / torch.log(torch.tensor(10.0)))


def per_image_ssim(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """SSIM of each pair of [-1, 1] images, `[B]`: Wang et al.'s index under a Gaussian window of 11 px, σ 1.5 (a
    smaller odd window, σ scaled with it, for images smaller than 11 px), K1 0.01, K2 0.03, on reflect-padded images,
    averaged over every pixel: torchmetrics' `structural_similarity_index_measure` to the last bit (tested)."""
    a, b = to_unit(x_hat), to_unit(x)
    side = min(x.shape[-2:])
    size = min(SSIM_KERNEL, side if side % 2 else side - 1)
    sigma = 1.5 * size / SSIM_KERNEL
    offsets = torch.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=a.dtype, device=a.device)
    gauss = torch.exp(-torch.pow(offsets / sigma, 2) / 2)
    gauss = (gauss / gauss.sum()).unsqueeze(0)
    channels, pad = a.shape[1], (size - 1) // 2
    window = torch.matmul(gauss.t(), gauss).expand(channels, 1, size, size)
    a, b = (F.pad(t, (pad,) * 4, mode="reflect") for t in (a, b))
    mu_a, mu_b, aa, bb, ab = F.conv2d(torch.cat((a, b, a * a, b * b, a * b)), window, groups=channels).split(a.shape[0])
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    mu_aa, mu_bb, mu_ab = mu_a.pow(2), mu_b.pow(2), mu_a * mu_b
    var_a, var_b = torch.clamp(aa - mu_aa, min=0.0), torch.clamp(bb - mu_bb, min=0.0)
    index = ((2 * mu_ab + c1) * (2 * (ab - mu_ab) + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
    return index.reshape(index.shape[0], -1).mean(-1)


@torch.no_grad()
def reconstruction_metrics(compressor: nn.Module, expander: nn.Module, images: torch.Tensor, *, spade: bool = False,
                           batch_size: int = 32, lpips: nn.Module | None = None) -> dict[str, float]:
    """{"psnr", "ssim"} (+ "lpips" when an `LPIPSLoss` is given), each the mean over the images `[N, C, H, W]`."""
    if images.shape[0] == 0:
        raise ValueError("reconstruction_metrics needs at least one held-out image")
    psnr, ssim, lpips_sum = [], [], 0.0
    for chunk in images.split(batch_size):
        mean, _ = compressor(chunk)
        x_hat = expander(mean, spade=spade).float().clamp(-1, 1)
        psnr.append(per_image_psnr(x_hat, chunk))
        ssim.append(per_image_ssim(x_hat, chunk))
        if lpips is not None:  # LPIPSLoss returns the batch mean: weight it by the batch size
            lpips_sum += float(lpips(x_hat, chunk)) * chunk.shape[0]
    out = {"psnr": float(torch.cat(psnr).mean()), "ssim": float(torch.cat(ssim).mean())}
    if lpips is not None:
        out["lpips"] = lpips_sum / images.shape[0]
    return out


def lpips_if_available(device: torch.device | str) -> nn.Module | None:
    """The real LPIPS (AlexNet backbone from local disk) when `lpips_backbone_path()` exists, else None: never a
    stand-in under the LPIPS name, never a download."""
    from fluxflow.losses import LPIPSLoss, lpips_backbone_path

    return LPIPSLoss().to(device) if lpips_backbone_path().exists() else None
