"""Test-only: steps that wait for each other at their start, which they pass only if they run at the same time.

`FLUXFLOW_TEST_TOGETHER=<dir>:<step>,<step>,...` in the environment of the processes that run the steps (for Ray
steps: the nodes' environment) makes each listed step write `<dir>/<step>` when its task starts and wait until every
listed step has: branches that run one after the other never get there and fail after WAIT_S. Unset (always, outside
tests), `meet` does nothing. Proves concurrency without timing anything (tests/flows/test_ray_executor.py).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

ENV = "FLUXFLOW_TEST_TOGETHER"
WAIT_S = 180.0


def meet(step_name: str) -> None:
    setting = os.environ.get(ENV)
    if not setting:
        return
    directory, _, names = setting.rpartition(":")
    steps = names.split(",")
    if step_name not in steps:
        return
    Path(directory, step_name).touch()
    deadline = time.monotonic() + WAIT_S
    while not all(Path(directory, name).exists() for name in steps):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ENV}: step {step_name} waited {WAIT_S:.0f} s for {', '.join(steps)} to run with it")
        time.sleep(0.1)
