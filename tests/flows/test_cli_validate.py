"""`fluxflow-train`: exit codes, messages without tracebacks, --help, and the hand-over to the Prefect flow."""
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
import types
from pathlib import Path

import pytest

from flows import cli_train

REPO = Path(__file__).resolve().parents[2]
VALID = "training:\n  pipeline:\n    steps: [{name: a, n_epochs: 1, train_vae: true}]\n"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli_train", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def test_validate_pipeline_prints_the_summary_with_parameter_counts_and_exits_0():
    done = run_cli("--config", "configs/quickstart.yaml", "--validate-pipeline")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in ("✅ Pipeline validation passed!", "Total steps: 3", "Step 1: vae_warmup", "Training: VAE, GAN",
                 "Step 3: flow", "Freeze: compressor, expander", "Transition: epoch", "Dataset: shapes", "Parameters:"):
        assert line in out, line
    # The quickstart model's counts, as the built modules have them (tests/config/test_model_sizes.py checks every
    # size).
    for line in ("compressor           202,280", "flow_processor     1,740,752", "total              2,524,988"):
        assert line in out.split("Parameters:")[1], line
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("content,fragment", [
    (None, "not found"),
    ("training: [unclosed\n", "broken YAML"),
    ("training:\n  pipeline:\n    steps: [{name: a, n_epochs: 1, trian_vae: true}]\n",
     "training.pipeline.steps[0].trian_vae: unknown key (did you mean 'train_vae'?)"),
    ("training:\n  pipeline:\n    - {name: a, n_epochs: 1, train_vae: true}\n", "'steps:'"),
    (VALID.replace("    steps:", "    datasets: {2024: {type: shapes}}\n    default_dataset: '2024'\n    steps:"),
     "training.pipeline.datasets.2024: Keys should be strings (got 2024); YAML reads an unquoted number as a number"),
    (VALID.replace("training:\n", "training:\n  seed: &a [*a]\n"), "broken YAML: the alias *a refers to itself"),
])
@pytest.mark.parametrize("validate", [True, False], ids=["validate", "train"])
def test_invalid_missing_or_broken_config_exits_2_with_the_problem_and_no_traceback(tmp_path, content, fragment,
                                                                                      validate):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_text(content)
    done = run_cli("--config", str(path), *(["--validate-pipeline"] if validate else []))
    assert done.returncode == 2
    assert fragment in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("kind", ["a FIFO (named pipe)", "a folder", "a device"])
@pytest.mark.parametrize("validate", [True, False], ids=["validate", "train"])
def test_a_config_that_is_not_a_regular_file_exits_2_naming_it(tmp_path, kind, validate):
    """A FIFO was opened and waited for a writer forever (and /dev/zero was read forever); a folder said 'Is a
    directory'. /dev/null stands for the devices: reading it ends."""
    path = {"a FIFO (named pipe)": tmp_path / "fifo", "a folder": tmp_path, "a device": Path("/dev/null")}[kind]
    if kind.startswith("a FIFO"):
        os.mkfifo(path)
    done = run_cli("--config", str(path), *(["--validate-pipeline"] if validate else []), timeout=30)
    assert done.returncode == 2
    assert f"(file): {path} is {kind}, not a regular file" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_help_documents_every_flag_and_the_exit_codes():
    done = run_cli("--help")
    assert done.returncode == 0
    for flag in ("--config", "--validate-pipeline", "--output-dir", "--device", "--quiet", "Exit codes"):
        assert flag in done.stdout, flag


