"""Test-only: `kill -9` of this process at a named point of a run, to test what a kill there leaves behind.

`FLUXFLOW_TEST_KILL_AT=<point>` in the environment of a run makes the process SIGKILL itself when it reaches
`<point>`; unset (always, outside tests), `reached` does nothing. A point is named where the moment is too short to
hit from outside. Points: `step_finished` (a step's `ref.json` is written and its MLflow run not yet closed:
tests/flows/test_mlflow_after_kills.py); `batch<global_step>_rank<rank>` (a rank has finished that batch of the
pipeline: tests/runtime/test_ray_train_step.py kills one Ray Train worker mid-step); `teardown_rank<rank>` (a torchrun
rank has passed the step's last barrier, before its process group is destroyed: tests/runtime/test_distributed.py).

`FLUXFLOW_TEST_KILL_ONCE=<file>` as well makes the kill happen once: the first process to reach the point creates
the file and dies, later ones (a restarted worker group, a rerun) find it and go on.
"""
from __future__ import annotations

import os
import signal

ENV = "FLUXFLOW_TEST_KILL_AT"
ONCE_ENV = "FLUXFLOW_TEST_KILL_ONCE"


def reached(point: str) -> None:
    if os.environ.get(ENV) != point:
        return
    once = os.environ.get(ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
