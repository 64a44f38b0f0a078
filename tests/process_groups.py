"""Process-group checks shared by the tests that start servers, CLIs or torchrun in sessions of their own."""
from __future__ import annotations

import os
import signal


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group `pgid` (signal 0 checks without sending anything)."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def child_pids(pid: int) -> list[int]:
    """The direct children of process `pid` (Linux /proc), whatever their process group or session: e.g. the
    temporary Prefect server `fluxflow-train` starts in a session of its own."""
    found = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(stat))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


def kill_all(pids: list[int]) -> None:
    """SIGKILL each of `pids` that is still there (clean-up of processes a test found by pid)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
