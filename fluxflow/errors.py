"""Failures that running the same step again cannot fix, so no orchestrator should retry them.

A retry is a fresh call of the same step (flows/step_task.py): it helps when a worker was lost or a service blinked,
and only trains into the same wall when the disk is full, the data is invalid, a checkpoint is refused or the config
is wrong. Those raise a subclass of `NonRetryable`; whoever retries (the Prefect task's retry condition in
flows/fault_policy.py) asks `is_retryable`. Everything else is retryable. Their message is one line that names the
file or cause and says what to do, so the command line can print it instead of a traceback.

No torch here: fluxflow.config imports this.
"""
from __future__ import annotations

import errno

# A write that failed for want of space fails again: no space left on the device, the user's disk quota used up.
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class NonRetryable(Exception):
    """Running the step again without a change by the user fails the same way."""


class DiskFullError(NonRetryable, OSError):
    """A file could not be written because its filesystem is full (ENOSPC) or the user's quota is used up."""


class CheckpointError(NonRetryable):
    """A checkpoint could not be written, read, or trusted; the message names the file and says why."""


class DataError(NonRetryable, ValueError):
    """The step's data cannot be trained on (e.g. fewer items than one batch)."""


def error_chain(error: BaseException | None):
    """`error`, then its causes and contexts (a PipelineFailed wraps the step's error), each once."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        yield error
        seen.add(id(error))
        error = error.__cause__ or error.__context__


def non_retryable_cause(error: BaseException | None) -> NonRetryable | None:
    """The first NonRetryable in `error`'s chain of causes and contexts."""
    return next((e for e in error_chain(error) if isinstance(e, NonRetryable)), None)


def is_retryable(error: BaseException) -> bool:
    """False for a NonRetryable anywhere in `error`'s chain, and for a raw OSError of a full disk (a write outside
    fluxflow/checkpoints/io.py, e.g. a metrics line); True otherwise (a lost worker, a network or tracking error)."""
    return not any(isinstance(e, NonRetryable) or (isinstance(e, OSError) and e.errno in FULL_ERRNOS)
                   for e in error_chain(error))
