"""Test-only: `kill -9` of this process at a named point of a run, to test what a kill there leaves behind.

`FLUXFLOW_TEST_KILL_AT=<point>` in the environment of a `fluxflow-train` run makes the process SIGKILL itself when it
reaches `<point>`; unset (always, outside tests), `reached` does nothing. A point is named where the moment is too
short to hit from outside. Points: `step_finished` (a step's `ref.json` is written and its MLflow run not yet closed:
tests/test_mlflow_after_kills.py).
"""
from __future__ import annotations

import os
import signal

ENV = "FLUXFLOW_TEST_KILL_AT"


def reached(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
