"""`fluxflow-compare` on MLflow runs recorded by the tracker (no training): leaves, differences, files."""
from __future__ import annotations

import csv
import json

import pytest
from closed_pipe import run_into_closed_pipe
from helpers_tiny import tiny_raw
from mlflow.tracking import MlflowClient

from flows import cli_compare, compare, compare_chart
from flows.mlflow_names import TAG_LEAVES, TAG_STEPS
from flows.mlflow_runs import experiment_id_for, open_pipeline_run
from flows.mlflow_tracker import MlflowTracker
from fluxflow.checkpoints.ref import CheckpointRef, StepResult
from fluxflow.config import load_config
from fluxflow.config.dag import leaf_names
from fluxflow.train.tracking import Progress

WARM = {"name": "warm", "n_epochs": 1, "train_vae": True}


def record_pipeline(client, experiment, out, steps, losses, session="s", interrupt_last=False, replicates=None,
                    killed=(), not_run=(), leaves=False, missed=()):
    """Record every step as the flow would: a nested run with params, one metric line and a final result (for the
    last step, with `interrupt_last`, and for the steps named in `killed`, the end of an interrupted run instead; no
    run at all for those in `not_run`; those in `missed` end at max_epochs without meeting their threshold). `leaves`:
    tag the leaf steps as the flow has since it records them."""
    raw = tiny_raw(out, steps)
    if replicates:
        raw["training"]["replicates"] = replicates
    resolved = load_config(raw).config.resolved_steps()
    # the flow tags its run with the steps of the config it runs (flows/pipeline_flow.py)
    tags = {TAG_STEPS: ",".join(step.name for step in resolved)}
    if leaves:
        tags[TAG_LEAVES] = json.dumps({s.name: s.hypothesis for s in resolved if s.name in leaf_names(resolved)})
    parent = open_pipeline_run(client, experiment, out, tags)
    for step in (step for step in resolved if step.name not in not_run):
        tracker = MlflowTracker(client, experiment, parent, out, session=session)
        tracker.step_started(step, f"key-{out}-{step.name}", len(steps), resumed=False)
        loss = losses[step.name]
        tracker.log_metrics({"vae_loss": loss}, Progress(step.name, 1, 1, 1, 1, 1, 1, 1, 0.1))
        if interrupt_last and step.name == resolved[-1].name or step.name in killed:  # last: with replicates, its
            tracker.step_failed(status="KILLED")                                        # last seed
            assert tracker.flush()
            continue
        ref = CheckpointRef(f"{out}/{step.name}.pt", "0" * 64, step.name, "k", 1, 1)
        outcome = "max_epochs_reached" if step.name in missed else "epochs_done"
        tracker.step_finished(ref, StepResult(step.name, outcome, 1, {"vae_loss": loss}))
        assert tracker.flush()  # the tracking thread has sent everything


def record_spade_branches(client, exp, tmp_path) -> None:
    """Two branches from one warm-up, spade_on better than spade_off."""
    record_pipeline(client, exp, f"{tmp_path}/spade", [
        WARM,
        {"name": "spade_off", "n_epochs": 1, "train_vae": True, "after": "warm"},
        {"name": "spade_on", "n_epochs": 1, "train_vae": True, "train_spade": True, "after": "warm"},
    ], {"warm": 0.9, "spade_off": 0.5, "spade_on": 0.25})


@pytest.fixture
def experiment(mlflow_store):
    client = MlflowClient(mlflow_store)
    return client, experiment_id_for(client, "hypotheses")


def test_leaf_steps_of_branches_are_compared_with_their_config_differences(experiment, tmp_path, capsys):
    client, exp = experiment
    record_spade_branches(client, exp, tmp_path)

    assert cli_compare.main(["--experiment", "hypotheses", "--output", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["spade_off", "spade_on"]
    assert printed[2].split() == ["config:", "train_spade", "False", "True"]  # the one difference
    assert ["metric:", "vae_loss", "0.5", "0.25"] in [line.split() for line in printed]
    rows = list(csv.reader(open(tmp_path / "cmp" / "compare_hypotheses.csv")))
    assert rows[0] == ["", "spade_off", "spade_on"]
    assert ["metric: vae_loss", "0.5", "0.25"] in rows
    assert all(not row[0].startswith("config: lr") for row in rows)  # equal values are not differences
    assert (tmp_path / "cmp" / "compare_hypotheses.png").stat().st_size > 1000


def test_a_config_changed_and_changed_back_is_compared_with_the_run_in_place_not_the_newest(experiment, tmp_path):
    """lr A, then B, then A again: the third run reuses A's files and A's run; B's run started last but is
    superseded, and its numbers are not the pipeline's."""
    client, exp = experiment
    out = f"{tmp_path}/solo"
    [step] = load_config(tiny_raw(out, [WARM])).config.resolved_steps()
    parent = open_pipeline_run(client, exp, out, {TAG_STEPS: "warm"})
    for session, key, loss in (("s1", "key-a", 0.5), ("s2", "key-b", 0.9)):
        tracker = MlflowTracker(client, exp, parent, out, session=session)
        tracker.step_started(step, key, 1, resumed=False)
        tracker.step_finished(CheckpointRef(f"{out}/warm.pt", "0" * 64, "warm", key, 1, 1),
                              StepResult("warm", "epochs_done", 1, {"vae_loss": loss}))
        assert tracker.flush()
    back = MlflowTracker(client, exp, parent, out, session="s3")
    back.step_skipped(step, CheckpointRef(f"{out}/warm.pt", "0" * 64, "warm", "key-a", 1, 1),
                      StepResult("warm", "epochs_done", 1, {"vae_loss": 0.5}, trained=False))
    assert back.flush()
    [leaf] = compare.leaf_step_runs(client, exp)
    assert leaf.info.run_id == back.run_id and compare.final_metrics(leaf) == {"vae_loss": 0.5}


def test_two_pipelines_are_labelled_by_pipeline_and_only_the_newest_run_of_a_step_counts(experiment, tmp_path):
    client, exp = experiment
    record_pipeline(client, exp, f"{tmp_path}/lr_small", [WARM, {"name": "gan", "n_epochs": 1, "gan_training": True}],
                    {"warm": 0.9, "gan": 0.7})
    record_pipeline(client, exp, f"{tmp_path}/lr_big", [WARM, {"name": "gan", "n_epochs": 2, "gan_training": True}],
                    {"warm": 0.9, "gan": 0.8})
    # the second pipeline's gan step is trained again (e.g. after a config change): only the newer run counts
    record_pipeline(client, exp, f"{tmp_path}/lr_big", [WARM, {"name": "gan", "n_epochs": 3, "gan_training": True}],
                    {"warm": 0.9, "gan": 0.6}, session="later")

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp))
    assert comparison.labels == ["lr_small/gan", "lr_big/gan"]
    assert comparison.config["n_epochs"] == ["1", "3"]
    assert comparison.metrics["vae_loss"] == [0.7, 0.6]


