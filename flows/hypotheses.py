"""Hypotheses with uncertainty: the seed replicates of each hypothesis summarised per metric, and every pair of
hypotheses compared by a t-test, paired by seed where it can be (README.md, "Comparing hypotheses", says when each
test helps and shows both on one run).

A hypothesis is a leaf step as written (its `hypothesis` param; fluxflow/config/steps.py); its replicates are the
leaf runs of that step, one per seed. Per metric: the mean, the sample standard deviation and the 95 % confidence
interval of the mean (Student's t with n − 1 degrees of freedom). Per pair (A, B) and metric: the difference of the
means B − A, its 95 % interval and the two-sided p-value of a paired t-test on the per-seed differences B_k − A_k
when both hypotheses ran the same set of seeds (replicate k of A and of B share the seed's data order, batch noise
and fresh weights: fluxflow/train/trainer.py), else of Welch's t-test. The difference is "beyond the spread" when
that interval excludes 0, "within the spread" otherwise; on a metric whose better side is known
(fluxflow/evaluation/direction.py) the better hypothesis is named. With many pairs and metrics some verdicts are
chance, so each p-value is also corrected for all the others of the summary (Holm's step-down method, `holm`).
Promotion's `beyond_spread` uses the same interval (`better_beyond`), so the table and the champion/challenger
decision cannot disagree on the same numbers; promotion's numbers are those of its own evaluation (promotion.n_images,
sampler_steps, seeds), the table's the steps' final metrics, so their intervals differ.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, replace

from flows.text_table import plain_table
from fluxflow.evaluation.direction import better_direction
from fluxflow.wording import counted

CONFIDENCE = 0.95
PAIRED, WELCH, FIXED = "paired by seed", "Welch", "against a fixed value"
TEST = ("two-sided t-test at 95 %: paired by seed where both hypotheses ran the same seeds, else Welch's t-test "
        "(unequal variances)")
BEYOND, WITHIN = "beyond the spread", "within the spread"
NOT_FINITE_WORDS = {"nan": "not a number", "inf": "inf", "-inf": "-inf"}  # str(value) -> as the tables say it


def _t_quantile(df: float) -> float:
    """The two-sided 95 % quantile of Student's t: scipy's inverse CDF, exact at any df (checked against the
    printed table for df 1 to 29): the normal's 1.96 in its place is 6.5 times too small at df 1, 24 % at df 5."""
    from scipy.stats import t  # imported here: fluxflow-compare's other paths and the flow's start do not need it

    return float(t.ppf(0.5 + CONFIDENCE / 2, df))


@dataclass(frozen=True)
class Spread:
    """One hypothesis' values of one metric over its replicates; `low`/`high` None with one replicate."""

    n: int
    mean: float
    std: float | None
    low: float | None
    high: float | None
    # ("nan", "inf" or "-inf", how many replicates have it) for each value that is not finite: the table says so
    not_finite: tuple[tuple[str, int], ...] = ()

    def cell(self) -> str:
        """The value, or mean ± standard deviation [95 % interval]; where a replicate is not finite, which and how
        many (mean, spread and interval read `nan ± nan [nan, nan]`)."""
        if self.low is None:  # one replicate: its value (a nan in words, as with several)
            return NOT_FINITE_WORDS.get(str(self.mean), f"{self.mean:.4g}")
        if self.not_finite:
            said = ", ".join(f"{NOT_FINITE_WORDS.get(value, value)} in {n}" for value, n in self.not_finite)
            return f"{said} of {self.n} replicates"
        return f"{self.mean:{_format(self.low, self.high)}} ± {self.std:.2g} {self.interval()}"

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
    odd = [str(v) for v in values if not math.isfinite(v)]
    not_finite = tuple((value, odd.count(value)) for value in NOT_FINITE_WORDS if value in odd)
    return Spread(n, mean, std, mean - half, mean + half, not_finite)


@dataclass(frozen=True)
class Difference:
    """B − A on one metric: its interval, p-value, test and verdict, or why there is none (`verdict` says it).
    `better`: the hypothesis better beyond the spread, where the metric's better side is known."""

    metric: str
    a: str
    b: str
    difference: float
    low: float | None
    high: float | None
    p_value: float | None
    verdict: str
    test: str = ""  # PAIRED, WELCH or FIXED; "" where no test was made
    better: str | None = None

    def row(self) -> list[str]:
        """The table's cells; a difference that is not finite is "-", as the interval is (`+nan` said nothing the
        verdict, "no test: ... non-finite value", does not)."""
        f = "+.4g" if self.low is None else _format(self.low, self.high, "+")
        interval = "-" if self.low is None else f"[{self.low:{f}}, {self.high:{f}}]"
        p = "-" if self.p_value is None else f"{self.p_value:.3g}"
        value = "-" if not math.isfinite(self.difference) else f"{self.difference:{f}}"
        return [self.metric, f"{self.b} − {self.a}", value, interval, p, self.test or "-", self.better_cell(),
                self.verdict]

    def better_cell(self) -> str:
        if self.verdict != BEYOND:
            return "-"
        direction = better_direction(self.metric)
        if direction is None:
            return "direction unknown"
        return f"{self.better} ({'higher' if direction == 'maximize' else 'lower'})"


