"""`fluxflow-generate` on a checkpoint trained here (VAE warm-up -> flow with text encoder, 16x16, a few batches)."""
from __future__ import annotations

import io
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
import yaml
from closed_pipe import run_into_closed_pipe
from helpers_tiny import tiny_raw
from mlflow_server import free_port
from PIL import Image

from flows import cli_export, cli_generate
from fluxflow.checkpoints.io import load_checkpoint
from fluxflow.config import load_config
from fluxflow.config.run_config import resolve_run_config
from fluxflow.sampling.generate import generate, load_text_to_image
from fluxflow.train.pipeline import run_pipeline
from fluxflow.sampling.sample_files import prompt_file_name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config file, flow checkpoint, VAE checkpoint) of a tiny trained pipeline."""
    tmp = tmp_path_factory.mktemp("generate")
    raw = tiny_raw(tmp / "out", [
        {"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True},
        {"name": "flow", "n_epochs": 1, "max_steps": 3, "train_diff_full": True, "ema_decay": 0.5},
    ], dataset_size=16, no_samples=True)
    config_file = tmp / "pipeline.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    outcomes = run_pipeline(resolve_run_config(config_file, device="cpu").config)
    return config_file, outcomes[1].ref.uri, outcomes[0].ref.uri


def generate_cli(*args: str) -> int:
    return cli_generate.main(["--steps", "3", "--device", "cpu", *args])


def test_writes_one_image_per_prompt_and_seed_named_after_them(trained, tmp_path, capsys):
    config_file, checkpoint, _ = trained
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("# shapes\na blue square\n\n")
    code = generate_cli("--checkpoint", checkpoint, "--config", str(config_file), "--prompt", "a red circle",
                        "--prompts-file", str(prompts_file), "--n", "2", "--seed", "7", "--output", str(tmp_path / "g"))
    assert code == 0
    expected = {prompt_file_name(p, s) for p in ("a red circle", "a blue square") for s in (7, 8)}
    assert {p.name for p in (tmp_path / "g").iterdir()} == expected
    for name in expected:
        with Image.open(tmp_path / "g" / name) as image:
            assert image.format == "WEBP" and image.size == (16, 16) and image.mode == "RGB"
    assert "Wrote 4 image(s)" in capsys.readouterr().out


def test_paths_written_with_a_tilde_are_under_home_not_a_folder_named_tilde(trained, tmp_path, monkeypatch):
    """Bash leaves `~` as it is after `=`: the inputs were "not found: ~/..." where the output was expanded."""
    config_file, checkpoint, _ = trained
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(checkpoint, home / "final.pt")
    shutil.copy(config_file, home / "c.yaml")
    (home / "prompts.txt").write_text("y\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert generate_cli("--checkpoint=~/final.pt", "--config=~/c.yaml", "--prompt", "x", "--prompts-file=~/prompts.txt",
                        "--output=~/images") == 0
    assert len(list((home / "images").iterdir())) == 2 and not (tmp_path / "~").exists()


@pytest.mark.slow  # the CLI end to end, in a process of its own
def test_paths_piped_into_head_end_quietly_with_141(trained, tmp_path):
    """`fluxflow-generate ... | head -1`: "Exception ignored ... BrokenPipeError" when the paths were flushed at exit,
    exit 120; now nothing, the shell's code for SIGPIPE, and the images written."""
    _, checkpoint, _ = trained
    done = run_into_closed_pipe("flows.cli_generate", "--checkpoint", checkpoint, "--prompt", "x", "--n", "2",
                                "--steps", "2", "--device", "cpu", "--output", str(tmp_path / "g"))
    assert (done.returncode, done.stderr) == (141, ""), done.stderr[-2000:]
    assert len(list((tmp_path / "g").iterdir())) == 2


def test_size_and_png_format_are_honoured(trained, tmp_path):
    config_file, checkpoint, _ = trained
    assert generate_cli("--checkpoint", checkpoint, "--config", str(config_file), "--prompt", "a red circle",
                        "--size", "32", "--format", "png", "--output", str(tmp_path)) == 0
    with Image.open(tmp_path / prompt_file_name("a red circle", 0, "png")) as image:
        assert image.format == "PNG" and image.size == (32, 32)