def test_runs_beyond_one_page_of_mlflow_search_are_all_compared(experiment, tmp_path, monkeypatch):
    """MLflow answers a search with at most one page of runs (1,000 by default): an experiment of more step runs than
    that had its oldest pipelines left out of the comparison without a word. Here a page holds 2 runs."""
    from flows import mlflow_runs

    client, exp = experiment
    monkeypatch.setattr(mlflow_runs, "RUNS_PER_PAGE", 2)
    for name, loss in (("first", 0.9), ("second", 0.8), ("third", 0.7)):
        record_pipeline(client, exp, f"{tmp_path}/{name}", [WARM], {"warm": loss})

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp))
    assert comparison.labels == ["first/warm", "second/warm", "third/warm"]
    assert comparison.metrics["vae_loss"] == [0.9, 0.8, 0.7]


def test_an_unknown_experiment_is_an_error(mlflow_store, tmp_path, capsys):
    assert cli_compare.main(["--experiment", "nope", "--output", str(tmp_path)]) == 2
    assert "no experiment named 'nope'" in capsys.readouterr().err


def test_an_output_that_is_a_file_is_refused_in_one_line_before_reading_the_store(experiment, tmp_path, capsys):
    client, exp = experiment
    record_pipeline(client, exp, str(tmp_path / "a"), [WARM], {"warm": 0.5})
    (tmp_path / "notes").write_text("x")  # mkdir on it ended in a FileExistsError traceback
    assert cli_compare.main(["--experiment", "hypotheses", "--output", str(tmp_path / "notes")]) == 2
    assert capsys.readouterr().err == f"fluxflow-compare: --output {tmp_path / 'notes'} is a file, not a folder\n"
    assert (tmp_path / "notes").read_text() == "x"


@pytest.mark.slow  # the CLI end to end, in a process of its own
def test_tables_piped_into_head_end_quietly_with_141(experiment, tmp_path):
    """`fluxflow-compare ... | head -1` printed "Exception ignored ... BrokenPipeError" at exit, exit 120 (a traceback
    for tables over the pipe's buffer); now nothing, the shell's code for SIGPIPE, and the files written."""
    client, exp = experiment
    record_pipeline(client, exp, str(tmp_path / "a"), [WARM], {"warm": 0.5})
    done = run_into_closed_pipe("flows.cli_compare", "--experiment", "hypotheses", "--output", str(tmp_path / "c"),
                                cwd=tmp_path)
    assert (done.returncode, done.stderr) == (141, ""), done.stderr[-2000:]
    assert (tmp_path / "c" / "compare_hypotheses.csv").exists()


def test_an_output_folder_that_cannot_be_made_is_one_line_naming_the_flag(experiment, tmp_path, capsys):
    """Was mkdir's FileNotFoundError traceback, after the tables (/proc takes no new folder, even for root)."""
    client, exp = experiment
    record_pipeline(client, exp, str(tmp_path / "a"), [WARM], {"warm": 0.5})
    assert cli_compare.main(["--experiment", "hypotheses", "--output", "/proc/nope/x"]) == 2
    captured = capsys.readouterr()
    assert captured.err == ("fluxflow-compare: --output /proc/nope/x cannot be written (No such file or directory: "
                            "/proc/nope)\n")
    assert captured.out == ""


def test_unset_options_and_options_of_another_group_are_not_differences(experiment, tmp_path):
    client, exp = experiment
    record_pipeline(client, exp, f"{tmp_path}/kinds", [
        WARM,
        {"name": "vae_more", "n_epochs": 1, "train_vae": True, "after": "warm"},
        {"name": "flow", "n_epochs": 1, "train_diff": True, "after": "warm"},
    ], {"warm": 0.9, "vae_more": 0.5, "flow": 0.4})

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp))
    assert comparison.labels == ["vae_more", "flow"]
    # AdamW has no `alpha`: "None" in the flow step's params, absent from the other step's
    assert "optimization.optimizers.flow.alpha" not in comparison.config
    assert comparison.config["optimization.optimizers.flow.type"] == ["-", "AdamW"]
    assert comparison.config["train_diff"] == ["False", "True"]


def test_an_interrupted_leaf_step_is_labelled_with_its_status_and_its_last_values(experiment, tmp_path):
    client, exp = experiment
    record_pipeline(client, exp, f"{tmp_path}/done", [WARM, {"name": "gan", "n_epochs": 1, "gan_training": True}],
                    {"warm": 0.9, "gan": 0.7})
    record_pipeline(client, exp, f"{tmp_path}/stopped", [WARM, {"name": "gan", "n_epochs": 2, "gan_training": True}],
                    {"warm": 0.9, "gan": 0.8}, interrupt_last=True)

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp))
    assert comparison.labels == ["done/gan", "stopped/gan (killed)"]
    assert comparison.metrics["vae_loss"] == [0.7, 0.8]