def _test(a: list[float], b: list[float], metric: str, names: tuple[str, str], test: str) -> Difference:
    """B − A by `test` (WELCH, or PAIRED/FIXED on the per-pair differences b[k] − a[k], n − 1 degrees of freedom):
    the 95 % t interval diff ± t(df)·se, its p-value and verdict; or the Difference that says why no test can be made
    (a value that is not finite, one replicate). The verdict is read off the interval (it excludes 0)."""
    sa, sb = spread(a), spread(b)
    # Equal means computed in another order differ in the last bit: that is no difference (not -2.2e-16).
    same = math.isclose(sa.mean, sb.mean, rel_tol=1e-12)
    diff = 0.0 if same else sb.mean - sa.mean
    # A diverged replicate (nan, inf) leaves nothing to test: its p was nan, and nan < 0.05 read "within the spread".
    odd = [name for name, values in zip(names, (a, b)) if not all(map(math.isfinite, values))]
    single = [name for name, s in zip(names, (sa, sb)) if s.n < 2]
    for which, why in ((odd, "no test: {} a non-finite value (nan or inf)"),
                       (single, "no interval can be given: {} one replicate")):
        if which:
            has = f"{' and '.join(which)} {'has' if len(which) == 1 else 'have'}"
            return Difference(metric, *names, diff, None, None, None, why.format(has))
    if test == WELCH:
        va, vb = sa.std ** 2 / sa.n, sb.std ** 2 / sb.n
        se = math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (sa.n - 1) + vb ** 2 / (sb.n - 1)) if se else 1.0
    else:
        diffs = spread([y - x for x, y in zip(a, b, strict=True)])
        diff = 0.0 if same else diffs.mean
        se, df = diffs.std / math.sqrt(diffs.n), diffs.n - 1
    if se == 0.0:  # no spread at all (every replicate, or every per-seed difference, the same): none to be beyond
        low = high = diff
        p = None
    else:
        from scipy.stats import t

        half = _t_quantile(df) * se
        low, high = diff - half, diff + half
        p = float(2 * t.sf(abs(diff) / se, df))
    d = Difference(metric, *names, diff, low, high, p, BEYOND if low > 0 or high < 0 else WITHIN, test)
    direction = better_direction(metric)
    if d.verdict == BEYOND and direction is not None:
        return replace(d, better=names[1] if better_beyond(d, direction) else names[0])
    return d


def by_seed(values: list[float], seeds: list | None) -> dict | None:
    """Seed -> value, or None when a seed is unknown or repeated (no pairing can be made)."""
    if seeds is None or None in seeds or len(set(seeds)) != len(seeds) or len(seeds) != len(values):
        return None
    return dict(zip(seeds, values))


def difference(a: list[float], b: list[float], metric: str = "", names: tuple[str, str] = ("A", "B"),
               seeds: tuple[list, list] | None = None) -> Difference:
    """B − A, paired by seed when `seeds` (each side's, in the order of its values) are the same set on both sides;
    else Welch's. A replicate missing on one side (not finished, no such metric) makes the sets differ: Welch."""
    pa, pb = (by_seed(a, seeds[0]), by_seed(b, seeds[1])) if seeds is not None else (None, None)
    if pa is not None and pb is not None and set(pa) == set(pb):
        order = sorted(pa)
        return _test([pa[k] for k in order], [pb[k] for k in order], metric, names, PAIRED)
    return _test(a, b, metric, names, WELCH)


def versus_value(values: list[float], value: float, names: tuple[str, str] = ("A", "B")) -> Difference:
    """values − value, where `value` is a fixed number (a champion evaluated once on fixed images and seeds): the
    one-sample t interval of the mean, which is Welch's with a side that has no spread."""
    return _test([value] * len(values), values, "", names, FIXED)