def test_an_image_depends_only_on_prompt_and_seed(trained):
    config_file, checkpoint, _ = trained
    model = load_text_to_image(checkpoint, load_config(config_file).config.model, 16, "cpu")
    first = generate(model, "a red circle", 3, steps=3)
    assert torch.equal(first, generate(model, "a red circle", 3, steps=3))
    assert not torch.equal(first, generate(model, "a red circle", 4, steps=3))
    assert not torch.equal(first, generate(model, "a green triangle", 3, steps=3))
    assert first.shape == (3, 16, 16) and first.min() >= -1 and first.max() <= 1


def test_uses_the_ema_weights_and_the_trained_text_encoder(trained):
    config_file, checkpoint, _ = trained
    state = load_checkpoint(checkpoint)
    model = load_text_to_image(checkpoint, load_config(config_file).config.model, 16, "cpu")
    for name in ("flow_processor", "text_encoder"):
        ema = state["ema"][name]["shadow"]
        raw = state["models"][name]
        loaded = model.models[name].state_dict()
        assert all(torch.equal(loaded[k], ema[k]) for k in ema)
        assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # the EMA really differs from the raw weights


def test_refuses_a_checkpoint_without_a_text_to_image_model(trained, tmp_path, capsys):
    config_file, _, vae_checkpoint = trained
    code = generate_cli("--checkpoint", vae_checkpoint, "--config", str(config_file), "--prompt", "x",
                        "--output", str(tmp_path))
    assert code == 2
    assert "use the checkpoint of a flow step" in capsys.readouterr().err
    assert list(Path(tmp_path).iterdir()) == []


def test_unreadable_inputs_exit_2_naming_them_without_a_traceback(trained, tmp_path, capsys, monkeypatch):
    _, checkpoint, _ = trained
    missing = tmp_path / "prompts.txt"
    assert generate_cli("--checkpoint", checkpoint, "--prompts-file", str(missing)) == 2
    assert f"cannot read --prompts-file {missing}" in capsys.readouterr().err
    assert generate_cli("--checkpoint", str(tmp_path / "nope.pt"), "--prompt", "x") == 2
    assert "nope.pt" in capsys.readouterr().err
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "x", "--device", "cuda") == 2
    err = capsys.readouterr().err
    assert "--device is 'cuda' but no CUDA device is available" in err  # its own flag: it has no training.device
    assert "training.device" not in err


@pytest.mark.parametrize("uri", ["bogus://bucket/final.pt", "http://127.0.0.1:{port}/final.pt"])
@pytest.mark.parametrize("command", ["generate", "export"])
def test_a_checkpoint_uri_that_cannot_be_read_is_one_line(tmp_path, capsys, uri, command):
    """Both ended in a traceback: fsspec's ValueError for a protocol it does not know, an aiohttp OSError."""
    uri = uri.format(port=free_port())  # nothing listens there
    out = ["--output", str(tmp_path / "out")]
    if command == "generate":
        assert generate_cli("--checkpoint", uri, "--prompt", "x", *out) == 2
    else:
        assert cli_export.main(["--checkpoint", uri, *out]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fluxflow-{command}: checkpoint {uri}")  # the connection error alone did not name it
    assert "Protocol not known: bogus" in line or "could not be fetched: Cannot connect to host 127.0.0.1" in line


@pytest.fixture
def silent_server():
    """http://127.0.0.1:PORT of a server that accepts connections and never answers, and one that answers 500."""
    import http.server
    import socket
    import threading

    silent = socket.create_server(("127.0.0.1", 0))

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(500)

        def log_message(self, *args):
            pass

    failing = http.server.HTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=failing.serve_forever, args=(0.05,), daemon=True).start()
    yield {"silent": f"http://127.0.0.1:{silent.getsockname()[1]}", "500": f"http://127.0.0.1:{failing.server_port}"}
    failing.shutdown()
    silent.close()


