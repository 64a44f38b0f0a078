"""Hypotheses with uncertainty: the seed replicates of each hypothesis summarised per metric, and every pair of
hypotheses compared by Welch's t-test.

A hypothesis is a leaf step as written (its `hypothesis` param; fluxflow/config/steps.py); its replicates are the
leaf runs of that step, one per seed. Per metric: the mean, the sample standard deviation and the 95 % confidence
interval of the mean (Student's t with n − 1 degrees of freedom). Per pair (A, B) and metric: the difference of the
means B − A, its 95 % interval and the two-sided p-value of Welch's t-test (unequal variances, Welch–Satterthwaite
degrees of freedom). The difference is "beyond the spread" when that interval excludes 0 (p < 0.05), "within the
spread" otherwise. With one replicate no interval can be given, and the summary says so instead of a verdict.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

CONFIDENCE = 0.95
TEST = "Welch's t-test, two-sided, 95 %"
BEYOND, WITHIN = "beyond the spread", "within the spread"


def _student_t():
    from scipy.stats import t  # imported here: fluxflow-compare's other paths and the flow's start do not need it

    return t


def _t_quantile(df: float) -> float:
    return float(_student_t().ppf(0.5 + CONFIDENCE / 2, df))


@dataclass(frozen=True)
class Spread:
    """One hypothesis' values of one metric over its replicates; `low`/`high` None with one replicate."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None

    def cell(self) -> str:
        if self.low is None:
            return f"{self.mean:.4g}"
        f = _format(self.low, self.high)
        return f"{self.mean:{f}} ± {self.std:.2g} {self.interval()}"

    def interval(self) -> str:
        f = _format(self.low, self.high)
        return f"[{self.low:{f}}, {self.high:{f}}]"


def _format(low: float, high: float, sign: str = "") -> str:
    """The format of an interval's ends and its centre: 4 significant digits, or as many more as tell the ends apart,
    trailing zeros kept (four printed an interval much narrower than its values as [20.7, 20.7], which looked like
    none)."""
    digits = 4
    while digits < 12 and low != high and f"{low:{sign}.{digits}g}" == f"{high:{sign}.{digits}g}":
        digits += 1
    return f"{sign}.4g" if digits == 4 else f"{sign}#.{digits}g"


def spread(values: list[float]) -> Spread:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return Spread(n, mean, None, None, None)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t_quantile(n - 1) * std / math.sqrt(n)
    return Spread(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Difference:
    """B − A on one metric: its interval, p-value and verdict, or why there is none (`verdict` says it)."""

    metric: str
    a: str
    b: str
    difference: float
    low: float | None
    high: float | None
    p_value: float | None
    verdict: str

    def row(self) -> list[str]:
        f = "+.4g" if self.low is None else _format(self.low, self.high, "+")
        interval = "-" if self.low is None else f"[{self.low:{f}}, {self.high:{f}}]"
        p = "-" if self.p_value is None else f"{self.p_value:.3g}"
        return [self.metric, f"{self.b} − {self.a}", f"{self.difference:{f}}", interval, p, self.verdict]


DIFFERENCE_HEADER = ["metric", "hypotheses", "difference", "95 % interval", "p", f"verdict ({TEST})"]


def welch(a: list[float], b: list[float], metric: str = "", names: tuple[str, str] = ("A", "B")) -> Difference:
    """mean(b) − mean(a) with Welch's interval and test; no interval when either side has one replicate."""
    sa, sb = spread(a), spread(b)
    # Equal means computed in another order differ in the last bit: that is no difference (not -2.2e-16).
    diff = 0.0 if math.isclose(sa.mean, sb.mean, rel_tol=1e-12) else sb.mean - sa.mean
    # A diverged replicate (nan, inf) leaves nothing to test: its p was nan, and nan < 0.05 read "within the spread".
    odd = [name for name, values in zip(names, (a, b)) if not all(map(math.isfinite, values))]
    if odd:
        return Difference(metric, *names, diff, None, None, None,
                          f"no test: {' and '.join(odd)} {'has' if len(odd) == 1 else 'have'} a non-finite value "
                          "(nan or inf)")
    single = [name for name, s in zip(names, (sa, sb)) if s.n < 2]
    if single:
        return Difference(metric, *names, diff, None, None, None,
                          f"no interval can be given: {' and '.join(single)} {'has' if len(single) == 1 else 'have'}"
                          " one replicate")
    va, vb = sa.std ** 2 / sa.n, sb.std ** 2 / sb.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # every replicate of both gave the same value: no spread to be beyond
        return Difference(metric, *names, diff, diff, diff, None, BEYOND if diff != 0 else WITHIN)
    df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1))
    half = _t_quantile(df) * se
    p = float(2 * _student_t().sf(abs(diff) / se, df))
    return Difference(metric, *names, diff, diff - half, diff + half, p, BEYOND if p < 1 - CONFIDENCE else WITHIN)


