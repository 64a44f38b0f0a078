"""A step's mid-step checkpoint as a pair: `latest.pt` and the one before it, `latest.prev.pt`.

A save writes the new checkpoint to a temp file, fsyncs and checks it (fluxflow/checkpoints/verify.py), and only
then moves the current `latest.pt` to `latest.prev.pt` and the new file into its place (fluxflow/checkpoints/io.py,
atomic_write with keep_previous). So a torn `latest.pt` (a filesystem without atomic rename, a disk that lost the
tail of a file) still has a good predecessor: loading falls back to it, saying so, and the step resumes from that
older position (exactly: the batches between the two are trained again with the same randomness). When neither can
be read, the error names both files and what to do.
"""
from __future__ import annotations

from pathlib import Path

# fluxflow.checkpoints.io (torch) is imported where it is used: step_files.py names these files without torch.


def previous_of(latest: Path) -> Path:
    """`latest.prev.pt` next to `latest.pt`."""
    return latest.with_name(f"{latest.stem}.prev{latest.suffix}")


def save_latest(state: dict, latest: Path) -> None:
    from fluxflow.checkpoints.io import save_checkpoint

    save_checkpoint(state, latest, keep_previous=previous_of(latest))


def load_latest(latest: Path, say=print) -> dict | None:
    """The newest readable of `latest.pt` and `latest.prev.pt`; None when neither exists. Falling back to the
    previous one prints a line saying why; when neither can be read, CheckpointError names both."""
    from fluxflow.checkpoints.io import CheckpointError, load_checkpoint

    previous = previous_of(latest)
    if not latest.exists() and not previous.exists():
        return None
    problems: list[str] = []
    for path in (latest, previous):
        if not path.exists():
            problems.append(f"{path} is missing")
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            problems.append(str(exc))
            continue
        if path == previous:
            say(f"{latest.name} cannot be used ({problems[0]}); resuming from the previous checkpoint {previous}")
        return state
    raise CheckpointError(f"cannot resume: {'; and '.join(problems)}. Move {latest.name} and {previous.name} out of "
                          f"{latest.parent} to train this step again from its start (or put back a good copy)")
