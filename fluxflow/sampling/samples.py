"""Sample images of a pipeline step, from EMA weights, named by the original tool's convention
(fluxflow.sampling.sample_files).

VAE steps: `-original` (held-out inputs), `-nr_o` (reconstruction from the posterior mean), `_ns_o`
(reconstruction from a posterior sample), `-ctx` (the latent map, first three channels, as an image) and, for SPADE
steps, `-nc` (decoded without the SPADE context). Once a flow processor is trained: `-t2i`, one image per
`output.sample_captions` entry.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fluxflow.config.modes import has_flow_mode, touches_vae
from fluxflow.models import sample_latent
from fluxflow.sampling.sample_files import sample_name, save_image_grid
from fluxflow.sampling.text_to_image import text_to_image


def _latent_picture(z: torch.Tensor, size: int) -> torch.Tensor:
    z = z[:, :3] if z.shape[1] >= 3 else z[:, :1].expand(-1, 3, -1, -1)
    lo = z.amin(dim=(2, 3), keepdim=True)
    hi = z.amax(dim=(2, 3), keepdim=True)
    z = (z - lo) / (hi - lo).clamp_min(1e-6) * 2 - 1
    return F.interpolate(z, size=(size, size), mode="nearest")


@torch.no_grad()
def write_samples(out_dir: Path, *, step, step_number: int, epoch: int, batch: int | None, tag: str,
                  models: dict, holdout: torch.Tensor, captions: list[str], latent_norm: dict | None,
                  config, seed: int, spade: bool, shift: float = 1.0) -> list[Path]:
    """Writes this step's samples; returns the files. `batch` None means end of epoch. `spade`: the expander decodes
    with SPADE (fluxflow.config.modes.expander_spade); `shift`: the flow's timestep shift, which its sampler
    follows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(images: torch.Tensor, suffix: str) -> None:
        path = out_dir / sample_name(step.name, step_number, epoch, batch, tag, suffix)
        save_image_grid(images.float().cpu(), path, nrow=min(8, images.shape[0]))
        written.append(path)

    if touches_vae(step) and holdout is not None and "compressor" in models and "expander" in models:
        compressor, expander = models["compressor"], models["expander"]
        mean, logvar = compressor(holdout)
        generator = torch.Generator(device=holdout.device).manual_seed(seed)
        save(holdout, "-original")
        save(expander(mean, spade=spade).clamp(-1, 1), "-nr_o")
        save(expander(sample_latent(mean, logvar, generator), spade=spade).clamp(-1, 1), "_ns_o")
        save(_latent_picture(mean.float(), holdout.shape[-1]), "-ctx")
        if spade:
            save(expander(mean, spade=False).clamp(-1, 1), "-nc")
    if has_flow_mode(step) and captions and latent_norm is not None:
        # The step's own size unless output.sample_sizes names others: the transformer's sin-cos positions are
        # computed for any grid, so one model samples every size.
        for size in config.output.sample_sizes or [step.img_size]:
            images = text_to_image(models, captions, latent_norm, latent_size=size // config.model.downscale,
                                   seed=seed, spade=spade, shift=shift)
            save(images, "-t2i" if size == step.img_size else f"-t2i_{size}px")
    return written
