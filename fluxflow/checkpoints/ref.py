"""What one pipeline step hands to the next: a reference to its checkpoint and a small result.

No torch here: Prefect tasks pass these between processes (and machines) as plain JSON, and the flow layer must be
able to read them without importing the training core. `to_dict()` gives JSON-able values only; `from_dict()`
accepts exactly what `to_dict()` wrote and names any missing or unknown key.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Iterator, Literal, Self, get_args

Outcome = Literal["met", "epochs_done", "max_epochs_reached"]
OUTCOMES: tuple[str, ...] = get_args(Outcome)


def _check_keys(cls: type, data: dict[str, Any]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    found = (("missing", sorted(n for n in required if n not in data)), ("unknown", sorted(set(data) - names)))
    parts = [f"{label} {', '.join(keys)}" for label, keys in found if keys]
    if parts:
        raise ValueError(f"{cls.__name__}.from_dict: {'; '.join(parts)}")


class _FlatRecord:
    """A dataclass whose fields are each an int or a str (the annotation says which), as a JSON dict and back."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _check_keys(cls, data)
        return cls(**{f.name: (int if f.type == "int" else str)(data[f.name]) for f in fields(cls)})


@dataclass(frozen=True)
class CheckpointRef(_FlatRecord):
    """A finished step's checkpoint: where it is (local path or fsspec URI), its content hash, and its position."""

    uri: str
    sha256: str
    step_name: str
    step_key: str
    global_step: int
    epoch: int


@dataclass
class StepResult:
    """How a step ended."""

    step_name: str
    # "met" (loss_threshold reached), "epochs_done" (epoch transition after n_epochs) or "max_epochs_reached"
    # (loss_threshold never met within max_epochs)
    outcome: Outcome
    epochs_done: int
    final_metrics: dict[str, float] = field(default_factory=dict)
    trained: bool = True  # False when the step was skipped: its final.pt already existed for the same step key
    resumed_from: tuple[int, int] | None = None  # (epoch, batch) of the latest.pt an interrupted step continued from

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"StepResult.outcome must be one of {', '.join(OUTCOMES)}; got {self.outcome!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "step_name": self.step_name,
            "outcome": self.outcome,
            "epochs_done": int(self.epochs_done),
            # nan/inf as null, as the metrics file writes them: ref.json holds JSON that every reader parses (Python's
            # NaN is not JSON; JavaScript's JSON.parse refused a diverged step's ref.json)
            "final_metrics": {str(k): float(v) if math.isfinite(v) else None for k, v in self.final_metrics.items()},
            "trained": bool(self.trained),
            # JSON has no tuples: a two-element list on the wire, a tuple again after from_dict.
            "resumed_from": list(self.resumed_from) if self.resumed_from is not None else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        _check_keys(cls, data)
        resumed = data.get("resumed_from")
        return cls(
            step_name=str(data["step_name"]),
            outcome=data["outcome"],
            epochs_done=int(data["epochs_done"]),
            final_metrics={str(k): math.nan if v is None else float(v)
                           for k, v in (data.get("final_metrics") or {}).items()},
            trained=bool(data.get("trained", True)),
            resumed_from=(int(resumed[0]), int(resumed[1])) if resumed is not None else None,
        )


@dataclass(frozen=True)
class StepNode(_FlatRecord):
    """The machine a step trained on, where an executor places steps on several (Ray: its node id and hostname)."""

    node_id: str
    hostname: str

    def __str__(self) -> str:
        return f"Ray node {self.node_id[:12]} ({self.hostname})"


@dataclass(frozen=True)
class StepOutcome:
    """What a finished step hands on: what `run_step` returns, and, with the MLflow run filled in by the Prefect
    task, what the task returns as `to_dict()` and the flow reads back with `from_dict()`.

    Unpacks as `ref, result = run_step(...)`: the run fields belong to the orchestrator, not to the step's result.
    """

    ref: CheckpointRef
    result: StepResult
    run_id: str | None = None  # the step's MLflow run (None without MLflow tracking)
    run_url: str | None = None  # that run in the MLflow UI
    node: StepNode | None = None  # where it trained, when the executor chose (None: the flow's own host)
    # A step across nodes (Ray Train): the node of each of its ranks, by rank; `node` is then where its task waited.
    workers: tuple[StepNode, ...] = ()

    def __iter__(self) -> Iterator[CheckpointRef | StepResult]:
        return iter((self.ref, self.result))

    def placement(self) -> str:
        """Where it trained, for the console and the flow's log ("" where the executor did not choose): the ranks
        of a Ray Train step by node, in the order of their first rank ("ranks 0, 1 on Ray node 1f2e... (gpu-1); rank
        2 on Ray node 9a8b... (gpu-2)")."""
        if not self.workers:
            return str(self.node) if self.node else ""
        ranks: dict[StepNode, list[int]] = {}
        for rank, node in enumerate(self.workers):
            ranks.setdefault(node, []).append(rank)
        return f"{len(self.workers)} Ray Train workers: " + "; ".join(
            f"rank{'s' if len(r) > 1 else ''} {', '.join(map(str, r))} on {node}" for node, r in ranks.items())

    def to_dict(self) -> dict[str, Any]:
        data = {"ref": self.ref.to_dict(), "result": self.result.to_dict(), "run_id": self.run_id,
                "run_url": self.run_url}
        if self.node is not None:  # absent, not None, on the local path: the dicts readers already know
            data["node"] = self.node.to_dict()
        if self.workers:
            data["workers"] = [w.to_dict() for w in self.workers]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepOutcome:
        _check_keys(cls, data)
        node = data.get("node")
        return cls(CheckpointRef.from_dict(data["ref"]), StepResult.from_dict(data["result"]),
                   run_id=data.get("run_id"), run_url=data.get("run_url"),
                   node=StepNode.from_dict(node) if node is not None else None,
                   workers=tuple(StepNode.from_dict(w) for w in data.get("workers") or ()))
