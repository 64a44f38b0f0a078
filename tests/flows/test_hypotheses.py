"""Replicate statistics (flows/hypotheses.py): intervals of the mean, the paired-by-seed and Welch's t-tests between
hypotheses, checked against scipy's own implementation and against published worked examples (a printed t table,
R's `t.test` on Student's sleep data); which hypothesis is better; and what is said with one replicate."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
from scipy import stats

from flows.hypotheses import (BEYOND, PAIRED, WELCH, WITHIN, _t_quantile, better_beyond, difference, holm, spread,
                              summarize, versus_value)

A = [2.31, 1.95, 2.02]
B = [0.79, 1.17, 0.77]


def test_spread_is_the_mean_the_sample_std_and_the_student_t_interval():
    s = spread(A)
    low, high = stats.t.interval(0.95, len(A) - 1, loc=stats.tmean(A), scale=stats.sem(A))
    assert s.n == 3 and s.mean == pytest.approx(sum(A) / 3) and s.std == pytest.approx(stats.tstd(A))
    assert (s.low, s.high) == (pytest.approx(low), pytest.approx(high))
    assert s.cell() == f"{s.mean:.4g} ± {s.std:.2g} [{low:.4g}, {high:.4g}]"


def test_welch_matches_scipy_and_calls_a_planted_difference_beyond_the_spread():
    d = difference(A, B, "flow_loss", ("a", "b"))
    ref = stats.ttest_ind(B, A, equal_var=False)
    interval = ref.confidence_interval(0.95)
    assert d.difference == pytest.approx(sum(B) / 3 - sum(A) / 3)
    assert d.p_value == pytest.approx(ref.pvalue)
    assert (d.low, d.high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert d.p_value < 0.05 and d.high < 0 and d.verdict == BEYOND


def test_overlapping_replicates_are_within_the_spread():
    d = difference(A, [2.30, 1.96, 2.01])
    assert d.p_value > 0.5 and d.low < 0 < d.high and d.verdict == WITHIN


def test_one_replicate_gives_no_interval_and_says_so():
    assert spread([1.5]).low is None and spread([1.5]).cell() == "1.5"
    d = difference([1.5], A, "m", ("solo", "a"))
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
    d = difference([0.95, 0.99, 0.92], [1.00, 0.93, 0.93])
    assert d.difference == 0.0 and d.row()[2] == "+0" and d.verdict == WITHIN


def test_a_value_that_is_not_a_number_gives_no_verdict_and_null_in_the_json():
    """A diverged replicate (final metric NaN) made every difference NaN, its p NaN, and the verdict "within the
    spread"; the JSON held a bare NaN, which strict readers (jq, JSON.parse) refuse."""
    nan = float("nan")
    d = difference(A, [0.79, nan, 0.77], "m", ("a", "b"))
    assert (d.low, d.high, d.p_value) == (None, None, None)
    assert d.verdict == "no test: b has a non-finite value (nan or inf)"
    summary = summarize({"a": ["a-seed0", "a-seed1", "a-seed2"], "b": ["b-seed0", "b-seed1", "b-seed2"]},
                        {"a": [{"m": v} for v in A], "b": [{"m": v} for v in (0.79, nan, 0.77)]})
    logged = json.loads(json.dumps(summary.to_dict(), allow_nan=False))  # ValueError on a NaN
    assert logged["metrics"]["m"]["b"]["mean"] is None and logged["differences"][0]["difference"] is None
    assert logged["metrics"]["m"]["a"]["mean"] == pytest.approx(sum(A) / 3)


