"""`folder`: a directory of images and a captions file with one `filename<TAB>caption` line per image.

Filenames are relative to the folder (subdirectories allowed). Blank lines and lines starting with `#` are ignored.
Lines without a tab and files that do not exist are skipped when the dataset is built, and a file listed again with
another caption keeps the last one; lines that are not UTF-8 are kept, decoded as Latin-1; files that cannot be
decoded are skipped when first read (the next readable item, with its own caption, takes their place, so batches keep
their size and the epoch its length). All of them are counted in `dataset.skipped`; the training split logs each
problem of the captions file, and the first undecodable image, as a warning, and says how many image files in the
folder the captions file does not list.

Held-out split: the entries are put in a fixed order by a hash of their filename and the last `holdout` of that
order are held out. Hashing rather than sorting by name keeps the held-out images a fair sample when names are
grouped (`cat_001.jpg`, ..., `zebra_999.jpg`). Train and holdout are disjoint and both are deterministic.

Held-out captions (`holdout_captions`, fluxflow/config/caption_patterns.py): entries whose caption matches are in
neither split but form a third one, `unseen`; the `holdout` images are drawn from the others, so a hold-out of N
scores N seen-caption images whatever the patterns match.

Reading the captions file and the rules for a missing folder, a file that lists nothing usable (a CSV), names none of
the files that are there, or a hold-out that leaves nothing to train on are in
fluxflow/config/file_checks.py, which validation applies before any step starts; here they are applied again to the
files actually found, as a DataError (which no retry repeats).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Container
from pathlib import Path

import torch

from fluxflow.config.caption_patterns import caption_matcher, unseen_problem
from fluxflow.config.file_checks import (CaptionsFile, entries_problem, folder_problem, found_problem, holdout_problem,
                                        is_listed_file, opened_file, read_captions, resolve_captions_path)
from fluxflow.data.skips import CountsSkips, SkipCounter
from fluxflow.data.transforms import DECODING_VERSION, IMAGE_EXTENSIONS, pil_mode, read_image
from fluxflow.errors import DataError
from fluxflow.wording import counted

log = logging.getLogger("fluxflow.data")
# What an image file is called (lower case): how files the captions file does not list are found and reported.
IMAGE_SUFFIXES = tuple(f".{ext}" for ext in IMAGE_EXTENSIONS)


def holdout_names(names: list[str], holdout: int) -> set[str]:
    """The `holdout` names last in the order of their SHA-1: a fixed, name-independent choice."""
    if holdout <= 0:
        return set()
    by_hash = sorted(names, key=lambda n: (hashlib.sha1(n.encode("utf-8")).hexdigest(), n))
    return set(by_hash[-holdout:])


def report_captions_file(skips: SkipCounter, listing: CaptionsFile, missing: list[str], say: bool = True) -> None:
    """Count and log (`say` False: count only), one line each, the captions file's lines that were skipped, replaced
    or repaired, and the listed files that are not there."""
    name = listing.path.name
    for entries, what, first in (
            (listing.malformed, f"line(s) of {name} without a tab, skipped", lambda line: repr(line[:80])),
            (listing.relisted, f"file(s) listed again in {name} with another caption, the last line kept", repr),
            (listing.repaired, f"line(s) of {name} not UTF-8, decoded as Latin-1 and kept", lambda n: f"line {n}"),
            (missing, f"file(s) listed in {name} not found (or in a folder that cannot be read), skipped", repr)):
        if entries:
            skips.found(len(entries), f"{len(entries)} {what}; first: {first(entries[0])}", say)


def report_unlisted(root: Path, listing: CaptionsFile) -> None:
    """Log how many image files under `root` the captions file does not list: they are not trained on, and a user who
    added images without adding their lines would not know (not counted: they are not items of the dataset). Hidden
    files and folders (`.DS_Store`, `.git`) are not looked at."""
    # Each listed name as the file the dataset opens (`root / name`): an absolute path inside the folder, or a name
    # through a symlinked folder, names one of its files too (compared as relative names, it was counted as not listed).
    real_folder = functools.lru_cache(maxsize=None)(os.path.realpath)
    listed = {opened_file(root / name, real_folder) for name in listing.captions}
    unlisted = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        unlisted += [os.path.relpath(path, root) for path in (os.path.join(folder, f) for f in sorted(files)
                                                               if not f.startswith(".")
                                                               and f.lower().endswith(IMAGE_SUFFIXES))
                     if opened_file(path, real_folder) not in listed]
    if unlisted:
        log.warning("%s: %d image file(s) not listed in %s, not trained on; first: %r", root, len(unlisted),
                    listing.path.name, unlisted[0])


def unreadable_reason(name: str, exc: Exception) -> str:
    return f"{name}: {type(exc).__name__}: {exc}"


class FolderDataset(CountsSkips, torch.utils.data.Dataset):
    def __init__(self, path: str | os.PathLike, captions_file: str | os.PathLike | None, img_size: int,
                 channels: int = 3, split: str = "train", holdout: int = 0,
                 holdout_captions: list[str] | None = None, report: bool = True):
        pil_mode(channels)  # fail at build time, not in a worker, on an unsupported channel count
        self.root = Path(path).expanduser()
        captions_path = resolve_captions_path(self.root, captions_file)
        problem = folder_problem(self.root, captions_path)  # validation said so at start; the folder may have gone
        if problem:
            raise DataError(problem)
        self.img_size, self.channels, self.split = img_size, channels, split

        listing = read_captions(captions_path, self.root)
        present = {n: c for n, c in listing.captions.items() if is_listed_file(self.root / n)}
        missing = [n for n in listing.captions if n not in present]
        names = sorted(present)
        matches = caption_matcher(holdout_captions)
        unseen = {n for n in names if matches is not None and matches(present[n])}
        seen = [n for n in names if n not in unseen]  # the hold-out is drawn from these: `holdout` images are held
        outside = " outside holdout_captions" if unseen else ""
        problem = (entries_problem(listing) or found_problem(self.root, listing, len(names))
                   or unseen_problem(self.root, holdout_captions, len(unseen), [present[n] for n in names])
                   or holdout_problem(self.root, len(seen), holdout, f"listed image found{outside}",
                                      f"listed images found{outside}"))
        if problem:
            raise DataError(problem)
        held = holdout_names(seen, holdout)
        chosen = {"train": set(seen) - held, "holdout": held, "unseen": unseen}[split]
        self.items: list[tuple[str, str]] = [(n, present[n]) for n in names if n in chosen]
        # What a step's latest.pt records of its data (StepState.data_identity): a resume replays the epoch's shuffle
        # of these items, and the listing decides the splits, so other entries set it aside. Only what was read
        # already (no file is opened again): an image replaced in place under its name is not seen.
        listed = "".join(f"{n}\t{present[n]}\n" for n in names).encode("utf-8")
        self.identity = {"items": len(self.items), "sha256": hashlib.sha256(listed).hexdigest()}

        # Public: its state travels in a step's checkpoint (fluxflow/train/step_report.py). Of the files that fail to
        # decode, `skipped` counts those of the batches trained so far (the held-out splits: met so far). A held-out
        # image that does not decode is replaced by the next readable held-out one: evaluation then scores that one
        # twice, so the warning says which split it is and the count is reported apart from training's.
        where = {"train": str(self.root), "holdout": f"{self.root} (held out, scored by evaluation)",
                 "unseen": f"{self.root} (unseen-caption split, scored by evaluation)"}[split]
        metric = {"train": "skipped_samples", "holdout": "skipped_holdout_samples", "unseen": None}[split]
        self.skips = SkipCounter(where, len(self.items), metric, deferred=split == "train")
        if split == "train":  # every split reads the same captions file: the training split reports it, once
            report_captions_file(self.skips, listing, missing, say=report)
            if report:
                report_unlisted(self.root, listing)

    def __len__(self) -> int:
        return len(self.items)

    def caption(self, index: int) -> str:
        """Item `index`'s caption without decoding its image (an unreadable image's stand-in has its own caption,
        which is another item's)."""
        return self.items[index][1]

    def unreadable(self, known: Container[int] = ()) -> dict[int, str]:
        """{item: why its image does not decode} of the items met unreadable so far, but those `known` (recorded
        already), read again here (a DataLoader worker met them): what a latent cache records, so that a step that
        reuses it counts them too."""
        found = {}
        for i in (i for i in self.skips.marked() if i not in known):
            name = self.items[i][0]
            try:
                read_image(self.root / name, self.img_size, self.channels)
                found[i] = f"{name}: unreadable when first read"  # readable again: it was replaced where it was met
            except Exception as exc:
                found[i] = unreadable_reason(name, exc)
        return found

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
        failure = "each was found unreadable before"
        for k in range(n):  # a corrupt file is replaced by the next readable one, deterministically
            i = (index + k) % n
            if self.skips.is_marked(i):
                continue
            name, caption = self.items[i]
            try:
                return read_image(self.root / name, self.img_size, self.channels), caption
            except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
                failure = unreadable_reason(name, exc)
                self.skips.mark(i, failure)
        which = {"train": "training", "holdout": "held-out", "unseen": "unseen-caption"}[self.split]
        raise DataError(f"none of the {counted(n, f'{which} image')} of {self.root} can be read ({failure})")
