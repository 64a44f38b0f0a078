"""The PNG of a comparison (flows/compare.py's `Comparison`, of hypotheses or of registered versions): one bar panel
per final metric, one bar per column, each hypothesis' 95 % interval as its error bar; under each panel, for
hypotheses, every pair's difference B − A with its 95 % interval and the table's verdict (`chart_panels`); below
them, the config differences.

The verdict is the test of the difference (paired by seed where it can be: flows/hypotheses.py), not whether two
error bars overlap: paired, a difference can be far beyond the spread while the two bars overlap almost wholly, and
a chart of bars alone said "no difference" where the table said "beyond the spread". So the chart draws the
difference the verdict reads.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flows.hypotheses import BEYOND, WITHIN

if TYPE_CHECKING:  # flows.compare imports MLflow; the chart needs only its dataclass
    from flows.compare import Comparison

CHART_DIFFERENCES = 12  # config differences under the chart; the CSV has them all
CHART_CHARS_PER_INCH = 14  # 8 pt monospace: a character is 0.6 em = 4.8 pt, 15 to the inch; one spare


@dataclass(frozen=True)
class PairMark:
    """One pair's difference on one metric as the chart draws it, the table's numbers."""

    pair: str  # "b − a"
    difference: float  # B − A; nan: none drawn
    low: float | None  # its 95 % interval; None: no test (the verdict says why)
    high: float | None
    verdict: str  # the table's ("beyond the spread", "within the spread", "no test: ...")
    said: str  # what the chart writes beside it: "b − a: beyond the spread, better: b (lower)"


@dataclass(frozen=True)
class Panel:
    """One metric's panel: a bar per column (nan: none) with its error (half its 95 % interval, 0: none), and under
    it each pair's difference."""

    metric: str
    values: list[float]
    errors: list[float]
    pairs: list[PairMark]


def chart_panels(comparison: Comparison) -> list[Panel]:
    """What the chart draws, one panel per final metric, in the table's order."""
    spreads = comparison.summary.spreads if comparison.summary else {}
    differences = comparison.summary.differences if comparison.summary else []
    panels = []
    for metric, means in comparison.metrics.items():
        by_label = spreads.get(metric, {})
        # nan: no bar (none run, or a mean that is not finite: an inf bar was matplotlib's RuntimeWarnings)
        values = [v if v is not None and math.isfinite(v) else math.nan for v in means]
        # Error bars: the 95 % interval of the mean where a hypothesis has replicates (none with one).
        errors = [by_label[label].high - by_label[label].mean
                  if label in by_label and by_label[label].high is not None else 0.0 for label in comparison.labels]
        pairs = [PairMark(f"{d.b} − {d.a}", d.difference, d.low, d.high, d.verdict, _said(d))
                 for d in differences if d.metric == metric]
        panels.append(Panel(metric, values, errors, pairs))
    return panels


def _said(d) -> str:
    """The verdict beside a pair's mark: the table's, and which is better; the reason there is no test, short (the
    table has it whole)."""
    if d.verdict == BEYOND:
        return f"{d.b} − {d.a}: {BEYOND}, better: {d.better_cell()}"
    return f"{d.b} − {d.a}: {d.verdict if d.verdict == WITHIN else d.verdict.split(':')[0]}"


