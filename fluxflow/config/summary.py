"""The `--validate-pipeline` summary, in the original tool's format, plus datasets and parameter counts."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from fluxflow.config import modes
from fluxflow.config.caching import (LATENT_CACHE_DIR, TEXT_CACHE_DIR, cache_root, describe_choice,
                                     latent_cache_choice, text_cache_choice)
from fluxflow.config.file_checks import resolve_captions_path
from fluxflow.config.heldout_pairs import dataset_pairs
from fluxflow.config.promotion import describe_release
from fluxflow.config.schema import DatasetConfig, PipelineConfig
from fluxflow.config.steps import ResolvedStep
from fluxflow.wording import counted


def describe_dataset(ds: DatasetConfig) -> str:
    if ds.type == "shapes":
        detail = f"{counted(ds.size, 'procedural image')}, seed {ds.seed}"
        if held := dataset_pairs(ds):  # a count's draw was said nowhere
            detail += f", unseen pairs: {', '.join(' '.join(pair) for pair in held)}"
    elif ds.type == "folder":
        root = Path(ds.path).expanduser()
        # A relative name that exists where the run starts is read there, not in the folder: say which file it is
        elsewhere = resolve_captions_path(root, ds.captions_file) != root / ds.captions_file
        detail = f"{ds.path}, captions {ds.captions_file}" + (" (from the working directory)" if elsewhere else "")
        if ds.holdout_captions:
            detail += f", unseen: captions matching {', '.join(ds.holdout_captions)}"
    else:
        detail = f"{ds.urls}" + (f", {counted(ds.length, 'sample')}" if ds.length else "")
    return f"{ds.type} ({detail}; {ds.holdout} held out)"


def format_summary(config: PipelineConfig) -> str:
    steps = config.resolved_steps()
    children = Counter(s.parent for s in steps)
    bounded = any(s.transition_on.mode == "loss_threshold" for s in steps)
    total = sum(s.transition_on.max_epochs for s in steps)
    lines = [
        "✅ Pipeline validation passed!",
        "",
        "Pipeline Summary:",
        f"  Total steps: {len(steps)}",
        f"  Total epochs: {total}" + (" (at most: loss_threshold steps may end sooner)" if bounded else ""),
        f"  Image size: {config.data.img_size}x{config.data.img_size}, {counted(config.data.channels, 'channel')}",
        f"  Output: {config.output.output_path}",
    ]
    if release := describe_release(config):
        lines.append(f"  Registered model: {release}")
    dist = config.training.distributed
    if dist.uses_ray_train:
        lines.append(f"  Processes per step: {dist.processes} ({dist.nodes} nodes × {dist.nproc_per_node}, Ray Train)")
    elif dist.processes > 1:
        lines.append(f"  Processes per step: {dist.processes} (torchrun)")
    if config.training.executor.kind == "ray":
        lines.append(f"  Executor: Ray cluster at {config.training.executor.ray_address()} (each step a Ray task with "
                     "its resources)")
    lines.append("  Datasets:")
    lines += [f"    {name}: {describe_dataset(ds)}" for name, ds in config.training.pipeline.datasets.items()]
    for step in steps:
        # Resolved, max_epochs is the step's epochs in either mode (n_epochs for an epoch step); a loss_threshold step
        # may end sooner
        count, threshold = step.transition_on.max_epochs, step.transition_on.mode == "loss_threshold"
        epochs = f"{'up to ' if threshold else ''}{counted(count, 'epoch')}"
        limit = f", max {counted(step.max_steps, 'batch', 'batches')}/epoch" if step.max_steps else ""
        lines += ["", f"Step {step.index + 1}: {step.name} ({epochs}{limit})"]
        previous = steps[step.index - 1].name if step.index > 0 else None
        if step.parent is not None and (step.parent != previous or children[step.parent] > 1):
            lines.append(f"  After: {step.parent} (branch)")
        lines.append(f"  Training: {', '.join(modes.mode_labels(step))}")
        lines.append(f"  Trains: {', '.join(c for c in modes.COMPONENTS if c in modes.trained_components(step))}")
        lines += [f"  {label}: {', '.join(names)}" for label, names in (("Freeze", step.freeze),
                                                                         ("Unfreeze", step.unfreeze)) if names]
        if terms := modes.image_stat_terms(step):
            lines.append("  Image statistics: " + ", ".join(f"{t} {getattr(step, f'lambda_{t}'):g}" for t in terms))
        t = step.transition_on
        lines.append(f"  Transition: epoch (after {epochs})" if t.mode == "epoch" else
                     f"  Transition: loss_threshold ({t.metric} < {t.threshold} averaged over "
                     f"{counted(t.window, 'batch', 'batches')}, max {counted(t.max_epochs, 'epoch')}, then "
                     f"{step.on_missed})")
        size = f", {step.img_size}x{step.img_size}" if step.img_size != config.data.img_size else ""
        lines.append(f"  Dataset: {step.dataset}, batch {step.batch_size}{size}")
        optimizers = ", ".join(f"{g} {o.type} lr={o.lr:g}" for g, o in step.optimization.optimizers.items())
        lines.append(f"  Optimizers: {optimizers}")
        if step.optimization.schedulers:
            lines.append("  Schedulers: " + ", ".join(f"{g} {s.type}"
                                                       for g, s in step.optimization.schedulers.items()))
        lines += cache_lines(step, config.dataset_for(step).type, cache_root(config))
        if config.training.executor.kind == "ray":
            workers = config.training.distributed.processes if config.training.distributed.uses_ray_train else 0
            lines.append(f"  Ray resources: {describe_resources(step.resources, workers)}")
    return "\n".join(lines)


def describe_resources(asked, train_workers: int = 0) -> str:
    """What a step asks of its Ray node, with the defaults said as defaults (flows/ray_steps.py step_request resolves
    them). A step across nodes trains in its `train_workers` Ray Train workers, one CPU (GPU) each: its own task,
    which only waits for them, asks for nothing by default."""
    default_gpus = "0" if train_workers else "the step's processes on CUDA, else 0"
    gpus = default_gpus if asked.gpus is None else f"{asked.gpus:g}"
    parts = [f"GPUs {gpus}", f"CPUs {(0 if train_workers else 1) if asked.cpus is None else asked.cpus:g}"]
    if asked.memory:
        parts.append(f"memory {asked.memory / 1e9:.1f} GB")
    parts += [f"{name} {amount:g}" for name, amount in sorted(asked.custom.items())]
    across = (f" for the step's task; its {train_workers} Ray Train workers take one GPU each on CUDA, else one CPU "
              "each") if train_workers else ""
    return ", ".join(parts) + across


def cache_lines(step: ResolvedStep, dataset_type: str, root: Path) -> list[str]:
    """The latent and text caches of a flow step (fluxflow/config/caching.py), and of any step that asks for one."""
    lines = []
    for label, choose, field, folder in (("Latent cache", latent_cache_choice, "cache_latents", LATENT_CACHE_DIR),
                                         ("Text cache", text_cache_choice, "cache_text", TEXT_CACHE_DIR)):
        if modes.has_flow_mode(step) or getattr(step, field):
            lines.append(f"  {label}: {describe_choice(choose(step, dataset_type), root / folder)}")
    return lines


def format_parameters(counts: dict[str, int | None]) -> str:
    """Parameter counts per component (config/model_sizes.py) and their total; None: a pretrained text encoder,
    whose size its own directory decides (not in the total)."""
    width = max(len(name) for name in [*counts, "total"])
    lines = ["Parameters:"] + [f"  {name:<{width}}  {count:>12,}" if count is not None else
                               f"  {name:<{width}}  {'pretrained':>12} (frozen, not counted)"
                               for name, count in counts.items()]
    lines.append(f"  {'total':<{width}}  {sum(count for count in counts.values() if count is not None):>12,}")
    return "\n".join(lines)
