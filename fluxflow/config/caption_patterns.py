"""`holdout_captions` of a `folder` dataset: which captions are kept out of training and scored as unseen.

A pattern is a glob (`*blue triangle*`, fnmatch rules, whole caption) or a regular expression written `re:<pattern>`
(searched anywhere in the caption); matching is case-insensitive. Here, not in fluxflow/data (which imports torch):
the run's start counts the matches (fluxflow/config/file_checks.py) as the dataset does when it is built.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable


def caption_matcher(patterns: list[str] | None) -> Callable[[str], bool] | None:
    """A predicate "this caption is held out" for `holdout_captions`; None when nothing is held out."""
    if not patterns:
        return None
    regexes = [re.compile(p[3:], re.IGNORECASE) for p in patterns if p.startswith("re:")]
    # Globs by fnmatchcase on lowered text: the same answer on every OS (fnmatch follows the OS's case).
    globs = [p.lower() for p in patterns if not p.startswith("re:")]
    return lambda caption: (any(rx.search(caption.strip()) for rx in regexes)
                            or any(fnmatch.fnmatchcase(caption.strip().lower(), glob) for glob in globs))


def unseen_problem(root, patterns: list[str], matched: int, entries: int) -> str | None:
    """Why `holdout_captions` matching `matched` of `entries` captions is not what was asked, or None: none matched
    (a typo would turn the unseen-caption evaluation off without a word), or all did (nothing left to train on)."""
    if not patterns or 0 < matched < entries:
        return None
    which = "none" if matched == 0 else "every one"
    return (f"folder {root}: holdout_captions {patterns} match {which} of its {entries} captions; "
            + ("nothing would be scored as unseen (patterns are whole-caption globs, e.g. '*blue*', or 're:<regex>')"
               if matched == 0 else "nothing would be left to train on"))