@pytest.mark.parametrize(("server", "why"), [("silent", "the server did not answer in time"),
                                              ("500", "500, message='Internal Server Error'")])
def test_a_checkpoint_server_that_does_not_answer_is_one_line_naming_the_checkpoint(silent_server, tmp_path, capsys,
                                                                                    monkeypatch, server, why):
    """A server that never answered held the command for 5 minutes (aiohttp's default) and then printed an empty
    line; an HTTP 500 was aiohttp's traceback."""
    monkeypatch.setattr("fluxflow.storage.fetch.HTTP_READ_TIMEOUT_S", 0.2)
    uri = f"{silent_server[server]}/final.pt"
    assert generate_cli("--checkpoint", uri, "--prompt", "x", "--output", str(tmp_path / "out")) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fluxflow-generate: checkpoint {uri} could not be fetched: {why}"), line


# A FIFO was opened and waited for a writer forever: the suite's timeout (900 s) ends such a hang. Not one of 60 s
# here: it timed the module fixture too, which trains a pipeline (over 60 s on a loaded machine).
# A FIFO as --prompts-file is read to its end: test_prompts_may_be_piped.
@pytest.mark.parametrize(("kind", "argument"), [
    (kind, argument) for kind in ["a FIFO (named pipe)", "a folder", "a device"]
    for argument in ["--checkpoint", "--prompts-file", "export --checkpoint"]
    if not (kind.startswith("a FIFO") and argument == "--prompts-file")])
def test_a_file_argument_that_is_not_a_regular_file_is_one_line_naming_it(trained, tmp_path, capsys, kind, argument):
    """/dev/null stands for the devices: it ends where /dev/zero never would."""
    _, checkpoint, _ = trained
    path = {"a FIFO (named pipe)": tmp_path / "fifo", "a folder": tmp_path, "a device": Path("/dev/null")}[kind]
    if kind.startswith("a FIFO"):
        os.mkfifo(path)
    out = ["--output", str(tmp_path / "out")]
    if argument == "--checkpoint":
        code, says = generate_cli("--checkpoint", str(path), "--prompt", "x", *out), f"checkpoint {path}"
    elif argument == "--prompts-file":
        code = generate_cli("--checkpoint", checkpoint, "--prompts-file", str(path), *out)
        says = f"cannot read --prompts-file {path}: {path}"
    else:
        code, says = cli_export.main(["--checkpoint", str(path), *out]), f"checkpoint {path}"
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    command = "export" if argument.startswith("export") else "generate"
    assert line == f"fluxflow-{command}: {says} is {kind}, not a regular file"


@pytest.mark.parametrize("how", ["-", "a FIFO"])
def test_prompts_may_be_piped(trained, tmp_path, capsys, monkeypatch, how):
    """`--prompts-file -` was "No such file or directory: '-'", and /dev/stdin or <(...) was refused as a FIFO: piped
    prompts needed a file first."""
    _, checkpoint, _ = trained
    if how == "-":
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"a red circle\n")))
        source = "-"
    else:
        source = tmp_path / "fifo"
        os.mkfifo(source)
        # the writer opens once the command opens the FIFO to read; daemon: a failing test does not wait on it
        threading.Thread(target=source.write_bytes, args=(b"a red circle\n",), daemon=True).start()
    out = tmp_path / "g"
    assert generate_cli("--checkpoint", checkpoint, "--prompts-file", str(source), "--output", str(out)) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(out / prompt_file_name("a red circle", 0))


@pytest.mark.parametrize(("content", "says"), [
    (b"", "is an empty file"),
    (b"step: 3\nloss: 0.5\n", "is not a torch checkpoint: it starts with b'step: 3\\nloss: 0.', "
                               "not with the zip archive torch.save writes")])
def test_a_checkpoint_that_is_a_text_or_empty_file_says_what_it_is(tmp_path, capsys, content, says):
    """Both were 'corrupt, truncated or not a torch checkpoint' with torch's detail, which says nothing here: (pop
    from empty list), (101) for a file starting 'he', (EOFError)."""
    (tmp_path / "final.pt").write_bytes(content)
    assert generate_cli("--checkpoint", str(tmp_path / "final.pt"), "--prompt", "x") == 2
    assert capsys.readouterr().err == f"fluxflow-generate: checkpoint {tmp_path / 'final.pt'} {says}\n"