def test_replicates_are_one_column_per_hypothesis_with_intervals_and_a_verdict_per_pair(experiment, tmp_path,
                                                                                           capsys):
    client, exp = experiment
    losses = {"warm": 0.9, **{f"a-seed{i}": v for i, v in enumerate([0.50, 0.55, 0.45])},
              **{f"b-seed{i}": v for i, v in enumerate([0.51, 0.56, 0.44])},
              **{f"planted-seed{i}": v for i, v in enumerate([0.20, 0.24, 0.18])}}
    record_pipeline(client, exp, f"{tmp_path}/reps", [
        WARM, *({"name": name, "n_epochs": 1, "train_vae": True, "after": "warm"} for name in ("a", "b", "planted"))
    ], losses, replicates={"seeds": [0, 1, 2], "from_steps": ["a", "b", "planted"]})

    assert cli_compare.main(["--experiment", "hypotheses", "--output", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    lines = [line.split() for line in printed.splitlines()]
    assert lines[0] == ["a", "b", "planted"] and ["replicates", "3", "3", "3"] in lines
    vae_loss = next(line for line in lines if line[:2] == ["metric:", "vae_loss"])
    assert vae_loss[2:7] == ["0.5", "±", "0.05", "[0.3758,", "0.6242]"]  # 0.5 ± 4.303 (t, 2 df) × 0.05 / √3
    verdicts = {tuple(line[1:4]): " ".join(line[-3:]) for line in lines if line[:1] == ["vae_loss"]}
    assert verdicts == {("b", "−", "a"): "within the spread", ("planted", "−", "a"): "beyond the spread",
                        ("planted", "−", "b"): "beyond the spread"}
    # The same seeds 0, 1, 2 on every side: each pair is paired by seed, and on a loss lower is better.
    rows = {tuple(line.split()[1:4]): line for line in printed.splitlines() if line.startswith("vae_loss ")}
    assert all("paired by seed" in row for row in rows.values())
    assert rows[("b", "−", "a")].split()[-4] == "-"  # within the spread: neither is better
    assert "planted (lower)" in rows[("planted", "−", "a")] and "planted (lower)" in rows[("planted", "−", "b")]
    logged = json.loads((tmp_path / "cmp" / "compare_hypotheses.json").read_text())
    assert [(d["test"], d["better"]) for d in logged["differences"]] == [("paired by seed", None),
                                                                         ("paired by seed", "planted"),
                                                                         ("paired by seed", "planted")]


def test_one_run_per_hypothesis_says_that_no_interval_can_be_given(experiment, tmp_path, capsys):
    client, exp = experiment
    record_pipeline(client, exp, f"{tmp_path}/single", [
        WARM, {"name": "off", "n_epochs": 1, "train_vae": True}, {"name": "on", "n_epochs": 1, "train_vae": True,
                                                                "train_spade": True, "after": "warm"},
    ], {"warm": 0.9, "off": 0.5, "on": 0.25})
    assert cli_compare.main(["--experiment", "hypotheses", "--output", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "no interval can be given: off and on have one replicate" in printed
    assert "off, on: one replicate, so no interval can be given" in printed
    # The JSON names the config difference as the table does (it was {}), and the chart says why it has no error bar
    logged = json.loads((tmp_path / "cmp" / "compare_hypotheses.json").read_text())
    assert logged["config"] == {"train_spade": ["False", "True"]}
    assert compare.experiment_comparison(client, "hypotheses")[0].summary.chart_note() == (
        "No error bar: off, on (one replicate, so no interval can be given)")


def test_the_versions_of_a_model_named_after_the_experiment_do_not_overwrite_its_files(experiment, tmp_path):
    client, exp = experiment
    record_spade_branches(client, exp, tmp_path)
    # the model takes the experiment's name by default
    register_with_config(client, tmp_path, tiny_raw(str(tmp_path / "v"), [WARM]), name="hypotheses")
    out = tmp_path / "cmp"

    assert cli_compare.main(["--experiment", "hypotheses", "--output", str(out)]) == 0
    experiment_files = {path.name: path.read_bytes() for path in out.iterdir()}
    assert cli_compare.main(["--registered-model", "hypotheses", "--output", str(out)]) == 0
    version_files = {path.name for path in out.iterdir()} - set(experiment_files)
    assert version_files == {"compare_versions_hypotheses.csv", "compare_versions_hypotheses.png"}
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.name in experiment_files} == experiment_files


def test_an_alias_the_model_does_not_have_is_an_error_and_the_default_one_unset_a_note(mlflow_store, tmp_path,
                                                                                         capsys):
    client = MlflowClient(mlflow_store)
    version = register_with_config(client, tmp_path, tiny_raw(str(tmp_path / "v"), [WARM]))
    assert cli_compare.main(["--registered-model", "m", "--alias", "nosuch", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "fluxflow-compare: registered model 'm' has no alias 'nosuch' (its aliases: " \
                                      "none)\n"
    assert cli_compare.main(["--registered-model", "m", "--output", str(tmp_path)]) == 0  # nothing promoted yet
    assert "Note: no version of 'm' holds the alias 'champion' yet" in capsys.readouterr().out
    client.set_registered_model_alias("m", "staging", version.version)
    assert cli_compare.main(["--registered-model", "m", "--alias", "nosuch", "--output", str(tmp_path)]) == 2
    assert "has no alias 'nosuch' (its aliases: staging)" in capsys.readouterr().err


def test_the_chart_titles_count_one_hypothesis_and_one_version_as_one(experiment, tmp_path):
    """Were "final metrics of 1 hypotheses" (an experiment of one pipeline, one leaf) and "of 1 versions"."""
    from flows.compare_versions import model_comparison

    client, exp = experiment
    record_pipeline(client, exp, f"{tmp_path}/solo", [WARM], {"warm": 0.5})
    assert compare.experiment_comparison(client, "hypotheses")[2] == "hypotheses: final metrics of 1 hypothesis"
    register_with_config(client, tmp_path, tiny_raw(str(tmp_path / "v"), [WARM]))
    assert model_comparison(client, "m", "champion")[2] == "m: final metrics of 1 version"


def test_a_model_without_versions_is_one_line_and_writes_nothing(mlflow_store, tmp_path, capsys):
    """Was a table of row names, an empty CSV and an empty chart ("final metrics of 0 versions"), exit 0."""
    MlflowClient(mlflow_store).create_registered_model("m")
    out = tmp_path / "cmp"
    assert cli_compare.main(["--registered-model", "m", "--output", str(out)]) == 2
    said = f"fluxflow-compare: registered model 'm' has no versions (tracking URI {mlflow_store})\n"
    assert capsys.readouterr() == ("", said)
    assert not out.exists()


@pytest.mark.parametrize("case", ["files moved away", "registered by hand"])
def test_a_version_without_its_files_or_not_of_fluxflow_is_one_line_naming_it(mlflow_store, tmp_path, capsys, case):
    """Was a traceback ending in "MlflowException: ... No such artifact: 'artifacts/config.json'", exit 1: a version
    whose artifacts left with the store's ./mlruns, or one registered by hand from a folder without config.json."""
    import shutil

    client = MlflowClient(mlflow_store)
    register_with_config(client, tmp_path, tiny_raw(str(tmp_path / "v"), [WARM]))
    if case == "files moved away":
        register_with_config(client, tmp_path, tiny_raw(str(tmp_path / "v2"), [WARM]))
        where = client.get_model_version_download_uri("m", "1")
        shutil.move(tmp_path / "mlruns", tmp_path / "mlruns.moved")
        says = "version 1 of 'm': its files are missing from the artifact store ("
    else:
        (tmp_path / "by-hand").mkdir()
        (tmp_path / "by-hand" / "weights.bin").write_bytes(b"x")
        where = str(tmp_path / "by-hand")
        client.create_model_version("m", where)
        says = "version 2 of 'm' is not a fluxflow model: it has no artifacts/config.json ("
    out = tmp_path / "cmp"
    assert cli_compare.main(["--registered-model", "m", "--output", str(out)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.startswith(f"fluxflow-compare: {says}"), printed.err
    assert len(printed.err.splitlines()) == 1 and printed.err.endswith(f"({where})\n") and not out.exists()


def test_two_pipelines_whose_output_folders_share_a_name_are_two_columns_not_two_replicates(experiment, tmp_path):
    """Pipelines in out/x/run and out/y/run both have the run name `run`: their leaves were one column `run/gan`
    with 2 "replicates", and intervals and verdicts computed over two different pipelines as if over seeds."""
    client, exp = experiment
    for folder, loss in (("x", 0.7), ("y", 0.8)):
        record_pipeline(client, exp, f"{tmp_path}/{folder}/run", [WARM, {"name": "gan", "n_epochs": 1,
                                                                         "gan_training": True}],
                        {"warm": 0.9, "gan": loss})

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp))
    assert comparison.labels == ["x/run/gan", "y/run/gan"]
    assert comparison.summary.replicates == {"x/run/gan": ["gan"], "y/run/gan": ["gan"]}
    assert comparison.metrics["vae_loss"] == [0.7, 0.8]


def test_a_replicate_that_did_not_finish_is_left_out_of_its_hypothesis_statistics(experiment, tmp_path):
    """b-seed2 was killed mid-step: its last logged (raw, mid-training) values were averaged with the final smoothed
    values of b's finished replicates, moving b's mean and interval and every verdict on b."""
    client, exp = experiment
    losses = {"warm": 0.9, **{f"a-seed{i}": v for i, v in enumerate([0.50, 0.55, 0.45])},
              "b-seed0": 0.30, "b-seed1": 0.32, "b-seed2": 5.0}
    record_pipeline(client, exp, f"{tmp_path}/reps", [
        WARM, *({"name": name, "n_epochs": 1, "train_vae": True, "after": "warm"} for name in ("a", "b"))
    ], losses, replicates={"seeds": [0, 1, 2], "from_steps": ["a", "b"]}, interrupt_last=True)

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp))
    assert comparison.labels == ["a", "b (left out: 1 killed of 3)"]
    assert sorted(comparison.summary.replicates["b (left out: 1 killed of 3)"]) == ["b-seed0", "b-seed1"]
    assert comparison.metrics["vae_loss"] == [pytest.approx(0.5), pytest.approx(0.31)]


def test_versions_promoted_on_different_metrics_show_each_value_under_its_own_metric():
    """The first version's promotion metric named the row for all: after a run with `promotion.metric:
    eval_fd_ours_cfg`, its Fréchet distances (0.1363) stood in the row `promotion eval_adherence_both`."""
    from types import SimpleNamespace

    from flows.compare_versions import info_rows
    from flows.mlflow_names import TAG_PROMOTION

    def version(metric, value):
        tags = {TAG_PROMOTION + "metric": metric, TAG_PROMOTION + "value": value} if metric else {}
        return SimpleNamespace(tags=tags, run_id="r", creation_timestamp=0)

    rows = info_rows([version("eval_adherence_both", "0"), version(None, None),
                      version("eval_fd_ours_cfg", "0.136343")])
    assert rows[-2:] == [["promotion eval_adherence_both", "0", "-", "-"],
                         ["promotion eval_fd_ours_cfg", "-", "-", "0.136343"]]


def test_a_step_the_pipeline_no_longer_has_is_not_counted_as_a_replicate(experiment, tmp_path):
    """Trained once, then again into the same folder with training.replicates (what the one-replicate note
    suggests): the first run's leaf `b` has hypothesis `b` too, and was counted as a 4th replicate of b (with seed 0,
    as b-seed0: a duplicated value that narrowed the interval). Only the steps of the pipeline's latest run count."""
    client, exp = experiment
    steps = [WARM, *({"name": name, "n_epochs": 1, "train_vae": True, "after": "warm"} for name in ("a", "b"))]
    record_pipeline(client, exp, f"{tmp_path}/reps", steps, {"warm": 0.9, "a": 0.5, "b": 0.3})
    replicas = {f"{h}-seed{i}": v + i / 100 for h, v in (("a", 0.5), ("b", 0.3)) for i in range(3)}
    record_pipeline(client, exp, f"{tmp_path}/reps", steps, {"warm": 0.9, **replicas},
                    replicates={"seeds": [0, 1, 2], "from_steps": ["a", "b"]}, session="later")

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp))
    assert {h: sorted(runs) for h, runs in comparison.summary.replicates.items()} == {
        "a": ["a-seed0", "a-seed1", "a-seed2"], "b": ["b-seed0", "b-seed1", "b-seed2"]}


def test_an_alias_with_experiment_is_refused_in_one_line_naming_both_flags(tmp_path, capsys):
    """`--experiment X --alias best` ran and ignored --alias (it only marks --registered-model's columns)."""
    assert cli_compare.main(["--experiment", "x", "--alias", "best", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("fluxflow-compare: --alias marks a version of --registered-model; the "
                                       "hypotheses of --experiment have none\n")


def test_replicates_left_out_do_not_show_their_seeds_as_a_config_difference(experiment, tmp_path):
    """With b-seed0 killed, b's first counted replicate is b-seed1 while a's is a-seed0: the config differences, read
    from one replicate per hypothesis, showed 'config: seed 0 1' as if the hypotheses differed in their seed. A param
    that varies between a hypothesis' replicates is its values in order: here a's 0, 1, 2 against b's 1, 2."""
    client, exp = experiment
    losses = {"warm": 0.9, **{f"{h}-seed{i}": v + i / 100 for h, v in (("a", 0.5), ("b", 0.3)) for i in range(3)}}
    record_pipeline(client, exp, f"{tmp_path}/reps", [
        WARM, *({"name": name, "n_epochs": 1, "train_vae": True, "after": "warm"} for name in ("a", "b"))
    ], losses, replicates={"seeds": [0, 1, 2], "from_steps": ["a", "b"]}, killed=("b-seed0",))

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp))
    assert comparison.labels == ["a", "b (left out: 1 killed of 3)"]
    assert comparison.config == {"seed": ["0, 1, 2", "1, 2"]}


def test_replicates_and_hypotheses_that_never_ran_are_said_and_a_step_whose_children_did_not_run_is_no_hypothesis(
        experiment, tmp_path, capsys):
    """tail-seed2 never ran (its parent b-seed2 missed its threshold with on_missed: fail): b-seed2 was taken for a
    hypothesis of its own, and tail showed 2 replicates unsaid. c's replicates all failed before their runs started
    (data with fewer items than a batch): c was not in the table."""
    client, exp = experiment
    replicated = ("a", "b", "tail", "c")
    losses = {"warm": 0.9, **{f"{h}-seed{i}": 0.5 + i / 100 for h in replicated for i in range(3)}}
    record_pipeline(client, exp, f"{tmp_path}/reps", [
        WARM, *({"name": name, "n_epochs": 1, "train_vae": True, "after": "warm"} for name in ("a", "b", "c")),
        {"name": "tail", "n_epochs": 1, "train_vae": True, "after": "b"},
    ], losses, replicates={"seeds": [0, 1, 2], "from_steps": ["a", "b", "c"]},
        not_run=("tail-seed2", "c-seed0", "c-seed1", "c-seed2"), leaves=True)

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp),
                                      compare.expected_leaves(compare.pipeline_runs(client, exp)))
    assert comparison.labels == ["a", "tail (left out: 1 not run of 3)", "c (not run)"]
    assert comparison.metrics["vae_loss"][2] is None
    assert [len(r) for r in comparison.summary.replicates.values()] == [3, 2]
    assert ["replicates", "3", "2", "0"] in compare.table_rows(comparison)  # a cell per column
    # c has no params: the table's differences are those of the JSON (a and tail), c's cells "-"
    assert comparison.config == {key: [*values, "-"] for key, values in comparison.summary.config.items()}
    assert cli_compare.main(["--experiment", "hypotheses", "--output", str(tmp_path / "cmp")]) == 0  # table, files
    assert "c (not run)" in capsys.readouterr().out
    assert (tmp_path / "cmp" / "compare_hypotheses.png").exists()


