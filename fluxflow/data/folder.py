"""`folder`: a directory of images and a captions file with one `filename<TAB>caption` line per image.

Filenames are relative to the folder (subdirectories allowed). Blank lines and lines starting with `#` are ignored.
Lines without a tab and files that do not exist are skipped when the dataset is built; lines that are not UTF-8 are
kept, decoded as Latin-1; files that cannot be decoded are skipped when first read (the next readable item takes
their place, so batches keep their size and the epoch its length). All of them are counted in `dataset.skipped`,
and the first one is logged as a warning.

Held-out split: the entries are put in a fixed order by a hash of their filename and the last `holdout` of that
order are held out. Hashing rather than sorting by name keeps the held-out images a fair sample when names are
grouped (`cat_001.jpg`, ..., `zebra_999.jpg`). Train and holdout are disjoint and both are deterministic.

Held-out captions (`holdout_captions`, fluxflow/data/heldout.py): entries whose caption matches are in neither
split but form a third one, `unseen`, wherever their filename hashes to.

Reading the captions file and the rules for a missing folder or a hold-out that leaves nothing to train on are in
fluxflow/config/file_checks.py, which validation applies before any step starts; here they are applied again to the
files actually found, as a DataError (which no retry repeats).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

from fluxflow.config.file_checks import folder_problem, holdout_problem, read_captions, resolve_captions_path
from fluxflow.data.skips import CountsSkips, SkipCounter
from fluxflow.data.transforms import DECODING_VERSION, load_image, pil_mode
from fluxflow.errors import DataError


def holdout_names(names: list[str], holdout: int) -> set[str]:
    """The `holdout` names last in the order of their SHA-1: a fixed, name-independent choice."""
    if holdout <= 0:
        return set()
    by_hash = sorted(names, key=lambda n: (hashlib.sha1(n.encode("utf-8")).hexdigest(), n))
    return set(by_hash[-holdout:])


class FolderDataset(CountsSkips, torch.utils.data.Dataset):
    def __init__(self, path: str | os.PathLike, captions_file: str | os.PathLike | None, img_size: int,
                 channels: int = 3, split: str = "train", holdout: int = 0,
                 heldout: Callable[[str], bool] | None = None):
        if split not in ("train", "holdout", "unseen"):
            raise ValueError(f"split must be 'train', 'holdout' or 'unseen', got {split!r}")
        pil_mode(channels)  # fail at build time, not in a worker, on an unsupported channel count
        self.root = Path(path).expanduser()
        captions_path = resolve_captions_path(self.root, captions_file)
        problem = folder_problem(self.root, captions_path)  # validation said so at start; the folder may have gone
        if problem:
            raise DataError(problem)
        self.img_size, self.channels, self.split = img_size, channels, split

        captions, malformed, repaired = read_captions(captions_path)
        present = {n: c for n, c in captions.items() if (self.root / n).is_file()}
        missing = [n for n in captions if n not in present]
        names = sorted(present)
        problem = holdout_problem(self.root, len(names), holdout, "listed images found")
        if problem:
            raise DataError(problem)
        held = holdout_names(names, holdout)
        unseen = {n for n in names if heldout is not None and heldout(present[n])}
        if split == "unseen":
            self.items: list[tuple[str, str]] = [(n, present[n]) for n in names if n in unseen]
        else:
            self.items = [(n, present[n]) for n in names if (n in held) == (split == "holdout") and n not in unseen]

        # Public: its state travels in a step's checkpoint (fluxflow/train/step_report.py). `skipped` counts
        # malformed caption lines + listed files that are missing + files that failed to decode so far.
        self.skips = SkipCounter(f"unreadable entries of {self.root}", len(self.items))
        if malformed:
            self.skips.add(len(malformed), f"{len(malformed)} line(s) of {captions_path} without a tab, first: "
                                            f"{malformed[0]!r}")
        if repaired:
            self.skips.add(len(repaired), f"{len(repaired)} line(s) of {captions_path} not UTF-8, decoded as Latin-1, "
                                           f"first: line {repaired[0]}")
        if missing:
            self.skips.add(len(missing), f"{len(missing)} file(s) listed in {captions_path.name} not found, "
                                          f"first: {missing[0]!r}")

    def __len__(self) -> int:
        return len(self.items)

    def caption(self, index: int) -> str:
        """Item `index`'s caption without decoding its image (an unreadable image's stand-in has its own caption,
        which is another item's)."""
        return self.items[index][1]

    def fingerprint(self) -> str:
        """sha256 over every item's name, caption, file size and modification time, and the decoding's version: a
        replaced or edited image, or a change of what a file decodes to, changes it (what keys the latent cache
        besides the config, fluxflow/cache/fingerprint.py)."""
        digest = hashlib.sha256(f"decoding {DECODING_VERSION}\n".encode())
        for name, caption in self.items:
            try:
                st = (self.root / name).stat()
                stat = f"{st.st_size}\t{st.st_mtime_ns}"
            except OSError:  # gone since the dataset was built: it will be skipped as unreadable
                stat = "missing"
            digest.update(f"{name}\t{caption}\t{stat}\n".encode("utf-8"))
        return digest.hexdigest()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        n = len(self.items)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        for k in range(n):  # a corrupt file is replaced by the next readable one, deterministically
            i = (index + k) % n
            if self.skips.is_marked(i):
                continue
            name, caption = self.items[i]
            try:
                with Image.open(self.root / name) as img:
                    return load_image(img, self.img_size, self.channels), caption
            except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
                self.skips.mark(i, f"{name}: {type(exc).__name__}: {exc}")
        raise DataError(f"no readable image among the {n} files of {self.root}")
