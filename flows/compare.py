"""The hypotheses of an MLflow experiment side by side, with their uncertainty (the library of `fluxflow-compare`,
flows/cli_compare.py): per hypothesis (a leaf step, e.g. `spade_off` and `spade_on` trained from the same warm-up,
with its seed replicates; the newest run per pipeline and step name, of the steps of the pipeline's latest config)
the config values that differ between them and the final metrics, and per pair the difference and its verdict
(flows/hypotheses.py); as tables, CSV, JSON and a PNG bar chart (flows/compare_chart.py).
"""
from __future__ import annotations

from flows import env  # noqa: F401  (must precede mlflow)

import csv
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from mlflow.tracking import MlflowClient

from flows.mlflow_names import (FINAL_PREFIX, PARENT_RUN_ID, TAG_KIND, TAG_LEAVES, TAG_OUTCOME, TAG_OUTPUT_DIR,
                                TAG_PARENT_STEP, TAG_STEP_NAME, TAG_STEPS, TAG_SUPERSEDED_BY)
from flows.mlflow_runs import deleted_experiment, find_runs, flatten_params
from flows.hypotheses import Difference, HypothesisSummary, summarize
from fluxflow.config.dag import leaf_names
from fluxflow.wording import counted


# A step's position, name and hypothesis label are its identity (the column labels), not part of the hypothesis.
IDENTITY_PARAMS = ("index", "name", "hypothesis")
MISSING = "-"
EXPERIMENTS_LISTED = 12  # in the line that refuses an unknown --experiment


@dataclass
class Comparison:
    labels: list[str]  # one column per hypothesis (leaf step) or registered version
    config: dict[str, list[str]] = field(default_factory=dict)  # only the params whose values differ
    metrics: dict[str, list[float | None]] = field(default_factory=dict)  # per column: the mean over replicates
    summary: HypothesisSummary | None = None  # replicates, spreads and pairwise differences of hypotheses


def pipeline_runs(client: MlflowClient, experiment_id: str) -> list:
    """The experiment's pipeline (parent) runs, newest first."""
    return find_runs(client, experiment_id, {TAG_KIND: "pipeline"})


def expected_leaves(pipelines: list) -> dict[str, dict[str, str]]:
    """Pipeline run id -> its config's leaf steps and the hypothesis of each, as the flow recorded them (TAG_LEAVES;
    pipelines recorded before it: none)."""
    return {run.info.run_id: json.loads(run.data.tags[TAG_LEAVES])
            for run in pipelines if run.data.tags.get(TAG_LEAVES)}


def leaf_step_runs(client: MlflowClient, experiment_id: str, pipelines: list | None = None) -> list:
    """The newest run of each leaf step of each pipeline (parent run) in the experiment: oldest pipeline first, then
    in the pipeline's file order. A leaf is one of its config's (`expected_leaves`): a step whose children did not
    run (its own replicate failed a threshold with on_missed: fail) was taken for one more hypothesis."""
    # The steps of each pipeline's latest run: a step its config no longer has (renamed, removed, or trained once
    # before training.replicates was added) is none of its hypotheses; its old run was counted as one more replicate.
    pipelines = pipeline_runs(client, experiment_id) if pipelines is None else pipelines
    current = {run.info.run_id: set(run.data.tags[TAG_STEPS].split(",")) for run in pipelines
               if run.data.tags.get(TAG_STEPS)}
    recorded = expected_leaves(pipelines)
    newest: dict[tuple[str, str], object] = {}
    for run in find_runs(client, experiment_id, {TAG_KIND: "step"}):
        pipeline, step = run.data.tags.get(PARENT_RUN_ID, ""), run.data.tags.get(TAG_STEP_NAME, run.info.run_name)
        # A run superseded by another of its step (flows/mlflow_step_run.py) is never the one in place, even when
        # newer: a config changed and then changed back (A, B, A) brings A's files and run back, and B's run started
        # last. A pipeline recorded without its list of steps keeps them all.
        if step in current.get(pipeline, {step}) and TAG_SUPERSEDED_BY not in run.data.tags:
            newest.setdefault((pipeline, step), run)
    parents_of_steps = {(pipeline, run.data.tags.get(TAG_PARENT_STEP, "")) for (pipeline, _), run in newest.items()}
    leaves = [run for (pipeline, step), run in newest.items()
              if (step in recorded[pipeline] if pipeline in recorded else (pipeline, step) not in parents_of_steps)]
    started: dict[str, int] = {}  # pipelines in the order they began, steps in file order within one
    for (pipeline, _), run in newest.items():
        started[pipeline] = min(started.get(pipeline, run.info.start_time), run.info.start_time)
    return sorted(leaves, key=lambda run: (started[run.data.tags.get(PARENT_RUN_ID, "")],
                                           int(run.data.params.get("index", 0))))


