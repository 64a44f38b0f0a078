"""Process-group checks shared by the tests that start servers, CLIs or torchrun in sessions of their own."""
from __future__ import annotations

import os


def group_alive(pgid: int) -> bool:
    """Whether any process is left in process group `pgid` (signal 0 checks without sending anything)."""
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