def test_a_config_whose_model_sizes_do_not_fit_the_checkpoint_is_one_line(trained, tmp_path, capsys):
    config_file, checkpoint, _ = trained
    state = load_checkpoint(checkpoint)
    del state["model_config"]  # as a checkpoint that does not record its sizes: --config gives them
    torch.save(state, tmp_path / "unsized.pt")
    raw = yaml.safe_load(config_file.read_text())
    raw["model"]["flow_depth"] += 1
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(raw))
    assert generate_cli("--checkpoint", str(tmp_path / "unsized.pt"), "--config", str(tmp_path / "other.yaml"),
                        "--prompt", "x", "--output", str(tmp_path / "g")) == 2  # was load_state_dict's traceback
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fluxflow-generate: checkpoint {tmp_path / 'unsized.pt'} does not fit the model sizes")


def test_a_device_it_does_not_know_is_a_usage_error(trained, capsys):
    _, checkpoint, _ = trained
    with pytest.raises(SystemExit) as exited:
        generate_cli("--checkpoint", checkpoint, "--prompt", "x", "--device", "tpu")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--device: invalid choice: 'tpu'" in err and "Traceback" not in err


def test_an_output_that_is_a_file_is_refused_in_one_line(trained, tmp_path, capsys):
    _, checkpoint, _ = trained
    existing = tmp_path / "README.md"
    existing.write_text("x")
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "x", "--output", str(existing)) == 2
    assert capsys.readouterr().err == f"fluxflow-generate: --output {existing} is a file, not a folder\n"
    below = existing / "images" / "today"  # a folder that mkdir could not make: a file is in the way
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "x", "--output", str(below)) == 2
    assert capsys.readouterr().err == (f"fluxflow-generate: --output {below} is under {existing}, which is a file, "
                                       "not a folder\n")
    assert existing.read_text() == "x"


def test_an_output_that_is_a_link_to_nothing_is_said_to_be_one(trained, tmp_path, capsys):
    """Was "--output LINK cannot be written (File exists: LINK)": the link is there, what it points to is not."""
    _, checkpoint, _ = trained
    link = tmp_path / "latest"
    link.symlink_to(tmp_path / "gone")
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "x", "--output", str(link)) == 2
    assert capsys.readouterr().err == (f"fluxflow-generate: --output {link} is a link to {tmp_path / 'gone'}, which "
                                       "does not exist: remove the link, or choose another --output\n")
    below = link / "today"
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "x", "--output", str(below)) == 2
    assert capsys.readouterr().err == (f"fluxflow-generate: --output {below} is under {link}, a link to "
                                       f"{tmp_path / 'gone'}, which does not exist: remove the link, or choose "
                                       "another --output\n")
    assert link.is_symlink() and not (tmp_path / "gone").exists()


@pytest.mark.parametrize("command", ["generate", "export"])
def test_an_output_folder_that_cannot_be_made_is_one_line_naming_the_flag(trained, capsys, command):
    """Was "[Errno 2] No such file or directory: '/proc/nope'": the path, not the flag (/proc takes no new folder, even
    for root)."""
    _, checkpoint, _ = trained
    if command == "generate":
        output = "/proc/nope/x.png"
        assert generate_cli("--checkpoint", checkpoint, "--prompt", "x", "--output", output) == 2
    else:
        output = "/proc/nope/x"
        assert cli_export.main(["--checkpoint", checkpoint, "--output", output]) == 2
    assert capsys.readouterr().err == (f"fluxflow-{command}: --output {output} cannot be written (No such file or "
                                       "directory: /proc/nope)\n")