def stored_value(value: float) -> float:
    """A metric as logged: MLflow's SQL store saves inf as the largest float (1.798e+308), which passed as finite, so
    a diverged replicate overflowed the spread (a traceback) or showed as 1.798e+308; it is inf again."""
    return math.copysign(math.inf, value) if abs(value) >= sys.float_info.max else value


def final_metrics(run) -> dict[str, float]:
    """The step's final smoothed metrics; a run that never finished falls back to its last logged values."""
    finals = {k[len(FINAL_PREFIX):]: v for k, v in run.data.metrics.items() if k.startswith(FINAL_PREFIX)}
    metrics = finals or {k: v for k, v in run.data.metrics.items() if k not in ("epoch", "sec_per_batch")}
    return {k: stored_value(v) for k, v in metrics.items()}


def pipeline_labels(client: MlflowClient, pipelines: set[str]) -> dict[str, str]:
    """Pipeline run id -> the prefix of its columns: its run name (its output folder's name), or, for pipelines that
    share that name (out/x/run, out/y/run), as many trailing folders of their output directories as tell them apart.
    One label per pipeline: two pipelines under one label were grouped as if they were seed replicates."""
    runs = {p: client.get_run(p) for p in pipelines if p}
    labels = {p: run.info.run_name for p, run in runs.items()}
    for name in {name for name in labels.values() if list(labels.values()).count(name) > 1}:
        parts = {p: PurePosixPath(runs[p].data.tags.get(TAG_OUTPUT_DIR, "")).parts
                 for p in labels if labels[p] == name}
        for depth in range(2, max(map(len, parts.values())) + 1):
            tails = {p: "/".join(folders[-depth:]) for p, folders in parts.items()}
            if len(set(tails.values())) == len(tails):
                break
        else:  # no output directory tells them apart (runs recorded without it)
            tails = {p: f"{name}@{p[:8]}" for p in parts}
        labels.update(tails)
    return labels


def group_by_hypothesis(client: MlflowClient, runs: list,
                        expected: dict[str, dict[str, str]] | None = None) -> tuple[dict[str, list], dict[str, int]]:
    """(column label -> the leaf runs (replicates) of that hypothesis, in the order of `runs`; label -> how many leaf
    steps its pipelines' configs have for it, `expected` (expected_leaves), where that is more than ran: a replicate
    that never started (its parent failed, its data refused it) was left out unsaid, and a hypothesis none of whose
    replicates started was not in the table). The label is `pipeline/hypothesis` when there are several pipelines."""
    expected = expected or {}
    pipelines = {run.data.tags.get(PARENT_RUN_ID) for run in runs} | set(expected)
    names = pipeline_labels(client, pipelines) if len(pipelines) > 1 else {}

    def label(pipeline: str | None, hypothesis: str) -> str:
        return f"{names[pipeline]}/{hypothesis}" if pipeline in names else hypothesis

    groups: dict[str, list] = {}
    for run in runs:
        # The written step a leaf run trains (runs recorded before replicates existed: their step name).
        hypothesis = run.data.params.get("hypothesis") or run.data.tags.get(TAG_STEP_NAME, run.info.run_name)
        groups.setdefault(label(run.data.tags.get(PARENT_RUN_ID), hypothesis), []).append(run)
    planned = Counter(label(pipeline, hypothesis) for pipeline, leaves in expected.items()
                      for hypothesis in leaves.values())
    missing = {name: n for name, n in planned.items() if n > len(groups.get(name, []))}
    for name in missing:
        groups.setdefault(name, [])
    return groups, missing


def left_out(label: str, statuses: list[str], planned: int | None = None) -> tuple[str, list[int], int]:
    """(column label, the indices of the replicates its statistics use, the replicates its config has), from each
    started replicate's MLflow status (FINISHED, FAILED, KILLED, RUNNING). An interrupted or still running step is
    shown with its last logged values, and says so; but where other replicates of its hypothesis finished, those raw
    mid-training values are left out (averaged with final smoothed ones, they moved the mean, the interval and every
    verdict). `planned`: the replicates its config has, where more than started (`group_by_hypothesis`): the others
    are "not run"."""
    finished = [i for i, status in enumerate(statuses) if status == "FINISHED"]
    unfinished = [status.lower() for status in statuses if status != "FINISHED"]
    unfinished += ["not run"] * ((planned or 0) - len(statuses))
    total = len(finished) + len(unfinished)
    if not unfinished:
        return label, finished, total
    if not finished:
        return f"{label} ({', '.join(sorted(set(unfinished)))})", list(range(len(statuses))), total
    counts = ", ".join(f"{unfinished.count(status)} {status}" for status in sorted(set(unfinished)))
    return f"{label} (left out: {counts} of {total})", finished, total


