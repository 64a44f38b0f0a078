"""flows/ray_node.py `cancel_stops_at_a_batch`: what Ray's cancel does to a step task (no cluster: Ray's cancel of a
running task is `_thread.interrupt_main()`, a SIGINT simulated in the task's main thread)."""
from __future__ import annotations

import _thread
import signal
import time

import pytest

from flows.ray_node import cancel_stops_at_a_batch
from fluxflow.runtime.stop_request import clear_stop_request, request_stop, stop_requested


def cancelled_by_ray() -> None:
    _thread.interrupt_main()
    time.sleep(0.05)  # the handler runs in this (main) thread at the next bytecode boundary


def test_a_first_cancel_asks_the_step_to_stop_at_its_batch_and_a_second_interrupts():
    """A KeyboardInterrupt raised where the cancel landed once came inside torch.save as a RuntimeError, which the
    task's retries took for a failure: the step trained on to its end."""
    before = signal.getsignal(signal.SIGINT)
    request_stop()  # left by a task cancelled earlier in the same worker process
    try:
        with cancel_stops_at_a_batch():
            assert not stop_requested()
            cancelled_by_ray()  # no exception here: the runner stops at its next batch, saving latest.pt there
            assert stop_requested()
            with pytest.raises(KeyboardInterrupt):
                cancelled_by_ray()
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        clear_stop_request()
