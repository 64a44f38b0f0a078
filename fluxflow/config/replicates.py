"""Seed replicates: the same steps trained once per seed, as branches grouped under one hypothesis.

    training:
      replicates:
        seeds: [0, 1, 2]
        from_steps: [spade_off, spade_on]   # these steps and every step below them; omitted: every step

Each replicated step becomes one step per seed, named `<step>-seed<seed>`, with that seed (data order, fresh weights,
noise) and its parent's replica of the same seed as its parent (or the shared step it starts from): its own
checkpoints, step key and nested MLflow run. Every replica keeps the written step's name as its `hypothesis`, which
`fluxflow-compare` and the pipeline's MLflow run group by (flows/hypotheses.py). The expansion happens when steps are
resolved (PipelineConfig.resolved_steps): the flow, the bare runner, step keys and resume see ordinary steps.
"""
from __future__ import annotations

from pydantic import Field, field_validator

from fluxflow.config.dag import descendants
from fluxflow.config.errors import ConfigIssue, did_you_mean, format_path
from fluxflow.config.optim import StrictModel

NAME_LIMIT = 64  # as step names (fluxflow/config/load.py NAME_RE)


class ReplicatesConfig(StrictModel):
    seeds: list[int] = Field(min_length=1, description="one replicate per seed")
    from_steps: list[str] | None = Field(None, min_length=1, description="replicated steps (and all below them); "
                                                                         "None: every step")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct (the same seed twice trains the same replicate twice)")
        return seeds


def replica_name(step: str, seed: int) -> str:
    return f"{step}-seed{seed}"


def replicated_names(steps: list, replicates: ReplicatesConfig) -> list[str]:
    """The written steps that are replicated, in file order."""
    if replicates.from_steps is None:
        return [step.name for step in steps]
    chosen = set(replicates.from_steps) | set(descendants(steps, replicates.from_steps))
    return [step.name for step in steps if step.name in chosen]


def replicate_steps(steps: list, replicates: ReplicatesConfig | None) -> list:
    """The resolved steps with each replicated one replaced by one copy per seed (next to each other, in file
    order), indices renumbered. Without replicates: `steps` as they are."""
    if replicates is None:
        return steps
    chosen = set(replicated_names(steps, replicates))
    expanded = []
    for step in steps:
        if step.name not in chosen:
            expanded.append(step)
            continue
        for seed in replicates.seeds:
            parent = replica_name(step.parent, seed) if step.parent in chosen else step.parent
            expanded.append(step.model_copy(update={"name": replica_name(step.name, seed), "parent": parent,
                                                    "seed": seed}))
    return [step.model_copy(update={"index": index}) for index, step in enumerate(expanded)]


def replicate_issues(written: list, replicates: ReplicatesConfig | None) -> list[ConfigIssue]:
    """`from_steps` names written steps; replica names are valid step names and collide with no written one."""
    if replicates is None:
        return []
    names = [step.name for step in written]
    issues = []
    for i, name in enumerate(replicates.from_steps or []):
        if name not in names:
            issues.append(ConfigIssue(format_path(("training", "replicates", "from_steps", i)),
                                      f"no step is named {name!r}{did_you_mean(name, names)}"))
    if issues:
        return issues
    for name in replicated_names(written, replicates):
        for seed in replicates.seeds:
            replica = replica_name(name, seed)
            if replica in names:
                issues.append(ConfigIssue("training.replicates", f"replica {replica!r} of step {name!r} has the "
                                                                 "name of a step of the file: rename that step"))
            elif len(replica) > NAME_LIMIT:  # the step name passed its own checks: only the length can fail
                issues.append(ConfigIssue("training.replicates", f"replica name {replica!r} of step {name!r} is "
                                                                 f"longer than {NAME_LIMIT} characters: shorten the "
                                                                 "step name"))
    return issues