def better_beyond(d: Difference, direction: str, margin: float = 0.0) -> bool:
    """Whether B is better than A beyond the spread by more than `margin`: the end of the 95 % interval of B − A
    nearest "worse" is past `margin` on the better side. The table's verdict (margin 0) and promotion's
    `beyond_spread` (margin `min_improvement`) are this one rule."""
    if d.low is None:
        return False
    return d.low > margin if direction == "maximize" else -d.high > margin


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values of one family of tests (None: no test, left out of the family):
    the k-th smallest of m becomes max over j <= k of min(1, (m - j + 1) * p_(j))."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def _finite_or_null(fields: dict) -> dict:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in fields.items()}


@dataclass
class HypothesisSummary:
    """Per hypothesis (in order) its replicates' labels, per metric its spread, and every pair's differences."""

    replicates: dict[str, list[str]]
    spreads: dict[str, dict[str, Spread]] = field(default_factory=dict)  # metric -> hypothesis -> spread
    differences: list[Difference] = field(default_factory=list)
    config: dict[str, list[str]] = field(default_factory=dict)  # a differing value -> one cell per hypothesis
    # hypothesis -> the replicates its config has, where known (more than `replicates` when some did not finish)
    planned: dict[str, int] = field(default_factory=dict)
    # (metric, a, b) -> why a pair whose replicates ran the same seeds is compared by Welch's test on that metric:
    # "fd: b − a (b has no value for seed 4)"
    unpaired: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """For JSON: a value that is not finite is null (a bare NaN is not JSON; jq and JSON.parse refuse it)."""
        return {"test": TEST, "confidence": CONFIDENCE, "replicates": self.replicates,
                # n: the replicates that have the metric; n_replicates: the hypothesis' (the table's "(2 of 3)")
                "metrics": {m: {h: _finite_or_null({**{k: v for k, v in asdict(s).items() if k != "not_finite"},
                                                    "n_replicates": len(self.replicates[h])})
                                for h, s in by_h.items()}
                            for m, by_h in self.spreads.items()},
                "differences": [_finite_or_null({**asdict(d), "p_holm": p})
                                for d, p in zip(self.differences, self.holm())],
                "config": self.config}

    def holm(self) -> list[float | None]:
        """Each difference's p-value corrected for every other test of this summary (Holm); None where untested."""
        return holm([d.p_value for d in self.differences])

    def metric_rows(self, columns: list[str] | None = None) -> list[list[str]]:
        """The replicate counts, then per metric a cell per hypothesis (`columns`: these, in this order, those that
        did not run among them; default: the summary's): the value, or with several replicates mean ± standard
        deviation [95 % interval], and "(2 of 3 replicates)" where fewer replicates than the hypothesis counts have
        the metric (the interval is over those: the replicates row alone said 3)."""
        columns = list(self.replicates) if columns is None else columns
        return [["replicates", *(str(len(self.replicates.get(h, []))) for h in columns)],
                *([f"metric: {metric}", *(self._cell(by_hypothesis[h], h) if h in by_hypothesis else "-"
                                          for h in columns)]
                  for metric, by_hypothesis in self.spreads.items())]

    def _cell(self, s: Spread, hypothesis: str) -> str:
        total = len(self.replicates.get(hypothesis, []))
        return s.cell() if s.n >= total else f"{s.cell()} ({s.n} of {total} replicates)"

    def difference_rows(self) -> list[list[str]]:
        header = ["metric", "hypotheses", "difference", "95 % interval", "p", "p (Holm)", "test", "better",
                  "verdict (95 %)"]
        rows = [d.row() for d in self.differences]
        return [header, *([*row[:5], "-" if p is None else f"{p:.3g}", *row[5:]] for row, p in zip(rows, self.holm()))]

    def note(self) -> str:
        """What the intervals and verdicts are, or why there are none."""
        single = [h for h, runs in self.replicates.items() if len(runs) == 1]
        note = ("Intervals: 95 % confidence interval of the mean over seed replicates (Student's t); differences: "
                f"{TEST}.")
        # Adding replicates is the advice only where the config has none: where it has, the others did not finish.
        alone = [h for h in single if self.planned.get(h, 1) < 2]
        if alone:
            note += (f" {', '.join(alone)}: one replicate, so no interval can be given; add training.replicates "
                     "(docs/CONFIG.md) to measure the spread.")
        short = [f"{h}: 1 of its {self.planned[h]} replicates counted" for h in single if h not in alone]
        if short:
            note += f" {'; '.join(short)}, so no interval can be given."
        # The seeds say paired, and the test column says Welch: why (a pair left untested since: nothing to say)
        unpaired = [self.unpaired[key] for d in self.differences if d.test and (key := (d.metric, d.a, d.b))
                    in self.unpaired]
        if unpaired:
            note += (" Welch's test, not paired by seed, where a replicate has no value of the metric: "
                     f"{'; '.join(unpaired)}.")
        tests = sum(d.p_value is not None for d in self.differences)
        if tests > 1:  # every pair and metric is a test of its own: some verdicts are chance
            alpha = 1 - CONFIDENCE
            kept = sum(p is not None and p < alpha for p in self.holm())
            beyond = counted(sum(d.verdict == BEYOND and d.p_value is not None for d in self.differences),
                             "'beyond' verdict")
            note += (f" {tests} tests, each at {round(100 * alpha)} % on its own: where there is no difference, about "
                     f"1 in {round(1 / alpha)} still says 'beyond the spread'. Corrected for all {tests} (Holm's "
                     f"method: p (Holm)), {kept} of the {beyond} with a p-value keep p < {alpha:.2g}.")
        return note

    def chart_note(self) -> str:
        """What the chart's bars do not show: which test gave each pair's differences ("paired by seed" or "Welch",
        with the pairs each took when they are not all one), and which hypotheses have no error bar (one replicate:
        the table says so, the chart's bars alone did not)."""
        used: dict[str, dict[str, None]] = {}  # test -> its pairs, in order
        for d in self.differences:
            if d.test:
                used.setdefault(d.test, {})[f"{d.b} − {d.a}"] = None
        notes = []
        if len(used) == 1:
            notes.append(f"Differences (95 % t-test): {next(iter(used))}")
        elif used:
            notes.append("Differences (95 % t-test): " + "; ".join(f"{test}: {', '.join(pairs)}"
                                                                     for test, pairs in used.items()))
        if single := [h for h, runs in self.replicates.items() if len(runs) < 2]:
            notes.append(f"No error bar: {', '.join(single)} (one replicate, so no interval can be given)")
        missing = [f"{h} on {metric}" for metric, by_hypothesis in self.spreads.items()
                   for h, s in by_hypothesis.items() if not math.isfinite(s.mean)]
        if missing:  # a mean of nan or inf draws no bar: the chart showed a gap, unexplained
            notes.append(f"No bar: {', '.join(missing)} (a value that is not finite)")
        return ". ".join(notes)

    def text(self) -> str:
        """The whole summary as text tables (the pipeline's MLflow run keeps it as hypotheses.txt)."""
        config = [[f"config: {key}", *values] for key, values in self.config.items()]
        parts = [plain_table([["", *self.replicates], *config, *self.metric_rows()])]
        if self.differences:
            parts.append(plain_table(self.difference_rows()))
        return "\n\n".join([*parts, self.note()]) + "\n"


