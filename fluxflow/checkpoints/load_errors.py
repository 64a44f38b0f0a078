"""Why a checkpoint could not be loaded, in one line that names the file and says what to do.

Three kinds, told apart by what `torch.load(weights_only=True)` raised and by the file's first bytes:
- refused: the file is a pickle that needs more than plain data to load, i.e. it would import and call Python
  objects (a `__reduce__` payload, a class instance, a numpy array). torch 2.14 raises `pickle.UnpicklingError`
  starting "Weights only load failed", naming the object as `GLOBAL module.name` ("Unsupported global: GLOBAL
  __main__.Foo was not an allowed global" or "unsupported GLOBAL posix.system whose module posix is blocked"; an
  older wording was "Unsupported global: GLOBAL x"): the `GLOBAL name` part is what is matched. torch's advice to
  turn weights_only off is never repeated: that is exactly what would run the code.
- a raw pickle: not torch's zip format but a bare pickle stream (`pickle.dump`, or torch's legacy format written with
  pickle protocol 4 or 5). torch's safe unpickler stops at the first opcode it does not read, before any object
  ("Unsupported operand 149" is protocol 4's FRAME), so its message names an opcode, not the problem. The stream is
  then read statically (pickletools.genops lists opcodes without executing any) for the objects it would import:
  outside torch's own, those are what loading it would run.
- not a checkpoint: an empty file, or one that starts neither as a zip nor as a pickle (a text file).
- corrupt: anything else (a torn zip).

No torch import and no file access here: this reads exception types and messages, and the file's head that the
caller passes in.
"""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import re

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_DETAIL_CHARS = 160
_PICKLE_PROTO = 0x80  # a pickle of protocol 2 or later starts with the PROTO opcode; a zip starts with b"PK"
_ZIP = b"PK"
_TORCH_OWN = ("torch.", "collections.OrderedDict")  # what torch's legacy format imports to rebuild tensors and dicts
_NAMED = 3  # objects named in the message; more are counted


def describe_load_failure(path: str | os.PathLike, error: BaseException, head: bytes = b"") -> str:
    """`head`: the file's first bytes (as many as the caller cares to read), to tell a raw pickle from a torn file."""
    found = _GLOBAL.search(str(error)) if isinstance(error, pickle.UnpicklingError) else None
    if found:
        return _refused(path, "contains Python objects that would run code when loaded", [found.group(1)])
    if head[:1] == bytes([_PICKLE_PROTO]):
        imports = [name for name in pickle_imports(head) if not name.startswith(_TORCH_OWN)]
        if imports:
            return _refused(path, "it is a raw pickle (not torch's zip format) that imports Python objects, so "
                                  "loading it could run code", imports)
        return (f"checkpoint {path} is a raw pickle (not torch's zip format) that the safe loader cannot read "
                f"({_first_line(error)}); re-save it with torch.save in torch's default (zip) format")
    if not head and isinstance(error, EOFError):
        return f"checkpoint {path} is an empty file"
    if head and not head.startswith(_ZIP):  # a text file, an image: torch's error was a bare byte value ("(101)")
        return (f"checkpoint {path} is not a torch checkpoint: it starts with {head[:16]!r}, not with the zip "
                "archive torch.save writes")
    return f"checkpoint {path} is corrupt, truncated or not a torch checkpoint ({_first_line(error)})"


def _refused(path, why: str, names: list[str]) -> str:
    shown = ", ".join(names[:_NAMED]) + (f" and {len(names) - _NAMED} more" if len(names) > _NAMED else "")
    return (f"checkpoint {path} refused: {why} ({shown}); checkpoints are loaded as plain data only (tensors, "
            "dicts, lists, numbers, strings): use a checkpoint written by fluxflow, or one that holds only tensors "
            "in plain dicts")


def pickle_imports(data: bytes) -> list[str]:
    """`module.name` of every object the pickle stream(s) in `data` would import, in order, without unpickling.

    torch's legacy format is several pickles back to back followed by raw storage bytes, so the scan goes on after
    each STOP and ends at the first bytes that are not a pickle (or the end of `data`, which may be cut short).
    """
    names: list[str] = []
    stream = io.BytesIO(data)
    while stream.tell() < len(data):
        strings: list[str] = []  # the last strings pushed: STACK_GLOBAL takes module and name from them
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        except Exception:  # not (or no longer) a pickle: storage bytes, or the head was cut mid-stream
            break
    return list(dict.fromkeys(names))


_TORCH_ADVICE = re.compile(r"weights.only|documentation", re.IGNORECASE)


def _first_line(error: BaseException) -> str:
    """The first line of the error that says what is wrong, not torch's advice around it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in lines if not _TORCH_ADVICE.search(line)), type(error).__name__)
    return detail if len(detail) <= _DETAIL_CHARS else detail[:_DETAIL_CHARS] + "…"
