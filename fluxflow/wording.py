"""Counts in the lines the user reads: `counted(1, 'epoch')` is '1 epoch', `counted(2, 'epoch')` '2 epochs'.

No torch here: fluxflow.config (validation, the plan, the data checks) imports this, as do training and flows.
"""
from __future__ import annotations


def counted(n: int | float, thing: str, things: str | None = None, spec: str = "") -> str:
    """'1 optimizer update', '2 optimizer updates', '2 epochs', counted(2, 'batch', 'batches'): a count and its noun,
    singular for exactly 1 (no spelling rule guesses a plural: 'epoch' is not 'batch'). `spec` formats the number
    (',' for 12,345 rows, 'g' for 1 GPU of a float count)."""
    return f"{n:{spec}} {thing if n == 1 else things or thing + 's'}"
