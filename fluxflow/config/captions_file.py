"""The captions file of a `folder` dataset: one `filename<TAB>caption` line per image, where it is looked up, how it
is read, and how many of its entries a hold-out may take.

Here, not in fluxflow/data (which imports torch), because validation reads it too: a folder that is missing, has no
captions file, or lists too few images for its hold-out is a config problem named before any step starts
(fluxflow/config/file_checks.py, folder_issues), and the dataset (fluxflow/data/folder.py) applies the same rules to
the files it finds.

Text of any encoding: a line is decoded as UTF-8 and, failing that, as Latin-1 (`decode_text`), which decodes every
byte string and keeps the bytes recoverable: the caption is kept (repaired) and counted, never fatal.
"""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CAPTIONS_FILE = "captions.txt"


def decode_text(raw: bytes) -> tuple[str, bool]:
    """(text, repaired): UTF-8, else Latin-1 with repaired=True."""
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        return raw.decode("latin-1"), True


def resolve_captions_path(root: Path, captions_file: str | os.PathLike | None) -> Path:
    """An absolute or existing path is used as given; otherwise it is looked up inside the image folder."""
    if captions_file is None:
        return root / DEFAULT_CAPTIONS_FILE
    p = Path(captions_file).expanduser()
    return p if p.is_absolute() or p.exists() else root / p


def read_captions(captions_path: Path) -> tuple[dict[str, str], list[str], list[int]]:
    """{filename: caption} in file order (a later line for the same file wins), the malformed lines, and the numbers
    of the lines that were not UTF-8 (kept, decoded as Latin-1)."""
    captions, malformed, repaired = {}, [], []
    with open(captions_path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            line, was_repaired = decode_text(raw.rstrip(b"\r\n"))
            line = line.removeprefix("\ufeff") if number == 1 else line  # a byte-order mark some editors write
            if was_repaired:
                repaired.append(number)
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, caption = line.partition("\t")
            if not sep or not name.strip():
                malformed.append(line)
                continue
            captions[name.strip()] = caption.strip()
    return captions, malformed, repaired


def folder_problem(root: Path, captions_path: Path) -> str | None:
    """Why a folder dataset cannot be read at all (no folder, no captions file), or None."""
    if not root.is_dir():
        return f"image folder {root} does not exist"
    if not captions_path.is_file():
        return f"captions file {captions_path} does not exist (one 'filename<TAB>caption' line per image)"
    return None


def holdout_problem(root: Path, entries: int, holdout: int, what: str) -> str | None:
    """Why `holdout` held-out images leave nothing to train on among `entries` (`what` they are), or None."""
    if holdout <= 0 or holdout < entries:  # no hold-out: an empty folder is "fewer items than one batch" later
        return None
    return (f"folder {root}: holdout={holdout} leaves no training images ({entries} {what}); lower holdout or add "
            "images")