def test_holm_adjusts_as_r_p_adjust_does_and_leaves_untested_pairs_out():
    """R: p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm") gives 0.03 0.06 0.06 0.02 (the third smallest, 2 x 0.03,
    carries over to the largest, whose own 1 x 0.04 is smaller); a pair with no test is no member of the family."""
    assert holm([0.01, 0.04, None, 0.03, 0.005]) == [pytest.approx(0.03), pytest.approx(0.06), None,
                                                     pytest.approx(0.06), pytest.approx(0.02)]
    assert holm([0.6, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1
    assert holm([]) == []


def test_the_note_says_how_many_tests_were_made_and_how_many_verdicts_survive_the_correction():
    """Six metrics x one pair are six tests at 5 % each: one 'beyond the spread' in six comes by chance about one time
    in four (a tour run showed eval_ssim beyond at p 0.027 among six metrics), and the note did not say so. Each
    p-value is also given corrected for the other five (Holm), in the table and the JSON."""
    metrics = [{f"m{i}": v + i for i in range(6)} for v in A]
    summary = summarize({"a": ["a-seed0", "a-seed1", "a-seed2"], "b": ["b-seed0", "b-seed1", "b-seed2"]},
                        {"a": metrics, "b": metrics})
    assert ("6 tests, each at 5 % on its own: where there is no difference, about 1 in 20 still says 'beyond the "
            "spread'. Corrected for all 6 (Holm's method: p (Holm)), 0 of the 0 'beyond' verdicts with a p-value keep "
            "p < 0.05."
            ) in summary.note()
    single = summarize({"a": ["a"], "b": ["b"]}, {"a": [{"m": 1.0}], "b": [{"m": 2.0}]})
    assert "tests" not in single.note()  # no test was made

    # b is clearly lower on `loss` (p 0.0025 alone, 0.0075 corrected), barely on `near` (0.032 alone, 0.063
    # corrected: no longer below 0.05), and not on `same` (1).
    finals = {"a": [{"loss": v, "near": n, "same": 1.0 + i} for i, (v, n) in enumerate(zip(A, [1.0, 1.1, 1.2]))],
              "b": [{"loss": v, "near": n, "same": 1.0 + i} for i, (v, n) in enumerate(zip(B, [0.8, 0.9, 0.85]))]}
    summary = summarize({"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}, finals)
    by_metric = {d.metric: d for d in summary.differences}
    p = [d.p_value for d in summary.differences]
    assert summary.holm() == holm(p) and [d.verdict for d in summary.differences].count(BEYOND) == 2
    header, *rows = summary.difference_rows()
    assert header[4:6] == ["p", "p (Holm)"]
    assert {row[0]: row[5] for row in rows} == {d.metric: f"{q:.3g}" for d, q in zip(summary.differences, holm(p))}
    assert [d["p_holm"] for d in summary.to_dict()["differences"]] == holm(p)
    kept = sum(q < 0.05 for q in holm(p))
    assert by_metric["loss"].p_value * 3 < 0.05 < by_metric["near"].p_value * 2 and kept == 1
    assert ("Corrected for all 3 (Holm's method: p (Holm)), 1 of the 2 'beyond' verdicts with a p-value keep p < 0.05."
            in summary.note())


def test_the_note_counts_one_beyond_verdict_as_one():
    """Two tests of which one is beyond the spread: was "of the 1 'beyond' verdicts"."""
    finals = {"a": [{"loss": v, "same": 1.0 + i} for i, v in enumerate(A)],
              "b": [{"loss": v, "same": 1.0 + i} for i, v in enumerate(B)]}
    note = summarize({"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}, finals).note()
    assert "Corrected for all 2 (Holm's method: p (Holm)), 1 of the 1 'beyond' verdict with a p-value keep" in note


def test_an_interval_much_narrower_than_its_values_keeps_its_two_ends_apart():
    """Four significant digits printed 20.7 ± 0.0001 [20.7, 20.7]: an interval that looked like none. The digits now
    grow until the ends differ, for the mean too; the usual cells keep four."""
    narrow = spread([20.7001, 20.7003, 20.7002])
    assert narrow.cell() == "20.7002 ± 0.0001 [20.7000, 20.7004]"  # 20.69995: six digits, zeros kept
    assert spread(A).cell() == "2.093 ± 0.19 [1.619, 2.567]"
    row = difference([20.70001, 20.70003, 20.70002], [21.20001, 21.20003, 21.20002], "m", ("a", "b")).row()
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


def test_the_pipeline_runs_summary_labels_replicates_left_out_and_advises_replicates_only_where_there_are_none(
        tmp_path):
    """hypotheses.txt dropped the replicates that did not finish without a word (fluxflow-compare labels them "left
    out: 1 failed of 3"), and with one left it advised "add training.replicates" to a config that has them."""
    from helpers_tiny import tiny_raw

    from flows.compare import pipeline_summary
    from fluxflow.config import load_config

    raw = tiny_raw(str(tmp_path), [{"name": "warm", "n_epochs": 1, "train_vae": True},
                                   {"name": "a", "n_epochs": 1, "train_vae": True, "after": "warm"},
                                   {"name": "b", "n_epochs": 1, "train_vae": True, "after": "warm", "kl_beta": 0.1}])
    raw["training"]["replicates"] = {"seeds": [0, 1, 2], "from_steps": ["a"]}
    steps = load_config(raw).config.resolved_steps()
    finished = {"warm": {}, "a-seed0": {"vae_loss": 0.5}, "b": {"vae_loss": 0.4}}
    summary = pipeline_summary(steps, finished, {"a-seed1": "FAILED"})  # a-seed2: not run
    assert list(summary.replicates) == ["a (left out: 1 failed, 1 not run of 3)", "b"]
    note = summary.note()
    assert "a (left out: 1 failed, 1 not run of 3): 1 of its 3 replicates counted, so no interval can be given" in note
    assert " b: one replicate, so no interval can be given; add training.replicates" in note
    assert note.count("add training.replicates") == 1  # for b only
    # None of a's replicates finished: its column stays, without values, and says why.
    summary = pipeline_summary(steps, {"b": {"vae_loss": 0.4}}, {"a-seed0": "FAILED", "a-seed1": "KILLED"})
    assert list(summary.replicates) == ["a (failed, killed, not run)", "b"]
    assert summary.metric_rows()[:2] == [["replicates", "0", "1"], ["metric: vae_loss", "-", "0.4"]]


# Student's sleep data (Cushny & Peebles; R's `sleep`): extra hours of sleep of the same ten patients on two drugs.
DRUG1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
PATIENTS = list(range(10))


@pytest.mark.parametrize("df, printed", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (5, 2.571), (9, 2.262),
                                         (14, 2.145), (19, 2.093), (29, 2.045)])
def test_the_t_quantile_is_the_printed_table_s_for_2_to_30_replicates(df, printed):
    assert _t_quantile(df) == pytest.approx(printed, abs=5e-4)


def test_welch_gives_r_s_interval_and_p_on_the_sleep_data():
    """R: t.test(extra ~ group, data = sleep) -> t = -1.8608, df = 17.776, p-value = 0.07939,
    95 percent confidence interval: -3.3654832 0.2054832 (group 1 - group 2)."""
    d = difference(DRUG2, DRUG1)
    assert (d.low, d.high) == (pytest.approx(-3.3654832, abs=1e-7), pytest.approx(0.2054832, abs=1e-7))
    assert d.p_value == pytest.approx(0.07939, abs=1e-5) and d.verdict == WITHIN and d.test == WELCH


def test_the_same_seeds_on_both_sides_are_compared_paired_as_r_does_on_the_sleep_data():
    """R: t.test(extra ~ group, data = sleep, paired = TRUE) -> t = -4.0621, df = 9, p-value = 0.002833, 95 percent
    confidence interval: -2.4598858 -0.7001142. Each patient's luck cancels in their own difference: the paired test
    calls beyond the spread what Welch's (above, p 0.079) calls within it. Replicate k of two hypotheses shares its
    seed's data order and noise as a patient shares his own sleep."""
    summary = summarize({"drug2": ["p"] * 10, "drug1": ["p"] * 10},  # differences B − A: drug1 − drug2, as R's
                        {"drug2": [{"m": v} for v in DRUG2], "drug1": [{"m": v} for v in DRUG1]},
                        {"drug2": PATIENTS, "drug1": PATIENTS})
    (d,) = summary.differences
    assert (d.a, d.b, d.test) == ("drug2", "drug1", PAIRED)
    assert (d.low, d.high) == (pytest.approx(-2.4598858, abs=1e-7), pytest.approx(-0.7001142, abs=1e-7))
    assert d.p_value == pytest.approx(0.002833, abs=1e-6) and d.verdict == BEYOND
    assert d.row()[5] == "paired by seed" and summary.to_dict()["differences"][0]["test"] == "paired by seed"
    assert summary.chart_note() == "Differences (95 % t-test): paired by seed"


def test_pairs_are_matched_by_seed_not_by_position():
    shuffled = [9, 3, 0, 5, 1, 8, 2, 7, 4, 6]
    d = difference(DRUG2, [DRUG1[k] for k in shuffled], seeds=(PATIENTS, shuffled))
    assert d.test == PAIRED and (d.low, d.high) == (pytest.approx(-2.4598858), pytest.approx(-0.7001142))


@pytest.mark.parametrize("seeds", [
    None,  # runs recorded without their seed
    (PATIENTS, [*PATIENTS[:-1], 10]),  # other seeds
    (PATIENTS, [*PATIENTS[:-1], None]),  # one seed unknown
    (PATIENTS, [*PATIENTS[:-1], 0]),  # a seed twice
])
def test_without_the_same_set_of_seeds_the_difference_is_welch_s(seeds):
    d = difference(DRUG2, DRUG1, seeds=seeds)
    assert d.test == WELCH and d.p_value == pytest.approx(0.07939, abs=1e-5)


def test_a_replicate_missing_a_metric_leaves_its_pair_unpaired_on_that_metric_only():
    finals = {"a": [{"loss": v, "fd": v} for v in DRUG2], "b": [{"loss": v, "fd": v} for v in DRUG1]}
    del finals["b"][4]["fd"]
    summary = summarize({"a": ["a"] * 10, "b": ["b"] * 10}, finals, {"a": PATIENTS, "b": PATIENTS})
    assert {d.metric: d.test for d in summary.differences} == {"fd": WELCH, "loss": PAIRED}
    assert summary.chart_note() == "Differences (95 % t-test): Welch: b − a; paired by seed: b − a"


def test_a_metric_some_replicates_lack_says_of_how_many_and_why_its_pair_is_not_paired():
    """b has 3 replicates, one without `x`: the replicates row said 3 and x's cell an interval by t(1) over 2 values,
    without a word, and the pair on x was Welch's where the seeds say paired, without a word either."""
    finals = {"a": [{"x": v, "y": v} for v in A], "b": [{"x": v, "y": v} for v in B]}
    del finals["b"][1]["x"]
    summary = summarize({"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}, finals, {"a": [0, 1, 2], "b": [0, 1, 2]})
    rows = {row[0]: row[1:] for row in summary.metric_rows()}
    assert rows["replicates"] == ["3", "3"]
    x = summary.spreads["x"]
    assert rows["metric: x"] == [x["a"].cell(), f"{x['b'].cell()} (2 of 3 replicates)"]
    assert not any("of 3" in cell for cell in rows["metric: y"])
    metrics = json.loads(json.dumps(summary.to_dict()))["metrics"]
    assert (metrics["x"]["b"]["n"], metrics["x"]["b"]["n_replicates"], metrics["y"]["b"]["n"]) == (2, 3, 3)
    assert {d.metric: d.test for d in summary.differences} == {"x": WELCH, "y": PAIRED}
    said = ("Welch's test, not paired by seed, where a replicate has no value of the metric: x: b − a (b has no value "
            "for seed 1).")
    assert said in summary.note() and "(2 of 3 replicates)" in summary.text()
    assert "Welch's test, not paired" not in summarize({"a": ["a0"] * 3, "b": ["b0"] * 3}, finals).note()  # no seeds
    summary.differences = [replace(d, test="") for d in summary.differences]  # untested since (a side unfinished)
    assert "Welch's test, not paired" not in summary.note()


@pytest.mark.parametrize("metric, better", [("flow_loss", "b (lower)"), ("eval_fd_ours_cfg", "b (lower)"),
                                            ("eval_adherence_both", "a (higher)"), ("eval_psnr", "a (higher)"),
                                            ("d_loss", "direction unknown"), ("kl_loss", "direction unknown")])
def test_the_verdict_names_the_better_hypothesis_the_way_the_metric_is_better(metric, better):
    """B − A < 0 beyond the spread: b is better on a loss or a distance, a on adherence or PSNR. The KL term is a
    regulariser traded against reconstruction (a larger kl_beta lowers it): it was "b (lower)", called better."""
    d = difference(A, B, metric, ("a", "b"))
    assert d.verdict == BEYOND and d.row()[6] == better
    assert d.better == (None if better == "direction unknown" else better[0])


def test_within_the_spread_nobody_is_better():
    d = difference(A, [2.30, 1.96, 2.01], "flow_loss", ("a", "b"))
    assert d.verdict == WITHIN and d.better is None and d.row()[6] == "-"


def test_identical_values_are_within_the_spread_and_constant_ones_apart_are_beyond_it():
    """No spread at all: nothing to be beyond when the values are the same, beyond it when they differ (the t
    statistic is infinite); no p-value either way, and paired the same."""
    same = difference([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], "flow_loss", seeds=([0, 1, 2], [0, 1, 2]))
    assert (same.low, same.high, same.p_value, same.verdict) == (0.0, 0.0, None, WITHIN)
    apart = difference([0.5, 0.5, 0.5], [0.4, 0.4, 0.4], "flow_loss", ("a", "b"))
    assert (apart.low, apart.high, apart.verdict, apart.better) == (pytest.approx(-0.1), pytest.approx(-0.1), BEYOND,
                                                                    "b")
    shifted = difference([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], "eval_psnr", ("a", "b"), seeds=([0, 1, 2], [0, 1, 2]))
    assert (shifted.test, shifted.verdict, shifted.better) == (PAIRED, BEYOND, "b")  # each seed gains 0.5


def test_a_fixed_value_is_welch_s_with_a_side_that_has_no_spread():
    """A champion evaluated once is a number, not a sample: the one-sample interval, which Welch's formula gives
    when one side's values are all the same."""
    fixed = versus_value(B, 1.5)
    as_welch = difference([1.5] * 3, B)
    ref = stats.ttest_1samp(B, 1.5)
    assert (fixed.low, fixed.high) == (pytest.approx(as_welch.low), pytest.approx(as_welch.high))
    assert (fixed.low + 1.5, fixed.high + 1.5) == tuple(map(pytest.approx, ref.confidence_interval(0.95)))  # of B
    assert fixed.p_value == pytest.approx(ref.pvalue)


@pytest.mark.parametrize("direction, margin, expected", [("minimize", 0.0, True), ("maximize", 0.0, False),
                                                         ("minimize", 0.5, True), ("minimize", 1.0, False)])
def test_better_beyond_reads_the_interval_end_nearest_worse(direction, margin, expected):
    d = difference(A, B)  # B − A in about [-1.66, -0.70]
    assert -1.67 < d.low < -1.66 and -0.71 < d.high < -0.70
    assert better_beyond(d, direction, margin) is expected


def test_a_value_that_is_not_a_number_is_said_in_words_in_the_tables():
    """A diverged replicate made its cell `nan ± nan [nan, nan]` and the difference `+nan`; the tables (printed and
    CSV) say it in words and the difference is "-" (its verdict says why); the chart says which bars are missing."""
    nan = float("nan")
    summary = summarize({"a": ["a-seed0", "a-seed1", "a-seed2"], "b": ["b-seed0", "b-seed1", "b-seed2"]},
                        {"a": [{"m": v} for v in A], "b": [{"m": v} for v in (0.79, nan, 0.77)]})
    assert summary.metric_rows()[1] == ["metric: m", spread(A).cell(), "not a number in 1 of 3 replicates"]
    assert summary.difference_rows()[1][2:4] == ["-", "-"]
    assert "not a number in 1 of 3 replicates" in summary.text() and "nan ±" not in summary.text()
    assert "+nan" not in summary.text()
    assert summary.chart_note().endswith("No bar: b on m (a value that is not finite)")
    infinite = spread([1.0, float("inf"), float("-inf"), float("inf")])
    assert infinite.cell() == "inf in 2, -inf in 1 of 4 replicates"
    assert spread([nan]).cell() == "not a number" and spread([float("inf")]).cell() == "inf"  # one replicate
