"""Why a checkpoint could not be loaded, in one line that names the file and says what to do.

Two kinds, told apart by what `torch.load(weights_only=True)` raised:
- refused: the file is a pickle that needs more than plain data to load, i.e. it would import and call Python
  objects (a `__reduce__` payload, a class instance, a numpy array). torch 2.14 raises `pickle.UnpicklingError`
  starting "Weights only load failed", naming the object as `GLOBAL module.name` ("Unsupported global: GLOBAL
  __main__.Foo was not an allowed global" or "unsupported GLOBAL posix.system whose module posix is blocked"; an
  older wording was "Unsupported global: GLOBAL x"): the `GLOBAL name` part is what is matched. torch's advice to
  turn weights_only off is never repeated: that is exactly what would run the code.
- corrupt: anything else (a torn zip, an empty file, a file that is not a checkpoint, a pickle whose opcodes the
  safe unpickler does not read before reaching any object).

No torch import here: this only reads exception types and messages.
"""
from __future__ import annotations

import os
import pickle
import re

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_DETAIL_CHARS = 160


def describe_load_failure(path: str | os.PathLike, error: BaseException) -> str:
    found = _GLOBAL.search(str(error)) if isinstance(error, pickle.UnpicklingError) else None
    if found:
        return (f"checkpoint {path} refused: contains Python objects that would run code when loaded "
                f"({found.group(1)}); checkpoints are loaded as plain data only (tensors, dicts, "
                "lists, numbers, strings): use a checkpoint written by fluxflow, or one that holds only tensors in "
                "plain dicts")
    return f"checkpoint {path} is corrupt, truncated or not a torch checkpoint ({_first_line(error)})"


_TORCH_ADVICE = re.compile(r"weights.only|documentation", re.IGNORECASE)


def _first_line(error: BaseException) -> str:
    """The first line of the error that says what is wrong, not torch's advice around it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if not _TORCH_ADVICE.search(line)), type(error).__name__)
    return detail if len(detail) <= _DETAIL_CHARS else detail[:_DETAIL_CHARS] + "…"