@pytest.mark.parametrize("command", ["generate", "export"])
def test_a_model_that_is_not_a_uri_says_what_a_model_looks_like(tmp_path, capsys, monkeypatch, command):
    """Was "notauri: No such artifact: '' (tracking URI ...)", or, without ./mlflow.db, that no store was there."""
    monkeypatch.chdir(tmp_path)
    if command == "generate":
        assert generate_cli("--model", "notauri", "--prompt", "x") == 2
    else:
        assert cli_export.main(["--model", "notauri", "--output", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err == (f"fluxflow-{command}: --model notauri is not a model URI: give "
                                       "models:/NAME@ALIAS (e.g. models:/fluxflow-quickstart@champion) or "
                                       "models:/NAME/VERSION\n")


@pytest.mark.parametrize("version", ["abc", "-1", "0"])
@pytest.mark.parametrize("command", ["generate", "export"])
def test_a_model_version_that_is_not_a_number_is_refused_before_the_store_is_asked(tmp_path, capsys, monkeypatch,
                                                                                    command, version):
    """Was MLflow's deprecated stages: "Invalid Model Version stage: abc. Value must be one of None, Staging,
    Production, Archived." (here, with no store at all, that there is none)."""
    monkeypatch.chdir(tmp_path)
    uri = f"models:/m/{version}"
    if command == "generate":
        assert generate_cli("--model", uri, "--prompt", "x") == 2
    else:
        assert cli_export.main(["--model", uri, "--output", str(tmp_path / "e")]) == 2
    assert capsys.readouterr().err == (f"fluxflow-{command}: {uri}: VERSION must be a positive integer: "
                                       "models:/NAME/VERSION or models:/NAME@ALIAS\n")


@pytest.mark.parametrize("uri", ["models:///m/1", "models:///m@champion"])
@pytest.mark.parametrize("command", ["generate", "export"])
def test_a_model_uri_with_an_empty_authority_names_the_version_as_mlflow_reads_it(trained, mlflow_store, tmp_path,
                                                                                 capsys, command, uri):
    """MLflow reads models:///NAME/VERSION as models:/NAME/VERSION; it was refused ("VERSION must be a positive
    integer"), and models:///NAME@ALIAS was MLflow's "Missing value for required parameter 'name'"."""
    from helpers_tiny import register_by_hand

    register_by_hand(mlflow_store, trained[1], "m", tmp_path / "first", alias="champion")
    if command == "generate":
        assert generate_cli("--model", uri, "--prompt", "x", "--output", str(tmp_path / "o")) == 0
        assert len(list((tmp_path / "o").iterdir())) == 1
    else:
        assert cli_export.main(["--model", uri, "--output", str(tmp_path / "e")]) == 0
        assert (tmp_path / "e" / "model.safetensors").is_file()
    assert capsys.readouterr().err == ""


def test_a_model_whose_files_are_missing_names_its_version_and_where_they_were(trained, mlflow_store, tmp_path,
                                                                                capsys):
    """Was "models:/m@champion: No such artifact: '' (tracking URI ...)": the store's ./mlruns moved away."""
    import shutil

    from mlflow.tracking import MlflowClient

    from helpers_tiny import register_by_hand

    register_by_hand(mlflow_store, trained[1], "m", tmp_path / "first")
    register_by_hand(mlflow_store, trained[1], "m", tmp_path / "second", alias="champion")
    where = MlflowClient(mlflow_store).get_model_version_download_uri("m", "2")
    shutil.move(tmp_path / "mlruns", tmp_path / "mlruns.moved")
    assert generate_cli("--model", "models:/m@champion", "--prompt", "x", "--output", str(tmp_path / "o")) == 2
    assert capsys.readouterr().err == ("fluxflow-generate: models:/m@champion: version 2 of 'm': its files are "
                                       f"missing from the artifact store ({where})\n")



def test_a_config_of_other_sizes_than_the_checkpoint_records_is_said_not_to_be_used(trained, tmp_path, capsys):
    """It was ignored without a word: the images were the checkpoint's own model's all the same."""
    config_file, checkpoint, _ = trained
    other = yaml.safe_load(config_file.read_text())
    other["model"]["flow_depth"] = other["model"].get("flow_depth", 1) + 1
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    assert generate_cli("--checkpoint", checkpoint, "--config", str(tmp_path / "other.yaml"), "--prompt", "x",
                        "--output", str(tmp_path / "o")) == 0
    assert (f"fluxflow-generate: --config {tmp_path / 'other.yaml'} is not used for the model: the checkpoint "
            "records its own model sizes, which differ from the config's\n") in capsys.readouterr().err
    assert generate_cli("--checkpoint", checkpoint, "--config", str(config_file), "--prompt", "x", "--output",
                        str(tmp_path / "same")) == 0
    assert "is not used" not in capsys.readouterr().err  # the same sizes: nothing to say

def test_the_latest_version_of_a_model_that_does_not_exist_is_said_so(mlflow_store, tmp_path, capsys):
    """Was "registered model 'nope' has no versions", for a name no model has."""
    from mlflow.tracking import MlflowClient

    MlflowClient(mlflow_store).create_registered_model("empty")
    for name, said in (("nope", "no registered model named 'nope'"), ("empty", "registered model 'empty' has no "
                                                                                "versions")):
        assert generate_cli("--model", f"models:/{name}/latest", "--prompt", "x", "--output", str(tmp_path)) == 2
        assert capsys.readouterr().err == (f"fluxflow-generate: models:/{name}/latest: {said} (tracking URI "
                                           f"{mlflow_store})\n")

def test_weights_that_do_not_exist_are_said_to_be_missing(tmp_path, capsys):
    """Was "... is not an exported model: no config.json (write one with fluxflow-export)"."""
    assert generate_cli("--weights", str(tmp_path / "nope"), "--prompt", "x", "--output", str(tmp_path / "o")) == 2
    assert capsys.readouterr().err == f"fluxflow-generate: --weights {tmp_path / 'nope'} does not exist\n"


@pytest.mark.parametrize("scale", ["nan", "inf", "-inf"])
def test_a_guidance_scale_that_is_not_a_finite_number_is_a_usage_error(trained, tmp_path, capsys, scale):
    _, checkpoint, _ = trained
    with pytest.raises(SystemExit) as exited:
        generate_cli("--checkpoint", checkpoint, "--prompt", "x", f"--guidance={scale}", "--output", str(tmp_path))
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"--guidance: must be a finite number, got '{scale}'" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("flags", "says"), [
    # named "image size", where every other number out of range names its flag
    (["--size", "0"], "--size must be a positive multiple of 8 (downscale × patch_size); got 0"),  # was 16
    (["--size", "-16"], "--size must be a positive multiple of 8 (downscale × patch_size); got -16"),
    (["--size", "12"], "--size must be a positive multiple of 8 (downscale × patch_size); got 12"),
    (["--size", "72"], "--size must be at most 64 (4× the 16 px the model was trained at"),
    (["--size", "100000"], "--size must be at most 64 (4× the 16 px the model was trained at"),  # out of memory
    (["--seed", str(2**64 - 1), "--n", "2"], "--seed must lie within 0 and 2**63 - n"),  # failed after one image
    (["--seed", str(2**63 - 1), "--n", "2"], "--seed must lie within 0 and 2**63 - n"),  # the served model's range
    (["--seed", "-1"], "--seed must lie within 0 and 2**63 - n"),
    (["--steps", str(10**20)], f"--steps must lie within 1 and 10000, got {10**20}"),
    (["--steps", "0"], "--steps must lie within 1 and 10000, got 0"),  # both flags were blamed, for either
    (["--n", "0"], "--n must lie within 1 and 10000, got 0"),
    (["--n", str(10**8)], f"--n must lie within 1 and 10000, got {10**8}"),  # minutes naming files, nothing drawn
    # 1e308 was taken: float32 overflowed to NaN pixels and the image was written black.
    (["--guidance", "1e308"], "--guidance must lie within 0 and 100 (0 ignores the prompt, 1 follows it without "
                              "guidance, more follows it more strongly); got 1e+308"),
    (["--guidance", "-1"], "--guidance must lie within 0 and 100")])
def test_a_number_out_of_range_is_refused_in_one_line_and_writes_nothing(trained, tmp_path, capsys, flags, says):
    _, checkpoint, _ = trained
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "x", "--output", str(tmp_path / "g"), *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fluxflow-generate: {says}") and err.count("\n") == 1, err
    assert not (tmp_path / "g").exists()


def test_a_prompts_file_without_prompts_is_named(trained, tmp_path, capsys):
    _, checkpoint, _ = trained
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("# only a comment\n\n   \n")
    assert generate_cli("--checkpoint", checkpoint, "--prompts-file", str(prompts_file)) == 2
    err = capsys.readouterr().err
    assert f"--prompts-file {prompts_file} holds no prompt" in err


def test_a_prompts_file_with_a_byte_order_mark_reads_its_first_prompt_without_it(tmp_path):
    """A file saved by an editor that writes a UTF-8 byte-order mark: its first prompt began with U+FEFF, drawn from
    three more bytes (another image under another name), and a first line `# ...` was not a comment."""
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_bytes("\ufeff# shapes\r\na red circle\r\n".encode("utf-8"))
    assert cli_generate.read_prompts([], str(prompts_file)) == ["a red circle"]


def test_a_prompts_file_is_read_in_the_encodings_a_captions_file_is(tmp_path):
    """Notepad's "Unicode" (UTF-16 with its mark) and a Latin-1 line: a captions file of the same bytes trained, its
    prompts file was refused ('utf-8' codec can't decode byte 0xff)."""
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_bytes("a red café\r\na blue star\r\n".encode("utf-16"))
    assert cli_generate.read_prompts([], str(prompts_file)) == ["a red café", "a blue star"]
    prompts_file.write_bytes("a red café\na blue star\n".encode("latin-1"))
    assert cli_generate.read_prompts([], str(prompts_file)) == ["a red café", "a blue star"]


def test_asks_for_a_prompt(trained, capsys):
    _, checkpoint, _ = trained
    assert generate_cli("--checkpoint", checkpoint) == 2
    assert "--prompt" in capsys.readouterr().err


def test_a_blank_prompt_is_refused_as_an_empty_one_is(trained, tmp_path, capsys):
    """`--prompt "   "` (an unset shell variable in quotes) drew an image anyway, named prompt_<hash>, where
    `--prompt ""` and a blank line of --prompts-file are refused or skipped."""
    _, checkpoint, _ = trained
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "a red circle", "--prompt", "  \t",
                        "--output", str(tmp_path / "g")) == 2
    assert capsys.readouterr().err == "fluxflow-generate: --prompt '  \\t' is blank: give the words to draw\n"
    assert not (tmp_path / "g").exists()


