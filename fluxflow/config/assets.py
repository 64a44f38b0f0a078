"""Files the product needs but never downloads, located without importing torch.

LPIPS (the `lpips` package) ships only its small linear layers; its AlexNet ImageNet backbone comes from torchvision's
hub cache. This mirrors `torch.hub.get_dir()`: `$TORCH_HOME`, else `$XDG_CACHE_HOME/torch`, else `~/.cache/torch`,
then `hub/checkpoints/<file>`. `fluxflow.losses` re-exports `lpips_backbone_path`.
"""
from __future__ import annotations

import os
from pathlib import Path

LPIPS_BACKBONE_FILE = "alexnet-owt-7be5be79.pth"


def torch_home() -> Path:
    default = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache")), "torch")
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", default)))


def lpips_backbone_path() -> Path:
    """Where torchvision looks for the AlexNet weights that LPIPS loads."""
    return torch_home() / "hub" / "checkpoints" / LPIPS_BACKBONE_FILE


def missing_lpips_backbone_message() -> str | None:
    """None when the backbone file is in place, else what is missing and how to put it there."""
    path = lpips_backbone_path()
    if path.is_file():
        return None
    return (
        f"LPIPS needs the AlexNet ImageNet backbone file '{LPIPS_BACKBONE_FILE}' at {path}, and it is not there "
        "(nothing is downloaded at run time). Copy it there from a machine with internet access, where "
        "`python -c \"import torchvision; torchvision.models.alexnet(weights='IMAGENET1K_V1')\"` puts it in "
        "$TORCH_HOME/hub/checkpoints/ (default ~/.cache/torch/hub/checkpoints/), or point TORCH_HOME at a folder "
        "whose hub/checkpoints/ holds it; or set use_lpips: false"
    )
