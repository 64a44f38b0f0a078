"""A second run against the same output directory fails at once; a killed holder leaves no stale lock."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fluxflow.checkpoints.lock import OutputDirUnusable, RunLock, RunLockedError
from fluxflow.errors import is_retryable

REPO = Path(__file__).resolve().parents[2]
HOLDER = (
    "import sys\n"
    "from fluxflow.checkpoints.lock import RunLock\n"
    "lock = RunLock(sys.argv[1]); lock.acquire()\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"  # hold until the test closes stdin or kills us
    "lock.release()\n"
)


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock on tmp_path/out."""
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "out")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_second_run_fails_at_once_naming_directory_and_pid(tmp_path, holder):
    with pytest.raises(RunLockedError) as err:
        with RunLock(tmp_path / "out"):
            pytest.fail("entered a directory another process holds")
    message = str(err.value)
    assert str(tmp_path / "out") in message
    assert f"pid {holder.pid}" in message


def test_lock_is_released_when_the_holder_is_killed(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    with RunLock(tmp_path / "out") as lock:
        assert lock.path.read_text().strip() == str(os.getpid())


def test_lock_is_released_when_the_holder_finishes(tmp_path, holder):
    holder.stdin.close()
    assert holder.wait(timeout=10) == 0
    with RunLock(tmp_path / "out"):
        pass


def test_lock_in_the_same_process_is_exclusive_and_reusable_after_exit(tmp_path):
    with RunLock(tmp_path) as first:
        assert first.path == tmp_path / ".lock"
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == ""  # released: no pid left behind
    with RunLock(tmp_path):
        pass


@pytest.mark.parametrize("where, says", [("file", "it is a file, not a folder"),
                                         ("file/out", "a file stands where one of its parent folders should be")])
def test_an_output_directory_that_cannot_be_made_is_refused_in_one_line_and_not_retried(tmp_path, where, says):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputDirUnusable) as refused:
        RunLock(tmp_path / where).acquire()
    assert str(refused.value) == (f"output directory {tmp_path / where}: cannot use it ({says}); choose another with "
                                  "--output-dir or output.output_path")
    assert not is_retryable(refused.value)