def test_a_prompt_longer_than_the_text_encoder_reads_is_named(trained, tmp_path, capsys):
    """The tiny model reads 32 byte tokens: two prompts that differed only after the 30th character drew the same
    image under two names, without a word."""
    _, checkpoint, _ = trained
    long = "a red circle on a dark blue background, center"  # 46 bytes + BOS + EOS
    assert generate_cli("--checkpoint", checkpoint, "--prompt", "a red circle", "--prompt", long,
                        "--output", str(tmp_path / "g")) == 0
    assert capsys.readouterr().err == (
        "fluxflow-generate: the prompt 'a red circle on a dark blue background, …' is 48 tokens; the text encoder "
        "reads the first 32 (model.text_max_len), the rest changes nothing\n")


def test_a_checkpoint_with_a_flipped_bit_in_its_weights_is_refused_naming_it(trained, tmp_path, capsys):
    """torch.load checks no CRC: the copy loaded and drew images from silently wrong weights."""
    import struct
    import zipfile

    _, checkpoint, _ = trained
    data = bytearray(Path(checkpoint).read_bytes())
    with zipfile.ZipFile(checkpoint) as archive:  # the largest tensor storage (not data.pkl, which fails to load)
        entry = max((e for e in archive.infolist() if "/data/" in e.filename), key=lambda e: e.file_size)
    name_len, extra_len = struct.unpack("<HH", data[entry.header_offset + 26:entry.header_offset + 30])
    data[entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2] ^= 0x10
    damaged = tmp_path / "copy.pt"
    damaged.write_bytes(bytes(data))
    assert generate_cli("--checkpoint", str(damaged), "--prompt", "x", "--output", str(tmp_path / "g")) == 2
    assert capsys.readouterr().err == (
        f"fluxflow-generate: checkpoint {damaged} is damaged: its entry {entry.filename} does not match the checksum "
        "written with it (a changed or corrupted copy); use an intact copy\n")
    assert not (tmp_path / "g").exists()


