"""torch's intra-op thread count when branches train in threads of one process.

Measured with this torch build (OpenMP): `torch.set_num_threads(n)` changes the calling thread's count only, but it
also becomes the count of every thread that uses torch for the first time afterwards, which keeps it for good. The
feature network of an evaluation is fitted on one thread (fluxflow/evaluation/frechet.py): a branch starting in a
fresh thread of the task runner while another branch fitted it trained its whole step on one thread. So the one-thread
section and a step thread's first look at its count take one lock: a step starts with the process's count. The lock
is GLOBAL_RNG (fluxflow/runtime/global_rng.py): the one-thread fit runs inside the evaluation's generator section,
and a second lock could be taken in the two orders (a checkpoint evaluation fits outside that section).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from fluxflow.runtime.global_rng import GLOBAL_RNG


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one intra-op thread in this thread for the block, its count put back after; threads that first use
    torch meanwhile wait for the block's end (`settle_threads`) instead of inheriting the 1."""
    with GLOBAL_RNG:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def settle_threads() -> int:
    """Fix this thread's intra-op count (the first use of torch in a thread fixes it) outside any one-thread section
    of another thread; returns it. A step calls it first."""
    with GLOBAL_RNG:
        return torch.get_num_threads()