def write_chart(comparison: Comparison, path: Path, title: str) -> None:
    """One bar panel per final metric (four to a row), one bar per hypothesis, and under each the differences of
    every pair (`chart_panels`); below them, the config differences."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    panels = chart_panels(comparison) or [Panel("(no metrics)", [], [], [])]
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    many = len(comparison.labels) > 4
    panel_width = max(3.4, 0.45 * len(comparison.labels) + 0.8)  # inches: room for each bar's label
    width = panel_width * ncols + 0.6
    differences = difference_lines(comparison, int(width * CHART_CHARS_PER_INCH))
    shown = ["Config differences:", *differences] if differences else []
    note = comparison.summary.chart_note() if comparison.summary else ""
    pairs = max(len(panel.pairs) for panel in panels)
    if pairs:
        note = (f"{note}. " if note else "") + (
            "Under each panel: B − A with its 95 % interval and the table's verdict (the error bars above are each "
            "hypothesis' own interval: overlapping bars do not mean no difference)")
    if note:  # which test gave the table's verdicts, which bars have no error bar: the bars do not say
        shown = [*textwrap.wrap(note, int(width * CHART_CHARS_PER_INCH), subsequent_indent="    "), *shown]
    text_height = 0.18 * len(shown) + (0.12 if shown else 0)  # inches
    # Slanted labels take height from the bars unless the panels grow by it (8 pt: ~0.065 in a character, at 60°).
    bars_height = 3.0 + (0.055 * max(map(len, comparison.labels)) if many else 0)
    pairs_height = 0.4 * pairs + 0.6 if pairs else 0.0  # a line of text and a mark per pair, and the x axis
    fig, axes = plt.subplots(nrows * (2 if pairs else 1), ncols, squeeze=False,
                             figsize=(width, (bars_height + pairs_height) * nrows + text_height + 0.6),
                             gridspec_kw={"height_ratios": [bars_height, pairs_height] * nrows if pairs else None})
    bar_axes = axes[::2] if pairs else axes
    colors = [f"C{i % 10}" for i in range(len(comparison.labels))]
    for ax in [*bar_axes.flat[len(panels):], *(axes[1::2].flat[len(panels):] if pairs else [])]:
        ax.set_visible(False)
    for i, (ax, panel) in enumerate(zip(bar_axes.flat, panels)):
        if panel.values:
            ax.bar(range(len(panel.values)), panel.values, color=colors,
                   yerr=panel.errors if any(panel.errors) else None, capsize=4)
            ax.set_xticks(range(len(panel.values)), comparison.labels, rotation=60 if many else 20, ha="right",
                          fontsize=8, rotation_mode="anchor")
        ax.set_title(panel.metric, fontsize=10)
        if panel.pairs:
            _draw_pairs(axes[1::2].flat[i], panel.pairs, pairs)
        elif pairs:  # a metric no two hypotheses have
            axes[1::2].flat[i].set_visible(False)
    fig.suptitle(title, fontsize=11)
    bottom = text_height / fig.get_figheight()
    if shown:
        fig.text(0.01, bottom - 0.1 / fig.get_figheight(), "\n".join(shown),
                 fontsize=8, va="top", family="monospace")
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.4 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _draw_pairs(ax, marks: list[PairMark], rows: int) -> None:
    """Each pair on a line of its own, top to bottom: its verdict as text, under it B − A as a point with its 95 %
    interval (red where beyond the spread), and the line of no difference."""
    import matplotlib.transforms as transforms

    ax.axvline(0.0, color="0.5", linewidth=0.8, linestyle="--")
    at_left = transforms.blended_transform_factory(ax.transAxes, ax.transData)
    for k, mark in enumerate(marks):
        color = "C3" if mark.verdict == BEYOND else "0.3"
        if mark.low is not None:
            ax.errorbar([mark.difference], [-k], xerr=[[mark.difference - mark.low], [mark.high - mark.difference]],
                        fmt="o", color=color, markersize=4, capsize=3)
        elif math.isfinite(mark.difference):
            ax.plot([mark.difference], [-k], "x", color=color)
        ax.text(0.01, -k + 0.45, mark.said, transform=at_left, fontsize=7, va="center", color=color)
    ax.set_ylim(-rows + 0.5, 0.8)
    ax.set_yticks([])
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("B − A, 95 % interval", fontsize=8)


def difference_lines(comparison: Comparison, width: int) -> list[str]:
    """The first CHART_DIFFERENCES config differences as lines of at most `width` characters (a longer line ran off
    the chart's right edge, hiding the values of the last hypotheses), and how many more the CSV has."""
    lines = []
    for key, values in list(comparison.config.items())[:CHART_DIFFERENCES]:
        text = f"{key}: " + ", ".join(f"{label} = {value}" for label, value in zip(comparison.labels, values))
        lines += textwrap.wrap(text, width, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False)
    if len(comparison.config) > CHART_DIFFERENCES:
        lines.append(f"... and {len(comparison.config) - CHART_DIFFERENCES} more in the CSV")
    return lines
