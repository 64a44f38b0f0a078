"""Replicate statistics (flows/hypotheses.py): intervals of the mean, Welch's t-test between hypotheses, checked
against scipy's own implementation; and what is said with one replicate."""
from __future__ import annotations

import json

import pytest
from scipy import stats

from flows.hypotheses import BEYOND, WITHIN, spread, summarize, welch

A = [2.31, 1.95, 2.02]
B = [0.79, 1.17, 0.77]


def test_spread_is_the_mean_the_sample_std_and_the_student_t_interval():
    s = spread(A)
    low, high = stats.t.interval(0.95, len(A) - 1, loc=stats.tmean(A), scale=stats.sem(A))
    assert s.n == 3 and s.mean == pytest.approx(sum(A) / 3) and s.std == pytest.approx(stats.tstd(A))
    assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high))
    assert s.cell() == f"{s.mean:.4g} ± {s.std:.2g} [{low:.4g}, {high:.4g}]"


def test_welch_matches_scipy_and_calls_a_planted_difference_beyond_the_spread():
    d = welch(A, B, "flow_loss", ("a", "b"))
    ref = stats.ttest_ind(B, A, equal_var=False)
    interval = ref.confidence_interval(0.95)
    assert d.difference == pytest.approx(sum(B) / 3 - sum(A) / 3)
    assert d.p_value == pytest.approx(ref.pvalue)
    assert (d.low, d.high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert d.p_value < 0.05 and d.high < 0 and d.verdict == BEYOND


def test_overlapping_replicates_are_within_the_spread():
    d = welch(A, [2.30, 1.96, 2.01])
    assert d.p_value > 0.5 and d.low < 0 < d.high and d.verdict == WITHIN


def test_one_replicate_gives_no_interval_and_says_so():
    assert spread([1.5]).low is None and spread([1.5]).cell() == "1.5"
    d = welch([1.5], A, "m", ("solo", "a"))
    assert (d.low, d.p_value) == (None, None)
    assert d.verdict == "no interval can be given: solo has one replicate"
    assert "solo: one replicate, so no interval can be given" in summarize(
        {"solo": ["solo"], "a": ["a-seed0", "a-seed1", "a-seed2"]},
        {"solo": [{"m": 1.5}], "a": [{"m": v} for v in A]}).note()


def test_summary_has_every_hypothesis_metric_and_pair_and_is_json():
    summary = summarize({"a": ["a-seed0", "a-seed1", "a-seed2"], "b": ["b-seed0", "b-seed1", "b-seed2"],
                         "c": ["c-seed0", "c-seed1", "c-seed2"]},
                        {"a": [{"loss": v, "fd": 1.0} for v in A], "b": [{"loss": v} for v in B],
                         "c": [{"loss": v, "fd": 1.0} for v in A]})
    assert list(summary.spreads) == ["fd", "loss"] and set(summary.spreads["fd"]) == {"a", "c"}
    pairs = [(d.metric, d.a, d.b, d.verdict) for d in summary.differences]
    assert pairs == [("fd", "a", "c", WITHIN), ("loss", "a", "b", BEYOND), ("loss", "a", "c", WITHIN),
                     ("loss", "b", "c", BEYOND)]
    assert summary.metric_rows()[0] == ["replicates", "3", "3", "3"]
    assert json.loads(json.dumps(summary.to_dict()))["differences"][1]["verdict"] == BEYOND


def test_equal_means_are_a_difference_of_exactly_zero():
    # Measured: these means differ by 2.2e-16 when computed directly.
    assert sum([1.00, 0.93, 0.93]) / 3 - sum([0.95, 0.99, 0.92]) / 3 != 0
    d = welch([0.95, 0.99, 0.92], [1.00, 0.93, 0.93])
    assert d.difference == 0.0 and d.row()[2] == "+0" and d.verdict == WITHIN


def test_a_value_that_is_not_a_number_gives_no_verdict_and_null_in_the_json():
    """A diverged replicate (final metric NaN) made every difference NaN, its p NaN, and the verdict "within the
    spread"; the JSON held a bare NaN, which strict readers (jq, JSON.parse) refuse."""
    nan = float("nan")
    d = welch(A, [0.79, nan, 0.77], "m", ("a", "b"))
    assert (d.low, d.high, d.p_value) == (None, None, None)
    assert d.verdict == "no test: b has a non-finite value (nan or inf)"
    summary = summarize({"a": ["a-seed0", "a-seed1", "a-seed2"], "b": ["b-seed0", "b-seed1", "b-seed2"]},
                        {"a": [{"m": v} for v in A], "b": [{"m": v} for v in (0.79, nan, 0.77)]})
    logged = json.loads(json.dumps(summary.to_dict(), allow_nan=False))  # ValueError on a NaN
    assert logged["metrics"]["m"]["b"]["mean"] is None and logged["differences"][0]["difference"] is None
    assert logged["metrics"]["m"]["a"]["mean"] == pytest.approx(sum(A) / 3)


def test_the_note_says_how_many_tests_were_made_and_that_none_is_corrected_for_the_others():
    """Six metrics x one pair are six tests at 5 % each: one 'beyond the spread' in six comes by chance about one time
    in four (a tour run showed eval_ssim beyond at p 0.027 among six metrics), and the note did not say so."""
    metrics = [{f"m{i}": v + i for i in range(6)} for v in A]
    summary = summarize({"a": ["a-seed0", "a-seed1", "a-seed2"], "b": ["b-seed0", "b-seed1", "b-seed2"]},
                        {"a": metrics, "b": metrics})
    assert ("6 tests, each at 5 % on its own (no correction for multiple comparisons): where there is no "
            "difference, about 1 in 20 still says 'beyond the spread'.") in summary.note()
    single = summarize({"a": ["a"], "b": ["b"]}, {"a": [{"m": 1.0}], "b": [{"m": 2.0}]})
    assert "tests" not in single.note()  # no test was made


def test_an_interval_much_narrower_than_its_values_keeps_its_two_ends_apart():
    """Four significant digits printed 20.7 ± 0.0001 [20.7, 20.7]: an interval that looked like none. The digits now
    grow until the ends differ, for the mean too; the usual cells keep four."""
    narrow = spread([20.7001, 20.7003, 20.7002])
    assert narrow.cell() == "20.7002 ± 0.0001 [20.7000, 20.7004]"  # 20.69995: six digits, zeros kept
    assert spread(A).cell() == "2.093 ± 0.19 [1.619, 2.567]"
    row = welch([20.70001, 20.70003, 20.70002], [21.20001, 21.20003, 21.20002], "m", ("a", "b")).row()
    assert row[2:4] == ["+0.50000", "[+0.49998, +0.50002]"]


def test_the_pipeline_runs_summary_says_what_tells_its_hypotheses_apart(tmp_path):
    """hypotheses.txt/json on the pipeline's MLflow run: spade_off vs spade_on differ in train_spade; without that
    row the file (unlike fluxflow-compare's table) did not say which config each column was."""
    from helpers_tiny import tiny_raw

    from flows.compare import pipeline_summary
    from fluxflow.config import load_config

    steps = load_config(tiny_raw(str(tmp_path), [
        {"name": "warm", "n_epochs": 1, "train_vae": True},
        {"name": "spade_off", "n_epochs": 1, "train_vae": True, "after": "warm"},
        {"name": "spade_on", "n_epochs": 1, "train_vae": True, "train_spade": True, "after": "warm"},
    ])).config.resolved_steps()
    summary = pipeline_summary(steps, {s.name: {"vae_loss": 0.5} for s in steps})
    assert list(summary.replicates) == ["spade_off", "spade_on"]
    assert ["config:", "train_spade", "False", "True"] in [line.split() for line in summary.text().splitlines()]
    assert json.loads(json.dumps(summary.to_dict()))["config"] == {"train_spade": ["False", "True"]}
