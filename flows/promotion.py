"""Champion/challenger: a newly registered version takes the `champion` alias only when it beats the version that
holds it, both evaluated now on the same held-out images and seeds (fluxflow/evaluation/checkpoint_eval.py).

The pipeline flow calls `release_models` after its leaf steps: one `register-model` task per registered step
(flows/registry.py), then one `promote-model` task that compares each new version with the champion, moves the alias
or not, tags both versions with the comparison, tags the pipeline's MLflow run with the decision and publishes it as
the Prefect artifact `<pipeline>-promotion`. The first version of a model (no champion yet) is promoted, and so is
a new one when the champion's files are missing from the artifact store.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (must precede prefect and mlflow)

import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from flows.artifacts import artifact_key
from flows.gpu_slot import gpu_slot
from flows.hypotheses import better_beyond, difference, spread, versus_value
from flows.mlflow_names import (TAG_CHECKPOINT_SHA256, TAG_DECISION_OF_RUN, TAG_OUTPUT_DIR, TAG_PROMOTION,
                                 TAG_STEP_NAME)
from flows.registry import model_checkpoint, register_step, version_by_alias, versions_of
from flows.mlflow_runs import TrackingTarget
from flows.model_uri import missing_files_problem
from fluxflow.checkpoints.ref import StepOutcome
from fluxflow.config.promotion import evaluation_dataset, promotion_metric, registered_steps
from fluxflow.config.run_config import run_config_of


@dataclass
class Decision:
    """The comparison of one new version with the champion, and what was done."""

    model: str
    version: str
    step: str
    metric: str
    direction: str
    min_improvement: float
    value: float
    champion: str | None  # the version that held the alias before, None when no version did
    champion_value: float | None
    promoted: bool
    reason: str

    def summary(self) -> str:
        return f"{self.model} version {self.version}: {'promoted' if self.promoted else 'not promoted'} ({self.reason})"


def decide(value: float, champion_value: float | None, direction: str, min_improvement: float) -> tuple[bool, str]:
    """(promote?, why). A new version needs a finite value and must be better than the champion's by more than
    `min_improvement`; with no champion (or one that scores no number) it is promoted."""
    if champion_value is None:
        return True, "no champion yet"
    if not math.isfinite(value):
        return False, f"its value {value} is not a number"
    if not math.isfinite(champion_value):
        return True, f"the champion's value {champion_value} is not a number"
    gain = value - champion_value if direction == "maximize" else champion_value - value  # negative: worse
    if gain == 0:  # "not better" alone did not say what was compared
        return False, f"not better: the same value as the champion's, {value:.4g}"
    return gain > min_improvement, _gain_reason(gain, min_improvement)


def _gain_reason(gain: float, min_improvement: float) -> str:
    """How `gain` (positive: better) stands against `min_improvement`."""
    if gain > min_improvement:
        return f"better by {gain:.4g}, more than the {min_improvement:g} required"
    if gain > 0:
        return f"better by only {gain:.4g}, not more than the {min_improvement:g} required"
    return "not better" if gain == 0 else f"worse by {-gain:.4g}"


def decide_beyond_spread(values: list[float], champion: float | list[float] | None, direction: str,
                         min_improvement: float, seeds: tuple[list, list] | None = None) -> tuple[bool, str]:
    """(promote?, why) for a hypothesis trained as seed replicates (`values`). `champion`: the champion's value (one
    model evaluated on fixed images and seeds), or, where the champion's hypothesis was trained as replicates in this
    run, their values (`seeds`: the challenger's and the champion's, in order). The rule is the comparison table's
    (flows/hypotheses.py `better_beyond`, margin `min_improvement`), so that a lucky replicate alone does not take
    the alias. One replicate gives no interval, so no promotion, except with no champion (as `decide`)."""
    s = spread(values)
    if champion is None:  # nothing to be beyond
        return decide(s.mean, None, direction, min_improvement)
    if s.n < 2:
        return False, "one replicate: no interval can be given, so no improvement beyond the spread"
    if not isinstance(champion, list) and not math.isfinite(champion):  # a champion that scores no number: replaced
        return decide(s.low if direction == "maximize" else s.high, champion, direction, min_improvement)
    if isinstance(champion, list):
        d = difference(champion, values, names=("the champion's hypothesis", "this one"),
                       seeds=seeds[::-1] if seeds else None)
        interval = (f"95 % interval of the difference from the champion's hypothesis ({d.test}, {len(champion)} and "
                    f"{s.n} replicates) [{d.low:+.4g}, {d.high:+.4g}]" if d.low is not None else "")
    else:
        d = versus_value(values, champion, names=("the champion", "this hypothesis"))
        interval = f"95 % interval over {s.n} replicates {s.interval()}"  # its end minus the champion: d's end
    if d.low is None:  # a value that is not finite
        return False, f"{d.verdict}, so no improvement beyond the spread"
    end, which = (d.low, "lower") if direction == "maximize" else (-d.high, "upper")  # the gain, positive: better
    why = _gain_reason(end, min_improvement)
    return better_beyond(d, direction, min_improvement), f"{interval}, its {which} end: {why}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def tag_versions(client: MlflowClient, decision: Decision) -> None:
    """The comparison on the new version, and on the champion's version what it did to the champion."""
    name, result = decision.model, "promoted" if decision.promoted else "not promoted"
    mine = {"decision": result, "reason": decision.reason, "metric": decision.metric, "value": _fmt(decision.value),
            "champion": decision.champion or "none", "champion_value": _fmt(decision.champion_value)}
    for key, value in mine.items():
        client.set_model_version_tag(name, decision.version, TAG_PROMOTION + key, value)
    if decision.champion and decision.champion != decision.version:
        outcome = "replaced" if decision.promoted else "kept the alias"
        client.set_model_version_tag(name, decision.champion, TAG_PROMOTION + "last_challenge",
                                     f"version {decision.version} scored {decision.metric} {_fmt(decision.value)} vs "
                                     f"{_fmt(decision.champion_value)} here: {outcome} ({decision.reason})")


