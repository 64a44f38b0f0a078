"""Which way is better for a metric a step logs (`final/*`): what turns "B − A is beyond the spread" into "B is
better" or "B is worse" (flows/hypotheses.py). No torch here: `fluxflow-compare` imports it.

The metrics promotion can decide on keep their direction in one place, PROMOTION_METRICS; the others follow from
their names. A metric whose better side is not a property of the model (the analyser's own accuracy on real images,
the data's diversity, a GAN's adversarial losses, the KL regulariser, a learning rate) has none, and a verdict on it
says only that the difference is beyond the spread.
"""
from __future__ import annotations

from fluxflow.config.promotion import PROMOTION_METRICS, Direction

LOWER_IS_BETTER = ("lpips",)  # eval_lpips: a perceptual distance to the original
HIGHER_IS_BETTER = ("psnr", "ssim")  # eval_psnr, eval_ssim: reconstruction quality
# Losses a model minimises; the discriminator's and generator's losses of a GAN fight each other, so neither going
# down says the model got better. The KL term is a regulariser traded against reconstruction: a hypothesis with a
# larger kl_beta has a lower KL and was called better for it.
UNRANKED_LOSSES = ("g_loss", "d_loss", "kl_loss")


def better_direction(metric: str) -> Direction | None:
    """"maximize", "minimize", or None when no direction is known for `metric`."""
    if metric in PROMOTION_METRICS:
        return PROMOTION_METRICS[metric]
    name = metric.removeprefix("eval_")
    if name in HIGHER_IS_BETTER or name.startswith("adherence_"):
        return "maximize"
    if name in LOWER_IS_BETTER or name.startswith("fd_"):
        return "minimize"
    if name.endswith("_loss") and name not in UNRANKED_LOSSES:
        return "minimize"
    return None
