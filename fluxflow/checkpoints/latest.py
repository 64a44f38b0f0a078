"""A step's mid-step checkpoint as a pair: `latest.pt` and the one before it, `latest.prev.pt`.

A save writes the new checkpoint to a temp file, fsyncs and checks it (fluxflow/checkpoints/verify.py), and only
then moves the current `latest.pt` to `latest.prev.pt` and the new file into its place (fluxflow/checkpoints/io.py,
atomic_write with keep_previous). So a torn `latest.pt` (a filesystem without atomic rename, a disk that lost the
tail of a file) still has a good predecessor: loading falls back to it, saying so, and the step resumes from that
older position (exactly: the batches between the two are trained again with the same randomness).

When neither can be read (a torn first checkpoint has no predecessor; both torn), no position is left to resume
from: the unreadable files are moved to `corrupt/<time>/` beside them, kept as evidence, a line says so and what is
lost, and the step starts again from its input, exactly as after a kill before its first checkpoint. Failing instead
would fail every re-run of the same command until someone deleted the files by hand, for no gain: what they held
is gone either way.
"""
from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

from fluxflow.errors import CheckpointError

# fluxflow.checkpoints.io (torch) is imported where it is used: step_files.py names these files without torch.

CORRUPT_DIR = "corrupt"  # beside latest.pt: unreadable checkpoints, kept as evidence


def previous_of(latest: Path) -> Path:
    """`latest.prev.pt` next to `latest.pt`."""
    return latest.with_name(f"{latest.stem}.prev{latest.suffix}")


def save_latest(state: dict, latest: Path) -> None:
    from fluxflow.checkpoints.io import save_checkpoint

    save_checkpoint(state, latest, keep_previous=previous_of(latest))


def load_latest(latest: Path, say=print, set_aside: bool = True) -> dict | None:
    """The newest readable of `latest.pt` and `latest.prev.pt`; None when neither exists, or when neither can be
    read. Falling back to the previous one prints a line saying why; when neither can be read, the files are moved
    to `corrupt/<time>/` (with `set_aside`: under torchrun only rank 0 moves them) and a line names them."""
    from fluxflow.checkpoints.io import load_checkpoint

    previous = previous_of(latest)
    if not latest.exists() and not previous.exists():
        return None
    problems: list[str] = []
    for path in (latest, previous):
        if not path.exists():
            problems.append(f"{path.name} is missing")
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if path == previous:
            say(f"{latest.name} cannot be used ({problems[0]}); resuming from the previous checkpoint {previous}")
        return state
    if set_aside:  # into a new `corrupt/<UTC time>/` beside them
        kept = latest.parent / CORRUPT_DIR / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        kept.mkdir(parents=True)
        for path in (latest, previous):
            if path.exists():
                shutil.move(str(path), kept / path.name)
        say(f"No checkpoint of this step can be used ({'; and '.join(problems)}): moved to {kept} as evidence. Lost: "
            "the batches trained since the step's start, which it trains again from its input")
    return None
