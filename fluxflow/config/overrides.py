"""`--set KEY=VALUE`: change a value of the config file without editing it (CLI flag and deployment parameter).

KEY is a dotted path into the file (`training.seed`, `model.flow_depth`); a step is addressed by its name:
`training.pipeline.steps.flow.lr` is the `lr` of the step named `flow`. VALUE is YAML, read as the file is read
(`3e-4` is a number, `[0, 1]` a list, `{type: AdamW}` a mapping). Missing sections on the way are created; the result
is validated like the file, so an unknown key gets the file's message ("unknown key (did you mean 'lr'?)").
Overrides apply in order, before the keys of the original tool are mapped (fluxflow/config/legacy.py).
"""
from __future__ import annotations

import copy
from typing import Any

import yaml

from fluxflow.config.errors import ConfigError, ConfigIssue, did_you_mean

STEPS_PATH = ("training", "pipeline", "steps")


def parse_override(text: str, loader: type[yaml.SafeLoader]) -> tuple[list[str], Any]:
    """'training.pipeline.steps.flow.lr=3e-4' -> (['training', 'pipeline', 'steps', 'flow', 'lr'], 0.0003)."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError([ConfigIssue(f"--set {text}", "expected KEY=VALUE with a dotted KEY, e.g. training.seed=1 "
                                                        "or training.pipeline.steps.flow.lr=3e-4")])
    try:
        parsed = yaml.load(value, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(f"--set {key}", f"the value is broken YAML: {' '.join(str(exc).split())}")]) \
            from None
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str], loader: type[yaml.SafeLoader]) -> dict[str, Any]:
    """A copy of the parsed file with every override set; ConfigError naming each one that cannot be placed."""
    raw = copy.deepcopy(raw)
    issues = []
    for text in overrides:
        parts, value = parse_override(text, loader)
        problem = _set(raw, parts, value)
        if problem:
            issues.append(ConfigIssue(f"--set {'.'.join(parts)}", problem))
    if issues:
        raise ConfigError(issues)
    return raw


def _set(raw: dict[str, Any], parts: list[str], value: Any) -> str | None:
    """Set raw[parts...] = value, stepping into a step by its name under training.pipeline.steps; the problem or None."""
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list) and tuple(parts[:depth]) == STEPS_PATH:
            names = [s["name"] for s in node if isinstance(s, dict) and isinstance(s.get("name"), str)]
            if part not in names:
                return f"no step named {part!r}{did_you_mean(part, names)} (steps: {', '.join(names) or 'none'})"
            node = next(s for s in node if isinstance(s, dict) and s.get("name") == part)
            continue
        if not isinstance(node, dict):
            return f"{'.'.join(parts[:depth])} is {node!r}, not a section"
        if node.get(part) is None:  # absent, or an empty section (`defaults:` with nothing under it)
            node[part] = {}
        node = node[part]
    if isinstance(node, list) and tuple(parts[:-1]) == STEPS_PATH:
        return f"a whole step cannot be set; set its keys, e.g. {'.'.join(parts)}.lr=3e-4"
    if not isinstance(node, dict):
        return f"{'.'.join(parts[:-1])} is {node!r}, not a section"
    node[parts[-1]] = value
    return None
