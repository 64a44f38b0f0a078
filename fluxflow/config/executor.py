"""Where a pipeline's steps run (`training.executor`) and what each step asks of the machine (`resources:`).

`local` (the default): every step is a task of the flow's own process, on its host; GPUs are claimed with host-local
locks (fluxflow/runtime/gpu_claim.py) and a Prefect tag limit. `ray`: every step is a Ray task on a Ray cluster
(flows/ray_steps.py), submitted with its step's resources, so that Ray's resource accounting decides where and when it
runs. `resources:` may be set in `training.pipeline.defaults` and on each step (deep-merged like every step field); the
local executor ignores it. No Ray import here: the config is validated without it.

A step's processes (`training.distributed`) are checked here too (`process_issues`), so that a multi-node config fails
with one line naming the field instead of minutes later in a worker.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from decimal import Decimal
from typing import Literal

from pydantic import Field, field_validator

from fluxflow.config.errors import STEPS, ConfigIssue
from fluxflow.config.optim import StrictModel

# Names Ray keeps for its own accounting -> the field of StepResources that asks for them instead.
RESERVED_RESOURCES = {"CPU": "cpus", "GPU": "gpus", "memory": "memory", "object_store_memory": "memory"}
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | str) -> int:
    """`4GB`, `512MiB`, `1e9` or a number of bytes, as bytes. A bare number must be a whole number of bytes: 0.5 was
    truncated to 0, which reserves nothing; a fraction of a unit (`0.0001KB`) is rounded up, to reserve what it says
    (in decimal, so that rounding up leaves 1.1GB 1100000000 bytes where float arithmetic made it one more)."""
    if isinstance(value, (int, float)) and math.isfinite(value):  # int(.inf) is an OverflowError, not a ValueError
        number, scale = Decimal(value if isinstance(value, int) else repr(value)), 1  # 0.1, not its binary expansion
    else:
        match = _SIZE.match(str(value))
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"{value!r} is not a size: write e.g. 4GB, 512MiB or a number of bytes")
        number, scale = Decimal(match.group(1)), _UNITS[match.group(2).lower()]
    if scale == 1 and number != int(number):
        raise ValueError(f"{number} is not a whole number of bytes (memory is in bytes): write e.g. {number}GB or "
                         "512MiB")
    return math.ceil(number * scale)


class StepResources(StrictModel):
    """What one step asks of a Ray node. None: gpus = the step's processes when it trains on CUDA, else 0; cpus = 1;
    memory = no reservation. `custom`: Ray custom resources a node offers (`ray start --resources`), e.g.
    `{accelerator_type:H100: 1}` or a node label `{node_a: 1}`."""

    gpus: float | None = Field(None, ge=0)
    cpus: float | None = Field(None, ge=0)
    memory: int | None = Field(None, ge=0, description="bytes; 4GB, 512MiB in the file")
    custom: dict[str, float] = Field(default_factory=dict)

    _memory = field_validator("memory", mode="before")(lambda value: None if value is None else parse_bytes(value))


class ExecutorConfig(StrictModel):
    """`training.executor`. `address`: the Ray cluster (`host:port` of its head, `ray://host:10001`, or `auto`: the
    cluster `ray start` started on this machine); None: RAY_ADDRESS, else `auto`."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, min_length=1)

    def ray_address(self) -> str:
        return self.address or os.environ.get("RAY_ADDRESS") or "auto"


def executor_warnings(config) -> list[str]:
    """A Ray cluster's address under the local executor: accepted, it looked like a setting of where the steps run."""
    executor = config.training.executor
    if executor.kind == "local" and executor.address is not None:
        return ["training.executor.address: has no effect: training.executor.kind is local (the steps run in this "
                "process); set kind: ray to run them on that cluster"]
    return []


# Ray counts resources in units of 1/10,000 (ray._raylet.RESOURCE_UNIT_SCALING): a smaller amount above 0 is a
# ValueError at submission, which ended the whole flow after the steps before it had trained.
RESOURCE_UNIT = 1e-4


def resources_issues(config) -> list[ConfigIssue]:
    """What Ray would refuse at submission, said at load: fractional GPUs above 1, amounts below Ray's unit, and
    custom resources that are negative or named like Ray's own (which the fields set)."""
    issues, pipe = [], config.training.pipeline
    places = [(("training", "pipeline", "defaults", "resources"), pipe.defaults.resources)]
    places += [((*STEPS, i, "resources"), s.resources) for i, s in enumerate(pipe.steps)]
    for loc, resources in places:
        if resources is None:
            continue
        if resources.gpus is not None and resources.gpus > 1 and resources.gpus != int(resources.gpus):
            issues.append(ConfigIssue(loc + ("gpus",), f"{resources.gpus:g}: Ray shares a GPU only "
                                      "below 1; above that ask for a whole number"))
        amounts = {("gpus",): resources.gpus, ("cpus",): resources.cpus,
                   **{("custom", name): amount for name, amount in resources.custom.items()}}
        issues += [ConfigIssue(loc + field, f"{amount:g}: Ray counts resources in units of {RESOURCE_UNIT:g}; ask "
                               f"for 0 or at least {RESOURCE_UNIT:g}")
                   for field, amount in amounts.items() if amount is not None and 0 < amount < RESOURCE_UNIT]
        for name, amount in resources.custom.items():
            if name in RESERVED_RESOURCES:
                issues.append(ConfigIssue(loc + ("custom", name), f"is Ray's own resource: set "
                                          f"resources.{RESERVED_RESOURCES[name]} instead"))
            elif amount <= 0:
                issues.append(ConfigIssue(loc + ("custom", name), f"{amount:g}: must be above 0"))
    return issues


def process_issues(config) -> list[ConfigIssue]:
    dist, issues = config.training.distributed, []
    # find_spec: whether they are there, without the second Ray's import costs (`--validate-pipeline` stays light).
    # Checked here, not at the run's start: found there, it was a traceback after the run had begun.
    missing = [name for name, module in (("Ray", "ray"), ("prefect-ray", "prefect_ray"))
               if config.training.executor.kind == "ray" and importlib.util.find_spec(module) is None]
    if missing:
        issues.append(ConfigIssue("training.executor.kind", f"is ray, which needs {' and '.join(missing)}: not "
                                  "installed (pip install 'fluxflow-pipelines[cluster]')"))
    if dist.uses_ray_train and config.training.executor.kind != "ray":
        issues.append(ConfigIssue("training.distributed.nodes", f"is {dist.nodes}: a step across nodes trains on a "
                                  "Ray cluster, which needs training.executor.kind: ray"))
    # Each rank loads batch_size / processes items of every global batch.
    return issues + [ConfigIssue((*STEPS, step.index, "batch_size"),
                                 f"{step.batch_size} is not divisible by the step's {dist.processes} processes "
                                 "(training.distributed: nodes × nproc_per_node)")
                     for step in config.written_steps() if step.batch_size % dist.processes]  # any % 1 is 0