def publish_decisions(client: MlflowClient, target: TrackingTarget, decisions: list[Decision], alias: str) -> None:
    """The decisions as the pipeline run's MLflow tag and as the Prefect markdown artifact `<pipeline>-promotion`."""
    if not decisions:
        return
    client.set_tag(target.parent_run_id, TAG_DECISION_OF_RUN, "; ".join(d.summary() for d in decisions))
    lines = [f"| version | step | {decisions[0].metric} | champion before | its {decisions[0].metric} | decision |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {d.model} v{d.version} | {d.step} | {_fmt(d.value)} | {'v' + d.champion if d.champion else '-'} "
              f"| {_fmt(d.champion_value)} | {'**promoted**' if d.promoted else 'not promoted'}: {d.reason} |"
              for d in decisions]
    holder = next((d.version for d in reversed(decisions) if d.promoted), decisions[0].champion)
    lines += ["", f"`models:/{decisions[0].model}@{alias}` is version {holder}." if holder else ""]
    create_markdown_artifact("\n".join(lines), key=artifact_key(target.pipeline, "promotion"),
                             description=f"Champion/challenger decision on {decisions[0].metric}.")


def _evaluator(config, client: MlflowClient):
    """Evaluate a version once per evaluation set: returns metrics(version, step) -> {eval_*: value}."""
    from fluxflow.evaluation.checkpoint_eval import evaluate_checkpoint

    promotion, found = config.promotion, {}

    def metrics(version: str, step: str) -> dict[str, float]:
        # At the size the step of this config trains, the champion as the challenger: each was measured at its own
        # training size (other images, another feature network), and a 16 px champion kept the alias against 32 px
        dataset, size = evaluation_dataset(config, step), config.step(step).img_size
        if (version, dataset, size) not in found:
            with tempfile.TemporaryDirectory(prefix="fluxflow-model-") as scratch:
                checkpoint = model_checkpoint(f"models:/{config.tracking.model_name}/{version}",
                                              client.tracking_uri, Path(scratch))
                found[version, dataset, size] = evaluate_checkpoint(
                    checkpoint, config, dataset, seeds=promotion.seeds, n_images=promotion.n_images,
                    sampler_steps=promotion.sampler_steps, size=size)
        return found[version, dataset, size]

    return metrics