def test_a_column_without_params_makes_no_difference_and_shows_a_dash_where_others_differ():
    """A hypothesis none of whose replicates ran has no params: each key read "-" in its column, so every key was a
    difference (79 config rows in the table, CSV and chart, where the runs differed in one)."""
    ran_a, ran_b, not_run = {"cfg_dropout": "0.1", "batch_size": "4"}, {"cfg_dropout": "0.3", "batch_size": "4"}, {}
    assert compare.differing([ran_a, not_run, ran_b]) == {"cfg_dropout": ["0.1", "-", "0.3"]}
    assert compare.differing([ran_a, not_run]) == {}


def test_a_comparison_reads_the_experiments_pipeline_runs_once(experiment, tmp_path, monkeypatch):
    """Their steps, their leaves and the replicates that did not run come from one search (it read them twice: every
    page of an experiment of nightly runs, once more)."""
    client, exp = experiment
    record_pipeline(client, exp, f"{tmp_path}/once", [
        WARM, {"name": "a", "n_epochs": 1, "train_vae": True, "after": "warm"}], {"warm": 0.9, "a": 0.5}, leaves=True)
    searched: list[str] = []
    search = client.search_runs
    monkeypatch.setattr(client, "search_runs",
                        lambda *a, **kw: searched.append(kw["filter_string"]) or search(*a, **kw))
    comparison, _, _ = compare.experiment_comparison(client, "hypotheses")
    assert comparison.labels == ["a"]
    assert len([f for f in searched if "'pipeline'" in f]) == 1, searched