def with_missed_thresholds(label: str, counted: list) -> str:
    """`label`, saying how many of its `counted` replicates missed their loss threshold with `on_missed: fail`: their
    run finished (trained to max_epochs) and is counted, but the config called that a failure (the run exited 1), and
    the table showed them as any other."""
    missed = sum(run.data.tags.get(TAG_OUTCOME) == "max_epochs_reached" and run.data.params.get("on_missed") == "fail"
                 for run in counted)
    return f"{label} ({missed} of {len(counted)} missed the threshold, on_missed: fail)" if missed else label


def joined_params(replicates: list[dict[str, str]]) -> dict[str, str]:
    """One hypothesis' params from its replicates' (in order): a value, or the values that vary, "0, 1, 2"."""
    keys = dict.fromkeys(key for params in replicates for key in params)
    return {key: ", ".join(dict.fromkeys(params.get(key, MISSING) for params in replicates)) for key in keys}


def pipeline_summary(steps: list, finished: dict[str, dict[str, float]],
                     ended: dict[str, str] | None = None) -> HypothesisSummary | None:
    """The summary of one pipeline's own leaf steps, for its MLflow run (hypotheses.txt, hypotheses.json): per
    hypothesis the final metrics of its `finished` replicates (step name -> final metrics), labelled as
    fluxflow-compare labels its columns (`left_out`: "flow (left out: 1 failed of 3)"; `ended`: step name -> MLflow
    status of a step that started and did not finish, the others "not run"), and, as this module's tables have
    them, the resolved values that tell the hypotheses apart (without them the file did not say which config a
    column was). A hypothesis none of whose replicates finished has a column without values. None when no leaf step
    finished."""
    leaves, ended = set(leaf_names(steps)), ended or {}
    replicas: dict[str, list[str]] = {}  # hypothesis -> its leaf steps, all the config has
    for step in steps:
        if step.name in leaves:
            replicas.setdefault(step.hypothesis, []).append(step.name)
    if not any(name in finished for names in replicas.values() for name in names):
        return None
    by_name = {step.name: step for step in steps}
    groups: dict[str, list[str]] = {}  # column label -> its finished replicates
    planned: dict[str, int] = {}
    configs = []  # per column: its replicates' params (a column without values: of those that did not finish)
    for hypothesis, names in replicas.items():
        started = [name for name in names if name in finished or name in ended]
        label, _, total = left_out(hypothesis, [ended.get(name, "FINISHED") for name in started], len(names))
        groups[label], planned[label] = [name for name in started if name in finished], total
        configs.append(joined_params([flatten_params(by_name[name].model_dump(mode="json"))
                                      for name in groups[label] or names]))
    summary = summarize(groups, {h: [finished[name] for name in names] for h, names in groups.items()},
                        {h: [by_name[name].seed for name in names] for h, names in groups.items()})
    summary.planned, summary.config = planned, differing(configs)
    return summary


def untested_if_unfinished(difference: Difference, unfinished: set[str]) -> Difference:
    """No test where a hypothesis none of whose replicates finished is one side: its values are the last logged ones
    (raw, each replicate at the batch it had reached), no final result, and a test on them read "beyond the spread"."""
    stopped = [label for label in (difference.a, difference.b) if label in unfinished]
    if not stopped:
        return difference
    return replace(difference, low=None, high=None, p_value=None, test="", better=None,
                   verdict=f"no test: {' and '.join(stopped)} did not finish (last logged values, not final)")


