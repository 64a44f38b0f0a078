"""Config problems: each one names the field it is about, and all of them are reported together."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable, Sequence

from fluxflow.errors import NonRetryable

STEPS = ("training", "pipeline", "steps")  # an issue's path (*STEPS, i, "lr") is written training.pipeline.steps[i].lr


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file. `path` is dotted and indexed: `training.pipeline.steps[1].name`; given as keys
    and indexes (`('training', 'pipeline', 'steps', 1, 'name')`), it is written so (format_path)."""

    path: str
    message: str

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            object.__setattr__(self, "path", format_path(self.path))

    def __str__(self) -> str:
        return f"{self.path or '(top level)'}: {self.message}"


class ConfigError(NonRetryable):
    """The config cannot be used. `.issues` holds every problem found, not just the first. Not retryable: the same
    config fails the same way."""

    def __init__(self, issues: Sequence[ConfigIssue], source: str | None = None):
        self.issues = list(issues)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.issues)
        where = f" in {self.source}" if self.source else ""
        head = f"{n} problem{'s' if n != 1 else ''}{where}:"
        return "\n".join([head, *(f"  - {issue}" for issue in self.issues)])


def format_path(loc: Iterable[str | int]) -> str:
    """('training', 'pipeline', 'steps', 1, 'name') -> 'training.pipeline.steps[1].name': an int is a list's
    position; a mapping's key is given as a str, also one YAML read as a number (`datasets: {2024: ...}`:
    'training.pipeline.datasets.2024', load._keys_as_written)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


# Names other training tools use for a field of ours, which spelling similarity would not find.
SYNONYMS = {
    "learning_rate": "lr", "lerning_rate": "lr", "epochs": "n_epochs", "num_epochs": "n_epochs",
    "max_epoch": "n_epochs", "steps_per_epoch": "max_steps", "num_workers": "workers", "bs": "batch_size",
    "image_size": "img_size", "resolution": "img_size", "output_dir": "output_path", "parent": "after",
    "depends_on": "after", "frozen": "freeze", "precision_mode": "precision", "mixed_precision": "precision",
}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'train_vae'?)' for a near miss or a known synonym, '' when nothing is close."""
    choices = sorted(set(choices))
    synonym = SYNONYMS.get(str(word).lower())
    close = [synonym] if synonym in choices else difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
