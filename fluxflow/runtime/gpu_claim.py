"""Which GPU of a multi-GPU host a single-process step trains on.

A step asks for `cuda` (or `auto` on a GPU host). When a host's `gpu` concurrency limit lets several steps run at
once (branches of one flow run share a process; separate flow runs have processes of their own), each must get a GPU
to itself. A step claims one with an exclusive `filelock.FileLock` (flock) on `<lock dir>/gpu<i>.lock`: it conflicts
between processes and between two lock objects in one process alike, and the kernel drops it when its holder dies,
so a killed step never leaves a GPU claimed. When every GPU is claimed the step waits for one (the limit should not
exceed the GPUs).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from filelock import FileLock, Timeout

POLL_S = 1.0


@contextlib.contextmanager
def claimed_device(device: torch.device, n_gpus: int, directory: Path | None = None,
                   say: Callable[[str], None] = print) -> Iterator[torch.device]:
    """`device` itself unless it is `cuda` without an index on a host with several GPUs; then `cuda:<i>` for a GPU
    held by no other step, claimed until the block ends."""
    if device.type != "cuda" or device.index is not None or n_gpus <= 1:
        yield device
        return
    # FLUXFLOW_GPU_LOCK_DIR, else a folder in the system temp dir (one per host, as the GPUs are)
    default = os.environ.get("FLUXFLOW_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "fluxflow-gpus"
    directory = directory or Path(default)
    directory.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count():
        for index in range(n_gpus):
            lock = FileLock(directory / f"gpu{index}.lock", timeout=0, thread_local=False)
            try:
                lock.acquire()
            except Timeout:
                continue
            try:
                yield torch.device("cuda", index)
            finally:
                lock.release()
            return
        if attempt == 0:
            say(f"All {n_gpus} GPUs are in use by other steps (locks in {directory}); waiting for one")
        time.sleep(POLL_S)
