"""GAN objectives: hinge losses, the R1 gradient penalty, and the VQGAN adaptive generator weight."""
from __future__ import annotations

import torch
from torch import nn


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 − D(real))) + mean(relu(1 + D(fake)))."""
    return torch.relu(1.0 - real_logits.float()).mean() + torch.relu(1.0 + fake_logits.float()).mean()


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−mean(D(fake))."""
    return -fake_logits.float().mean()


def r1_penalty(discriminator: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """mean over the batch of ‖∇ₓ D(x)‖² (the squared gradient summed over all pixels and channels) at real x,
    where D(x) is the mean of the sample's patch logits, the scale at which the hinge losses see them.

    The gradient of the patch *sum* would be N times this (N patches: 64 at 32 px, 4,096 at 256 px), its penalty
    N² times, so the strength of r1_gamma would grow with the image size; on the mean, the patch discriminator
    is regularised as StyleGAN2's scalar D (a patch map average-pooled) and r1_gamma means what it means there.
    Builds a graph through the gradient (double backward), so `discriminator` must run eagerly: a compiled
    module cannot double-backward (wrap the call in `torch.compiler.set_stance("force_eager")`).
    Summing the per-sample means over the batch before differentiating is exact per sample because D has no
    cross-batch coupling.
    """
    real = real.detach().requires_grad_(True)
    logits = discriminator(real)
    (grad,) = torch.autograd.grad(logits.float().flatten(1).mean(dim=1).sum(), real, create_graph=True)
    return grad.float().square().flatten(1).sum(dim=1).mean()


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer_weight: torch.Tensor,
                    max_weight: float = 1e4, eps: float = 1e-4) -> torch.Tensor:
    """VQGAN's balance: ‖∇_w rec_loss‖ / (‖∇_w g_loss‖ + eps) at the decoder's last layer w, clamped, detached.

    Scales the generator loss so its gradient at the output layer is as large as the reconstruction's. Both
    losses keep their graphs (retain_graph) for the caller's backward.
    """
    (rec_grad,) = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True)
    weight = rec_grad.float().norm() / (g_grad.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()
