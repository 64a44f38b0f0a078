"""`holdout_captions` of a `folder` dataset: which captions are kept out of training and scored as unseen.

A pattern is a glob (`*blue triangle*`, fnmatch rules, whole caption) or a regular expression written `re:<pattern>`
(searched anywhere in the caption); matching is case-insensitive. Here, not in fluxflow/data (which imports torch):
the run's start counts the matches (fluxflow/config/file_checks.py) as the dataset does when it is built.
"""
from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable

from fluxflow.wording import counted


def caption_matcher(patterns: list[str] | None) -> Callable[[str], bool] | None:
    """A predicate "this caption is held out" for `holdout_captions`; None when nothing is held out."""
    if not patterns:
        return None
    matchers = [_pattern_matcher(p) for p in patterns]
    return lambda caption: any(matches(caption) for matches in matchers)


def _pattern_matcher(pattern: str) -> Callable[[str], bool]:
    if pattern.startswith("re:"):
        regex = re.compile(pattern[3:], re.IGNORECASE)
        return lambda caption: regex.search(caption.strip()) is not None
    # A glob by fnmatchcase on lowered text: the same answer on every OS (fnmatch follows the OS's case).
    glob = pattern.lower()
    return lambda caption: fnmatch.fnmatchcase(caption.strip().lower(), glob)


def unseen_problem(root, patterns: list[str], matched: int, captions: list[str]) -> str | None:
    """Why `holdout_captions` matching `matched` of the folder's `captions` is not what was asked, or None: a pattern
    matched none (a typo would hold nothing out without a word, the unseen-caption evaluation off when it is the only
    one), or all matched together (nothing left to train on)."""
    entries = len(captions)
    if 0 < matched == entries:
        return (f"folder {root}: holdout_captions {patterns} match every one of its {counted(entries, 'caption')}; "
                "nothing would be left to train on")
    # Each pattern alone: one among several that matches nothing was not said (only all of them together were).
    unmatched = [p for p in patterns if not any(map(_pattern_matcher(p), captions))] if matched else patterns
    if not unmatched:
        return None
    hint = "patterns are whole-caption globs, e.g. '*blue*', or 're:<regex>'"
    if matched == 0:
        return (f"folder {root}: holdout_captions {patterns} match none of its {counted(entries, 'caption')}; nothing "
                f"would be scored as unseen ({hint})")
    return (f"folder {root}: holdout_captions {unmatched} (of {patterns}) match none of its "
            f"{counted(entries, 'caption')}; fix or remove them ({hint})")