def promote(config, client: MlflowClient, versions: list[str]) -> list[Decision]:
    """Compare each new version (in order) with the version holding the alias, moving it when the new one wins.
    With `promotion.beyond_spread`, the replicates of one hypothesis are decided together, over all of this run's
    versions of it (`versions`: the checkpoints in place, those an earlier run decided included): only the best of
    them can take the alias, and only when the hypothesis beats the champion beyond its replicate spread."""
    name, alias = config.tracking.model_name, config.promotion.alias
    metrics, decisions = _evaluator(config, client), []
    tags = {v: client.get_model_version(name, v).tags for v in versions}
    steps = {v: tags[v].get(TAG_STEP_NAME, "") for v in versions}
    resolved = {step.name: step for step in config.resolved_steps()}
    seed_of = {name: step.seed for name, step in resolved.items()}  # pairs replicates by seed
    # Each version -> the versions (itself included) whose steps replicate the same hypothesis
    # (fluxflow/config/steps.py); a step the config no longer has is a hypothesis of its own. All of them, decided or
    # not: a hypothesis grown from seeds [0, 1] to [0, 1, 2] was judged on its new replicate alone ("one replicate: no
    # interval can be given"), and its best replicate, decided before, was never looked at again.
    hypothesis = {v: resolved[step].hypothesis if step in resolved else step for v, step in steps.items()}
    replicates = {v: [w for w in steps if hypothesis[w] == hypothesis[v]] for v in steps}
    # Decided once: a run of a finished pipeline registers the same versions again (the registration finds them),
    # and deciding again overwrote their decision ("not promoted (already the champion)" on the promoted one).
    undecided = {v for v in versions if TAG_PROMOTION + "decision" not in tags[v]}
    beyond = config.promotion.beyond_spread
    # ... except the best replicate of a hypothesis with new replicates, which decides for all of them again.
    again = {v for v in versions if beyond and v not in undecided and undecided & set(replicates[v])}
    for version in [v for v in versions if v in undecided or v in again]:
        step = steps[version]
        metric, direction = promotion_metric(config, step)
        holder = version_by_alias(client, name, alias)
        champion = str(holder.version) if holder else None
        if version in again and (champion in replicates[version] or version != _best(
                {v: metrics(v, steps[v]).get(metric, math.nan) for v in replicates[version]}, direction)):
            continue  # its hypothesis holds the alias already (not promoted twice), or another replicate decides
        value = metrics(version, step).get(metric, math.nan)
        if champion == version:
            promoted, reason, champion_value = False, f"already the {alias}", value
        else:
            unevaluated, gone = None, None
            try:
                champion_value = metrics(champion, step).get(metric, math.nan) if champion else None
            except Exception as exc:  # its files are gone, or it cannot make this evaluation's images
                # Files gone: no one can load the alias (fluxflow-generate refuses it), and keeping it refused every
                # later version for good. It scores no number, so it is replaced as a NaN champion is.
                gone = missing_files_problem(client, name, champion)
                champion_value = math.nan if gone else None
                unevaluated = None if gone else f"the {alias} (version {champion}) could not be evaluated: {exc}"
            if unevaluated:
                promoted, reason = False, unevaluated
            else:
                if beyond:
                    group = {v: metrics(v, steps[v]).get(metric, math.nan) for v in replicates[version]}
                    rivals = {v: metrics(v, step).get(metric, math.nan) for v in replicates.get(champion, [])
                              if v not in group}
                    seeds = ([seed_of.get(steps[v]) for v in group], [seed_of.get(steps[v]) for v in rivals])
                    promoted, reason = _decide_hypothesis(version, group, champion, champion_value, rivals, seeds,
                                                          direction, config.promotion.min_improvement, alias)
                else:
                    promoted, reason = decide(value, champion_value, direction, config.promotion.min_improvement)
                if gone and promoted:  # said instead of "the champion's value nan is not a number"
                    reason = f"the {alias} cannot be evaluated: {gone}"
        decisions.append(Decision(name, version, step, metric, direction, config.promotion.min_improvement, value,
                                  champion, champion_value, promoted, reason))
        if promoted:
            client.set_registered_model_alias(name, alias, version)
    return decisions


def _decide_hypothesis(version: str, group: dict[str, float], champion: str | None, champion_value: float | None,
                       rivals: dict[str, float], seeds: tuple[list, list], direction: str, min_improvement: float,
                       alias: str) -> tuple[bool, str]:
    """(promote?, why) for `version`, one of the replicates of a hypothesis (`group`: version -> value) under
    `beyond_spread`: only its best decides, and a hypothesis that holds the alias is not challenged by its own."""
    best = _best(group, direction)
    if best != version:
        return False, f"a replicate of its hypothesis: version {best}, the best, decides"
    if champion in group:
        return False, f"its hypothesis holds the {alias} already (version {champion})"
    # A champion trained in this run with replicates of its own (`rivals`, e.g. hypothesis `a`'s best, promoted a
    # moment ago) is measured by all of them, as the comparison table measures `a`; its single value was `a`'s
    # luckiest seed, and the two disagreed on the same numbers.
    against = list(rivals.values()) if len(rivals) > 1 else champion_value
    return decide_beyond_spread(list(group.values()), against, direction, min_improvement, seeds)


