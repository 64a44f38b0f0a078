"""pyflakes' rules hold on every Python file of the repository (ruff, configured in pyproject.toml): no unused import
or variable, no undefined name, no redefinition; and no line is longer than the 120 columns the project declares.
A linter checks this; no test greps source text for it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The dev extras install ruff into the venv, whose bin/ need not be on PATH (make test does not activate it).
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


def test_python_files_pass_the_linter():
    assert RUFF is not None, "ruff is not installed: make setup (pip install -c constraints.txt -e '.[dev]')"
    done = subprocess.run([RUFF, "check", "--no-cache", "--output-format", "concise", "fluxflow", "flows", "tests",
                           "bench", "scripts"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
