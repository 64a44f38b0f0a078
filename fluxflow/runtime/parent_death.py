"""Child processes that die with the process that started them, even when it is killed with kill -9 (Linux).

A child started in a session of its own (so that a signal to its starter's process group does not reach it) is no
longer killed with that group; when its starter dies without stopping it, it would live on. Linux's parent-death
signal (prctl PR_SET_PDEATHSIG) sends it a signal when its parent dies. "Its parent" is the *thread* that started it:
start it from a thread that outlives it (the main thread, or one that waits for it). When the whole process dies, the
child may get the signal more than once (again each time it is handed to another of the dying process's threads).
Used for the temporary Prefect server of `fluxflow-train` (flows/prefect_server.py), for torchrun
(fluxflow/runtime/launch.py) and for each torchrun rank (fluxflow/train/distributed_step.py). Elsewhere than on Linux
nothing is set: stopping the child is left to its starter's exit path.

No torch here: flows/prefect_server.py imports this before the heavy imports of `fluxflow-train`.
"""
from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _prctl() -> Callable | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


def die_with_parent(parent: int, sig: signal.Signals) -> None:
    """In the child, as it starts: `sig` when `parent` (its parent's pid, as its starter or the child itself read it
    before) dies. A parent that died before this took effect ends the child at once (exit 1)."""
    _set_death_signal(_prctl(), parent, sig)


def dies_with_this_thread() -> Callable[[], None]:
    """A `preexec_fn` for `subprocess.Popen`: the child gets SIGTERM when the calling thread (or its process) ends.
    What the child runs before its exec is resolved here, in the parent: a child forked from a process with threads
    must not look up symbols (dlsym may wait on a lock that another thread held at the fork)."""
    parent, prctl = os.getpid(), _prctl()
    return lambda: _set_death_signal(prctl, parent, signal.SIGTERM)


def _set_death_signal(prctl: Callable | None, parent: int, sig: signal.Signals) -> None:
    if prctl is None:
        return
    prctl(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def parent_of(pid: int) -> int | None:
    """The parent pid of process `pid` (Linux /proc), or None when it is gone or cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
