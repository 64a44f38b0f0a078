"""What a pipeline step's end means for the others: the one failure rule of both executors (the bare
`fluxflow/train/pipeline.py::run_pipeline` and the Prefect flow in `flows/pipeline_flow.py`).

A step that fails, or that misses its loss threshold with `on_missed: fail`, stops its own subtree only: sibling
branches are other hypotheses and still run. At the end the run fails with one error naming every problem. An
interrupt (Ctrl-C, a stop request) is not a failure: the executors let it stop everything at once.

No torch here: the flow imports this before any step runs.
"""
from __future__ import annotations

from collections.abc import Sequence

from fluxflow.config.dag import children_of, descendants


class PipelineFailed(RuntimeError):
    """Some step failed or missed its threshold with `on_missed: fail`; the message names them. For the end of a run
    that lists every step: `finished`, the outcomes of the steps that finished (as the executor returns them), and
    `not_finished`, how each other step ended (`PipelineSchedule.not_finished`)."""

    def __init__(self, message: str, finished: Sequence = (), not_finished: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.finished, self.not_finished = list(finished), dict(not_finished or {})


def missed_threshold_message(step) -> str:
    t = step.transition_on
    return (
        f"Step {step.name}: {t.metric} did not fall below {t.threshold} within {t.max_epochs} "
        f"epoch{'' if t.max_epochs == 1 else 's'} "
        f"(max_epochs reached); on_missed: {step.on_missed}"
    )


class PipelineSchedule:
    """Which steps may start, as steps finish or fail. Steps need `.name`, `.parent`, `.on_missed` and
    `.transition_on` (a config's `resolved_steps()`)."""

    def __init__(self, steps: Sequence) -> None:
        self.steps = list(steps)
        self.by_name = {step.name: step for step in self.steps}
        self.children = children_of(self.steps)
        self.problems: list[str] = []
        self.not_run: dict[str, str] = {}  # step -> why it did not run (an ancestor failed or missed)
        self.failed: dict[str, str] = {}  # step -> its error, in one line
        self.first_error: BaseException | None = None

    def roots(self) -> list[str]:
        return list(self.children.get(None, []))

    def step_failed(self, name: str, error: BaseException, started: bool = True) -> None:
        """The step raised (after any retries), or could not be started (`started` False: it is "not run"): its
        subtree does not run."""
        self.problems.append(f"step {name} failed: {error}")
        self.first_error = self.first_error or error
        line = " ".join(str(error).split())  # a table cell, a printed line
        if started:
            self.failed[name] = line
        else:
            self.not_run[name] = f"not run: {line}"
        self._stop_below(name, f"not run: {name} failed")

    def step_finished(self, name: str, outcome: str) -> list[str]:
        """The children to start now: none when the step missed its threshold with `on_missed: fail`."""
        step = self.by_name[name]
        if outcome == "max_epochs_reached" and step.on_missed == "fail":
            self.problems.append(missed_threshold_message(step))
            self._stop_below(name, f"not run: {name} missed its threshold")
            return []
        return list(self.children.get(name, []))

    def not_finished(self) -> dict[str, str]:
        """Each step that failed or did not run -> how it ended: `failed: ERROR`, `not run: a failed`."""
        return {**{name: f"failed: {error}" for name, error in self.failed.items()}, **self.not_run}

    def raise_if_failed(self, finished: Sequence = ()) -> None:
        """One error naming every problem, chained to the first step's exception (its traceback); `finished`: the
        outcomes of the steps that finished, which it carries with `not_finished()`."""
        if self.problems:
            raise PipelineFailed("; ".join(self.problems), finished, self.not_finished()) from self.first_error

    def _stop_below(self, name: str, why: str) -> None:
        self.not_run.update({below: why for below in descendants(self.steps, [name])})
