"""Steps that run at once on a multi-GPU host each claim a GPU of their own (fluxflow/runtime/gpu_claim.py).

No GPU is needed: a claim is a lock file and a `torch.device("cuda", i)`, which exists without CUDA.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import torch

from fluxflow.runtime import gpu_claim
from fluxflow.runtime.gpu_claim import claimed_device

CUDA = torch.device("cuda")


def test_cpu_an_explicit_gpu_and_a_single_gpu_host_are_left_alone(tmp_path):
    for device, n_gpus in ((torch.device("cpu"), 4), (torch.device("cuda", 2), 4), (CUDA, 1)):
        with claimed_device(device, n_gpus, tmp_path) as got:
            assert got == device
    assert list(tmp_path.iterdir()) == []


def test_steps_running_at_once_get_different_gpus_and_a_released_one_is_reused(tmp_path):
    with claimed_device(CUDA, 3, tmp_path) as first, claimed_device(CUDA, 3, tmp_path) as second:
        assert (first, second) == (torch.device("cuda", 0), torch.device("cuda", 1))
        with claimed_device(CUDA, 3, tmp_path) as third:
            assert third == torch.device("cuda", 2)
    with claimed_device(CUDA, 3, tmp_path) as again:
        assert again == torch.device("cuda", 0)


def test_a_gpu_claimed_by_another_process_is_skipped_until_that_process_dies(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)",
         str(tmp_path / "gpu0.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with claimed_device(CUDA, 2, tmp_path) as got:
            assert got == torch.device("cuda", 1)
    finally:
        holder.kill()
        holder.wait()
    with claimed_device(CUDA, 2, tmp_path) as got:  # the kernel dropped the dead holder's lock
        assert got == torch.device("cuda", 0)


def test_when_every_gpu_is_claimed_a_step_waits_for_the_first_one_released(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_claim, "POLL_S", 0.02)
    claimed = [threading.Event(), threading.Event()]
    release = [threading.Event(), threading.Event()]
    held: list[torch.device | None] = [None, None]

    def hold(i: int) -> None:
        with claimed_device(CUDA, 2, tmp_path) as device:
            held[i] = device
            claimed[i].set()
            release[i].wait(30)

    holders = [threading.Thread(target=hold, args=(i,)) for i in (0, 1)]
    for thread in holders:
        thread.start()
    assert all(event.wait(10) for event in claimed)
    said: list[str] = []
    got: list[torch.device] = []

    def wait_for_one() -> None:
        with claimed_device(CUDA, 2, tmp_path, say=said.append) as device:
            got.append(device)

    waiter = threading.Thread(target=wait_for_one)
    waiter.start()
    deadline = time.monotonic() + 10
    while not said and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # a few more polls: still nothing free
    try:
        assert got == [] and said == [f"All 2 GPUs are in use by other steps (locks in {tmp_path}); waiting for one"]
        release[1].set()
        waiter.join(10)
        assert got == [held[1]]  # the GPU that was released
    finally:
        for event in release:
            event.set()
        for thread in [*holders, waiter]:
            thread.join(10)