def test_a_replicate_that_missed_its_threshold_with_on_missed_fail_is_counted_and_said(experiment, tmp_path):
    """It trained to max_epochs and its run finished, but the config called that a failure (the run exited 1): the
    table showed it as any other replicate."""
    client, exp = experiment
    watched = {"n_epochs": 1, "train_vae": True, "after": "warm", "on_missed": "fail",
               "transition_on": {"mode": "loss_threshold", "metric": "vae_loss", "threshold": 0.1}}
    losses = {"warm": 0.9, **{f"{h}-seed{i}": 0.5 + i / 100 for h in ("a", "b") for i in range(3)}}
    record_pipeline(client, exp, f"{tmp_path}/reps", [WARM, {"name": "a", **watched}, {"name": "b", **watched}],
                    losses, replicates={"seeds": [0, 1, 2], "from_steps": ["a", "b"]}, missed=("b-seed2",))

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp))
    assert comparison.labels == ["a", "b (1 of 3 missed the threshold, on_missed: fail)"]
    assert [len(r) for r in comparison.summary.replicates.values()] == [3, 3]


def test_a_replicate_left_out_on_one_side_leaves_welch_s_test(experiment, tmp_path):
    """b's seed 0 was killed: a has seeds 0, 1, 2 and b 1, 2, so there are no pairs for every replicate; the
    difference is Welch's, and the chart says which test gave it."""
    client, exp = experiment
    losses = {"warm": 0.9, **{f"{h}-seed{i}": v + i / 100 for h, v in (("a", 0.5), ("b", 0.3)) for i in range(3)}}
    record_pipeline(client, exp, f"{tmp_path}/reps", [
        WARM, *({"name": name, "n_epochs": 1, "train_vae": True, "after": "warm"} for name in ("a", "b"))
    ], losses, replicates={"seeds": [0, 1, 2], "from_steps": ["a", "b"]}, killed=("b-seed0",))

    summary = compare.compare_runs(client, compare.leaf_step_runs(client, exp)).summary
    assert [(d.test, d.better) for d in summary.differences] == [("Welch", "b (left out: 1 killed of 3)")]
    assert summary.chart_note() == "Differences (95 % t-test): Welch"


