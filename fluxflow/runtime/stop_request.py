"""Stopping a step cleanly at a batch boundary when the run is interrupted.

Ctrl-C reaches the main thread, but an orchestrator (the Prefect flow) trains in worker threads: without a request
the interrupted run would wait for the whole step to finish. The thread that sees the interrupt calls
`request_stop()`; the step runner checks `stop_requested()` between batches (a flag read, no device sync), saves
`latest.pt` at the batch it reached and raises `StepInterrupted`, so the next run resumes exactly there.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

_STOP = threading.Event()
POLL_S = 0.2  # how often a task waiting on other processes (torchrun, Ray Train) looks for a request


class StepInterrupted(KeyboardInterrupt):
    """A step stopped on request. A KeyboardInterrupt, so that orchestrators treat it as an interrupt (no retry)."""


def request_stop() -> None:
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def wait_for(finished: Callable[[], bool], step_name: str, processes: str, timeout: float | None) -> bool:
    """Poll `finished()` until it is True (then True) or `timeout` seconds have passed (False); on a stop request
    (Ctrl-C in the flow) StepInterrupted at once. The step's `processes` do not stop at a batch boundary then (the
    ranks would have to agree on one): the caller kills them, and the step resumes from its last mid-step checkpoint."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not finished():
        if stop_requested():
            raise StepInterrupted(f"step {step_name} interrupted: its {processes} are stopped; it resumes from its "
                                  "last checkpoint")
        if deadline is not None and time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def clear_stop_request() -> None:
    """At the start of a run: a request belongs to the run that was interrupted, not to the next one in the process."""
    _STOP.clear()