def _best(values: dict[str, float], direction: str) -> str:
    """The version with the best value (`values`: one hypothesis' replicates). A nan is never the best (max() kept a
    nan it started with, and the others named it)."""
    sign = 1 if direction == "maximize" else -1
    return max(values, key=lambda v: (math.isfinite(values[v]), sign * values[v]))


@task(name="register-model", task_run_name="register {step_name}", cache_policy=NO_CACHE, persist_result=False)
def register_task(resolved: dict, outcome: dict, tracking: dict, step_name: str) -> str:
    """Register one step's final checkpoint; returns the version. `resolved`: the run's config (`run_dict`)."""
    config, target = run_config_of(resolved), TrackingTarget(**tracking)
    client = MlflowClient(target.tracking_uri)
    version = register_step(client, config.tracking.model_name, StepOutcome.from_dict(outcome), config,
                            target.parent_run_id)
    get_run_logger().info("Step %s is version %s of registered model %s", step_name, version.version,
                          config.tracking.model_name)
    return str(version.version)


@task(name="promote-model", task_run_name="promote {model_name}", cache_policy=NO_CACHE, persist_result=False)
def promote_task(resolved: dict, versions: list[str], tracking: dict, model_name: str) -> list[dict]:
    """Evaluate (holding the host's GPU slot, like a step: flows/gpu_slot.py), decide, move the alias, tag and
    publish; returns each decision as a dict."""
    config, target = run_config_of(resolved), TrackingTarget(**tracking)
    client = MlflowClient(target.tracking_uri)
    with gpu_slot(f"The promotion of {model_name}", TaskRunContext.get().task_run.id):
        decisions = promote(config, client, versions)
    for version in sorted(set(versions) - {d.version for d in decisions}, key=int):  # decided by an earlier run
        get_run_logger().info("%s version %s: decided by an earlier run (%s), not again", model_name, version,
                              client.get_model_version(model_name, version).tags[TAG_PROMOTION + "decision"])
    for decision in decisions:
        tag_versions(client, decision)
        get_run_logger().info(decision.summary())
    publish_decisions(client, target, decisions, config.promotion.alias)
    return [asdict(d) for d in decisions]


def release_models(config, resolved: dict, outcomes: list[StepOutcome], target: TrackingTarget) -> list[dict]:
    """After the leaf steps: register each registered step's checkpoint, then promote (unless promotion is off).
    Returns the decisions as dicts ([] when nothing is registered)."""
    wanted = registered_steps(config)
    finished = [o for o in outcomes if o.result.step_name in wanted and o.run_id]
    versions = [register_task(resolved, o.to_dict(), target.to_dict(), step_name=o.result.step_name)
                for o in finished]
    if not versions or not config.promotion.enabled:
        return []
    return promote_task(resolved, versions, target.to_dict(), model_name=config.tracking.model_name)


def release_lines(client: MlflowClient, config, output_dir: str) -> list[str]:
    """For the end of `fluxflow-train`: the versions of the checkpoints in place in this output directory, those of
    checkpoints since set aside or deleted (earlier configs, earlier runs) on one line, and which one is champion."""
    from fluxflow.checkpoints.step_files import plan_step  # torch-free; the run has imported it anyway

    steps = registered_steps(config)
    if not steps:
        return []
    name, alias = config.tracking.model_name, config.promotion.alias
    in_place = {step: done.ref.sha256 for step in steps if (done := plan_step(config, step).completed())}
    lines, earlier = [], []
    for v in versions_of(client, name, {TAG_OUTPUT_DIR: output_dir}):
        step = v.tags.get(TAG_STEP_NAME)
        if step in in_place and v.tags.get(TAG_CHECKPOINT_SHA256) == in_place[step]:
            lines.append(f"Model:       {name} version {v.version} (step {step}): "
                         f"{v.tags.get(TAG_PROMOTION + 'decision', 'registered')}")
        else:
            earlier.append(str(v.version))
    if earlier:
        lines.append(f"Earlier:     {name} version{'s' if len(earlier) > 1 else ''} {', '.join(earlier)}, of "
                     "checkpoints this output directory no longer holds in place (set aside or deleted), or of steps "
                     "this config does not register")
    holder = version_by_alias(client, name, alias)
    if holder is not None:
        lines.append(f"Champion:    models:/{name}@{alias} is version {holder.version}")
    return lines
