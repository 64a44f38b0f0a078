"""What a step's failure means to Prefect and to the command line: retry it or not, and how it is shown.

The core marks the failures that running again cannot fix (fluxflow/errors.py: a full disk, invalid data, a
refused or unreadable checkpoint, a wrong config). For those:
- the step task is not retried (`retry_unless_non_retryable`, the task's `retry_condition_fn`): a retry would train
  into the same full disk or load the same refused file again;
- Prefect logs their one-line message without a traceback (`QuietNonRetryable`): the message already names the file
  and what to do, and the stack of Prefect's engine would only bury it;
- `fluxflow-train` exits with 2 after printing that line (`failure_exit_code`), as for any other input the user
  must fix, instead of 1 (a step failed).
Every other failure (a lost worker, a transient tracking or network error, a bug) keeps Prefect's retries and its
traceback.
"""
from __future__ import annotations

import logging
import sys

from flows.exit_codes import EXIT_FIX_INPUT, EXIT_STEP_FAILED
from fluxflow.errors import is_retryable, non_retryable_cause
from fluxflow.train.pipeline_schedule import PipelineFailed


def state_exception(state) -> BaseException | None:
    """The exception a failed Prefect state holds (in this process), or None."""
    data = getattr(state, "data", None)
    if isinstance(data, BaseException):
        return data
    try:
        found = state.result(raise_on_failure=False)
    except Exception:  # a result that cannot be read back says nothing about the cause
        return None
    return found if isinstance(found, BaseException) else None


def retry_unless_non_retryable(task, task_run, state) -> bool:
    error = state_exception(state)
    return error is None or is_retryable(error)


# What Prefect's engine logs, with the traceback, when the flow's exception leaves a deployment's flow-run process
# (prefect/flow_engine.py run_flow): the flow's own record ("Encountered exception during execution") said it already.
ENGINE_EXIT = "Engine execution exited with unexpected exception"


# Prefect's words for a stop the user asked for (Ctrl-C, SIGTERM), which its engines log at ERROR as a crash ("Crash
# detected! ...", "Finished in state Crashed(...)"): the steps saved the batch they reached, and the command says how
# to go on, so these records are INFO; the runs' state stays Crashed, as Prefect sets it.
REQUESTED_STOPS = ("Execution was aborted by an interrupt signal.", "Execution was aborted by a termination signal.")


class QuietNonRetryable(logging.Filter):
    """Drops the traceback from log records about a non-retryable failure, and from the flow's own end when steps
    failed or missed their threshold with `on_missed: fail` (PipelineFailed: its message names each of them, and a
    failed step's traceback was logged by its task run; a missed threshold is an outcome the config asked for, not a
    crash). The record's message stays, with the error written as its text: Prefect writes it with %r, which put a
    ConfigError's problems on one line joined by a literal \\n. The engine's closing repeat (ENGINE_EXIT), which without
    its traceback says nothing, is dropped. A requested stop (REQUESTED_STOPS) is logged at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and any(stop in record.getMessage() for stop in REQUESTED_STOPS):
            record.levelno, record.levelname = logging.INFO, "INFO"
        error = record.exc_info[1] if record.exc_info else None
        if error is None or is_retryable(error) and not isinstance(error, PipelineFailed):
            return True
        if record.msg == ENGINE_EXIT:
            return False
        record.exc_info, record.exc_text = None, None
        if isinstance(record.args, tuple):
            record.args = tuple(AsText(str(arg)) if arg is error else arg for arg in record.args)
        return True


class AsText(str):
    """A text that %r writes as %s does: as it reads, one problem a line."""

    def __repr__(self) -> str:
        return str(self)


def quiet_non_retryable_tracebacks() -> None:
    """Install the filter on the loggers of Prefect's task and flow engines (where their records are created)."""
    for name in ("prefect.task_runs", "prefect.flow_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietNonRetryable) for f in logger.filters):
            logger.addFilter(QuietNonRetryable())


def failure_exit_code(state) -> int:
    cause = non_retryable_cause(state_exception(state))
    if cause is None:
        return EXIT_STEP_FAILED
    print(f"❌ {cause}", file=sys.stderr, flush=True)
    return EXIT_FIX_INPUT
