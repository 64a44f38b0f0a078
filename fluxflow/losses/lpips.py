"""LPIPS perceptual loss through the `lpips` package, with its ImageNet AlexNet backbone read from local disk.

`lpips.LPIPS(pretrained=True)` ships its small calibrated linear layers in the package, but would have
torchvision download the AlexNet backbone. We never download: we build LPIPS with a random trunk
(`pnet_rand=True`, no network) and load the real backbone ourselves from `lpips_backbone_path()`, failing with
a message that names the file when it is missing. Nothing else is ever substituted under the name LPIPS.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch
from torch import nn

from fluxflow.config.file_checks import lpips_backbone_path, missing_lpips_backbone_message

# `warnings.catch_warnings` saves and puts back the process's one filter list: branches building their loss at once in
# threads of one process, blocks overlapping and exiting in the order they entered, put back an `ignore` for good.
_QUIET_BUILD = threading.Lock()


def _load_alexnet_trunk(trunk: nn.Module, path: Path) -> None:
    """Copy torchvision AlexNet `features.<i>.*` weights into lpips' slices (`slice<k>.<i>.*`), strictly."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    slice_of = {idx: name for name, part in trunk.named_children() for idx in part._modules}
    mapped = {}
    for key, value in state.items():
        prefix, idx, param = key.split(".", 2)
        if prefix == "features" and idx in slice_of:
            mapped[f"{slice_of[idx]}.{idx}.{param}"] = value
    trunk.load_state_dict(mapped, strict=True)


class LPIPSLoss(nn.Module):
    """Mean LPIPS distance between two image batches in [-1, 1]; frozen and always in eval mode.

    Gradients flow to the inputs only. The lin layers carry Dropout(0.5), so `train()` is overridden to keep
    the module in eval whatever the parent does. Computed in fp32 even under autocast.
    """

    def __init__(self) -> None:
        super().__init__()
        missing = missing_lpips_backbone_message()
        if missing:
            raise FileNotFoundError(missing)
        import lpips  # deferred: importing it pulls in torchvision model definitions

        with _QUIET_BUILD, warnings.catch_warnings():  # lpips passes torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore")
            self.net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        _load_alexnet_trunk(self.net.net, lpips_backbone_path())
        self.net.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> LPIPSLoss:
        return super().train(False)

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.net(_rgb(x_hat).float(), _rgb(x).float()).mean()


def _rgb(images: torch.Tensor) -> torch.Tensor:
    """What the AlexNet backbone reads: three channels. Grey is repeated (as lpips' own scaling would broadcast it);
    an alpha channel (data.channels 4) is left out, for the L1/MSE terms to see: it failed every batch and every
    evaluation of an RGBA model with a shape error."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
