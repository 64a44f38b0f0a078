"""One lock for torch's global random generator, which every thread of a process shares.

Branches of a pipeline run train at the same time in threads of one process (the Prefect task runner's). A fresh
model's weights come from the global generator seeded with the step's seed (fluxflow/train/trainer.py), and an
evaluation forks it and puts it back when done: without one lock over these sections, a branch that seeds, or puts
the state back, while another draws its initial weights changes those weights, so a hypothesis started beside another
got other weights than the same step started alone, and a rerun of the run other weights again. Re-entrant: an
evaluation fits its feature network (a seeded section) inside its own.
"""
from __future__ import annotations

import threading

GLOBAL_RNG = threading.RLock()