def test_a_metric_some_replicates_lack_says_of_how_many_in_the_table_the_csv_and_the_json(tmp_path):
    """The replicates row said 3 where the metric's interval was over 2 values (the JSON alone had n = 2)."""
    from flows.hypotheses import summarize

    finals = {"a": [{"fd": v} for v in (0.5, 0.52, 0.51)], "b": [{"fd": 0.4}, {}, {"fd": 0.42}]}
    summary = summarize({"a": ["a0", "a1", "a2"], "b": ["b0", "b1", "b2"]}, finals, {"a": [0, 1, 2], "b": [0, 1, 2]})
    rows = compare.table_rows(compare.Comparison(labels=["a", "b"], summary=summary))
    compare.write_csv(rows, tmp_path / "c.csv")
    with open(tmp_path / "c.csv", newline="") as f:
        written = {row[0]: row[1:] for row in csv.reader(f)}
    assert written["replicates"] == ["3", "3"]
    assert not written["metric: fd"][0].endswith(")") and written["metric: fd"][1].endswith(" (2 of 3 replicates)")
    assert {k: summary.to_dict()["metrics"]["fd"]["b"][k] for k in ("n", "n_replicates")} == {"n": 2, "n_replicates": 3}


def test_the_chart_draws_each_pair_s_difference_with_its_interval_and_the_table_s_verdict(tmp_path):
    """The bars' error bars are each hypothesis' own interval, and on a real store vae_loss's two overlapped almost
    wholly (a [0.43, 1.27], b [0.46, 1.31]) where the table said "b − a +0.0345 [+0.0319, +0.0370] paired by seed,
    beyond the spread": the PNG alone read "no difference". Under each panel it now draws B − A, its interval and
    the verdict, the table's numbers."""
    from flows.hypotheses import BEYOND, summarize

    a, b = [0.81, 0.85, 0.90], [0.845, 0.884, 0.935]  # b higher by about 0.035 at every seed
    finals = {"a": [{"vae_loss": v} for v in a], "b": [{"vae_loss": v} for v in b], "solo": [{"vae_loss": 0.7}]}
    summary = summarize({h: [h] * len(runs) for h, runs in finals.items()}, finals,
                        {"a": [0, 1, 2], "b": [0, 1, 2], "solo": [0]})
    comparison = compare.Comparison(labels=["a", "b", "solo"], summary=summary,
                                    metrics={"vae_loss": [sum(a) / 3, sum(b) / 3, 0.7]})
    [panel] = compare_chart.chart_panels(comparison)
    spreads = summary.spreads["vae_loss"]
    assert spreads["a"].high > spreads["b"].low  # the bars overlap ...
    marks = {mark.pair: mark for mark in panel.pairs}
    assert list(marks) == [f"{d.b} − {d.a}" for d in summary.differences]
    paired = marks["b − a"]  # ... and the difference is beyond the spread, drawn with the table's numbers
    (table,) = [d for d in summary.differences if (d.a, d.b) == ("a", "b")]
    assert (paired.difference, paired.low, paired.high, paired.verdict) == (table.difference, table.low, table.high,
                                                                           BEYOND)
    assert paired.said == "b − a: beyond the spread, better: a (lower)"
    assert (marks["solo − a"].low, marks["solo − a"].said) == (None, "solo − a: no interval can be given")
    compare_chart.write_chart(comparison, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 0
    versions = compare.Comparison(labels=["1", "2"], metrics={"eval_fd_ours_cfg": [0.1, 0.2]})  # no summary
    assert [p.pairs for p in compare_chart.chart_panels(versions)] == [[]]


def test_config_differences_under_the_chart_are_wrapped_to_its_width():
    """With eight hypotheses a difference was one line of 190 characters that ran off the chart's right edge, hiding
    the values of the last hypotheses; now it wraps within the width, nothing lost."""
    labels = [f"pipeline{i}/spade_{'on' if i % 2 else 'off'}" for i in range(8)]
    comparison = compare.Comparison(labels=labels, config={"train_spade": ["False", "True"] * 4})
    lines = compare_chart.difference_lines(comparison, 80)
    assert len(lines) > 1 and all(len(line) <= 80 for line in lines)
    assert " ".join(line.strip() for line in lines) == "train_spade: " + ", ".join(
        f"{label} = {value}" for label, value in zip(labels, comparison.config["train_spade"]))
    many = compare.Comparison(labels=["a", "b"], config={f"k{i}": ["1", "2"] for i in range(14)})
    assert compare_chart.difference_lines(many, 80)[-1] == "... and 2 more in the CSV"


def test_a_hypothesis_none_of_whose_replicates_finished_gets_no_verdict(experiment, tmp_path):
    """Compared while b trains (or after it was killed), b's last logged values, raw and taken at whatever batch
    each replicate had reached, were tested against a's final ones and could read 'beyond the spread'."""
    client, exp = experiment
    losses = {"warm": 0.9, **{f"a-seed{i}": 0.5 + i / 100 for i in range(3)},
              **{f"b-seed{i}": 0.9 + i / 100 for i in range(3)}}
    record_pipeline(client, exp, f"{tmp_path}/reps", [
        WARM, *({"name": name, "n_epochs": 1, "train_vae": True, "after": "warm"} for name in ("a", "b"))
    ], losses, replicates={"seeds": [0, 1, 2], "from_steps": ["a", "b"]}, killed=("b-seed0", "b-seed1", "b-seed2"))

    comparison = compare.compare_runs(client, compare.leaf_step_runs(client, exp))
    assert comparison.labels == ["a", "b (killed)"]
    assert comparison.metrics["vae_loss"] == [pytest.approx(0.51), pytest.approx(0.91)]  # its last values, shown
    [difference] = comparison.summary.differences
    assert (difference.low, difference.p_value) == (None, None)
    assert difference.verdict == "no test: b (killed) did not finish (last logged values, not final)"


def test_a_deleted_experiment_says_so_and_how_to_restore_it(experiment, tmp_path, capsys):
    """It said "experiment 'hypotheses' has no pipeline step runs", though its runs are all there, deleted with it."""
    client, exp = experiment
    record_pipeline(client, exp, str(tmp_path / "a"), [WARM], {"warm": 0.5})
    client.delete_experiment(exp)
    assert cli_compare.main(["--experiment", "hypotheses", "--output", str(tmp_path / "cmp")]) == 2
    assert capsys.readouterr().err == (f"fluxflow-compare: experiment 'hypotheses' at {client.tracking_uri} is "
                                       f"deleted; restore it with: MLFLOW_TRACKING_URI={client.tracking_uri} "
                                       f"mlflow experiments restore -x {exp}\n")  # was without the store


def test_an_unknown_experiment_names_the_flag_and_the_experiments_there(experiment, tmp_path, capsys):
    """A typo said only "no experiment named 'hypothesis' at URI": neither the flag nor what the store holds."""
    assert cli_compare.main(["--experiment", "hypothesis", "--output", str(tmp_path)]) == 2
    assert capsys.readouterr().err.endswith(
        "no experiment named 'hypothesis' at " + experiment[0].tracking_uri
        + "; --experiment names one of: Default, hypotheses\n")


def register_with_config(client: MlflowClient, tmp_path, raw: dict, name: str = "m"):
    """A new version of model `name` whose artifacts hold `raw` as its config.json, as flows/registry.py logs it."""
    from flows.compare_versions import CONFIG_FILE
    from flows.registry import ensure_registered_model

    experiment = client.get_experiment_by_name("versions")
    model = client.create_logged_model(experiment.experiment_id if experiment else client.create_experiment("versions"))
    folder = tmp_path / f"model-{model.model_id}"
    config_dir = folder / CONFIG_FILE.rsplit("/", 1)[0]
    config_dir.mkdir(parents=True)
    (config_dir / "config.json").write_text(json.dumps(raw))
    client.log_model_artifacts(model.model_id, str(folder))
    ensure_registered_model(client, name)
    return client.create_model_version(name, f"models:/{model.model_id}", model_id=model.model_id)


def test_a_version_config_read_from_a_tracking_server_leaves_no_download_behind(mlflow_template, tmp_path,
                                                                                 monkeypatch):
    """Against a server's artifact store each version's config is downloaded (one per version, per compare): into a
    folder that is removed again, not a temporary folder left for good."""
    import tempfile

    from mlflow_server import MlflowServer

    from flows.compare_versions import version_config

    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server", mlflow_template)
    server.start()
    try:
        client = MlflowClient(server.uri)
        version = register_with_config(client, tmp_path, tiny_raw(str(tmp_path / "out"), [WARM]))
        scratch = tmp_path / "tmp"
        scratch.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)

        assert version_config(client, "m", version)["steps.warm.n_epochs"] == "1"
        assert list(scratch.iterdir()) == []
    finally:
        server.kill()