def test_a_pipeline_checkpoint_alone_is_enough(trained, tmp_path, capsys):
    """The runner records the model sizes and image size in every checkpoint: no --config needed."""
    _, checkpoint, _ = trained
    assert load_checkpoint(checkpoint)["data"]["img_size"] == 16
    code = generate_cli("--checkpoint", checkpoint, "--prompt", "a blue square", "--output", str(tmp_path))
    assert code == 0, capsys.readouterr()
    [written] = list(tmp_path.iterdir())
    with Image.open(written) as image:
        assert image.size == (16, 16)


@pytest.mark.slow  # trains the quickstart model at its real size (about 15 s)
def test_the_quickstart_pipelines_checkpoint_generates_images(tmp_path, capsys):
    """configs/quickstart.yaml at its real model sizes, each step cut to 2 batches, then fluxflow-generate on its
    final checkpoint with nothing but the checkpoint."""
    raw = yaml.safe_load((Path(__file__).parents[2] / "configs" / "quickstart.yaml").read_text())
    for step in raw["training"]["pipeline"]["steps"]:
        step.update(n_epochs=1, max_steps=2)
    raw["training"]["pipeline"]["datasets"]["shapes"].update(size=256, holdout=4)
    raw["output"].update(output_path=str(tmp_path / "out"), no_samples=True)
    raw["training"]["device"] = "cpu"
    outcomes = run_pipeline(load_config(raw).config)
    assert [o.result.step_name for o in outcomes] == ["vae_warmup", "vae_gan", "flow"]
    images = tmp_path / "images"
    code = generate_cli("--checkpoint", outcomes[-1].ref.uri, "--prompt", "a red circle on a black background, center",
                        "--n", "2", "--output", str(images))
    assert code == 0, capsys.readouterr()
    written = sorted(p.name for p in images.iterdir())
    assert written == [prompt_file_name("a red circle on a black background, center", seed) for seed in (0, 1)]
    with Image.open(images / written[0]) as image:
        assert image.size == (32, 32)


