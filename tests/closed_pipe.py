"""Running a CLI whose output goes to a pipe that nobody reads any more, as after `| head -1` has read its line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_into_closed_pipe(module: str, *argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m module argv` with stdout a pipe whose reading end is closed before it starts (every write fails),
    stderr captured."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", module, *argv], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    finally:
        os.close(write_end)
