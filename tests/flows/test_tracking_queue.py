"""The background queue of tracking calls on its own: training never waits on it, an unreachable server delays the
calls without losing or reordering them, a rejected call does not block the others, memory stays bounded."""
from __future__ import annotations

import logging
import threading
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from flows import tracking_queue
from flows.tracking_queue import TrackingQueue


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch):
    monkeypatch.setattr(tracking_queue, "RETRY_PAUSE_S", (0.01, 0.05))


class Server:
    """Stands in for MLflow: records what it received; unreachable while `down` is set."""

    def __init__(self):
        self.received: list = []
        self.down = threading.Event()

    def call(self, item):
        if self.down.is_set():
            raise ConnectionRefusedError("[Errno 111] Connection refused")
        self.received.append(item)

    def log_points(self, points):
        self.call(list(points))


def test_an_unreachable_server_delays_the_calls_in_order_and_never_the_caller():
    server, queue = Server(), TrackingQueue()
    server.down.set()
    started = time.monotonic()
    seqs = [queue.put(lambda i=i: server.call(i)) for i in range(50)]
    assert time.monotonic() - started < 0.5  # putting never waits on the server
    assert not queue.wait(seqs[-1], stall_s=0.3)  # nothing goes out while it is down
    assert queue.pending() == 50 and queue.unreachable_since is not None
    server.down.clear()
    assert queue.wait(seqs[-1], stall_s=5)
    assert server.received == list(range(50)) and queue.unreachable_since is None


def test_the_line_after_an_outage_says_1_queued_record_of_one(caplog):
    server, queue = Server(), TrackingQueue()
    server.down.set()
    last = queue.put(lambda: server.call("end"))
    assert not queue.wait(last, stall_s=0.2)
    caplog.set_level(logging.WARNING, logger="flows.tracking_queue")
    server.down.clear()
    assert queue.wait(last, stall_s=5)
    said = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith(": sending 1 queued record"), said  # was "1 queued records"


def test_a_server_known_to_be_down_is_asked_until_it_answers_and_sent_nothing_before(monkeypatch, caplog):
    monkeypatch.setattr(tracking_queue, "PROBE_PAUSE_S", 0.01)
    server, queue = Server(), TrackingQueue()
    server.down.set()
    attempts = []
    queue.mark_unreachable("http://x: refused", "out/graph", answers=lambda: not server.down.is_set())
    last = queue.put(lambda: (attempts.append(1), server.call("open"))[1])
    assert not queue.wait(last, stall_s=0.3)
    assert attempts == []  # no call went out, to sit in MLflow's own retries, while the server did not answer
    server.down.clear()
    assert queue.wait(last, stall_s=5)
    assert attempts == [1] and server.received == ["open"] and queue.unreachable_since is None
    said = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert said == ["MLflow unreachable (http://x: refused): training goes on, its records wait in memory and in "
                    "out/graph and are sent when the server answers again"]


def test_a_rejected_call_is_dropped_and_the_others_go_on():
    server, queue = Server(), TrackingQueue()

    def rejected():
        raise MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE)

    queue.put(lambda: server.call("before"))
    queue.put(rejected)
    last = queue.put(lambda: server.call("after"))
    assert queue.wait(last, stall_s=5)
    assert server.received == ["before", "after"]


def test_consecutive_metric_batches_of_one_run_go_out_as_one_request():
    server, queue = Server(), TrackingQueue()
    gate = threading.Event()
    queue.put(gate.wait)  # holds the thread while the batches queue up
    for i in range(5):
        last = queue.put(server.log_points, [i, i])
    gate.set()
    assert queue.wait(last, stall_s=5)
    assert server.received == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]]


def test_memory_is_bounded_a_batch_beyond_it_is_refused():
    server, queue = Server(), TrackingQueue(max_points=4)
    server.down.set()
    assert queue.put(server.log_points, [1, 2, 3]) is not None
    assert queue.put(server.log_points, [4, 5]) is None  # refused: the caller resends it from its metrics file
    assert queue.put(lambda: server.call("end of step")) is not None  # calls without points are always taken
    server.down.clear()
    assert queue.wait(queue.put(lambda: None), stall_s=5)
    assert server.received == [[1, 2, 3], "end of step"]
