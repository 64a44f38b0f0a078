"""`fluxflow-export`: a checkpoint's sampling weights as safetensors + config.json that `fluxflow-generate --weights`
loads back to the same pixels (a trained byte-level text encoder and a pretrained one)."""
from __future__ import annotations

import json
import os
import shlex
import struct
import subprocess
import sys

import pytest
import torch
import yaml
from closed_pipe import run_into_closed_pipe
from helpers_tiny import VAE_STEP, tiny_raw
from pretrained_fixture import tiny_clip_dir

from flows import cli_export, cli_generate
from fluxflow.checkpoints.io import load_checkpoint
from fluxflow.config.run_config import resolve_run_config
from fluxflow.sampling.export import load_exported
from fluxflow.sampling.generate import generate, load_text_to_image
from fluxflow.train.pipeline import run_pipeline

__all__ = ["tiny_clip_dir"]

FLOW_STEP = {"name": "flow", "n_epochs": 1, "max_steps": 3, "train_diff_full": True, "ema_decay": 0.5}
PRETRAINED_FLOW_STEP = {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff": True, "ema_decay": 0.5}


def trained_checkpoint(tmp, steps, **top) -> str:
    raw = tiny_raw(tmp / "out", steps, dataset_size=16, no_samples=True, **top)
    (tmp / "pipeline.yaml").write_text(yaml.safe_dump(raw))
    return run_pipeline(resolve_run_config(tmp / "pipeline.yaml", device="cpu").config)[-1].ref.uri


@pytest.fixture(scope="module")
def byte_checkpoint(tmp_path_factory) -> str:
    """A flow checkpoint with a trained byte-level text encoder and EMA weights."""
    return trained_checkpoint(tmp_path_factory.mktemp("export-byte"), [VAE_STEP, FLOW_STEP])


@pytest.fixture(scope="module")
def pretrained_checkpoint(tmp_path_factory, tiny_clip_dir) -> str:
    """A flow checkpoint whose text encoder is the frozen tiny CLIP of tests/pretrained_fixture.py."""
    from helpers_tiny import TINY_MODEL

    model = {k: v for k, v in TINY_MODEL.items() if k != "text_embedding_dim"}
    model["text_encoder"] = {"type": "pretrained", "path": str(tiny_clip_dir)}
    return trained_checkpoint(tmp_path_factory.mktemp("export-clip"), [VAE_STEP, PRETRAINED_FLOW_STEP], model=model)


def export(checkpoint: str, folder) -> None:
    assert cli_export.main(["--checkpoint", checkpoint, "--output", str(folder)]) == 0


def safetensors_layout(path) -> tuple[dict, int]:
    """(header, bytes after it) of a safetensors file: an 8-byte little-endian length, a JSON header, raw data."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), len(data) - 8 - length


@pytest.mark.parametrize("case", ["byte", "pretrained"])
def test_an_export_generates_the_same_pixels_as_its_checkpoint(case, request, tmp_path):
    checkpoint = request.getfixturevalue(f"{case}_checkpoint")
    export(checkpoint, tmp_path / "export")
    common = ["--prompt", "a red circle", "--prompt", "a blue square", "--n", "2", "--steps", "3", "--device", "cpu",
              "--format", "png"]
    assert cli_generate.main(["--checkpoint", checkpoint, *common, "--output", str(tmp_path / "from-ckpt")]) == 0
    assert cli_generate.main(["--weights", str(tmp_path / "export"), *common,
                              "--output", str(tmp_path / "from-export")]) == 0
    names = sorted(p.name for p in (tmp_path / "from-ckpt").iterdir())
    assert len(names) == 4 and names == sorted(p.name for p in (tmp_path / "from-export").iterdir())
    for name in names:
        assert (tmp_path / "from-ckpt" / name).read_bytes() == (tmp_path / "from-export" / name).read_bytes()
    # Bit for bit in the tensors too, not only after 8-bit rounding.
    original, exported = load_text_to_image(checkpoint, device="cpu"), load_exported(tmp_path / "export", "cpu")
    assert torch.equal(generate(original, "a red circle", 5, steps=3), generate(exported, "a red circle", 5, steps=3))


def test_the_export_holds_the_ema_weights_as_plain_tensors_and_says_how_to_build_them(byte_checkpoint, tmp_path):
    from safetensors.torch import load_file

    export(byte_checkpoint, tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == ["config.json", "model.safetensors"]
    header, data_bytes = safetensors_layout(tmp_path / "export" / "model.safetensors")
    entries = {key: value for key, value in header.items() if key != "__metadata__"}
    # Nothing but the header and raw tensor bytes: the entries' byte ranges tile the data exactly, so there is no
    # room for a pickled object, and every entry is a plain dtype.
    ranges = sorted(tuple(entry["data_offsets"]) for entry in entries.values())
    assert ranges[0][0] == 0 and ranges[-1][1] == data_bytes
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert {entry["dtype"] for entry in entries.values()} <= {"F32", "F16", "BF16", "I64", "BOOL"}
    assert header["__metadata__"] == {"format": "pt"}
    state = load_checkpoint(byte_checkpoint)
    tensors = load_file(tmp_path / "export" / "model.safetensors")
    for name in ("flow_processor", "text_encoder", "expander"):
        ema = state["ema"][name]["shadow"]
        assert all(torch.equal(tensors[f"{name}.{key}"], value) for key, value in ema.items())
        assert any(not torch.equal(ema[key], state["models"][name][key]) for key in ema)  # EMA, not the raw weights
    assert not any(key.startswith(("compressor.", "discriminator.")) for key in tensors)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["format"] == "fluxflow-text-to-image" and config["text_encoder"] == {"kind": "byte"}
    assert config["image"] == {"size": 16, "channels": 3} and config["spade"] is False
    assert config["model"] == {k: v for k, v in state["model_config"].items() if k != "text_encoder"}
    assert torch.equal(torch.tensor(config["latent_norm"]["scale"]), state["latent_norm"]["scale"])


def test_a_pretrained_encoder_travels_in_the_folder(pretrained_checkpoint, tiny_clip_dir, tmp_path):
    export(pretrained_checkpoint, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["text_encoder"] == {"kind": "pretrained", "family": "clip", "directory": "text_encoder"}
    copied = tmp_path / "export" / "text_encoder"
    assert {p.name for p in tiny_clip_dir.iterdir()} == {p.name for p in copied.iterdir()}
    model = load_exported(tmp_path / "export", "cpu")
    assert model.models["text_encoder"].path == str(copied)  # not the training machine's directory


@pytest.mark.parametrize("existing", [False, True])  # a new folder, or an empty one made beforehand
def test_ctrl_c_part_way_leaves_nothing_and_exits_130(byte_checkpoint, tmp_path, capsys, monkeypatch, existing):
    """Stopped after model.safetensors, the export left a folder without config.json: a traceback, and the next try
    was refused as 'exists and is not empty'. Now the files are renamed into place once all are written."""
    import fluxflow.sampling.export as export_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module.json, "dumps", interrupted)  # config.json, the last file written
    folder = tmp_path / "models" / "mine"
    if existing:
        folder.mkdir(parents=True)
    assert cli_export.main(["--checkpoint", byte_checkpoint, "--output", str(folder)]) == 130
    assert capsys.readouterr().err == f"fluxflow-export: interrupted: nothing written to {folder}\n"
    assert [p.name for p in folder.parent.iterdir()] == (["mine"] if existing else [])  # no partial folder, hidden
    assert not existing or list(folder.iterdir()) == []
    monkeypatch.undo()
    assert cli_export.main(["--checkpoint", byte_checkpoint, "--output", str(folder)]) == 0  # a second try works
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    (tmp_path / "plain").mkdir()
    assert folder.stat().st_mode == (tmp_path / "plain").stat().st_mode  # as the umask gives any new folder


def test_bad_inputs_exit_2_naming_them_without_a_traceback(byte_checkpoint, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "other.txt").write_text("x")
    assert cli_export.main(["--checkpoint", byte_checkpoint, "--output", str(tmp_path / "full")]) == 2
    assert "is not empty" in capsys.readouterr().err
    (tmp_path / "README.md").write_text("x")
    assert cli_export.main(["--checkpoint", byte_checkpoint, "--output", str(tmp_path / "README.md")]) == 2
    assert capsys.readouterr().err == f"fluxflow-export: --output {tmp_path / 'README.md'} is a file, not a folder\n"
    (tmp_path / "link").symlink_to("gone")  # was "--output LINK cannot be written (File exists: LINK)"
    assert cli_export.main(["--checkpoint", byte_checkpoint, "--output", str(tmp_path / "link")]) == 2
    assert capsys.readouterr().err == (f"fluxflow-export: --output {tmp_path / 'link'} is a link to gone, which does "
                                       "not exist: remove the link, or choose another --output\n")
    assert cli_export.main(["--checkpoint", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "o")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert cli_generate.main(["--weights", str(tmp_path / "full"), "--prompt", "x", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no config.json" in err and "Traceback" not in err
    (tmp_path / "full" / "MLmodel").write_text("flavors: {}\n")  # a registered model's folder, given as --weights
    assert cli_generate.main(["--weights", str(tmp_path / "full"), "--prompt", "x", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.endswith("no config.json (write one with fluxflow-export); an MLflow model folder "
                                            "(it has an MLmodel file) is read with fluxflow-generate --model\n")
    export(byte_checkpoint, tmp_path / "export")
    (tmp_path / "export" / "model.safetensors").write_bytes(b"\x80\x04not a tensor file")
    assert cli_generate.main(["--weights", str(tmp_path / "export"), "--prompt", "x", "--device", "cpu"]) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_an_export_of_an_alias_records_the_version_it_resolved_to(byte_checkpoint, mlflow_store, tmp_path):
    """Recorded `"model": "models:/m@champion"`, which names another version once the alias moves."""
    from helpers_tiny import register_by_hand

    from fluxflow.checkpoints.io import sha256_file

    register_by_hand(mlflow_store, byte_checkpoint, "m", tmp_path / "first")
    register_by_hand(mlflow_store, byte_checkpoint, "m", tmp_path / "second", alias="champion")
    assert cli_export.main(["--model", "models:/m@champion", "--output", str(tmp_path / "by-alias")]) == 0
    source = json.loads((tmp_path / "by-alias" / "config.json").read_text())["source"]
    assert source == {"model": "models:/m/2", "asked": "models:/m@champion", "sha256": sha256_file(byte_checkpoint)}
    assert cli_export.main(["--model", "models:/m/1", "--output", str(tmp_path / "by-number")]) == 0
    source = json.loads((tmp_path / "by-number" / "config.json").read_text())["source"]
    assert source == {"model": "models:/m/1", "sha256": sha256_file(byte_checkpoint)}
    # MLflow's `latest` is no number, but names a version: the newest, recorded as such
    assert cli_export.main(["--model", "models:/m/latest", "--output", str(tmp_path / "latest")]) == 0
    source = json.loads((tmp_path / "latest" / "config.json").read_text())["source"]
    assert source == {"model": "models:/m/2", "asked": "models:/m/latest", "sha256": sha256_file(byte_checkpoint)}


def test_weights_with_a_flipped_bit_are_refused_and_an_export_without_their_sha256_still_loads(byte_checkpoint,
                                                                                                tmp_path, capsys):
    """A flipped bit in a tensor's bytes loaded as it was and drew other images without a word."""
    from fluxflow.checkpoints.io import sha256_file

    export(byte_checkpoint, tmp_path / "export")
    weights, config_file = tmp_path / "export" / "model.safetensors", tmp_path / "export" / "config.json"
    config = json.loads(config_file.read_text())
    assert config["weights_sha256"] == sha256_file(weights) and config["format_version"] == 1
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x10  # in the last tensor's bytes: the file still reads
    weights.write_bytes(bytes(data))
    argv = ["--weights", str(tmp_path / "export"), "--prompt", "x", "--steps", "2", "--device", "cpu"]
    assert cli_generate.main([*argv, "--output", str(tmp_path / "damaged")]) == 2
    assert capsys.readouterr().err == (f"fluxflow-generate: {weights} does not match the sha256 recorded in "
                                       f"{config_file} ({config['weights_sha256']}): the copy is damaged; export it "
                                       "again or use an intact copy\n")
    assert not (tmp_path / "damaged").exists()
    del config["weights_sha256"]  # an export written before the sha256 was recorded: loaded as it was
    config_file.write_text(json.dumps(config))
    assert cli_generate.main([*argv, "--output", str(tmp_path / "older")]) == 0


# A FIFO was opened and waited for a writer forever: the suite's timeout (900 s) ends such a hang. Not one of 60 s
# here: it timed the module fixture too, which trains a pipeline (over 60 s on a loaded machine).
@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_an_export_whose_file_is_a_fifo_or_that_is_a_file_is_one_line(byte_checkpoint, tmp_path, capsys, name):
    export(byte_checkpoint, tmp_path / "export")
    (tmp_path / "export" / name).unlink()
    os.mkfifo(tmp_path / "export" / name)
    assert cli_generate.main(["--weights", str(tmp_path / "export"), "--prompt", "x", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"fluxflow-generate: {tmp_path / 'export' / name} is a FIFO (named pipe), not a "
                                       "regular file\n")
    # A checkpoint given as --weights: was "cannot read final.pt/config.json: [Errno 20] Not a directory".
    assert cli_generate.main(["--weights", byte_checkpoint, "--prompt", "x", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"fluxflow-generate: {byte_checkpoint} is a file, not a folder written by "
                                       "fluxflow-export\n")


def test_weights_that_do_not_fit_the_export_config_are_one_line(byte_checkpoint, tmp_path, capsys):
    """A config.json edited after the export (here a deeper flow model): the message listed every missing key on a
    line of its own."""
    export(byte_checkpoint, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    config["model"]["flow_depth"] += 1
    (tmp_path / "export" / "config.json").write_text(json.dumps(config))
    assert cli_generate.main(["--weights", str(tmp_path / "export"), "--prompt", "x", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fluxflow-generate: {tmp_path / 'export' / 'model.safetensors'} does not fit "
                          f"{tmp_path / 'export' / 'config.json'}: Missing key(s)") and err.count("\n") == 1, err


def test_a_config_beside_weights_is_refused_not_ignored(byte_checkpoint, tmp_path, capsys):
    export(byte_checkpoint, tmp_path / "export")
    assert cli_generate.main(["--weights", str(tmp_path / "export"), "--config", str(tmp_path / "nowhere.yaml"),
                              "--prompt", "x", "--device", "cpu", "--output", str(tmp_path / "g")]) == 2
    assert capsys.readouterr().err == ("fluxflow-generate: --config is not used with --weights: the folder's "
                                       "config.json says how to build the model\n")
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("source", ["--checkpoint", "--weights", "export"])
def test_a_tracking_uri_without_a_model_is_refused_not_ignored(source, tmp_path, capsys):
    """--tracking-uri names the store --model is read from: beside a checkpoint or an export folder it was ignored
    without a word. Refused before anything is read (the files named here do not exist)."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    if source == "export":
        code = cli_export.main(["--checkpoint", str(tmp_path / "final.pt"), "--tracking-uri", store,
                                "--output", str(tmp_path / "out")])
        prog = "fluxflow-export"
    else:
        code = cli_generate.main([source, str(tmp_path / "model"), "--tracking-uri", store, "--prompt", "x",
                                  "--output", str(tmp_path / "out")])
        prog = "fluxflow-generate"
    assert code == 2
    assert capsys.readouterr().err == (f"{prog}: --tracking-uri is used only with --model (the MLflow store a "
                                       "registered model is read from)\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "mlflow.db").exists()


def test_an_export_config_without_a_key_names_the_key(byte_checkpoint, tmp_path, capsys):
    export(byte_checkpoint, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    del config["model"]
    (tmp_path / "export" / "config.json").write_text(json.dumps(config))
    assert cli_generate.main(["--weights", str(tmp_path / "export"), "--prompt", "x", "--device", "cpu"]) == 2
    # was ": 'model'"
    assert capsys.readouterr().err == (f"fluxflow-generate: {tmp_path / 'export' / 'config.json'} is incomplete: it "
                                       "has no 'model' (write the folder again with fluxflow-export)\n")


@pytest.mark.parametrize("field,value,said", [
    ("latent_norm", {"shift": [0.1], "scale": [1.0, 1.0, 1.0, 1.0]}, "latent_norm.shift must hold 4 finite numbers"),
    ("latent_norm", {"shift": [0.0] * 4, "scale": [1.0, 0.0, 1.0, 1.0]}, "latent_norm.scale must be above 0"),
    ("flow_shift", float("nan"), "flow_shift must be between 0.001 and 1000"),
    ("flow_shift", -1.0, "flow_shift must be between 0.001 and 1000")])
def test_an_export_config_with_values_no_export_writes_is_one_line(byte_checkpoint, tmp_path, capsys, field, value,
                                                                    said):
    """A latent_norm of the wrong length was a conv traceback; a flow_shift of NaN or below 0 wrote black images
    and exited 0."""
    export(byte_checkpoint, tmp_path / "export")
    path = tmp_path / "export" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    assert cli_generate.main(["--weights", str(tmp_path / "export"), "--prompt", "x", "--device", "cpu",
                              "--output", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fluxflow-generate: {path} is incomplete or invalid: {said}") and err.count("\n") == 1
    assert not (tmp_path / "g").exists()


def test_the_command_it_prints_loads_a_folder_whose_name_has_a_space(byte_checkpoint, tmp_path, capsys):
    assert cli_export.main(["--checkpoint", byte_checkpoint, "--output", str(tmp_path / "my export")]) == 0
    command = shlex.split(capsys.readouterr().out.split("load it with ")[1])  # was unquoted: two arguments
    assert command[:2] == ["fluxflow-generate", "--weights"]
    assert cli_generate.main([*command[1:], "--prompt", "x", "--steps", "1", "--output", str(tmp_path / "g")]) == 0


@pytest.fixture
def http_folder(tmp_path):
    """(base URL, requests [(method, path)]) of an HTTP server on 127.0.0.1 serving tmp_path/"served"."""
    import functools
    import http.server
    import threading

    (tmp_path / "served").mkdir()
    requests = []

    class Recording(http.server.SimpleHTTPRequestHandler):
        def send_head(self):
            requests.append((self.command, self.path))
            return super().send_head()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Recording, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # 0.05 s: a quick shutdown
    yield f"http://127.0.0.1:{server.server_port}", requests
    server.shutdown()
    server.server_close()


def test_an_http_checkpoint_is_downloaded_once_and_its_sha256_recorded(byte_checkpoint, http_folder, tmp_path):
    """The export hashed the URI itself: a second download of the whole checkpoint, without the fetch's timeout."""
    import hashlib
    import shutil

    base, requests = http_folder
    shutil.copy(byte_checkpoint, tmp_path / "served" / "final.pt")
    export(f"{base}/final.pt", tmp_path / "export")
    assert [r for r in requests if r == ("GET", "/final.pt")] == [("GET", "/final.pt")], requests
    source = json.loads((tmp_path / "export" / "config.json").read_text())["source"]
    assert source == {"checkpoint": f"{base}/final.pt",
                      "sha256": hashlib.sha256((tmp_path / "served" / "final.pt").read_bytes()).hexdigest()}


@pytest.mark.timeout(60)  # aiohttp's default: 5 minutes
def test_reading_a_checkpoint_uri_directly_has_the_fetchs_timeout(monkeypatch):
    """sha256_file (and the head read after a failed load) on an http(s) URI waited 5 minutes for a silent server."""
    import socket

    from fluxflow.checkpoints.io import sha256_file

    monkeypatch.setattr("fluxflow.storage.fetch.HTTP_READ_TIMEOUT_S", 0.2)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        with pytest.raises(OSError):  # fsspec reports the read timeout as FileNotFoundError
            sha256_file(f"http://127.0.0.1:{silent.getsockname()[1]}/final.pt")


@pytest.mark.slow  # the CLI end to end, in a process of its own
def test_its_line_piped_into_head_ends_quietly_with_141(byte_checkpoint, tmp_path):
    """Was "Exception ignored ... BrokenPipeError" when its line was flushed at exit, exit 120."""
    done = run_into_closed_pipe("flows.cli_export", "--checkpoint", byte_checkpoint, "--output", str(tmp_path / "e"))
    assert (done.returncode, done.stderr) == (141, ""), done.stderr[-2000:]
    assert (tmp_path / "e" / "model.safetensors").exists()


def test_without_transformers_a_pretrained_encoder_model_names_the_extra(pretrained_checkpoint, tmp_path,
                                                                        monkeypatch, capsys):
    export(pretrained_checkpoint, tmp_path / "export")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as when the `pretrained` extra is not installed
    prompt = ["--prompt", "x", "--device", "cpu", "--output", str(tmp_path / "images")]
    for main, args in [(cli_export.main, ["--checkpoint", pretrained_checkpoint, "--output", str(tmp_path / "again")]),
                       (cli_generate.main, ["--checkpoint", pretrained_checkpoint, *prompt]),
                       (cli_generate.main, ["--weights", str(tmp_path / "export"), *prompt])]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "pip install 'fluxflow-pipelines[pretrained]'" in err and "Traceback" not in err, args


def test_help_answers_without_importing_torch():
    done = subprocess.run([sys.executable, "-c", "import sys; sys.argv = ['fluxflow-export', '--help']\n"
                           "import flows.cli_export as c\ntry:\n    c.main()\nexcept SystemExit:\n    pass\n"
                           "assert 'torch' not in sys.modules, 'torch imported'"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--checkpoint" in done.stdout


def test_ctrl_c_while_torch_loads_is_one_line_and_exits_130(tmp_path, capsys, monkeypatch):
    """Most of a small export is the import of torch, before the checkpoint is read: a Ctrl-C there ended in a
    traceback from inside torch's import."""
    import builtins

    real_import = builtins.__import__

    def importing(name, *args, **kwargs):
        if name == "fluxflow.checkpoints.io":  # the export's first import of torch
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importing)
    folder = tmp_path / "mine"
    assert cli_export.main(["--checkpoint", str(tmp_path / "final.pt"), "--output", str(folder)]) == 130
    assert capsys.readouterr().err == f"fluxflow-export: interrupted: nothing written to {folder}\n"
    assert not folder.exists()


def test_a_folder_an_export_cannot_be_staged_in_is_said_as_its_output(capsys):
    """A read-only folder (root, as tests run, writes anywhere: the error is made here): it said `[Errno 30] Read-only
    file system: 'rodir/.e.20816.513abc13.partial'`, a name the user never gave."""
    import errno

    from flows.cli_common import refuse

    error = OSError(errno.EROFS, "Read-only file system", "rodir/.e.20816.513abc13.partial")
    assert refuse("fluxflow-export", error, "rodir/e") == 2
    said = capsys.readouterr().err
    assert said == "fluxflow-export: --output rodir/e cannot be written (Read-only file system: rodir)\n"
    assert refuse("fluxflow-export", OSError(errno.EROFS, "Read-only file system", "rodir/.other.partial"), "rodir/e")
    assert "--output" not in capsys.readouterr().err  # another file beside it is not the output's


def test_ctrl_c_once_the_folder_is_in_place_changes_nothing(byte_checkpoint, tmp_path, capsys, monkeypatch):
    """A Ctrl-C after the rename (while `Wrote ...` printed, or in the half second of the interpreter's exit) exited
    130, saying 'nothing written' or nothing at all, beside a complete export: `fluxflow-export ... && upload`
    skipped it. From the rename on, SIGINT is ignored to the end of the process; an in-process caller (argv given)
    gets its handler back."""
    import signal

    real_quote = shlex.quote

    def quote_then_ctrl_c(text):  # the success line, printed once the folder is in place
        signal.raise_signal(signal.SIGINT)
        return real_quote(text)

    monkeypatch.setattr(cli_export.shlex, "quote", quote_then_ctrl_c)
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C, whatever pytest set
    try:
        folder = tmp_path / "mine"
        try:
            code = cli_export.main(["--checkpoint", byte_checkpoint, "--output", str(folder)])
        except KeyboardInterrupt:  # escaping here, it would end the test session
            code = "KeyboardInterrupt"
        assert (code, capsys.readouterr().err) == (0, "")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back for an in-process caller
        monkeypatch.setattr("sys.argv", ["fluxflow-export", "--checkpoint", byte_checkpoint, "--output",
                                         str(tmp_path / "again")])
        assert cli_export.main() == 0  # as the command runs it
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # to the end of the process: its exit too
        for exported in (folder, tmp_path / "again"):
            assert sorted(p.name for p in exported.iterdir()) == ["config.json", "model.safetensors"]
    finally:
        signal.signal(signal.SIGINT, outer)