def compare_runs(client: MlflowClient, runs: list, expected: dict[str, dict[str, str]] | None = None) -> Comparison:
    """The hypotheses of `runs` (leaf_step_runs) side by side; `expected`: the leaves their configs have
    (expected_leaves), for the replicates and hypotheses that did not run. A hypothesis none of whose replicates
    ran has a column without values."""
    grouped, missing = group_by_hypothesis(client, runs, expected)
    labelled, planned = {}, {}  # label -> the runs counted; label -> the replicates its config has
    for name, group in grouped.items():
        label, counted, total = left_out(name, [run.info.status for run in group], missing.get(name))
        counted = [group[i] for i in counted]
        label = with_missed_thresholds(label, counted)
        labelled[label], planned[label] = counted, total
    groups = {label: group for label, group in labelled.items() if group}
    names = {label: [run.data.tags.get(TAG_STEP_NAME, run.info.run_name) for run in group]
             for label, group in groups.items()}
    # Each replicate's seed (its `seed` param): replicates of two hypotheses with the same seeds are compared paired.
    seeds = {label: [run.data.params.get("seed") for run in group] for label, group in groups.items()}
    summary = summarize(names, {label: [final_metrics(run) for run in group] for label, group in groups.items()}, seeds)
    summary.planned = planned
    unfinished = {label for label, group in groups.items() if group[0].info.status != "FINISHED"}
    summary.differences = [untested_if_unfinished(d, unfinished) for d in summary.differences]
    # Each hypothesis' params from all its counted replicates (the seed as "0, 1, 2"): one replicate's params made its
    # seed a difference between hypotheses whose first counted replicates had different seeds (one left out). Its
    # metrics are the means of the summary's spreads.
    configs = {label: joined_params([run.data.params for run in group]) for label, group in labelled.items()}
    config = differing(list(configs.values()))
    # The JSON file's too, the same keys with one value per hypothesis that ran (the summary's columns): it was {}
    summary.config = {key: [value for label, value in zip(labelled, values) if label in groups]
                      for key, values in config.items()}
    return Comparison(labels=list(labelled), config=config, summary=summary,
                      metrics={metric: [by_label[label].mean if label in by_label else None for label in labelled]
                               for metric, by_label in summary.spreads.items()})


def differing(configs: list[dict], ignore=IDENTITY_PARAMS) -> dict[str, list[str]]:
    """The config keys (but `ignore`) whose values differ between the columns, one value per column. An unset option
    ("None") of one column and an option another column's optimizer type does not have are the same thing, not a
    difference. A column without params (a hypothesis none of whose replicates ran) shows MISSING and differs from
    none: it made every key a difference."""
    found = {}
    for key in sorted({key for config in configs for key in config} - set(ignore)):
        values = [MISSING if (value := config.get(key, MISSING)) in ("None", "") else value for config in configs]
        if len({value for value, config in zip(values, configs) if config}) > 1:
            found[key] = values
    return found


def table_rows(comparison: Comparison) -> list[list[str]]:
    """Header, config differences, (for hypotheses) the replicate counts, then the metrics: a value, or with several
    replicates mean ± standard deviation [95 % interval]."""
    rows = [["", *comparison.labels]]
    rows += [[f"config: {key}", *values] for key, values in comparison.config.items()]
    if comparison.summary is not None:
        return rows + comparison.summary.metric_rows(comparison.labels)
    return rows + [[f"metric: {key}", *(MISSING if v is None else f"{v:.4g}" for v in values)]
                   for key, values in comparison.metrics.items()]


def write_csv(rows: list[list[str]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def experiment_comparison(client: MlflowClient, name: str) -> tuple[Comparison, list[list[str]], str] | str:
    """(comparison, rows, chart title) of the experiment's hypotheses, or what is wrong."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:  # a typo, most often: say which names there are
        names = sorted(e.name for e in client.search_experiments(max_results=EXPERIMENTS_LISTED + 1))
        listed = ", ".join(names[:EXPERIMENTS_LISTED]) + (", ..." if len(names) > EXPERIMENTS_LISTED else "")
        return f"no experiment named {name!r} at {client.tracking_uri}; --experiment names one of: {listed}"
    if experiment.lifecycle_stage == "deleted":  # its runs are deleted with it: it said "has no pipeline step runs"
        return deleted_experiment(client, experiment)
    pipelines = pipeline_runs(client, experiment.experiment_id)  # read once: for the leaves and what did not run
    runs = leaf_step_runs(client, experiment.experiment_id, pipelines)
    expected = expected_leaves(pipelines)
    # A pipeline stopped before its leaf steps (a step before them failed) has leaves, none of which ran: each is a
    # column "(not run)", as a leaf that did not run is beside others that did (it said there were no step runs).
    if not runs and not any(expected.values()):
        return f"experiment {name!r} has no pipeline step runs"
    comparison = compare_runs(client, runs, expected)
    n = len(comparison.labels)
    replicated = " (mean, 95 % interval)" if any(len(r) > 1 for r in comparison.summary.replicates.values()) else ""
    title = f"{name}: final metrics of {counted(n, 'hypothesis', 'hypotheses')}{replicated}"
    return comparison, table_rows(comparison), title
