"""Tiny configs and model set-ups shared by the training-step and runner tests.

Everything here builds the real objects the runner builds (load_config, prepare_models, build_optimizers) at sizes
that train in milliseconds on a CPU: 16x16 images, a VAE of width 8, a flow transformer of width 32, batches of 4.
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

# The one definition of the tiny model is configs/tiny_test.yaml's `model:` (bench/common.py reads it too).
TINY_MODEL: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "configs" / "tiny_test.yaml").read_text())["model"]

# A step that only trains the VAE, the usual first step.
VAE_STEP: dict[str, Any] = {"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True}


@contextlib.contextmanager
def one_thread():
    """Torch on one intra-op thread inside the block, the setting restored after it (a module-scoped fixture's
    pipeline run; a test's: `one_torch_thread`).

    Measured on the 2-core CI machine while other processes compete for it: a tiny VAE step took ~25 ms on one
    thread and ~600 ms on two (OpenMP threads spin-waiting for a core).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def one_torch_thread():
    """Run torch on one intra-op thread for the test, then restore the setting (`one_thread`). Import this into a
    test module and use it."""
    with one_thread():
        yield


def tiny_raw(output: str | Path, steps: list[dict[str, Any]] | None = None, *, dataset_size: int = 32,
             batch_size: int = 4, log_interval: int = 1, checkpoint_save_interval: int = 1,
             no_samples: bool = False, seed: int = 0, precision: str = "fp32", **top: Any) -> dict[str, Any]:
    """A whole config as the YAML file would hold it (a dict), for `load_config`.

    `top` entries replace top-level sections (e.g. model_checkpoint="...").
    """
    raw: dict[str, Any] = {
        "data": {"img_size": 16, "channels": 3},
        "model": dict(TINY_MODEL),
        "training": {
            "batch_size": batch_size, "workers": 0, "seed": seed, "device": "cpu", "precision": precision,
            "pipeline": {
                "datasets": {"shapes": {"type": "shapes", "size": dataset_size, "seed": 0, "holdout": 4}},
                "default_dataset": "shapes",
                "steps": copy.deepcopy(steps if steps is not None else [VAE_STEP]),
            },
        },
        "output": {"output_path": str(output), "log_interval": log_interval,
                   "checkpoint_save_interval": checkpoint_save_interval, "no_samples": no_samples,
                   "sample_captions": ["a red circle"]},
    }
    raw.update(top)
    return raw


def tiny_config(output: str | Path, steps: list[dict[str, Any]] | None = None, **kwargs: Any):
    """The validated PipelineConfig of `tiny_raw(...)`."""
    from fluxflow.config import load_config

    return load_config(tiny_raw(output, steps, **kwargs)).config


def single_step_config(step: dict[str, Any], output: str | Path = "unused", **kwargs: Any):
    """(config, resolved step) for a pipeline of this one step."""
    config = tiny_config(output, [dict({"name": "s", "n_epochs": 1}, **step)], **kwargs)
    return config, config.resolved_steps()[0]


def step_context(step: dict[str, Any], *, state: dict | None = None, seed: int = 0, **kwargs: Any):
    """(StepContext, config) of the `Trainer` the runner builds for this one step (CPU, fp32)."""
    from fluxflow.train.trainer import build_trainer

    config, resolved = single_step_config(step, seed=seed, **kwargs)
    trainer = build_trainer(config, resolved, state, torch.device("cpu"), max_epochs=resolved.n_epochs)
    trainer.ctx.generator.manual_seed(seed)
    return trainer.ctx, config


def shapes_batches(config, n: int, epoch: int = 0) -> list[tuple[torch.Tensor, list[str]]]:
    """The first `n` training batches of the config's `shapes` dataset (cycling epochs), as the runner loads them."""
    from fluxflow.data import build_dataset, make_loader

    step = config.resolved_steps()[0]
    dataset = build_dataset(config.dataset_for(step), config.data.img_size, config.data.channels, "train")
    batches: list[tuple[torch.Tensor, list[str]]] = []
    while len(batches) < n:
        for images, captions in make_loader(dataset, step.batch_size, 0, config.training.seed, epoch):
            batches.append((images, captions))
            if len(batches) == n:
                break
        epoch += 1
    return batches


def snapshot(models: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """A detached copy of every component's parameters and buffers."""
    return {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in models.items()}


def changed_tensors(before: dict[str, dict[str, torch.Tensor]], models: dict[str, torch.nn.Module]) -> set[str]:
    """`component.tensor` names whose values differ from the snapshot."""
    after = snapshot(models)
    return {f"{comp}.{key}" for comp, tensors in before.items() for key, value in tensors.items()
            if not torch.equal(value, after[comp][key])}


def changed_components(before: dict[str, dict[str, torch.Tensor]], models: dict[str, torch.nn.Module]) -> set[str]:
    return {name.split(".", 1)[0] for name in changed_tensors(before, models)}


def load_weights(path: str | Path) -> dict[str, Any]:
    from fluxflow.checkpoints.io import load_checkpoint

    return load_checkpoint(path)


def generated_pixels(source: list[str], out: Path, prompt: str = "a red circle", seed: int = 3,
                     steps: int = 3) -> Any:
    """`fluxflow-generate`'s PNG of `prompt` from `source` (`--checkpoint FILE`, `--model URI`, `--weights DIR`),
    written to the new folder `out`, as pixels."""
    import numpy as np
    from PIL import Image

    from flows import cli_generate

    assert cli_generate.main([*source, "--prompt", prompt, "--seed", str(seed), "--steps", str(steps), "--format",
                              "png", "--device", "cpu", "--output", str(out)]) == 0
    [image] = out.iterdir()
    return np.asarray(Image.open(image))


def register_by_hand(tracking_uri: str, checkpoint: str | Path, name: str, folder: Path, alias: str | None = None):
    """A version of the registered model `name` holding `checkpoint` as flows/registry.py's pyfunc holds it (an
    MLmodel whose python_function flavor names the `checkpoint` artifact), without Prefect, a training run or the
    project's code paths; `folder` (new) is where its files are put together. The version, `alias` set to it."""
    import shutil

    from mlflow.tracking import MlflowClient

    from flows.pyfunc_model import CHECKPOINT_ARTIFACT
    from flows.registry import ensure_registered_model

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("by-hand")
    model = client.create_logged_model(experiment.experiment_id if experiment else client.create_experiment("by-hand"))
    (folder / "artifacts").mkdir(parents=True)
    shutil.copyfile(checkpoint, folder / "artifacts" / "final.pt")
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {"artifacts": {
        CHECKPOINT_ARTIFACT: {"path": "artifacts/final.pt", "uri": str(checkpoint)}}}}}))
    client.log_model_artifacts(model.model_id, str(folder))
    ensure_registered_model(client, name)
    version = client.create_model_version(name, f"models:/{model.model_id}", model_id=model.model_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version


def step_keys(config) -> dict[str, str]:
    """Every step's key, as a run plans its files (fluxflow/checkpoints/step_files.py, plan_step)."""
    from fluxflow.checkpoints.step_files import plan_step

    return {step.name: plan_step(config, step.name).key for step in config.resolved_steps()}
