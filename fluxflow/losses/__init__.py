"""Training objectives: VAE (reconstruction, KL), GAN (hinge, R1, adaptive weight), rectified flow, LPIPS.

`lpips_backbone_path` is re-exported from `fluxflow.config.file_checks`, its one (torch-free) home, which config
validation imports directly.
"""
from fluxflow.config.file_checks import lpips_backbone_path
from fluxflow.losses.flow import rectified_flow_loss
from fluxflow.losses.gan import adaptive_weight, hinge_d_loss, hinge_g_loss, r1_penalty
from fluxflow.losses.lpips import LPIPSLoss
from fluxflow.losses.vae import kl_loss, kl_weight, reconstruction_loss

__all__ = [
    "LPIPSLoss", "adaptive_weight", "hinge_d_loss", "hinge_g_loss", "kl_loss", "kl_weight", "lpips_backbone_path",
    "r1_penalty", "reconstruction_loss", "rectified_flow_loss",
]
