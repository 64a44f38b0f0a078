"""Whether a GAN step's discriminator is learning: the signal GAN practitioners watch.

A discriminator that tells real from fake holds its mean logits apart (D(real) up, D(fake) down). A flat one outputs
about the same for both (near 0, hinge D loss ~2.00): the GAN stage then trains the VAE alone while it looks like a
GAN. `FlatDiscriminatorWatch` reads the runner's per-log-interval means (no extra host sync) and says so once per
step when D has been flat for `output.d_flat_warn_updates` updates.
"""
from __future__ import annotations

# Mean logit gap |D(real) − D(fake)| below which D is called flat: 5 % of the hinge margin.
FLAT_LOGIT_GAP = 0.05


class FlatDiscriminatorWatch:
    def __init__(self, after_updates: int):
        self.after_updates = after_updates  # 0: never warn
        self.flat_updates = 0  # consecutive updates in flat log intervals
        self.warned = False

    def state_dict(self) -> dict:
        """For the step's checkpoint: a resumed step goes on counting flat updates, and does not warn twice."""
        return {"flat_updates": self.flat_updates, "warned": self.warned}

    def load_state_dict(self, state: dict) -> None:
        self.flat_updates, self.warned = int(state["flat_updates"]), bool(state["warned"])

    def observe(self, means: dict[str, float], updates: int) -> str | None:
        """One log interval's means over `updates` discriminator updates; the warning line the first time D has been
        flat for `after_updates` updates, else None."""
        if not self.after_updates or "d_logit_real" not in means:
            return None
        gap = means["d_logit_real"] - means["d_logit_fake"]
        self.flat_updates = self.flat_updates + updates if abs(gap) < FLAT_LOGIT_GAP else 0
        if self.warned or self.flat_updates < self.after_updates:
            return None
        self.warned = True
        return (f"the discriminator has been flat for {self.flat_updates} updates (mean logit real "
                f"{means['d_logit_real']:+.3f}, fake {means['d_logit_fake']:+.3f}, d_loss "
                f"{means.get('d_loss', float('nan')):.3f}): it does not tell real from fake, so the GAN stage trains "
                f"the VAE alone; see docs/OPERATIONS.md (a discriminator that does not learn)")