def _finite_or_null(fields: dict) -> dict:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in fields.items()}


@dataclass
class HypothesisSummary:
    """Per hypothesis (in order) its replicates' labels, per metric its spread, and every pair's differences."""

    replicates: dict[str, list[str]]
    spreads: dict[str, dict[str, Spread]] = field(default_factory=dict)  # metric -> hypothesis -> spread
    differences: list[Difference] = field(default_factory=list)
    config: dict[str, list[str]] = field(default_factory=dict)  # a differing value -> one cell per hypothesis

    def to_dict(self) -> dict:
        """For JSON: a value that is not finite is null (a bare NaN is not JSON; jq and JSON.parse refuse it)."""
        return {"test": TEST, "confidence": CONFIDENCE, "replicates": self.replicates,
                "metrics": {m: {h: _finite_or_null(asdict(s)) for h, s in by_h.items()}
                            for m, by_h in self.spreads.items()},
                "differences": [_finite_or_null(asdict(d)) for d in self.differences], "config": self.config}

    def metric_rows(self) -> list[list[str]]:
        """The replicate counts, then per metric a cell per hypothesis: the value, or with several replicates
        mean ± standard deviation [95 % interval]."""
        rows = [["replicates", *(str(len(runs)) for runs in self.replicates.values())]]
        for metric, by_hypothesis in self.spreads.items():
            rows.append([f"metric: {metric}", *(by_hypothesis[h].cell() if h in by_hypothesis else "-"
                                                for h in self.replicates)])
        return rows

    def difference_rows(self) -> list[list[str]]:
        return [DIFFERENCE_HEADER, *(d.row() for d in self.differences)]

    def note(self) -> str:
        """What the intervals and verdicts are, or why there are none."""
        single = [h for h, runs in self.replicates.items() if len(runs) < 2]
        note = ("Intervals: 95 % confidence interval of the mean over seed replicates (Student's t); differences: "
                f"{TEST}.")
        if single:
            note += (f" {', '.join(single)}: one replicate, so no interval can be given; add training.replicates "
                     "(docs/CONFIG.md) to measure the spread.")
        tests = sum(d.p_value is not None for d in self.differences)
        if tests > 1:  # every pair and metric is a test of its own: some verdicts are chance
            alpha = 1 - CONFIDENCE
            note += (f" {tests} tests, each at {round(100 * alpha)} % on its own (no correction for multiple "
                     f"comparisons): where there is no difference, about 1 in {round(1 / alpha)} still says 'beyond "
                     "the spread'.")
        return note

    def text(self) -> str:
        """The whole summary as text tables (the pipeline's MLflow run keeps it as hypotheses.txt)."""
        from flows.text_table import plain_table

        config = [[f"config: {key}", *values] for key, values in self.config.items()]
        parts = [plain_table([["", *self.replicates], *config, *self.metric_rows()])]
        if self.differences:
            parts.append(plain_table(self.difference_rows()))
        return "\n\n".join([*parts, self.note()]) + "\n"


def summarize(replicates: dict[str, list[str]], finals: dict[str, list[dict[str, float]]]) -> HypothesisSummary:
    """`finals`: per hypothesis, each replicate's final metrics. A metric is summarised over the replicates that
    have it; a pair is compared on the metrics both have."""
    summary = HypothesisSummary(replicates)
    metrics = sorted({m for runs in finals.values() for values in runs for m in values})
    for metric in metrics:
        values = {h: [v[metric] for v in runs if v.get(metric) is not None] for h, runs in finals.items()}
        summary.spreads[metric] = {h: spread(vals) for h, vals in values.items() if vals}
        for a, b in itertools.combinations([h for h in finals if values[h]], 2):
            summary.differences.append(welch(values[a], values[b], metric, (a, b)))
    return summary