def test_a_version_config_shows_the_values_its_steps_trained_at(mlflow_store, tmp_path):
    """A step that inherits its lr (here training.lr) was shown '-', so versions that trained at the same lr looked
    different, and ones whose inherited lr differed looked alike."""
    from flows.compare_versions import version_config
    from fluxflow.config import load_config
    from fluxflow.config.run_config import run_dict

    raw = tiny_raw(str(tmp_path / "out"), [WARM])
    raw["training"]["lr"] = 3e-4
    version = register_with_config(MlflowClient(mlflow_store), tmp_path, run_dict(load_config(raw).config))
    flat = version_config(MlflowClient(mlflow_store), "m", version)
    assert flat["steps.warm.lr"] == "0.0003" and flat["training.lr"] == "0.0003"


def test_a_comparison_leaves_no_file_of_an_earlier_one_and_names_that_differ_write_apart(experiment, tmp_path):
    """Compared again after a branch was dropped, the folder kept the earlier `_differences.csv` beside a CSV and
    JSON that no longer had its columns; `sp ace` and `sp_ace` wrote the same files."""
    client, exp = experiment
    record_pipeline(client, exp, f"{tmp_path}/one", [WARM, {"name": "only", "n_epochs": 1, "train_vae": True}],
                    {"warm": 0.9, "only": 0.5})
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare_hypotheses_differences.csv").write_text("an earlier comparison's\n")
    assert cli_compare.main(["--experiment", "hypotheses", "--output", str(out)]) == 0
    assert not (out / "compare_hypotheses_differences.csv").exists()
    assert (out / "compare_hypotheses.csv").exists()
    assert cli_compare.file_stem("sp_ace") == "sp_ace"
    assert cli_compare.file_stem("sp ace").startswith("sp_ace-") and cli_compare.file_stem("sp ace") != "sp_ace"


def compare_exit(argv: list[str] | None = None):
    """`cli_compare.main`'s exit code, or "KeyboardInterrupt" where one escaped it (a traceback, exit 130, on the
    command line): escaping here, it would end the whole test session."""
    try:
        return cli_compare.main(argv)
    except KeyboardInterrupt:
        return "KeyboardInterrupt"


@pytest.fixture
def ctrl_c_raises():
    """SIGINT handled as Python's default (KeyboardInterrupt), as in a terminal, whatever the test runner set."""
    import signal

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, outer)


def test_ctrl_c_while_drawing_is_one_line_and_leaves_an_earlier_comparison_whole(experiment, tmp_path, capsys,
                                                                               monkeypatch):
    """Ctrl-C in matplotlib's savefig was a 45-78 line traceback, after the new CSV had replaced the earlier one
    beside the earlier PNG and JSON, which disagree with it. Now every file goes to a temporary name and all are
    renamed into place once all are written."""
    client, exp = experiment
    record_spade_branches(client, exp, tmp_path)
    out = tmp_path / "cmp"
    assert compare_exit(["--experiment", "hypotheses", "--output", str(out)]) == 0
    earlier = {path.name: f"an earlier comparison's {path.name}\n" for path in out.iterdir()}
    assert {"compare_hypotheses.csv", "compare_hypotheses.png", "compare_hypotheses.json"} <= set(earlier)
    for name, text in earlier.items():
        (out / name).write_text(text)
    capsys.readouterr()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_chart, "write_chart", interrupted)
    assert compare_exit(["--experiment", "hypotheses", "--output", str(out)]) == 130
    assert capsys.readouterr().err == (f"fluxflow-compare: interrupted: nothing written to {out} (the files of an "
                                       "earlier comparison there, if any, are left as they were)\n")
    assert {path.name: path.read_text() for path in out.iterdir()} == earlier  # no new CSV, no temporary file


