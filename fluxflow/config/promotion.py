"""The retraining loop's settings: which steps become versions of a registered model, and when a new version takes
the `champion` alias from the one people use (docs/CONFIG.md, `promotion`).

No torch here (validation stays fast). The evaluation itself is fluxflow/evaluation/checkpoint_eval.py; the Prefect
task that registers, evaluates and moves the alias is flows/promotion.py.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Literal

from pydantic import Field

from fluxflow.config.dag import leaf_names
from fluxflow.config.errors import ConfigIssue, did_you_mean
from fluxflow.config.modes import has_flow_mode, trained_components
from fluxflow.config.optim import StrictModel

Direction = Literal["maximize", "minimize"]

# Metrics of a text-to-image checkpoint (checkpoint_eval.py) that can decide a promotion, and which way is better.
PROMOTION_METRICS: dict[str, Direction] = {
    "eval_adherence_both": "maximize",
    "eval_adherence_color": "maximize",
    "eval_adherence_shape": "maximize",
    # On held-out colour x shape pairs (a shapes dataset's holdout_pairs) or held-out captions (a folder's
    # holdout_captions): how well the model composes what it learned (fluxflow/config/heldout_pairs.py).
    "eval_adherence_unseen_both": "maximize",
    "eval_adherence_unseen_color": "maximize",
    "eval_adherence_unseen_shape": "maximize",
    "eval_fd_ours_unseen_cfg": "minimize",
    "eval_fd_ours_cfg": "minimize",
    "eval_fd_ours_nocfg": "minimize",
}
# Logged, but no order of versions: best near 1 (seeds vary as much as the data), a collapsed model 0, an untrained
# one's noise above 1, so "higher is better" promoted noisier models (fluxflow/evaluation/diversity.py).
UNRANKED = {"eval_diversity_ratio": "is best near 1 (seeds vary as much as the data; 0: collapsed, above 1: noise), "
                                    "neither higher nor lower, so it cannot rank versions; promote on adherence or a "
                                    "Fréchet distance and read it beside them in fluxflow-compare"}
SHAPES_ONLY = tuple(metric for metric in PROMOTION_METRICS if metric.startswith("eval_adherence_"))
UNSEEN_ONLY = {"eval_adherence_unseen_both": "holdout_pairs", "eval_adherence_unseen_color": "holdout_pairs",
               "eval_adherence_unseen_shape": "holdout_pairs", "eval_fd_ours_unseen_cfg": "holdout_captions"}
DEFAULT_METRIC = {"shapes": "eval_adherence_both"}  # any other dataset type: FALLBACK_METRIC
FALLBACK_METRIC = "eval_fd_ours_cfg"
# MLflow's rule for alias names (letters, digits, '_' and '-'; not `latest`, not a version like `v3`).
ALIAS_RE = re.compile(r"^(?!latest$)(?!v\d+$)[A-Za-z0-9_-]{1,255}$")


class PromotionConfig(StrictModel):
    enabled: bool = Field(True, description="false: register new versions, never move the alias")
    alias: str = "champion"
    metric: str | None = None  # None: DEFAULT_METRIC of the evaluation dataset's type
    direction: Direction | None = None  # None: the metric's own (PROMOTION_METRICS)
    min_improvement: float = Field(0.0, ge=0.0, description="how much better than the champion a new version must be")
    # With seed replicates (training.replicates): the hypothesis is promoted (its best replica takes the alias) only
    # when it is better than the champion beyond the spread, by fluxflow-compare's rule (flows/promotion.py).
    beyond_spread: bool = False
    dataset: str | None = None  # None: the registered step's dataset
    n_images: int = Field(256, ge=2, description="held-out images evaluated (at most the held-out split)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # the metric is the mean over these seeds
    sampler_steps: int = Field(25, ge=1)


def text_to_image_steps(steps) -> list[str]:
    """Steps whose final checkpoint can make images from text: a flow step, or a step below one that keeps its
    latent normalisation (the flow model and text encoder travel on in every later checkpoint, but a step that trains
    the compressor drops the normalisation, fluxflow/train/step_run.py, until a flow step measures it again: its
    registration failed with a traceback after every step had trained)."""
    by_name = {step.name: step for step in steps}

    @functools.cache
    def capable(name: str) -> bool:
        step = by_name[name]
        return has_flow_mode(step) or (step.parent is not None and capable(step.parent)
                                       and "compressor" not in trained_components(step))
    return [step.name for step in steps if capable(step.name)]


def no_text_to_image_model(steps, name: str) -> str:
    """Why step `name` (not one of text_to_image_steps) has no text-to-image model in its final checkpoint."""
    by_name, since_flow = {step.name: step for step in steps}, []  # its chain of steps up to the last flow step
    step = by_name[name]
    while step is not None and not has_flow_mode(step):
        since_flow.append(step)
        step = by_name.get(step.parent)
    if step is None:
        return "trains no text-to-image model (neither it nor a step before it has train_diff or train_diff_full)"
    dropper = next(s for s in reversed(since_flow) if "compressor" in trained_components(s))
    return (f"comes after flow step {step.name!r}, but {'it' if dropper.name == name else repr(dropper.name)} "
            "trains the compressor, which drops the latent normalisation the model decodes with (a flow step after "
            "it measures one again)")


def registered_model_name_problem(name: str) -> str | None:
    """What MLflow's registry would refuse in a registered model's name (mlflow/utils/validation.py
    _validate_model_name: a blank name, '/' or ':'), or take and then fail on: '@', '?' and '#' end the name in a
    `models:/NAME@ALIAS` URI (registration, promotion, fluxflow-generate --model and fluxflow-compare failed after
    training), and a name the registry cannot be searched for (searchable_problem). None when it takes it."""
    if not name.strip():
        return "must not be blank: MLflow refuses a registered model without a name"
    if "/" in name or ":" in name:
        return "cannot contain '/' or ':' (MLflow refuses them in registered model names)"
    if odd := [c for c in "@?#" if c in name]:
        return (f"cannot contain {' or '.join(repr(c) for c in odd)} (a models:/ URI, which names the model's "
                "versions, would end the name there)")
    return searchable_problem(name)


def searchable_problem(value: str) -> str | None:
    """Why MLflow could not search for `value`: its filter strings know no escapes (flows/mlflow_names.py quoted), so a
    value holding both quote characters cannot be written in one, and the run finds its records (by output directory)
    and its model's versions (by name) by searching. None when it can."""
    if "'" in value and '"' in value:
        return "cannot contain both ' and \" (MLflow's search filters, which find the run's records, cannot quote it)"
    return None


