"""`fluxflow-export`: a flow step's checkpoint (or a registered model) as a folder of standard files, safetensors
weights plus a JSON config, that `fluxflow-generate --weights` loads and that can be pushed to a model hub as it is.

    fluxflow-export --checkpoint outputs/quickstart/checkpoints/flow/final.pt --output exported/quickstart
    fluxflow-generate --weights exported/quickstart --prompt "a red circle on a blue background"

The folder's layout: fluxflow/sampling/export.py. Imports here stay light (torch only after the arguments are read),
so `--help` answers at once.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (every flows entry point: quiet and offline)

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

from flows.cli_common import (add_version_argument, interrupted, output_file_problem, parse, put_in_place,
                              quiet_when_output_closed, refuse)
from flows.cli_generate import ModelNotFound, add_checkpoint_arguments, checkpoint_model, unused_tracking_uri_problem
from flows.exit_codes import EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fluxflow-export",
        description="Write a checkpoint's sampling weights (EMA where kept) as model.safetensors plus a config.json "
                    "that says how to build the models; fluxflow-generate --weights loads the folder.",
        epilog="Exit codes: 0 written; 2 bad input (a checkpoint that is missing, corrupt or has no text-to-image "
               "model, a --model that names no registered version, a --tracking-uri without --model, an invalid "
               "--config, an output folder that is not empty or is a file); 130 interrupted (Ctrl-C: nothing is left "
               "in --output).")
    add_checkpoint_arguments(p)
    p.add_argument("--output", required=True, type=os.path.expanduser, help="the folder to write (new or empty)")
    add_version_argument(p)
    return p


@quiet_when_output_closed
def main(argv: list[str] | None = None) -> int:
    args = parse(parser(), argv)
    problem = unused_tracking_uri_problem(args) or output_file_problem(args.output)
    if problem:  # before loading the model
        return refuse("fluxflow-export", problem)
    try:
        return export_into(args)
    except KeyboardInterrupt:  # Ctrl-C, while torch loads (most of a small export) or later: one line, not a
        # traceback; export_weights leaves no partial folder, and once its folder is in place Ctrl-C is ignored
        return interrupted("fluxflow-export", f"nothing written to {args.output}")


def export_into(args: argparse.Namespace) -> int:
    from fluxflow.checkpoints.io import sha256_file
    from fluxflow.config import ConfigError
    from fluxflow.errors import CheckpointError
    from fluxflow.sampling.export import export_weights
    from fluxflow.sampling.generate import GenerationError

    try:
        with tempfile.TemporaryDirectory(prefix="fluxflow-model-") as scratch:
            model, local, resolved = checkpoint_model(args, "cpu", Path(scratch))
            sha256 = sha256_file(local)  # the copy just loaded: a remote checkpoint is not downloaded again
        # Where the weights came from: the checkpoint as given, or the registered model (its copy here is temporary)
        # by version, with the alias it was asked by: `models:/NAME@champion` alone would name another version once
        # the alias moves.
        source = {"checkpoint": args.checkpoint} if not args.model else \
            {"model": resolved} if resolved == args.model else {"model": resolved, "asked": args.model}
        source["sha256"] = sha256
        folder = export_weights(model, args.output, source, put_in_place)
    except (CheckpointError, ConfigError, GenerationError, ModelNotFound, OSError) as exc:
        return refuse("fluxflow-export", exc, args.output)
    print(f"Wrote {folder} (config.json, model.safetensors); load it with fluxflow-generate --weights "
          f"{shlex.quote(str(folder))}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
