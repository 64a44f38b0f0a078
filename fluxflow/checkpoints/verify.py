"""A cheap check that a checkpoint file was written whole, done before it replaces the previous one.

torch.save writes a zip archive whose central directory (the index of every entry, with offsets and sizes) comes
last. A torn or short write loses the end of the file first, so reading the central directory and checking that
every entry lies inside the file catches it. The cost is one small read at the end of the file, whatever the
checkpoint's size; a full CRC pass (`ZipFile.testzip`) would read the whole file back, doubling the I/O of every
save, to catch bit flips in the middle, which an atomic rename of an fsynced file does not produce.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path


def verify_torch_zip(path: Path, expected_size: int) -> None:
    """Raise ValueError when `path` is not `expected_size` bytes or not a whole torch zip archive."""
    size = os.path.getsize(path)
    if size != expected_size:
        raise ValueError(f"{path} has {size} bytes on disk, {expected_size} were written")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path} is not a whole zip archive ({e})") from None
    if not any(entry.filename.endswith("data.pkl") for entry in entries):
        raise ValueError(f"{path} has no data.pkl: not a torch checkpoint")
    for entry in entries:
        if entry.header_offset + entry.compress_size > size:
            raise ValueError(f"{path}: entry {entry.filename} ends past the end of the file")


def damaged_entry(path: Path) -> str | None:
    """The first entry of the torch zip archive `path` whose bytes do not match the CRC-32 written with it (a bit
    flipped on disk or in a copy), or None; None too for a file that is not a zip archive. torch.load checks no CRC:
    such a file loads, and its weights are silently wrong. This reads the whole file, so it is for a checkpoint about
    to make images (fluxflow.sampling.generate.load_text_to_image), not for every save (see above)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError):  # not a zip (the loader said what it is), or unreadable: not a CRC question
        return None
