"""The PNG of a comparison (flows/compare.py's `Comparison`, of hypotheses or of registered versions): one bar panel
per final metric, one bar per column, the intervals as error bars; below them, the config differences."""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # flows.compare imports MLflow; the chart needs only its dataclass
    from flows.compare import Comparison

CHART_DIFFERENCES = 12  # config differences under the chart; the CSV has them all
CHART_CHARS_PER_INCH = 14  # 8 pt monospace: a character is 0.6 em = 4.8 pt, 15 to the inch; one spare


def write_chart(comparison: Comparison, path: Path, title: str) -> None:
    """One bar panel per final metric (four to a row), one bar per hypothesis; below them, the config differences."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    names = list(comparison.metrics) or ["(no metrics)"]
    spreads = comparison.summary.spreads if comparison.summary else {}
    ncols = min(4, len(names))
    nrows = -(-len(names) // ncols)
    many = len(comparison.labels) > 4
    panel_width = max(3.4, 0.45 * len(comparison.labels) + 0.8)  # inches: room for each bar's label
    width = panel_width * ncols + 0.6
    differences = difference_lines(comparison, int(width * CHART_CHARS_PER_INCH))
    shown = ["Config differences:", *differences] if differences else []
    note = comparison.summary.chart_note() if comparison.summary else ""
    if note:  # which test gave the table's verdicts, which bars have no error bar: the bars do not say
        shown = [*textwrap.wrap(note, int(width * CHART_CHARS_PER_INCH), subsequent_indent="    "), *shown]
    text_height = 0.18 * len(shown) + (0.12 if shown else 0)  # inches
    # Slanted labels take height from the bars unless the panels grow by it (8 pt: ~0.065 in a character, at 60°).
    panels_height = (3.0 + (0.055 * max(map(len, comparison.labels)) if many else 0)) * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, panels_height + text_height + 0.6), squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(comparison.labels))]
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        # nan: no bar (none run, or a mean that is not finite: an inf bar was matplotlib's RuntimeWarnings)
        values = [v if v is not None and math.isfinite(v) else math.nan for v in comparison.metrics.get(name, [])]
        if values:
            by_label = spreads.get(name, {})
            # Error bars: the 95 % interval of the mean where a hypothesis has replicates (none with one).
            errors = [(by_label[label].high - by_label[label].mean)
                      if label in by_label and by_label[label].high is not None else 0.0
                      for label in comparison.labels]
            ax.bar(range(len(values)), values, color=colors, yerr=errors if any(errors) else None, capsize=4)
            ax.set_xticks(range(len(values)), comparison.labels, rotation=60 if many else 20, ha="right", fontsize=8,
                          rotation_mode="anchor")
        ax.set_title(name, fontsize=10)
    fig.suptitle(title, fontsize=11)
    bottom = text_height / fig.get_figheight()
    if shown:
        fig.text(0.01, bottom - 0.1 / fig.get_figheight(), "\n".join(shown),
                 fontsize=8, va="top", family="monospace")
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.4 / fig.get_figheight()))
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
