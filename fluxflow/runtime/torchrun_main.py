"""torchrun, quiet when it is told to stop: `python -m fluxflow.runtime.torchrun_main ARGS` is `python -m
torch.distributed.run ARGS`, except for the SIGTERM with which the launcher ends it (a Ctrl-C, a task's timeout, an
error elsewhere: fluxflow/runtime/launch.py). torchrun stops its ranks on it and then raised the signal as an exception
whose traceback (25 lines) was the last thing a user saw under "Interrupted: run the same command again ..."; here it
exits with the signal's status instead. Any other failure of torchrun or a rank is reported as torchrun reports it."""
import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main

if __name__ == "__main__":
    try:
        main()
    except SignalException as stopped:  # the ranks are stopped by now (torchrun's agent, before it raised)
        sys.exit(128 + int(stopped.sigval))
