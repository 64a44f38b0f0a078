"""The Tracker that puts a step's console lines in its Prefect task run's log, so the UI shows the run train.

In a deployment run the console lines (fluxflow.train.tracking.console_line, one per `log_interval`) go to the
worker's stdout, which Prefect does not capture: the run's log in the UI showed none of them. This tracker sends the
same lines to the Prefect API as logs of the step's task run; the progress bar is not sent (it is drawn only on a
terminal anyway). It sends them to the API only: the terminal already has each line from ConsoleJsonlTracker, and
Prefect's run logger would print it a second time through its console handler.

Sending costs no wait: Prefect's APILogHandler queues the record for its background log worker.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (must precede prefect)

import contextlib
import logging
import threading
from uuid import UUID

from fluxflow.train.tracking import Progress, Tracker, console_line, has_console_line

LOGGER_NAME = "flows.training_log"
_INSTALL = threading.Lock()  # branches' tasks start together in threads of one process: one handler, not one each


class PrefectLogTracker(Tracker):
    """`fluxflow.train.tracking.Tracker` that logs each console line, training-health warning and runner line
    ("Starting step ...", "Finished step ...") to one Prefect task run; its other calls are the protocol's no-ops
    (inherited).

    The run ids are taken when the tracker is made (in the task), so lines logged from any thread land in that run.
    """

    def __init__(self, flow_run_id: UUID | str, task_run_id: UUID | None):
        from prefect.logging.handlers import APILogHandler

        self.ids = {"flow_run_id": flow_run_id, "task_run_id": task_run_id}
        # Its records go to the Prefect API and nowhere else (not to the console, not to the root logger).
        self.logger = logging.getLogger(LOGGER_NAME)
        with _INSTALL:
            if not any(isinstance(h, APILogHandler) for h in self.logger.handlers):
                self.logger.addHandler(APILogHandler())
                self.logger.setLevel(logging.INFO)
                self.logger.propagate = False

    def log_metrics(self, metrics: dict[str, float], progress: Progress) -> None:
        if has_console_line(metrics):
            self.logger.info(console_line(metrics, progress), extra=self.ids)

    def warn(self, key: str, message: str) -> None:
        self.logger.warning(f"⚠️  {message}", extra=self.ids)  # as the console shows it, at WARNING in the UI

    def say(self, line: str) -> None:
        self.logger.info(line, extra=self.ids)

    @contextlib.contextmanager
    def core_warnings(self):
        """For the block, the training core's warnings (logger `fluxflow`: an unused component, captions cut short, a
        schedule that never acts, a missed threshold) logged in this thread are also in the task run's log: they
        reached the terminal only. Other threads' records are other steps' (branches train in threads)."""
        handler = _ThreadRecords(self, threading.get_ident())
        core = logging.getLogger("fluxflow")
        core.addHandler(handler)
        try:
            yield
        finally:
            core.removeHandler(handler)


class _ThreadRecords(logging.Handler):
    """Records of WARNING and above logged in one thread, passed to a PrefectLogTracker's run."""

    def __init__(self, tracker: PrefectLogTracker, thread: int):
        super().__init__(logging.WARNING)
        self.tracker, self.thread = tracker, thread

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.tracker.logger.log(record.levelno, record.getMessage(), extra=self.tracker.ids)
