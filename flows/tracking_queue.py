"""One background thread per process that sends the tracking calls of every step to MLflow, in order.

Training never waits on the tracking server: a step puts its calls here and goes on. When the server is unreachable
(an outage, a restart), the thread keeps the calls in memory and retries the oldest one, with a growing pause, until
the server answers; then it sends the rest. Consecutive metric batches of one run go out as one request of at most
`MAX_BATCH_POINTS` points, so that a backlog drains quickly.

Memory is bounded: at most `MAX_QUEUED_POINTS` metric points wait here. A metric batch that would exceed it is refused
(`put` returns None); the step's tracker then sends what it missed from its metrics file, the on-disk copy of every
point, once there is room again (flows/mlflow_tracker.py).

A call that MLflow rejects (an HTTP 4xx: a bad value, a deleted run) is dropped with a warning instead of blocking
everything behind it.
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from typing import Callable

from fluxflow.wording import counted

log = logging.getLogger("flows.tracking_queue")

MAX_QUEUED_POINTS = 100_000  # ~20 MB of metric points: hours of a real run's log intervals
MAX_BATCH_POINTS = 1000  # MLflow's limit of metrics per log_batch request
RETRY_PAUSE_S = (1.0, 30.0)  # first and longest pause between two attempts of a failing call
PROBE_PAUSE_S = 2.0  # between two checks of a server known to be down (mark_unreachable)


def retryable(exc: BaseException) -> bool:
    """Whether a failed call may succeed later: the server was unreachable or failed (5xx), not a rejection (4xx)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return not 400 <= exc.get_http_status_code() < 500
    return isinstance(exc, OSError)  # connection errors, including requests' exceptions


class TrackingQueue:
    """FIFO of tracking calls, sent by a daemon thread started at the first `put`.

    Each call is `call()`, or `call(points)` for a metric batch (`points` a list): consecutive batches for the same
    `call` are merged. `put` returns a sequence number; `wait(seq)` returns once every call up to it is done.
    """

    def __init__(self, max_points: int = MAX_QUEUED_POINTS):
        self.max_points = max_points
        self._items: collections.deque = collections.deque()  # (call, points or None)
        self._cond = threading.Condition()
        self._seq = self._done = self._points = 0
        self._thread: threading.Thread | None = None
        self.unreachable_since: float | None = None  # monotonic time of the first failure of the current outage
        self._answers: Callable[[], bool] | None = None  # a quick check of the server, while it is unreachable

    def put(self, call: Callable, points: list | None = None) -> int | None:
        with self._cond:
            if points is not None and self._points + len(points) > self.max_points:
                return None
            self._seq += 1
            self._items.append((call, points))
            self._points += len(points or ())
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mlflow-tracking", daemon=True)
                self._thread.start()
            self._cond.notify_all()
            return self._seq

    def room(self) -> int:
        """Metric points that may still be queued."""
        with self._cond:
            return self.max_points - self._points

    def pending(self) -> int:
        """Calls not sent yet."""
        with self._cond:
            return self._seq - self._done

    def wait(self, seq: int, stall_s: float) -> bool:
        """Wait until every call up to `seq` is done; give up after `stall_s` seconds in which none was. Returns
        whether they are all done."""
        with self._cond:
            done, since = self._done, time.monotonic()
            while self._done < seq:
                if self._done != done:
                    done, since = self._done, time.monotonic()
                left = stall_s - (time.monotonic() - since)
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
            return True

    def _head(self) -> tuple[Callable, list | None, int]:
        """The oldest call, merged with the metric batches that follow it for the same call: (call, points, count)."""
        call, points = self._items[0]
        if points is None:
            return call, None, 1
        merged, count = list(points), 1
        for other, more in itertools.islice(self._items, 1, None):  # the lock is held: no copy needed
            if other != call or more is None or len(merged) + len(more) > MAX_BATCH_POINTS:
                break
            merged += more
            count += 1
        return call, merged, count

    def _run(self) -> None:
        pause = RETRY_PAUSE_S[0]
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                call, points, count = self._head()
            if self.unreachable_since is not None and self._answers is not None and not self._answers():
                time.sleep(PROBE_PAUSE_S)
                continue
            try:
                call() if points is None else call(points)
            except Exception as exc:  # noqa: BLE001  (whatever MLflow raises: retried or dropped, never fatal)
                if retryable(exc):
                    self._failing(exc)
                    time.sleep(pause)
                    pause = min(pause * 2, RETRY_PAUSE_S[1])
                    continue
                log.warning("MLflow rejected a tracking call, dropped: %s", _first_line(exc))
            pause = RETRY_PAUSE_S[0]
            if self.unreachable_since is not None:  # the first call through after an outage
                log.warning("MLflow reachable again after %.0f s: sending %s",
                            time.monotonic() - self.unreachable_since, counted(self.pending(), "queued record"))
                self.unreachable_since = None
            with self._cond:
                for _ in range(count):
                    _, sent = self._items.popleft()
                    self._points -= len(sent or ())
                    self._done += 1
                self._cond.notify_all()

    def mark_unreachable(self, reason: str, where: str, answers: Callable[[], bool]) -> None:
        """The server is known not to answer before any call failed (the flow's probe at its start): say so now,
        once, with `where` the records also wait, instead of when MLflow's client gives up its first call. Until
        `answers()` (one quick request) says it is back, the thread asks that every `PROBE_PAUSE_S` instead of
        sending: a call to a server that does not answer sits in MLflow's own retries for minutes and would notice
        the server's return only at its next retry, up to a minute later."""
        self._answers = answers
        self._failing(reason, where)

    def _failing(self, reason: Exception | str, where: str = "") -> None:
        if self.unreachable_since is None:
            self.unreachable_since = time.monotonic()
            log.warning("MLflow unreachable (%s): training goes on, its records wait in memory%s and are sent when "
                        "the server answers again", _first_line(reason), f" and in {where}" if where else "")


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


TRACKING = TrackingQueue()  # the process's queue: every step's MLflow tracker and the flow's parent run use it
