"""`fluxflow-generate`: images from a trained checkpoint, or from a model registered in MLflow, named after their
prompt and seed.

    fluxflow-generate --checkpoint outputs/quickstart/checkpoints/flow/final.pt \
        --prompt "a red circle on a blue background" --n 4 --output generated/
    fluxflow-generate --model models:/fluxflow-quickstart@champion --prompt "a red circle on a blue background"
    fluxflow-generate --weights exported/quickstart --prompt "a red circle on a blue background"

The generation itself is fluxflow.sampling.generate (EMA weights, the trained text encoder, the training samples'
sampler); a registered model (`--model`) is first resolved to its checkpoint file (flows/registry.py); `--weights` is a
folder written by `fluxflow-export` (fluxflow/sampling/export.py), which gives the same pixels as its checkpoint.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (every flows entry point: quiet and offline)

import argparse
import math
import os
import stat
import sys
import tempfile
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

from flows.cli_common import (add_version_argument, interrupted, output_complete, output_file_problem, parse,
                              quiet_when_output_closed, refuse)
from flows.exit_codes import EXIT_OK

PROG = "fluxflow-generate"


def read_prompts(prompts: list[str], prompts_file: str | None) -> list[str]:
    """--prompt values, then the file's lines (blank lines and lines starting with # are skipped). `-` is stdin, and
    a pipe is read to its end (/dev/stdin, bash's <(...), a FIFO): a list of prompts is small and read once. They were
    refused as FIFOs, as a checkpoint is (read more than once, it cannot be a pipe), so piped prompts needed a file."""
    found = list(prompts)
    if prompts_file:
        from fluxflow.config.file_checks import not_a_regular_file, text_lines

        if prompts_file == "-":
            data = sys.stdin.buffer.read()
        else:
            odd = not_a_regular_file(prompts_file)
            if odd and not stat.S_ISFIFO(os.stat(prompts_file).st_mode):  # a folder; a device may never end
                raise OSError(odd)
            data = Path(prompts_file).read_bytes()
        # read as a captions file is (UTF-8 or UTF-16 with a byte-order mark, Latin-1 lines, any line end)
        lines = [line for line, _ in text_lines(data)]
        found += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return found


class ModelNotFound(Exception):
    """--model names nothing usable (flows/registry.py RegistryError, raised without importing MLflow up front)."""


def model_checkpoint_of(model_uri: str, tracking_uri: str | None, into: Path) -> tuple[Path, str]:
    """(the local checkpoint of a registered model version, copied into the folder `into`; the URI it was read by,
    an alias resolved to its version: `models:/NAME@champion` -> `models:/NAME/3`). MLflow is imported only for
    --model."""
    from flows.model_uri import missing_files_problem, models_uri_parts, models_uri_problem

    problem = models_uri_problem(model_uri)  # MLflow: "Invalid Model Version stage: abc. Value must be one of ..."
    if problem:
        raise ModelNotFound(problem)
    scheme = urlparse(model_uri).scheme
    folder = Path(model_uri[len("file://"):] if scheme == "file" else model_uri)
    if not scheme and not folder.exists():  # MLflow: "No such artifact: ''"
        raise ModelNotFound(f"--model {model_uri} is not a model URI: give models:/NAME@ALIAS (e.g. "
                            "models:/fluxflow-quickstart@champion) or models:/NAME/VERSION")
    if scheme in ("", "file") and not (folder / "MLmodel").is_file():  # MLflow: "No such artifact: 'MLmodel'"
        export = "; a folder written by fluxflow-export is read with fluxflow-generate --weights" \
            if (folder / "config.json").exists() else ""
        raise ModelNotFound(f"--model {model_uri} is not an MLflow model: no MLmodel file in it{export}")

    from flows.mlflow_runs import resolve_tracking_uri, store_to_read_problem

    uri = tracking_uri or resolve_tracking_uri()
    # A models:/ or runs:/ URI is resolved by the tracking store; a model folder on disk is read without one.
    problem = store_to_read_problem(uri) if scheme in ("models", "runs") else None
    if problem:
        raise ModelNotFound(f"{model_uri}: {problem}")
    from flows.registry import RegistryError, model_checkpoint

    parts = models_uri_parts(model_uri)
    resolved = resolved_version(model_uri, parts, uri)
    try:
        return model_checkpoint(resolved, uri, into), resolved
    except RegistryError as exc:
        name, _, version = models_uri_parts(resolved) or ("", None, None)
        if version and version.isdigit():  # MLflow: "No such artifact: ''", where the version's files are missing
            from mlflow.tracking import MlflowClient

            missing = missing_files_problem(MlflowClient(uri), name, version)
            if missing:
                raise ModelNotFound(f"{model_uri}: {missing}") from None
        # models:/NAME alone is read by MLflow as a logged model's id ("Logged model with ID 'NAME' not found")
        bare = parts is not None and parts[1:] == (None, None)
        hint = "; a registered model is named with an alias or a version: models:/NAME@champion or " \
               "models:/NAME/VERSION" if bare else ""
        raise ModelNotFound(f"{exc}{hint}") from None


def resolved_version(model_uri: str, parts: tuple[str, str | None, str | None] | None, tracking_uri: str) -> str:
    """`models:/NAME@ALIAS` (and `models:/NAME/latest`) as the version it names now (`models:/NAME/3`): read by its
    number, the files are that version's even if the alias moves meanwhile, and an export can record which version
    it is (the alias will not say after it moves). Any other URI as it is."""
    by_alias = parts is not None and parts[1] is not None and "/" not in parts[1]
    if not by_alias and (parts is None or parts[2] != "latest"):
        return model_uri
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    name, alias, _ = parts
    client = MlflowClient(tracking_uri)
    try:
        if by_alias:
            version = client.get_model_version_by_alias(name, alias).version
        else:  # `latest`: the newest version, as MLflow reads it
            from flows.registry import no_versions_problem, versions_of

            if problem := no_versions_problem(client, name):
                raise ModelNotFound(f"{model_uri}: {problem} (tracking URI {tracking_uri})")
            version = versions_of(client, name)[-1].version
    except MlflowException as exc:
        raise ModelNotFound(f"{model_uri}: {exc.message} (tracking URI {tracking_uri})") from None
    return f"models:/{name}/{version}"


def add_checkpoint_arguments(p: argparse.ArgumentParser):
    """Where a model comes from (fluxflow-generate, fluxflow-export): --checkpoint or --model (the returned group, for
    more sources), --tracking-uri and --config. Read by `checkpoint_model`."""
    source = p.add_mutually_exclusive_group(required=True)
    # `~` in a path given as --flag=~/x: bash leaves it after `=`.
    source.add_argument("--checkpoint", type=os.path.expanduser,
                        help="a flow step's checkpoint (final.pt), path or fsspec URI")
    source.add_argument("--model", help="a registered model in MLflow: models:/<name>@champion (an alias) or "
                                        "models:/<name>/<version> (or its MLflow model folder, copied out)")
    p.add_argument("--tracking-uri", help="the MLflow store of --model, e.g. sqlite:///PATH (default: "
                                          "MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--config", type=os.path.expanduser,
                   help="the pipeline's config file, for a checkpoint that does not record its model sizes")
    p.set_defaults(prog=p.prog)  # the command's name, for checkpoint_model's note
    return source


def unused_tracking_uri_problem(args: argparse.Namespace) -> str | None:
    """--tracking-uri beside --checkpoint or --weights: it names where --model is read from, and was ignored without
    a word (a user who meant to read a registered model got a local file's images)."""
    if args.tracking_uri and not args.model:
        return "--tracking-uri is used only with --model (the MLflow store a registered model is read from)"
    return None


def checkpoint_model(args: argparse.Namespace, device: str | None, scratch: Path):
    """(the text-to-image model, its local checkpoint file, the --model URI it was read by: an alias resolved to
    its version, None for --checkpoint) of --checkpoint or --model, sized by --config where the checkpoint does not
    record its model sizes (fluxflow-generate, fluxflow-export; `args.prog` names the command in a note that a
    --config of other sizes is not used). A --model is copied into the folder `scratch`,
    which the caller removes; a remote --checkpoint is fetched once, and the file returned is that copy
    (fluxflow-export hashes it: a second download, without timeout, before)."""
    from fluxflow.checkpoints.io import checkpoint_file
    from fluxflow.config import load_config
    from fluxflow.sampling.generate import load_text_to_image

    checkpoint, resolved = args.checkpoint, None
    if args.model:
        checkpoint, resolved = model_checkpoint_of(args.model, args.tracking_uri, scratch)
    config = load_config(args.config).config if args.config else None
    local = checkpoint_file(checkpoint)
    model = load_text_to_image(local, config.model if config else None, config.data.img_size if config else None,
                               device, name=str(checkpoint))
    if config is not None and model.model_config != config.model:  # it was ignored without a word
        print(f"{args.prog}: --config {args.config} is not used for the model: the checkpoint records its own model "
              "sizes, which differ from the config's", file=sys.stderr)
    return model, local, resolved


def finite_float(text: str) -> float:
    """argparse type: a number that is not nan or inf (a nan guidance scale would draw nan images)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Generate images from a trained checkpoint or a registered model.",
        epilog="Exit codes: 0 images written; 2 bad input (no prompt, a missing prompts file, a checkpoint that is "
               "missing, corrupt, not a regular file, cannot be fetched or has no text-to-image model, a --model that"
               " names no registered version, a --tracking-uri without --model, a --weights folder that is missing or"
               " not an export, an invalid --config, a blank --prompt, a --size, --n, --steps, --seed or --guidance "
               "out of range, a device this machine lacks, an --output that is a file or already has an image of the "
               "same name without --overwrite); 130 interrupted (Ctrl-C: the images listed so far are whole). Each "
               "path is printed as its image is written.")
    source = add_checkpoint_arguments(p)
    source.add_argument("--weights", type=os.path.expanduser,
                        help="a folder written by fluxflow-export (config.json, model.safetensors)")
    p.add_argument("--prompt", action="append", default=[],
                   help="a text prompt (repeatable); the text encoder reads its first model.text_max_len tokens (bytes "
                        "for the byte-level encoder, BOS and EOS included): a longer one is named on stderr")
    p.add_argument("--prompts-file", type=os.path.expanduser,
                   help="a file with one prompt per line (blank lines and lines starting with # are skipped); - reads "
                        "stdin")
    # 10000, 100: fluxflow/sampling/request.py MAX_IMAGES, MAX_STEPS and GUIDANCE_MAX, written out (--help imports
    # nothing of the package).
    p.add_argument("--n", type=int, default=1, help="images per prompt, 1 to 10000, seeds seed..seed+n-1 (default 1)")
    p.add_argument("--steps", type=int, default=25, help="sampler steps, 1 to 10000 (default 25)")
    p.add_argument("--guidance", type=finite_float, default=3.0,
                   help="classifier-free guidance scale, 0 to 100: 0 ignores the prompt, 1 follows it without "
                        "guidance, more follows it more strongly (default 3.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image of each prompt, 0 to 2**63 - n as a "
                                                       "config's seeds (default 0)")
    # 4×: fluxflow/sampling/generate.py MAX_SIZE_FACTOR, written out (that module imports torch: --help stays quick).
    p.add_argument("--size", type=int, help="image side in pixels: a multiple of the model's downscale × patch_size, "
                                            "at most 4× the training size (further from it the model has learned "
                                            "nothing, and memory runs out) (default: the training size)")
    p.add_argument("--output", default="generated", type=os.path.expanduser,  # `~`: bash leaves it after `=`
                   help="output folder (default: ./generated)")
    p.add_argument("--format", choices=("webp", "png"), default="webp", help="file format (default webp)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace images of the same name (prompt and seed) already in --output; without it such a "
                        "file is refused before anything is drawn")
    # choices: torch.device() would take any text and end in a RuntimeError traceback for one it does not know.
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="cpu, cuda or auto (default: auto)")
    add_version_argument(p)
    return p


@quiet_when_output_closed
def main(argv: list[str] | None = None) -> int:
    args = parse(parser(), argv)
    # The flags' own conflicts first: before a --prompts-file (stdin, a pipe) is read for nothing.
    if problem := unused_tracking_uri_problem(args):
        return refuse(PROG, problem)
    if args.weights and args.config:  # was ignored without a word
        return refuse(PROG, "--config is not used with --weights: the folder's config.json says how to build the "
                            "model")
    try:
        prompts = read_prompts(args.prompt, args.prompts_file)
    except (OSError, UnicodeDecodeError) as exc:
        return refuse(PROG, f"cannot read --prompts-file {args.prompts_file}: {exc}")
    except KeyboardInterrupt:  # Ctrl-C while a pipe (or `-` at a terminal) waits for its writer
        return interrupted(PROG, "no image written")
    if not prompts and args.prompts_file:  # a file was given: asking for one would not say what is wrong
        return refuse(PROG, f"--prompts-file {args.prompts_file} holds no prompt (only blank lines and # comments)")
    if not prompts:
        return refuse(PROG, "give at least one --prompt or a --prompts-file")
    if args.weights and not os.path.lexists(args.weights):  # was "... is not an exported model: no config.json"
        return refuse(PROG, f"--weights {args.weights} does not exist")
    from fluxflow.sampling.request import prompt_problem, request_problem

    # The served model's rules too (flows/pyfunc_model.py). A blank line of --prompts-file is skipped; a blank
    # --prompt is refused, as "" is.
    problem = next(filter(None, (prompt_problem("--prompt", prompt) for prompt in args.prompt)), None)
    problem = problem or request_problem(lambda param: f"--{param}", n=args.n, steps=args.steps, seed=args.seed,
                                         guidance=args.guidance) or output_file_problem(args.output)
    if problem:
        return refuse(PROG, problem)

    done: list[Path] = []  # the files written so far, for the line an interrupt prints
    try:
        return generate_into(args, prompts, done)
    except KeyboardInterrupt:  # Ctrl-C, while torch loads or draws: one line, not a traceback from inside torch
        kept = f"{len(done)} image(s) written to {args.output} (listed above), none half-written" if done else \
            "no image written"
        return interrupted(PROG, kept)


def output_collision_problem(args: argparse.Namespace, prompts: list[str]) -> str | None:
    """Why the request's images cannot be written to --output as it is, or None. Names depend on prompt and seed
    only, not on the checkpoint, steps, guidance or size: a file already there is another image, and is replaced only
    when asked (before, silently). A link to nowhere counts as a file (os.path.lexists): Path.exists follows it, and
    such a link was replaced without --overwrite."""
    from fluxflow.sampling.generate import planned_files

    plan = planned_files(prompts, args.output, n=args.n, seed=args.seed, ext=args.format)
    existing = [path for _, _, path in plan if os.path.lexists(path)]
    if folders := [path for path in existing if path.is_dir()]:  # --overwrite failed on it part way, naming a temp
        return (f"--output {args.output} has a folder named {folders[0].name}, where an image of this request goes: "
                "move it away, or choose another --output")
    if existing and not args.overwrite:
        more = f" and {len(existing) - 1} more of the {len(plan)} images to write" if len(existing) > 1 else ""
        return (f"--output {args.output} already has {existing[0].name}{more}: pass --overwrite to replace "
                f"{'them' if more else 'it'}, or choose another --output")
    return None


def generate_into(args: argparse.Namespace, prompts: list[str], done: list[Path]) -> int:
    """Loads the model, checks the request and the output files, and writes the images, appending each file to
    `done` (and printing it) as it is written: the progress of a long list, and what an interrupt kept."""
    from fluxflow.config import ConfigError
    from fluxflow.errors import CheckpointError
    from fluxflow.runtime.device import DeviceUnavailable, resolve_device
    from fluxflow.sampling.export import load_exported
    from fluxflow.sampling.generate import GenerationError, generate_files, size_problem, unread_prompt_ends

    output_closed = False
    try:
        resolve_device(args.device, setting="--device")  # before loading: the error names this CLI's own flag
        if args.weights:
            model = load_exported(args.weights, args.device)
        else:
            with tempfile.TemporaryDirectory(prefix="fluxflow-model-") as scratch:
                model, _, _ = checkpoint_model(args, args.device, Path(scratch))
        for prompt, count in unread_prompt_ends(model, prompts):
            shown = prompt if len(prompt) <= 40 else prompt[:40] + "…"
            read = model.models["text_encoder"].max_len
            print(f"{PROG}: the prompt {shown!r} is {count} tokens; the text encoder reads the first {read} "
                  "(model.text_max_len), the rest changes nothing", file=sys.stderr)
        if args.size is not None and (problem := size_problem(model, args.size)):  # named as the user gave it
            raise GenerationError(f"--size {problem}")
        # After every check of the request (device, model, --config, --weights, --size): "pass --overwrite" came
        # first, for a request that could not run at all, and the second try met the real error. Still before
        # anything is drawn.
        if problem := output_collision_problem(args, prompts):
            return refuse(PROG, problem)
        for prompt, count in Counter(prompts).items():
            if count > 1:  # one set of files per prompt: the same prompt and seed give the same image
                print(f"{PROG}: the prompt {prompt!r} is given {count} times: its images are made once",
                      file=sys.stderr)
        for path in generate_files(model, prompts, args.output, n=args.n, seed=args.seed, steps=args.steps,
                                   guidance=args.guidance, size=args.size, ext=args.format):
            done.append(path)
            if not output_closed:
                try:
                    print(path, flush=True)
                except BrokenPipeError:  # `| head -1` has read its line: the images are still all written
                    output_closed = True
        output_complete()  # every image is written: a Ctrl-C no longer changes the outcome
    except (CheckpointError, ConfigError, GenerationError, DeviceUnavailable, ModelNotFound, OSError) as exc:
        return refuse(PROG, exc, args.output)
    if output_closed:
        raise BrokenPipeError  # quiet_when_output_closed ends with 141
    print(f"Wrote {len(done)} image(s) to {args.output}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