def test_config_md_shows_every_flag_of_the_parser_in_its_synopsis_and_its_table():
    """docs/CONFIG.md's `fluxflow-train` section against the parser itself (it once lacked --keep-server and
    --version, which README and --help had)."""
    section = (REPO / "docs" / "CONFIG.md").read_text().split("## `fluxflow-train`", 1)[1].split("\n## ", 1)[0]
    synopsis = section.split("```", 2)[1]
    flags = [option for action in cli_train.build_parser()._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"]
    assert "--keep-server" in flags and "--version" in flags
    assert [f for f in flags if f not in synopsis] == []
    assert [f for f in flags if f"| `{f}" not in section] == []


def test_missing_config_argument_is_a_usage_error():
    done = run_cli("--validate-pipeline")
    assert done.returncode == 2 and "--config" in done.stderr and "Traceback" not in done.stderr


def test_legacy_warnings_go_to_stderr_and_quiet_silences_them(tmp_path, capsys, monkeypatch):
    path = tmp_path / "legacy.yaml"
    path.write_text("model: {pretrained_bert_model: bert.pt}\n" + VALID)
    assert cli_train.main(["--config", str(path), "--validate-pipeline", "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.out == "" and quiet.err == ""

    monkeypatch.setitem(sys.modules, "torch", None)  # torch "missing": validation does not need it, counts included
    assert cli_train.main(["--config", str(path), "--validate-pipeline"]) == 0
    loud = capsys.readouterr()
    assert "model.pretrained_bert_model: has no effect here" in loud.err
    assert "flow_processor" in loud.out.split("Parameters:")[1]


def test_quiet_leaves_out_only_the_original_tool_s_warnings_not_a_value_that_has_no_effect(capsys):
    """--quiet hid every warning, so `--set` of an lr that no optimizer of the step takes was ignored without a word;
    the docs say it leaves out only the warnings about keys of the original tool (the test above)."""
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--validate-pipeline",
            "--set", "training.pipeline.steps.flow.lr=3e-4"]
    assert cli_train.main([*args, "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert quiet.out == ""
    assert quiet.err == ("⚠️  training.pipeline.steps[2].lr: has no effect: every optimizer of the step sets its own lr "
                         "(flow, text_encoder)\n")


@pytest.fixture
def fake_flow(monkeypatch):
    """Stands in for flows.cli_flow_run (Prefect + MLflow) and records how the CLI calls it."""
    calls = []
    module = types.ModuleType("flows.cli_flow_run")
    module.exit_code = 0

    def run_pipeline_flow(config, overrides=None):
        calls.append(dict(output_path=config.output.output_path, device=config.training.device,
                          n_epochs=config.step("a").n_epochs, overrides=overrides))
        return module.exit_code

    module.run_pipeline_flow = run_pipeline_flow
    monkeypatch.setitem(sys.modules, "flows.cli_flow_run", module)
    # no Prefect server for a stand-in flow
    monkeypatch.setattr(cli_train, "start_temporary_server", lambda keep=False: None)
    return module, calls


def test_training_hands_the_resolved_config_to_the_flow_and_returns_its_exit_code(tmp_path, fake_flow, monkeypatch,
                                                                                  capsys):
    module, calls = fake_flow
    (tmp_path / "c.yaml").write_text(VALID)
    monkeypatch.chdir(tmp_path)
    assert cli_train.main(["--config", "c.yaml", "--output-dir", "out", "--device", "cpu",
                           "--set", "training.pipeline.steps.a.n_epochs=2"]) == 0
    printed = capsys.readouterr().out
    assert "Step 1: a (2 epochs)" in printed and "Parameters:" in printed  # the plan (with the overrides) first
    # Resolved once, here: the overrides applied, the output directory and device written in (the list of overrides
    # travels on, for the MLflow run's record).
    assert calls == [dict(output_path="out", device="cpu", n_epochs=2,
                          overrides=["training.pipeline.steps.a.n_epochs=2"])]
    module.exit_code = 1  # a step failed
    assert cli_train.main(["--config", "c.yaml", "--output-dir", "nightly/{date}"]) == 1
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert calls[-1] == dict(output_path=f"nightly/{day}", device="auto", n_epochs=1, overrides=[])
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # `--output-dir=~/runs`: the shell leaves `~` after `=`
    (tmp_path / "home").mkdir()
    shutil.copy("c.yaml", tmp_path / "home" / "c.yaml")  # `--config=~/c.yaml` too: it was "not found: ~/c.yaml"
    assert cli_train.main(["--config=~/c.yaml", "--output-dir=~/runs"]) == 1
    assert calls[-1]["output_path"] == str(tmp_path / "home" / "runs") and not (tmp_path / "~").exists()


def test_an_invalid_config_never_reaches_the_flow(tmp_path, fake_flow):
    _, calls = fake_flow
    (tmp_path / "c.yaml").write_text("training: {}\n")
    assert cli_train.main(["--config", str(tmp_path / "c.yaml")]) == 2
    assert calls == []


def test_a_device_this_machine_lacks_exits_2_before_the_flow_starts(tmp_path, fake_flow, capsys, monkeypatch):
    _, calls = fake_flow
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    (tmp_path / "c.yaml").write_text(VALID)
    assert cli_train.main(["--config", str(tmp_path / "c.yaml"), "--device", "cuda"]) == 2
    # The flag is named, not the file's training.device (which may say cpu).
    assert "--device is 'cuda' but no CUDA device is available" in capsys.readouterr().err
    assert cli_train.main(["--config", str(tmp_path / "c.yaml"), "--set", "training.device=cuda"]) == 2
    assert "training.device is 'cuda' but no CUDA device is available" in capsys.readouterr().err
    assert calls == []


def test_ctrl_c_while_the_flow_s_libraries_import_is_one_line_and_130(tmp_path, fake_flow, capsys, monkeypatch):
    """The import of Prefect, MLflow and torch (a second or more) ran outside the checks' handling: a Ctrl-C then
    escaped as a 40-line traceback and the process died by SIGINT."""
    class Importing(types.ModuleType):
        def __getattr__(self, name):
            if name == "run_pipeline_flow":  # Ctrl-C while `from flows.cli_flow_run import run_pipeline_flow` runs
                raise KeyboardInterrupt
            raise AttributeError(name)  # what inspect asks of every module (`__file__`)

    monkeypatch.setitem(sys.modules, "flows.cli_flow_run", Importing("flows.cli_flow_run"))
    (tmp_path / "c.yaml").write_text(VALID)
    try:
        code = cli_train.main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "out")])
    except KeyboardInterrupt:
        code = "escaped"
    assert code == 130
    assert capsys.readouterr().err.endswith("Interrupted before training started: nothing was trained or changed.\n")


def test_an_output_directory_another_run_holds_exits_2_before_the_flow_starts(tmp_path, fake_flow, capsys):
    from fluxflow.checkpoints.lock import RunLock

    _, calls = fake_flow
    (tmp_path / "c.yaml").write_text(VALID)
    out = tmp_path / "busy"
    with RunLock(out):  # what a running pipeline holds
        assert cli_train.main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(out), "--quiet"]) == 2
    assert f"{out} is in use by another run (pid " in capsys.readouterr().err
    assert calls == []
    assert cli_train.main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(out), "--quiet"]) == 0
    assert len(calls) == 1  # free again: the check itself holds nothing


