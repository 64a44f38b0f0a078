"""What a step's processes (`training.distributed`: nodes × nproc_per_node) need before a run starts.

Checked at validation, so that a multi-node config fails with one line naming the field instead of minutes later in
a worker: Ray Train must be installed (the `cluster` extra) and the executor be Ray's (`training.executor.kind: ray`),
and every step's batch must split evenly over the processes (each rank loads batch_size / processes items of every
global batch).
"""
from __future__ import annotations

import importlib.util

from fluxflow.config.errors import ConfigIssue

RAY_MISSING = ("is {nodes}: a step across nodes trains through Ray Train, which is not installed "
               "(pip install 'fluxflow-pipelines[cluster]')")


def process_issues(config) -> list[ConfigIssue]:
    dist = config.training.distributed
    issues = []
    # find_spec: whether Ray is there, without the second its import costs (`--validate-pipeline` stays light).
    if dist.uses_ray_train and importlib.util.find_spec("ray") is None:
        issues.append(ConfigIssue("training.distributed.nodes", RAY_MISSING.format(nodes=dist.nodes)))
    if dist.uses_ray_train and config.training.executor.kind != "ray":
        issues.append(ConfigIssue("training.distributed.nodes", f"is {dist.nodes}: a step across nodes trains on a "
                                  "Ray cluster, which needs training.executor.kind: ray"))
    if dist.processes > 1:
        for step in config.written_steps():
            if step.batch_size % dist.processes:
                issues.append(ConfigIssue(f"training.pipeline.steps[{step.index}].batch_size",
                                          f"{step.batch_size} is not divisible by the step's {dist.processes} "
                                          "processes (training.distributed: nodes × nproc_per_node)"))
    return issues