def test_ctrl_c_once_every_image_is_written_changes_nothing(trained, tmp_path, capsys, monkeypatch):
    """A Ctrl-C after the last image (while `Wrote ...` printed, or in the interpreter's exit) exited 130 although
    every image was written. From then on SIGINT is ignored to the end of the process; an in-process caller (argv
    given) gets its handler back."""
    import signal

    def print_then_ctrl_c(*args, **kwargs):
        if args and str(args[0]).startswith("Wrote "):
            signal.raise_signal(signal.SIGINT)
        print(*args, **kwargs)

    monkeypatch.setattr(cli_generate, "print", print_then_ctrl_c, raising=False)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C, whatever pytest set
    try:
        _, checkpoint, _ = trained
        try:
            code = generate_cli("--checkpoint", checkpoint, "--prompt", "a red circle", "--output", str(tmp_path))
        except KeyboardInterrupt:  # escaping here, it would end the test session
            code = "KeyboardInterrupt"
        assert code == 0
        captured = capsys.readouterr()
        assert "Wrote 1 image(s)" in captured.out and "interrupted" not in captured.err
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back for an in-process caller
        monkeypatch.setattr("sys.argv", ["fluxflow-generate", "--steps", "3", "--device", "cpu", "--checkpoint",
                                         checkpoint, "--prompt", "a blue square", "--output", str(tmp_path)])
        assert cli_generate.main() == 0  # as the command runs it
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # to the end of the process: its exit too
        assert len(list(tmp_path.iterdir())) == 2
    finally:
        signal.signal(signal.SIGINT, outer)
