"""The pipeline as a tree: which step starts from which.

A resolved step names its `parent` (the step given by `after:`, or the previous step in file order); steps that share
a parent are branches, i.e. competing hypotheses trained from the same checkpoint. Validation (fluxflow.config) has
already rejected unknown parents and cycles, so these functions only read the tree. They take anything with `.name`
and `.parent`, which keeps them free of torch and of the config schema. Both executors (fluxflow/train/pipeline.py
and flows/pipeline_flow.py) schedule from them.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol


class StepNode(Protocol):
    name: str
    parent: str | None


def children_of(steps: Sequence[StepNode]) -> dict[str | None, list[str]]:
    """Parent name (None for the roots) -> its child steps, in file order."""
    children: dict[str | None, list[str]] = {}
    for step in steps:
        children.setdefault(step.parent, []).append(step.name)
    return children


def branch_names(steps: Sequence[StepNode]) -> list[str]:
    """Names of every step that has a sibling (the hypotheses of one parent, to compare), in file order."""
    grouped = {name for names in children_of(steps).values() if len(names) > 1 for name in names}
    return [step.name for step in steps if step.name in grouped]


def leaf_names(steps: Sequence[StepNode]) -> list[str]:
    """Steps nothing starts from: the end of each hypothesis."""
    parents = {step.parent for step in steps}
    return [step.name for step in steps if step.name not in parents]


def descendants(steps: Sequence[StepNode], names: Iterable[str]) -> list[str]:
    """Every step below the given ones (not including them), in file order."""
    below, frontier, children = set(), set(names), children_of(steps)
    while frontier:
        found = {child for name in frontier for child in children.get(name, [])}
        frontier = found - below
        below |= found
    return [step.name for step in steps if step.name in below]


def depth(steps: Sequence[StepNode], name: str) -> int:
    """How many steps lie above `name` on its way to a root (0 for a root). Branches of one parent share it, where
    their positions in the file differ."""
    parents, n = {s.name: s.parent for s in steps}, 0
    while parents[name] is not None:
        name, n = parents[name], n + 1
    return n


def execution_order(steps: Sequence[StepNode]) -> list:
    """Parents before children, file order otherwise."""
    by_name, ordered = {s.name: s for s in steps}, {}

    def place(step) -> None:
        if step.parent is not None and step.parent not in ordered:
            place(by_name[step.parent])
        ordered[step.name] = step

    for step in steps:  # placing a step again keeps its place
        place(step)
    return list(ordered.values())
