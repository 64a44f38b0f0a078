"""The host's GPU slot: the task concurrency limit `gpu` (`prefect concurrency-limit create gpu 1`, scripts/worker.sh)
that lets one step at a time use this host's GPU(s), whatever the number of flow runs.

A local step task (and the promotion, which evaluates on the GPU) takes the slot itself, around its work, instead of
carrying the tag for Prefect's task engine to take: the engine waits for a slot in a call that nothing in the process
can interrupt (Prefect 3.9: a blocking wait on its acquisition service, which the interpreter's exit waits on too), so
a Ctrl-C or SIGTERM of a run whose step waited for another run's slot did not end the run until that step had ended,
hours on real training. Here each request for the slot is answered at once (granted, or 423 with a time to ask
again), and the wait between requests looks at the stop request (fluxflow/runtime/stop_request.py). The slot is the
one the engine took: a lease on the limit `tag:gpu`, held by the task run, so `prefect concurrency-limit inspect gpu`
lists its holders, and a killed process's slot frees itself when the lease runs out (LEASE_S).
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
# What Prefect's own `concurrency()` renews its leases with (a thread renewing every 3/4 of the lease).
from prefect.concurrency._leases import maintain_concurrency_lease

from fluxflow.runtime.stop_request import POLL_S, StepInterrupted, stop_requested

LEASE_S = 60.0  # Prefect's task engine's (the shortest the API takes): how long a killed holder keeps the slot
LOCKED = 423  # the API's answer while the limit is full
SAY_AFTER_S = 5.0  # a wait longer than this is said, once, in the task run's log: after a kill -9 it lasts a minute

_STARTED: set[UUID] = set()  # the task runs past their wait for the slot (LocalSteps.started)


def gpu_tag() -> str:
    """The tag whose limit lets one step at a time use this host's GPU(s): `gpu`, or FLUXFLOW_GPU_TAG from the
    worker's environment where several GPU hosts share one Prefect server, so that each host has a limit of its own
    (scripts/worker.sh creates it; docs/DISTRIBUTED.md)."""
    return os.environ.get("FLUXFLOW_GPU_TAG") or "gpu"


def started(task_run_id: UUID) -> bool:
    """Whether the task run has its slot (or there is no limit) and does its work."""
    return task_run_id in _STARTED


@contextlib.contextmanager
def gpu_slot(who: str, task_run_id: UUID):
    """Hold the slot of `gpu_tag()`'s limit for the block, on behalf of the task run `task_run_id` (`who`, e.g.
    `Step b`, names it in messages); without such a limit the block runs at once. A stop request while waiting raises
    StepInterrupted: nothing has started, nothing is lost."""
    tag = gpu_tag()
    with get_client(sync_client=True) as client:
        lease_id = wait_for_slot(client, tag, who, task_run_id)
    try:
        with maintain_concurrency_lease(lease_id, LEASE_S) if lease_id is not None else contextlib.nullcontext(), \
                working(task_run_id):
            yield
    finally:
        if lease_id is not None:  # a failed release leaves the slot to the lease's end, not the outcome to an error
            with contextlib.suppress(Exception), get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(lease_id)


@contextlib.contextmanager
def working(task_run_id: UUID):
    """The block is the task run's work, for `started`: inside gpu_slot, or alone where no slot is asked (the run's
    own temporary server). Without it there, a Ctrl-C said the training step "had not started" and the run's summary
    recorded it "not run"."""
    _STARTED.add(task_run_id)
    try:
        yield
    finally:
        _STARTED.discard(task_run_id)


def wait_for_slot(client, tag: str, who: str, task_run_id: UUID) -> UUID | None:
    """The lease of the slot once granted (None: the tag has no limit). Asks again when the API says to (its
    Retry-After, up to 30 s), looking for a stop request every POLL_S meanwhile; a wait past SAY_AFTER_S is said
    once, with who holds the slot."""
    holder = ConcurrencyLeaseHolder(type="task_run", id=task_run_id)
    ask_at = time.monotonic()
    say_at = ask_at + SAY_AFTER_S
    while True:
        if stop_requested():
            raise StepInterrupted(f"{who} stopped before it started: it waited for the `{tag}` slot")
        if time.monotonic() >= ask_at:
            try:
                response = client.increment_concurrency_slots_with_lease(
                    names=[f"tag:{tag}"], slots=1, mode="concurrency", lease_duration=LEASE_S, holder=holder)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != LOCKED:
                    raise
                ask_at = time.monotonic() + float(exc.response.headers.get("Retry-After", 1))
            else:
                granted = ConcurrencyLimitWithLeaseResponse.model_validate(response.json())
                return granted.lease_id if granted.limits else None
        if time.monotonic() >= say_at:
            held_by = holders(client, tag)
            if held_by:
                get_run_logger().info("%s waits for the `%s` concurrency slot, held by %s. A holder whose process "
                                      "was killed (kill -9) keeps it until its lease runs out, within %.0f s.",
                                      who, tag, held_by, LEASE_S)
                say_at = math.inf
            else:  # freed since the refusal: the next request takes it, or looks again at who took it
                say_at = ask_at + SAY_AFTER_S
        time.sleep(POLL_S)


def holders(client, tag: str) -> str:
    """The task runs holding the limit's slots, by name and id, as the API lists them; empty when none does."""
    try:
        ids = client.read_concurrency_limit_by_tag(tag).active_slots
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids))) if ids else []
    except Exception:  # noqa: BLE001 - only words of a line: the wait goes on without them
        return "a task run (the API did not say which)"
    names = {run.id: run.name for run in runs}
    return ", ".join(f"task run {names[i]!r} ({i})" if i in names else f"task run {i}" for i in ids)
