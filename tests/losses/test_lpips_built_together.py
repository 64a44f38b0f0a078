"""Two branches building their LPIPS loss at the same time leave the process's warning filters as they found them.
`warnings.catch_warnings` saves and restores the one process-wide filter list: two overlapping blocks that exit in
the order they entered put back the first one's `ignore`, silencing every warning of the process from then on."""
from __future__ import annotations

import threading
import warnings

import torch

import fluxflow.losses.lpips as lpips_module

WAIT_S = 1.0


def test_two_lpips_losses_built_at_once_leave_the_warning_filters_as_they_were(monkeypatch):
    import lpips  # here, not at collection: 1.6 s of torchvision that most test processes never need

    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()

    class Net(torch.nn.Module):  # lpips.LPIPS stand-in: a holds its block open until b is in its, b until a is done
        def __init__(self, **kwargs):
            super().__init__()
            self.net = torch.nn.Identity()
            if threading.current_thread().name == "a":
                a_inside.set()
                b_inside.wait(WAIT_S)
            else:
                b_inside.set()
                a_done.wait(WAIT_S)

    monkeypatch.setattr(lpips, "LPIPS", Net)
    monkeypatch.setattr(lpips_module, "missing_lpips_backbone_message", lambda: None)
    monkeypatch.setattr(lpips_module, "_load_alexnet_trunk", lambda trunk, path: None)
    before = list(warnings.filters)

    def build_b():
        a_inside.wait(10)
        lpips_module.LPIPSLoss()

    def build_a():
        lpips_module.LPIPSLoss()
        a_done.set()

    a = threading.Thread(target=build_a, name="a")
    b = threading.Thread(target=build_b, name="b")
    a.start()
    b.start()
    a.join(30)
    b.join(30)
    leaked = warnings.filters != before
    warnings.filters[:] = before  # the test's own process keeps its filters whatever happened
    assert not leaked, "a build's `ignore` stayed in the process's warning filters"
