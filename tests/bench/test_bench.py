"""The benchmark harness (bench/): what it computes from timings, not the timings themselves. Fast: tiny models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bench import common as bench_common, overhead, run as bench_run, throughput
from bench.common import MachineLoad, load_label, print_table, write_result

CPU = torch.device("cpu")


@pytest.mark.slow  # the first FlopCounterMode pass costs about 3 s
@pytest.mark.parametrize("kind", ["vae", "flow"])
def test_flops_counted_on_one_image_equal_flops_of_the_whole_batch(kind):
    from torch.utils.flop_counter import FlopCounterMode

    bench = throughput.StepBench(kind, 16, 3, CPU, model={"vae_dim": 8, "feature_maps_dim": 32, "flow_depth": 1})
    counter = FlopCounterMode(display=False)
    with counter:
        bench.run(0)
    assert throughput.count_flops(bench) == counter.get_total_flops() > 0
    assert bench.images.shape[0] == 3 and len(bench.captions) == 3  # the batch is put back


def test_flops_of_r1_steps_are_not_counted():
    bench = throughput.StepBench("vae_gan_r1", 16, 2, CPU, model={"vae_dim": 8})
    assert throughput.count_flops(bench) is None


def test_cpu_default_plan_is_the_documented_subset_and_gpu_plan_the_full_grid():
    args = bench_run.parser().parse_args([])
    cpu = throughput.plan(args, cuda=False)
    assert {(t["img_size"], t["batch"]) for t in cpu if "label" not in t} == set(throughput.CPU_CASES)
    assert {t["device"] for t in cpu} == {"cpu"} and not any(t["compile"] for t in cpu)
    gpu = throughput.plan(args, cuda=True)
    grid = [t for t in gpu if t["device"] == "cuda"]
    assert {(t["img_size"], t["batch"]) for t in grid} == {(s, b) for s in (64, 256) for b in (8, 16, 32, 64)}
    assert {t["compile"] for t in grid} == {False, True}
    assert len(grid) == 8 * 3 * 2


def test_one_grid_option_takes_the_full_grid_values_of_the_other():
    todo = throughput.plan(bench_run.parser().parse_args(["--sizes", "32", "--no-seed-size"]), cuda=False)
    assert sorted({(t["img_size"], t["batch"]) for t in todo}) == [(32, 8), (32, 16), (32, 32), (32, 64)]


def test_unknown_benchmark_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_run.main(["nonsense"])
    assert exc.value.code == 2
    assert "unknown benchmark" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "error"), [
    (["checkpoint", "--checkpoint-trials", "0"], "argument --checkpoint-trials: must be an integer >= 1, not '0'"),
    (["resume", "--trials", "0"], "argument --trials: must be an integer >= 1, not '0'"),
    (["resume", "--trials", "1", "--dataset-size", "100", "--resume-batch", "500"],
     "resume: --resume-batch 500 is past the last batch: --dataset-size 100 at --resume-batch-size 8 is 12 batches "
     "(0..11)"),
    (["resume", "--dataset-size", "8"], "resume: --dataset-size 8 at --resume-batch-size 8 is 1 batch; it needs 2"),
    (["throughput", "--sizes", "15"], "argument --sizes: must be a multiple of 8 >= 8, not '15'"),
    (["throughput", "--sizes", "-8"], "argument --sizes: must be a multiple of 8 >= 8, not '-8'"),
    (["throughput", "--batch-sizes", "0"], "argument --batch-sizes: must be an integer >= 1, not '0'"),
    (["--threads", "-1"], "argument --threads: must be an integer >= 1, not '-1'"),
    (["--threads", "0"], "argument --threads: must be an integer >= 1, not '0'"),  # was silently ignored
    (["overhead", "--pairs", "0"], "argument --pairs: must be an integer >= 1, not '0'"),
    (["startup", "--startup-pairs", "0"], "argument --startup-pairs: must be an integer >= 1, not '0'"),
    (["checkpoint", "--results-dir", "{file}"], "--results-dir: {file} is a file, not a folder"),
])
def test_a_bad_option_is_one_usage_line_before_anything_is_measured(argv, error, tmp_path, monkeypatch, capsys):
    """They were tracebacks, some only after the measurement (a --results-dir that is a file, a --resume-batch past
    the dataset's batches); --threads 0 was ignored."""
    def measured(args):
        raise AssertionError("a benchmark ran")
    for module in bench_run.BENCHMARKS.values():
        monkeypatch.setattr(module, "run", measured)
    (tmp_path / "file").write_text("")
    argv = [arg.format(file=tmp_path / "file") for arg in argv]
    with pytest.raises(SystemExit) as exc:
        bench_run.main(argv if "--results-dir" in argv else [*argv, "--results-dir", str(tmp_path / "results")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"python -m bench.run: error: {error.format(file=tmp_path / 'file')}")
    assert not err.startswith("Traceback")


def test_checkpoint_json_keeps_every_trials_timings_beside_their_medians(tmp_path, monkeypatch):
    """bench/README.md says each JSON holds every raw timing; the checkpoint benchmark kept only the medians."""
    from bench import checkpoint

    monkeypatch.setattr(checkpoint, "MODELS", {"tiny": bench_common.TINY_MODEL})
    monkeypatch.setattr(checkpoint, "COMPONENT_SETS", {"vae": checkpoint.COMPONENT_SETS["vae"]})
    checkpoint.run(SimpleNamespace(checkpoint_trials=3, results_dir=tmp_path))
    (row,) = json.loads((tmp_path / "checkpoint.json").read_text())["rows"]
    for phase in ("save", "finalize", "load"):
        laps = row["laps_s"][phase]
        assert len(laps) == 3 and all(lap > 0 for lap in laps)
        assert row[f"{phase}_s"] == sorted(laps)[1]


def test_overhead_alternates_arms_and_reports_the_median_ratio_without_the_warmup(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "untouched"))
    calls = []
    cost = {"flow": 3.0, "bare": 1.0}
    clock = [0.0]  # the Stopwatch's clock: each run advances it by its cost instead of sleeping, so no ratio of sleeps
    monkeypatch.setattr(bench_common, "time", SimpleNamespace(perf_counter=lambda: clock[0], monotonic=time.monotonic))

    def runner(name):
        def go(path: Path, batches: int) -> None:
            calls.append((name, path.name))
            clock[0] += cost[name] + (20.0 if path.name.startswith("warmup") else 0.0)
        return go

    args = SimpleNamespace(pairs=3, batches=2, results_dir=tmp_path / "results",
                           runners={"flow": runner("flow"), "bare": runner("bare")})
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    result = overhead.run(args)
    assert [c[0] for c in calls] == ["flow", "bare", "flow", "bare", "bare", "flow", "flow", "bare"]
    assert len({c[1] for c in calls}) == len(calls)  # a fresh output directory every run
    assert result["ratios"] == [3.0, 3.0, 3.0] and result["median_ratio"] == 3.0  # warm-up's extra 20 s not in it
    assert result["seconds"] == {"flow": [3.0, 3.0, 3.0], "bare": [1.0, 1.0, 1.0]} and result["median_added_s"] == 2.0
    assert result["warmup_seconds"] == {"flow": 23.0, "bare": 21.0}
    assert os.environ.get("MLFLOW_TRACKING_URI") == uri  # the private store is not left behind
    saved = json.loads((tmp_path / "results" / "overhead.json").read_text())
    assert saved["median_ratio"] == result["median_ratio"] and "loadavg_start" in saved["machine"]["load"]


def test_machine_load_sees_a_busy_child_process_as_own_cpu():
    load = MachineLoad()
    # 0.5 s of the child's own CPU time, however long a loaded machine makes it take: its share is then no test
    subprocess.run([sys.executable, "-c", "import time\nwhile time.process_time() < 0.5: pass"], check=True)
    found = load.stop()
    assert found["own_cores"] is not None and found["own_cores"] * found["wall_s"] > 0.4  # CPU seconds, ours
    assert found["other_cores"] >= 0
    assert "other processes used" in load_label(found)


def test_table_is_github_markdown_and_result_json_holds_it(tmp_path, capsys):
    text = print_table("t", ["a", "b"], [["x", 1.23456], ["y", None]])
    assert text.splitlines()[2:] == ["| a | b    |", "|---|------|", "| x | 1.23 |", "| y | —    |"]
    path = write_result("t", {"table": text}, tmp_path)
    assert json.loads(path.read_text())["table"] == text


@pytest.mark.slow  # builds three tiny flow steps with the quickstart's model (about 4 s)
def test_cache_benchmark_times_each_arm_in_every_round_and_builds_only_the_cached_arms_caches(tmp_path, monkeypatch):
    from bench import cache

    monkeypatch.setattr(cache, "ITEMS_PER_BATCH", 3)
    monkeypatch.setattr(cache, "ROUNDS", 2)
    monkeypatch.setattr(cache, "MIN_SECONDS", 0.0)
    rows = cache.measure_case("tiny", 16, 2, {"train_diff": True}, tmp_path)
    assert [r["arm"] for r in rows] == ["on the fly", "latent cache", "latent + text cache"]
    assert all(len(r["laps_s"]) == 2 and len(r["round_ratios"]) == 2 for r in rows)
    assert rows[0]["ratio"] == 1.0 and rows[0]["build_s"] is None
    assert all(r["build_s"] > 0 and r["build_items"] == 6 for r in rows[1:])
    assert [len(list((tmp_path / arm / "latent_cache").glob("*"))) for arm in ("live", "latents", "both")] == [0, 1, 1]
    assert (tmp_path / "both" / "text_cache").is_dir() and not (tmp_path / "latents" / "text_cache").exists()


def test_startup_alternates_whole_processes_with_a_new_or_the_same_mlflow_store(tmp_path, monkeypatch):
    from bench import startup

    runs = []

    def timed(command, cwd, env, log):
        if "--help" in command:
            return 0.1
        arm = "flow" if "--config" in command else "bare"
        runs.append((arm, Path(cwd), command[command.index("--output-dir") + 1] if arm == "flow" else command[-1]))
        assert env["PREFECT_HOME"].startswith(tempfile.gettempdir()) and "PREFECT_API_URL" not in env
        return 3.0 if arm == "flow" else 1.0

    monkeypatch.setattr(startup, "_timed", timed)
    result = startup.run(SimpleNamespace(startup_pairs=2, results_dir=tmp_path))
    arms = [arm for arm, _, _ in runs]
    assert arms == ["flow", "bare"] + ["flow", "bare", "bare", "flow"] * 2  # warm-up, then alternating pairs
    empty, existing = runs[2:6], runs[6:]
    assert len({cwd for _, cwd, _ in empty}) == 4  # a new working directory (a new ./mlflow.db) for every run
    assert len({cwd for _, cwd, _ in existing} | {runs[0][1]}) == 1  # the warm-up's store, for every run
    assert len({out for _, _, out in runs}) == len(runs)  # a fresh output directory every run
    assert result["empty"]["median_added_s"] == 2.0 and result["existing"]["median_ratio"] == 3.0
    assert set(result["help_seconds"]) == set(startup.CLIS)
