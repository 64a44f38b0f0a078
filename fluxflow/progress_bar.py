"""The progress bar of long loops (an epoch's batches, a cache build's items)."""
from __future__ import annotations

import sys

from tqdm import tqdm


def batch_progress(total: int, initial: int = 0, desc: str = "", unit: str = "batch") -> tqdm:
    """A tqdm bar drawn only when stdout is a terminal (`disable=None`): logs and CI output stay free of
    carriage-return noise."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                file=sys.stdout, disable=None)
