"""Column-aligned text tables, one padding rule for both kinds the repository prints: fluxflow-compare's console
table (flows/compare.py, quoted in README.md) and the benchmarks' GitHub-markdown tables (bench/common.py, quoted in
docs/PERFORMANCE.md). The first row is the header; every cell is a string."""
from __future__ import annotations


def _padded(rows: list[list[str]]) -> tuple[list[int], list[list[str]]]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return widths, [[cell.ljust(width) for cell, width in zip(row, widths)] for row in rows]


def plain_table(rows: list[list[str]]) -> str:
    """Columns two spaces apart, a line of dashes under the header, no trailing blanks."""
    widths, padded = _padded(rows)
    lines = ["  ".join(row).rstrip() for row in padded]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: list[list[str]]) -> str:
    """A GitHub-markdown table."""
    widths, padded = _padded(rows)
    lines = ["| " + " | ".join(row) + " |" for row in padded]
    lines.insert(1, "|" + "|".join("-" * (width + 2) for width in widths) + "|")
    return "\n".join(lines)