def test_ctrl_c_while_pandas_loads_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def importing(name, *args, **kwargs):
        if name == "flows.compare":  # pandas, matplotlib and MLflow are imported under it
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importing)
    assert compare_exit(["--experiment", "hypotheses", "--output", str(tmp_path / "cmp")]) == 130
    assert capsys.readouterr().err.startswith(f"fluxflow-compare: interrupted: nothing written to {tmp_path / 'cmp'}")
    assert not (tmp_path / "cmp").exists()


def test_ctrl_c_once_the_files_are_in_place_changes_nothing(experiment, tmp_path, capsys, monkeypatch,
                                                             ctrl_c_raises):
    """A Ctrl-C after the files were complete (while the tables print, or in the interpreter's exit) ended the
    command with 130 and no word about the complete files. From the renames on, SIGINT is ignored to the end of the
    process; an in-process caller (argv given) gets its handler back."""
    import signal

    from flows import text_table

    client, exp = experiment
    record_pipeline(client, exp, f"{tmp_path}/one", [WARM, {"name": "only", "n_epochs": 1, "train_vae": True}],
                    {"warm": 0.9, "only": 0.5})
    real_table = text_table.plain_table

    def table_then_ctrl_c(rows):
        signal.raise_signal(signal.SIGINT)  # the tables are printed after the files are in place
        return real_table(rows)

    monkeypatch.setattr(text_table, "plain_table", table_then_ctrl_c)
    out = tmp_path / "cmp"
    assert compare_exit(["--experiment", "hypotheses", "--output", str(out)]) == 0
    assert "Wrote" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back for an in-process caller
    monkeypatch.setattr("sys.argv", ["fluxflow-compare", "--experiment", "hypotheses", "--output", str(out)])
    assert compare_exit() == 0  # as the command runs it
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # to the end of the process: its exit too
    assert sorted(path.name for path in out.iterdir()) == ["compare_hypotheses.csv", "compare_hypotheses.json",
                                                            "compare_hypotheses.png"]


def test_an_infinite_final_metric_is_a_non_finite_value_not_a_traceback_or_the_largest_float(experiment, tmp_path,
                                                                                              capsys):
    """MLflow's SQL store keeps inf as the largest float, 1.798e+308, which passed as finite: the spread of b's
    replicates overflowed (OverflowError, a traceback), and one replicate showed as 1.798e+308."""
    client, exp = experiment
    inf = float("inf")
    losses = {"warm": 0.9, "a-seed0": 0.5, "a-seed1": 0.55, "b-seed0": inf, "b-seed1": 0.45}
    record_pipeline(client, exp, f"{tmp_path}/reps", [
        WARM, *({"name": name, "n_epochs": 1, "train_vae": True, "after": "warm"} for name in ("a", "b"))
    ], losses, replicates={"seeds": [0, 1], "from_steps": ["a", "b"]})
    assert cli_compare.main(["--experiment", "hypotheses", "--output", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "no test: b has a non-finite value (nan or inf)" in printed and "e+308" not in printed
    assert "inf in 1 of 2 replicates" in printed

    solo = experiment_id_for(client, "solo")
    record_pipeline(client, solo, f"{tmp_path}/solo", [
        WARM, *({"name": name, "n_epochs": 1, "train_vae": True, "after": "warm"} for name in ("a", "b"))
    ], {"warm": 0.9, "a": -inf, "b": 0.5})
    assert cli_compare.main(["--experiment", "solo", "--output", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "e+308" not in printed and "no test: a has a non-finite value (nan or inf)" in printed
    lines = [line.split() for line in printed.splitlines()]
    [row] = [line for line in lines if line[:1] == ["vae_loss"]]
    assert ["metric:", "vae_loss", "-inf", "0.5"] in lines and row[4:6] == ["-", "-"]  # the difference, inf: its
    # verdict says why there is none; the CSV is the same table
    with open(tmp_path / "cmp" / "compare_solo_differences.csv") as f:
        assert [row[2] for row in csv.reader(f)] == ["difference", "-"]


def test_an_infinite_final_metric_of_a_version_is_inf_not_the_largest_float(mlflow_store, tmp_path):
    from flows.compare_versions import version_metrics

    client = MlflowClient(mlflow_store)
    version = register_with_config(client, tmp_path, tiny_raw(str(tmp_path / "v"), [WARM]))
    run = client.create_run(client.get_experiment_by_name("versions").experiment_id)
    model_id = version.source.split("/", 1)[1]  # models:/<id>
    for key, value in (("final/vae_loss", float("inf")), ("final/eval_psnr", float("-inf")), ("final/x", 2.0)):
        client.log_metric(run.info.run_id, key, value, model_id=model_id)
    assert version_metrics(client, version) == {"vae_loss": float("inf"), "eval_psnr": float("-inf"), "x": 2.0}


def test_a_pipeline_stopped_before_its_leaf_steps_shows_them_not_run(experiment, tmp_path, capsys):
    """warm was killed, so neither leaf ran: it said "experiment 'hypotheses' has no pipeline step runs" (exit 2),
    though warm's run is there; each leaf is a column "(not run)", as a leaf that did not run is elsewhere."""
    client, exp = experiment
    record_pipeline(client, exp, f"{tmp_path}/stopped", [
        WARM, *({"name": name, "n_epochs": 1, "train_vae": True, "after": "warm"} for name in ("a", "b"))
    ], {"warm": 0.9, "a": 0.5, "b": 0.4}, killed=("warm",), not_run=("a", "b"), leaves=True)
    assert cli_compare.main(["--experiment", "hypotheses", "--output", str(tmp_path / "cmp")]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == ["a", "(not", "run)", "b", "(not", "run)"] and ["replicates", "0", "0"] in lines
    assert (tmp_path / "cmp" / "compare_hypotheses.png").exists()


def test_the_default_alias_absent_beside_another_names_the_model_s_aliases(mlflow_store, tmp_path, capsys):
    """With `promotion.alias: prod` the note said "(none has been promoted)" beside the promoted version."""
    client = MlflowClient(mlflow_store)
    version = register_with_config(client, tmp_path, tiny_raw(str(tmp_path / "v"), [WARM]))
    client.set_registered_model_alias("m", "prod", version.version)
    assert cli_compare.main(["--registered-model", "m", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert ("Note: no version of 'm' holds the alias 'champion' (its aliases: prod; --alias NAME marks the version "
            "holding one)") in printed
    assert "none has been promoted" not in printed
