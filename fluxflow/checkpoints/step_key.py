"""A step's content key: which inputs a finished step's final.pt was trained from.

Re-running a pipeline skips a step whose final.pt carries the same key, and re-runs a step (and, through the parent
key, every step after it) whose key changed. The key covers the step's resolved config, the model config, the
step's dataset config and the parent step's key. No torch here.

Store `step_key_inputs(...)` in the checkpoint next to the key: then `describe_change(old_inputs, new_inputs)` can
tell the user *why* a step re-runs ("step.lr: 0.0001 -> 0.0002").
"""
from __future__ import annotations

import enum
import hashlib
import json
import math
from pathlib import PurePath
from typing import Any, Iterator

# Bump when what goes into the key changes meaning, so that old final.pt files are not mistaken for current ones.
KEY_VERSION = 1
KEY_LENGTH = 16  # hex characters: 64 bits, plenty to tell a handful of configurations apart


def _plain(value: Any) -> Any:
    """The JSON-able form of a config value (Paths, enums, sets and tuples from pydantic dumps)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # JSON has no inf/nan; keep them distinct from each other and from strings of digits
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "model_dump"):  # a pydantic model passed directly
        return _plain(value.model_dump())
    raise TypeError(f"cannot build a step key from a {type(value).__name__}: {value!r}")


def step_key_inputs(
    step_config: dict[str, Any], model_config: dict[str, Any], dataset_config: dict[str, Any], parent_key: str | None
) -> dict[str, Any]:
    """Everything the key is computed from, as plain JSON-able values (also safe to store in a checkpoint)."""
    return {
        "version": KEY_VERSION,
        "step": _plain(step_config),
        "model": _plain(model_config),
        "dataset": _plain(dataset_config),
        "parent": parent_key,
    }


def json_sha256(value: Any, length: int, *, compact: bool = True) -> str:
    """The first `length` hex characters of sha256 over `value` as canonical JSON (sorted keys, ASCII; values JSON
    cannot hold as their str()). The one content hash of the repository: step keys, the pipeline's config hash and
    the evaluation feature network's cache key.

    `compact=False` keeps json.dumps' spaced separators, with which the config hash and the feature-network cache
    key were first computed: their values (MLflow tags, cache file names) stay the same.
    """
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":") if compact else None)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def step_key(
    step_config: dict[str, Any], model_config: dict[str, Any], dataset_config: dict[str, Any], parent_key: str | None
) -> str:
    """16 hex characters of sha256 over canonical JSON (sorted keys, no whitespace) of `step_key_inputs`."""
    return json_sha256(step_key_inputs(step_config, model_config, dataset_config, parent_key), KEY_LENGTH)


def _canonical(value: Any) -> str:
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"))


def _short(value: Any) -> str:
    text = json.dumps(_plain(value), sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _changes(old: Any, new: Any, path: str = "") -> Iterator[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            child = f"{path}.{key}" if path else str(key)
            if key not in old:
                yield f"{child}: added ({_short(new[key])})"
            elif key not in new:
                yield f"{child}: removed (was {_short(old[key])})"
            else:
                yield from _changes(old[key], new[key], child)
    elif isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from _changes(a, b, f"{path}[{i}]")
    # Compare as canonical JSON, as the key does: 1 vs 1.0 or True vs 1 change the key, so they are reported too.
    elif _canonical(old) != _canonical(new):
        yield f"{path or '(value)'}: {_short(old)} -> {_short(new)}"


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Which keys differ between two configs, as dotted paths with old -> new values, separated by "; ".

    Returns "" when they are equal. E.g. "step.optimization.optimizers.vae.lr: 0.0001 -> 0.0002; parent: ...".
    """
    return "; ".join(_changes(old, new))