def summarize(replicates: dict[str, list[str]], finals: dict[str, list[dict[str, float]]],
              seeds: dict[str, list] | None = None) -> HypothesisSummary:
    """`finals`: per hypothesis, each replicate's final metrics; `seeds`: per hypothesis, each replicate's seed in
    the same order (None where unknown). A metric is summarised over the replicates that have it; a pair is compared
    on the metrics both have, paired by seed where both have it for the same seeds (`difference`)."""
    summary = HypothesisSummary(replicates)
    metrics = sorted({m for runs in finals.values() for values in runs for m in values})
    for metric in metrics:
        kept = {h: [k for k, v in enumerate(runs) if v.get(metric) is not None] for h, runs in finals.items()}
        values = {h: [finals[h][k][metric] for k in ks] for h, ks in kept.items()}
        seeds_of = {h: [seeds[h][k] for k in ks] if seeds and h in seeds else None for h, ks in kept.items()}
        summary.spreads[metric] = {h: spread(vals) for h, vals in values.items() if vals}
        for a, b in itertools.combinations([h for h in finals if values[h]], 2):  # unknown seeds: Welch (by_seed)
            d = difference(values[a], values[b], metric, (a, b), (seeds_of[a], seeds_of[b]))
            summary.differences.append(d)
            if d.test == WELCH and _pairs(seeds, a, b):
                lacking = [f"{h} has no value for seed {', '.join(map(str, _left_out(seeds[h], seeds_of[h])))}"
                           for h in (a, b) if len(seeds_of[h]) < len(seeds[h])]
                summary.unpaired[metric, a, b] = f"{metric}: {b} − {a} ({'; '.join(lacking)})"
    return summary


def _pairs(seeds: dict[str, list] | None, a: str, b: str) -> bool:
    """Whether hypotheses `a` and `b`'s replicates, all of them, pair by seed (known, distinct and the same set)."""
    pa, pb = (by_seed([0] * len(seeds[h]), seeds[h]) if seeds and h in seeds else None for h in (a, b))
    return pa is not None and pb is not None and set(pa) == set(pb)


def _left_out(seeds: list, kept: list) -> list:
    return [seed for seed in seeds if seed not in kept]
