"""Stopping a step cleanly at a batch boundary when the run is interrupted.

Ctrl-C reaches the main thread, but an orchestrator (the Prefect flow) trains in worker threads: without a request
the interrupted run would wait for the whole step to finish. The thread that sees the interrupt calls
`request_stop()`; the step runner checks `stop_requested()` between batches (a flag read, no device sync), saves
`latest.pt` at the batch it reached and raises `StepInterrupted`, so the next run resumes exactly there.
"""
from __future__ import annotations

import threading

_STOP = threading.Event()
POLL_S = 0.2  # how often a task waiting on other processes (torchrun, Ray Train) looks for a request


class StepInterrupted(KeyboardInterrupt):
    """A step stopped on request. A KeyboardInterrupt, so that orchestrators treat it as an interrupt (no retry)."""


def request_stop() -> None:
    _STOP.set()


def stop_requested() -> bool:
    return _STOP.is_set()


def clear_stop_request() -> None:
    """At the start of a run: a request belongs to the run that was interrupted, not to the next one in the process."""
    _STOP.clear()