def registered_steps(config) -> list[str]:
    """The steps whose final checkpoint is registered: `tracking.register_steps`, else every leaf step (nothing
    starts from it) that makes images from text."""
    steps = config.resolved_steps()
    if config.tracking.register_steps is not None:
        return list(config.tracking.register_steps)
    capable = set(text_to_image_steps(steps))
    return [name for name in leaf_names(steps) if name in capable]


def evaluation_dataset(config, step_name: str) -> str:
    return config.promotion.dataset or config.step(step_name).dataset


def promotion_metric(config, step_name: str) -> tuple[str, Direction]:
    """(metric, direction) a new version of `step_name` is compared on."""
    promotion = config.promotion
    dataset = config.training.pipeline.datasets[evaluation_dataset(config, step_name)]
    metric = promotion.metric or DEFAULT_METRIC.get(dataset.type, FALLBACK_METRIC)
    return metric, promotion.direction or PROMOTION_METRICS[metric]


def promotion_issues(config) -> list[ConfigIssue]:
    """Cross-field rules of `tracking.register_steps` and `promotion` (on a config that parsed)."""
    steps = config.resolved_steps()
    names = [step.name for step in steps]
    capable = set(text_to_image_steps(steps))
    issues, seen = [], {}
    for i, name in enumerate(config.tracking.register_steps or []):
        path = ("tracking", "register_steps", i)
        # A replicated step runs only as its replicas, which keep its name as their hypothesis (steps.py).
        replicas = [step.name for step in steps if step.hypothesis == name and step.name != name]
        if name in seen:  # counted twice, one registered run passed beyond_spread's "2 or more"
            issues.append(ConfigIssue(path, f"{name!r} is named twice (also register_steps[{seen[name]}])"))
        elif replicas:
            issues.append(ConfigIssue(path, f"{name!r} is replicated (training.replicates): name its replicas "
                                            f"{', '.join(replicas)}"))
        elif name not in names:
            issues.append(ConfigIssue(path, f"no step is named {name!r}{did_you_mean(name, names)}"))
        elif name not in capable:
            issues.append(ConfigIssue(path, f"step {name!r} {no_text_to_image_model(steps, name)}: nothing to "
                                            "register"))
        seen.setdefault(name, i)
    if config.tracking.registered_model is None and registered_steps(config):
        # The experiment's name is then the registered model's too (TrackingConfig.model_name), and MLflow allows
        # in an experiment's name what it refuses in a model's ('/', ':', blanks).
        if problem := registered_model_name_problem(config.tracking.experiment_name):
            issues.append(ConfigIssue("tracking.experiment_name", f"is also the registered model's name (no "
                                      f"tracking.registered_model is set), which {problem}: set "
                                      "tracking.registered_model, or tracking.register_steps: [] to register nothing"))
    promotion = config.promotion
    if not ALIAS_RE.match(promotion.alias):
        issues.append(ConfigIssue("promotion.alias", f"{promotion.alias!r} must be letters, digits, '_' or '-', and "
                                                     "not 'latest' or a version such as 'v3'"))
    if promotion.enabled and promotion.beyond_spread:
        # One registered run of a hypothesis has no interval: every version after the first was "not promoted", for
        # good (no replicates, or register_steps naming one replica of each)
        # Each registered step counted once; a name that is no step is reported above, not again here as a
        # hypothesis with one registered run.
        hypothesis_of = {step.name: step.hypothesis for step in steps}
        registered = Counter(hypothesis_of[name] for name in dict.fromkeys(registered_steps(config))
                             if name in hypothesis_of)
        if alone := sorted(h for h, n in registered.items() if n < 2):
            issues.append(ConfigIssue("promotion.beyond_spread", "needs seed replicates (training.replicates with 2 "
                                      "or more seeds), each registered: with one registered run of a hypothesis ("
                                      f"{', '.join(alone)}) there is no spread to be beyond, and no version after "
                                      "the first could be promoted"))
    datasets = config.training.pipeline.datasets
    if promotion.dataset is not None and promotion.dataset not in datasets:
        issues.append(ConfigIssue("promotion.dataset", f"no dataset is named {promotion.dataset!r}"
                                                       f"{did_you_mean(promotion.dataset, datasets)}"))
        return issues
    if promotion.metric in UNRANKED:
        return issues + [ConfigIssue("promotion.metric", f"{promotion.metric} {UNRANKED[promotion.metric]}")]
    if promotion.metric is not None and promotion.metric not in PROMOTION_METRICS:
        return issues + [ConfigIssue("promotion.metric", f"{promotion.metric!r} is not a metric of a text-to-image "
                                                         f"model{did_you_mean(promotion.metric, PROMOTION_METRICS)}; "
                                                         f"metrics: {', '.join(PROMOTION_METRICS)}")]
    # The metric exists on every registered step's evaluation set, and the direction is the metric's own.
    for name in [name for name in registered_steps(config) if name in capable]:  # the others: reported above
        metric, direction = promotion_metric(config, name)
        dataset = evaluation_dataset(config, name)
        evaluated = datasets[dataset]
        if promotion.enabled and evaluated.holdout == 0:
            issues.append(ConfigIssue(f"training.pipeline.datasets.{dataset}.holdout", "is 0, but promotion evaluates "
                                      f"the registered versions of step {name!r} on this dataset's held-out images: "
                                      "hold some out, name another promotion.dataset, or set promotion.enabled: false"))
        elif promotion.enabled and metric.startswith("eval_fd_") and evaluated.holdout < 2:
            # the distance was never computed: every version scored nan, and none after the first could win
            issues.append(ConfigIssue(f"training.pipeline.datasets.{dataset}.holdout", f"is 1, but promotion's "
                                      f"metric {metric} is a Fréchet distance between image sets, which needs 2 or "
                                      "more held-out images"))
        if metric in SHAPES_ONLY and evaluated.type != "shapes":
            issues.append(ConfigIssue("promotion.metric", f"{metric} is measured on `shapes` datasets only; the "
                                                          f"evaluation set of step {name!r} is {dataset!r}: use "
                                                          f"{FALLBACK_METRIC}"))
        elif metric in UNSEEN_ONLY:
            held_out = UNSEEN_ONLY[metric]
            if held_out not in type(evaluated).model_fields:  # eval_fd_ours_unseen_cfg on shapes or a webdataset
                issues.append(ConfigIssue("promotion.metric", f"{metric} is measured on folder datasets with "
                                          f"{held_out} only; the evaluation set of step {name!r} is {dataset!r} "
                                          f"({evaluated.type})"))
            elif not getattr(evaluated, held_out):
                issues.append(ConfigIssue("promotion.metric", f"{metric} needs held-out compositions: the evaluation "
                                          f"set {dataset!r} of step {name!r} sets no {held_out}"))
        if direction != PROMOTION_METRICS[metric]:
            better = "higher" if PROMOTION_METRICS[metric] == "maximize" else "lower"
            issues.append(ConfigIssue("promotion.direction", f"{metric} is better when {better}; direction "
                                                             f"{direction} would promote worse models"))
    return issues  # load_config drops duplicates (one per registered step) with the rest


def describe_release(config) -> str | None:
    """One line for the pipeline summary: what is registered and when it becomes the champion; None when nothing
    is registered."""
    steps = registered_steps(config)
    if not steps:
        return None
    line = f"{config.tracking.model_name} (step{'s' if len(steps) > 1 else ''} {', '.join(steps)})"
    promotion = config.promotion
    if not promotion.enabled:
        return line + f"; promotion off, the '{promotion.alias}' alias is never moved"
    metric, direction = promotion_metric(config, steps[0])
    better = "higher" if direction == "maximize" else "lower"
    spread = " (the end of its replicates' 95 % interval nearest the champion)" if promotion.beyond_spread else ""
    return (line + f"; a new version becomes '{promotion.alias}' when its {metric}{spread} is {better} by more than "
                   f"{promotion.min_improvement:g}")