def test_a_remote_output_dir_override_exits_2_naming_the_flag(tmp_path, fake_flow, capsys):
    _, calls = fake_flow
    (tmp_path / "c.yaml").write_text(VALID)
    assert cli_train.main(["--config", str(tmp_path / "c.yaml"), "--output-dir", "memory://ff/out"]) == 2
    assert "--output-dir: memory:// is not storage other processes and nodes see" in capsys.readouterr().err
    assert calls == []


@pytest.mark.parametrize("store", ["notes.txt", "a-folder"])
def test_a_tracking_store_mlflow_cannot_open_exits_2_before_the_flow_starts(tmp_path, fake_flow, capsys, monkeypatch,
                                                                             store):
    _, calls = fake_flow
    (tmp_path / "notes.txt").write_text("not a database\n")  # the flow's first MLflow call raised DatabaseError
    (tmp_path / "a-folder").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / store}")
    (tmp_path / "c.yaml").write_text(VALID)
    assert cli_train.main(["--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "out"), "--quiet"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"❌ cannot read the MLflow store at sqlite:///{tmp_path / store}: "), line
    assert calls == [] and (tmp_path / "notes.txt").read_text() == "not a database\n"


def test_a_tracking_store_that_cannot_be_made_or_written_exits_2_before_the_flow_starts(tmp_path, fake_flow, capsys,
                                                                                         monkeypatch):
    """Run from a read-only checkout, the default ./mlflow.db could not be made: MLflow retried "unable to open
    database file" for 100 s, then the run failed with its traceback (exit 1), nothing trained."""
    from flows import mlflow_runs

    _, calls = fake_flow
    (tmp_path / "c.yaml").write_text(VALID)
    args = ["--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "out"), "--quiet"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'gone' / 'mlflow.db'}")
    assert cli_train.main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"❌ cannot create the MLflow store at sqlite:///{tmp_path / 'gone' / 'mlflow.db'}: folder {tmp_path / 'gone'} "
        "does not exist; run from a folder you can write, or name another store (MLFLOW_TRACKING_URI or "
        "tracking.tracking_uri)")
    (tmp_path / "a-file").write_text("")  # was "folder .../a-file does not exist"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}")
    assert cli_train.main(args) == 2
    assert f"mlflow.db: {tmp_path / 'a-file'} is not a folder; run from" in capsys.readouterr().err
    read_only = tmp_path / "checkout"
    read_only.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{read_only / 'mlflow.db'}")
    access = os.access  # a read-only mount, which root (as tests run) cannot otherwise be refused by
    monkeypatch.setattr(mlflow_runs.os, "access", lambda path, mode: access(path, mode) and (
        Path(path) != read_only or not mode & os.W_OK))
    assert cli_train.main(args) == 2
    assert f"cannot create the MLflow store at sqlite:///{read_only / 'mlflow.db'}: folder {read_only} cannot be " \
           "written" in capsys.readouterr().err
    assert calls == [] and not (read_only / "mlflow.db").exists()


def test_a_deleted_experiment_exits_2_before_the_flow_starts_saying_how_to_restore_it(tmp_path, fake_flow, capsys,
                                                                                       mlflow_store):
    """Deleted in the MLflow UI, the experiment refused every record: the run trained, exited 0, recorded and
    registered nothing, and said MLflow "has not answered" and the next run would catch up (it never did)."""
    from mlflow.tracking import MlflowClient

    _, calls = fake_flow
    client = MlflowClient(mlflow_store)
    deleted = client.create_experiment("hunt")
    client.delete_experiment(deleted)
    (tmp_path / "c.yaml").write_text(VALID + "tracking: {experiment_name: hunt}\n")
    args = ["--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "out"), "--quiet"]
    assert cli_train.main(args) == 2
    assert capsys.readouterr().err.strip() == (
        f"❌ tracking.experiment_name: experiment 'hunt' at {mlflow_store} is deleted; restore it with: "
        f"MLFLOW_TRACKING_URI={mlflow_store} mlflow experiments restore -x {deleted}; or choose another name")
    assert calls == []
    client.restore_experiment(deleted)
    assert cli_train.main(args) == 0 and len(calls) == 1


def test_an_interrupted_run_into_a_dated_directory_names_it_to_resume(tmp_path, fake_flow, monkeypatch, capsys):
    # Ctrl-C on one day, the same command the next day: `{date}` would name a new directory and train from scratch.
    module, _ = fake_flow

    def interrupted(config, overrides=None):
        raise KeyboardInterrupt

    module.run_pipeline_flow = interrupted
    (tmp_path / "c.yaml").write_text(VALID)
    monkeypatch.chdir(tmp_path)
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")

    assert cli_train.main(["--config", "c.yaml", "--output-dir", "nightly/{date}", "--quiet"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"Interrupted: run the same command again with --output-dir nightly/{day} to go on where it stopped (finished "
        "steps are reused, an interrupted one resumes from its latest checkpoint); {date} names another directory on "
        "another day, UTC.")

    assert cli_train.main(["--config", "c.yaml", "--output-dir", "out", "--quiet"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "Interrupted: run the same command again to go on where it stopped (finished steps are reused, an "
        "interrupted one resumes from its latest checkpoint).")
