"""Where a step's files live and whether they are still valid for the step's current configuration.

A step's key (fluxflow/checkpoints/step_key.py) is known before anything runs: a changed step changes its key and
every key below it. Files written for another key are moved aside to `checkpoints/<step>/superseded/<old key>/`
(never deleted), with a line that says what changed, and come back when the config does (`reuse_set_aside`). The key
names the parent's config, not its bytes (a parent trained again on a GPU, or on another device, has other weights):
ref.json also keeps the sha256 of the checkpoint the step started from, and a step trained from another file than
its parent's final.pt now is not complete.

A kill can land between any two writes of a finishing step: after `final.pt` but before `ref.json`, the step is
recognised by the key and `completed` flag inside `final.pt` and completed without retraining (not set aside).

An output on an object store (fluxflow/storage/location.py) is trained in its local staging directory: `pull` brings
the step's files from the store at its start, and each write is published after it is made locally (`publish_*`,
fluxflow/storage/mirror.py), `ref.json` last. For a local output these are no-ops.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fluxflow.checkpoints.atomic_file import atomic_write
from fluxflow.checkpoints.latest import previous_of
from fluxflow.checkpoints.ref import CheckpointRef, StepOutcome, StepResult
from fluxflow.checkpoints.step_state import StepState
from fluxflow.config.caching import CACHE_FIELDS
from fluxflow.config.dag import execution_order
from fluxflow.config.heldout_pairs import draws_pairs
from fluxflow.config.modes import unused_fields, unused_image_stat_fields
from fluxflow.config.steps import KEY_NEUTRAL_VALUES
from fluxflow.errors import CheckpointError
from fluxflow.checkpoints.step_key import describe_change, step_key, step_key_inputs
from fluxflow.output_layout import metrics_file, step_dir
from fluxflow.storage.location import output_root, remote_uri
from fluxflow.wording import counted

if TYPE_CHECKING:
    from fluxflow.storage.mirror import OutputMirror


def step_key_parts(config) -> dict[str, dict]:
    """Every step's key inputs, parents first (the chain is what makes a parent change re-run its children): its
    resolved values, the model's, its dataset's and its parent's key, as plain JSON (kept in ref.json, so that a
    later run can say which of them changed)."""
    parts: dict[str, dict] = {}
    root = json.dumps({"model_checkpoint": config.model_checkpoint}) if config.model_checkpoint else None
    for step in execution_order(config.resolved_steps()):
        parent_key = key_of(parts[step.parent]) if step.parent else root
        # Caches change no number, so switching them neither re-runs a step nor sets its files aside; nor do the
        # hypothesis label, the resources a Ray executor reserves, the precision (as training.precision, which a
        # resume may change: docs/CONFIG.md), nor the image-statistics fields of terms the step does not use
        # (config/modes.py). Fields added since keys exist are left out at the value that trains as
        # before them (steps.KEY_NEUTRAL_VALUES).
        ignored = {*CACHE_FIELDS, "hypothesis", "resources", "precision"} | unused_image_stat_fields(step)
        ignored |= {k for k, v in KEY_NEUTRAL_VALUES.items() if getattr(step, k) == v}
        parts[step.name] = step_key_inputs(step.model_dump(mode="json", exclude=ignored),
                                           config.model.model_dump(mode="json"),
                                           config.dataset_values(step), parent_key)
    return parts


def key_of(inputs: dict) -> str:
    """The key of one step's `step_key_parts` entry."""
    return step_key(inputs["step"], inputs["model"], inputs["dataset"], inputs["parent"])


# Step values in the key that change no weight: the DataLoader's processes hand the same batches in the same order for
# any number of them (fluxflow/data: the sampler; webdataset_source.py for streams); a step's position in the file is
# a label (the plan's "Step N", its samples' names), so moving a step, or adding one before it, trains nothing again;
# `on_missed` says what follows a missed threshold, read from the config in force when the step's outcome is known
# (fluxflow/train/pipeline_schedule.py), so accepting a miss (fail -> continue) runs the children, not the step again;
# `n_epochs` acts only through the resolved `transition_on.max_epochs` (n_epochs, or a loss_threshold transition's own
# bound), which stays, so a change of it for other steps retrains no step with its own max_epochs; `eval_interval`
# adds held-out evaluations at epoch ends, which read the weights and change none (asking a finished step for them
# trained it and every step below it again).
# They stay in the key (keys of finished steps must not change), and a finished step whose key differs only in them
# is reused (`weights_keys`; files written before a field joined this list recorded a weights_key with it, and are
# reused when their key is the same).
WEIGHT_NEUTRAL_FIELDS = ("workers", "index", "on_missed", "n_epochs")
# Weight-neutral fields that joined after weights keys were recorded, with the value every step had then: set to it
# rather than left out, so that the weights key of a step that never changed them stays the one its ref.json holds
# (left out, every step's changed, and a step finished before lost the reuse of the fields above once).
WEIGHT_NEUTRAL_AS = {"eval_interval": None}


def weights_dataset(dataset: dict) -> dict:
    """A dataset's key values (its config as JSON) without those that change no item: a `shapes` dataset's
    `holdout_pairs_seed` where no count of pairs is drawn, and `holdout_pairs` 0 or [] (none held out, as unset). A
    seed written without a count trained every step again, for the same weights."""
    if dataset.get("type") != "shapes":
        return dataset
    pairs = dataset.get("holdout_pairs")
    drawn = draws_pairs(pairs)
    return {k: v for k, v in dataset.items()
            if not (k == "holdout_pairs_seed" and not drawn or k == "holdout_pairs" and pairs in (0, []))}


def weights_keys(parts: dict[str, dict], unused: dict[str, set[str]]) -> dict[str, str]:
    """Every step's key (`parts`: step_key_parts) without WEIGHT_NEUTRAL_FIELDS (WEIGHT_NEUTRAL_AS at their value then),
    the fields its modes never read
    (`unused`: step name -> fields, config/modes.py unused_fields) and its dataset's values that change no item
    (weights_dataset), chained the same way: equal for two configs that train the same weights. Kept in ref.json next
    to the key."""
    keys: dict[str, str] = {}
    for name, inputs in parts.items():  # parents first
        neutral = {*WEIGHT_NEUTRAL_FIELDS, *unused.get(name, ())}
        step = {k: WEIGHT_NEUTRAL_AS.get(k, v) for k, v in inputs["step"].items() if k not in neutral}
        parent = inputs["step"].get("parent")
        keys[name] = step_key(step, inputs["model"], weights_dataset(inputs["dataset"]),
                              keys[parent] if parent else inputs["parent"])
    return keys


def input_sha256(config, parent) -> str | None:
    """The sha256 of the checkpoint a step starts from: its parent's `final.pt` (in the parent's reference), or for a
    root step a local `model_checkpoint` file (replaced in place, its path and so the key stay the same); None for
    fresh weights, or a `model_checkpoint` on an object store (not downloaded to be hashed)."""
    if parent is not None:
        return parent.sha256
    path = config.model_checkpoint
    if not path or remote_uri(path) or not Path(path).is_file():
        return None
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Read once per version of the file (size and mtime in the cache key) per process."""
    from fluxflow.checkpoints.io import sha256_file  # torch: only when there is a model_checkpoint

    return sha256_file(path)


@dataclass
class StepFiles:
    """One step's files under `<output>/checkpoints/<step>/` and the rules that decide what a run does with them.
    `key` is the step's key (`key_of`): a file belongs to this run only when it carries the same one."""
    step: object  # ResolvedStep
    key: str
    n_steps: int
    dir: Path
    output: Path
    remote: OutputMirror | None  # the object store the output lives on; None for a local output
    key_inputs: dict  # what the key hashes (step_key_parts): kept in ref.json to say what changed
    input_sha256: str | None  # the sha256 of the checkpoint it starts from, when known (input_sha256)
    weights_key: str  # the key without the values that change no weight (weights_keys)

    def __post_init__(self) -> None:
        self.latest, self.final, self.ref_json = (self.dir / name for name in ("latest.pt", "final.pt", "ref.json"))
        self.previous = previous_of(self.latest)
        self.metrics = metrics_file(self.output, self.step.name)

    def _recorded(self) -> dict | None:
        """ref.json's record; None without one, or for one that is damaged (cut short, not UTF-8, another shape):
        not finished. Another OSError (no permission, say) is raised: no reason to set the step's files aside."""
        try:
            recorded = json.loads(self.ref_json.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        try:  # the record read as completed() and set_aside_stale read it
            CheckpointRef.from_dict(recorded["ref"]), StepResult.from_dict(recorded["result"])
        except (KeyError, TypeError, ValueError):
            return None
        return recorded if isinstance(recorded["ref"]["step_key"], str) else None

    def completed(self) -> StepOutcome | None:
        """The finished step's outcome when final.pt exists for this very key."""
        recorded = self._recorded()
        if (recorded is None or not self._same_config(recorded) or self._other_input(recorded.get("input_sha256"))
                or not (self.final.exists() or self._final_on_store(recorded["ref"]["sha256"]))):
            return None
        return self._finished(recorded)

    def _finished(self, recorded: dict) -> StepOutcome:
        """The outcome of a ref.json's finished step, its ref at final.pt where it is now, not where the run that
        wrote it saw it: that path may be relative to another working directory, or to a folder since moved, and the
        next step opens it (its sha256 still vouches for it)."""
        return StepOutcome(replace(CheckpointRef.from_dict(recorded["ref"]), uri=self.final_uri()),
                           StepResult.from_dict(recorded["result"]))

    def completed_here_or_set_aside(self) -> StepOutcome | None:
        """`completed()`, or what it will be once `reuse_set_aside` has moved this key's finished files back from
        `superseded/` (a config changed and changed back): for the "Skipping steps" line, said before anything
        moves, which left such steps out and then skipped them."""
        done = self.completed()
        kept = None if done is not None or self.remote is not None else self._reusable_set_aside()
        if kept is None or not (kept / self.final.name).exists():
            return done
        try:
            return self._finished(json.loads((kept / self.ref_json.name).read_text()))
        except (OSError, ValueError):
            return None

    def _same_config(self, recorded: dict) -> bool:
        """Whether ref.json's files are of this key, or of one that differs only in values that change no weight
        (`workers`; such files record their weights_key)."""
        return self.key == recorded["ref"]["step_key"] or self.weights_key == recorded.get("weights_key")

    def _other_input(self, trained_from: str | None) -> bool:
        """Whether files trained from the checkpoint of sha256 `trained_from` (their ref.json's or latest.pt's
        `input_sha256`) were trained from another one than the step starts from now."""
        return None not in (trained_from, self.input_sha256) and trained_from != self.input_sha256

    def set_aside_stale(self, say: Callable[[str], None] = print) -> None:
        """Move files of another key (the step's config changed) aside, saying why (`say`: the runner's lines, which
        the Prefect UI shows too); keep a same-key latest.pt.
        Also removes what a kill left behind: temp files of interrupted writes (each may be as large as a
        checkpoint), and the metrics of a run killed before its first checkpoint (the step starts over)."""
        moved = self._move_stale_aside(say)
        if moved is not None:
            self._say_moved(*moved, say)

    def _move_stale_aside(self, say: Callable[[str], None]) -> tuple[Path, str] | None:
        """`set_aside_stale` without its line: (where the files went, why), or None when nothing was moved."""
        for temp in self.dir.glob(".*.tmp"):
            temp.unlink(missing_ok=True)
        if not any(path.exists() for path in (self.latest, self.previous, self.final)):
            self.metrics.unlink(missing_ok=True)
        recorded = self._recorded()
        old_key, old_config, old_inputs = None, None, (recorded or {}).get("key_inputs")
        if recorded is not None and not self._same_config(recorded):
            old_key, old_config = recorded["ref"]["step_key"], recorded.get("step_config")
        elif recorded is not None and self._other_input(recorded.get("input_sha256")):
            return self._move_aside(self.key, self._input_replaced(recorded["input_sha256"]))
        elif not self.final.exists():
            meta = _metadata(self.latest) or _metadata(self.previous)
            if meta is not None and meta.step_key != self.key:
                old_key, old_config, old_inputs = meta.step_key, meta.step_config, meta.key_inputs
            elif meta is not None and self._other_input(meta.input_sha256):
                # its latest.pt resumed from weights the step no longer starts from, and its ref.json then
                # recorded the new input: the step kept them for good
                return self._move_aside(self.key, self._input_replaced(meta.input_sha256))
        if old_key is None and recorded is None and self.final.exists():
            meta = None if self.ref_json.exists() else _metadata(self.final)
            if meta is not None and meta.step_key == self.key and meta.completed:  # killed between the two writes
                say(f"Completing step {self.step.name}: {self.final} was written but the run stopped before "
                    f"{self.ref_json.name}; finishing it without training again")
                return None
            old_key = "unknown"
        if old_key is None:
            return None
        return self._move_aside(old_key, self._why(old_config, old_inputs))  # "unknown": no ref.json, no inputs

    def _input_replaced(self, then: str) -> str:
        """Why files trained from another input than the step's now are set aside."""
        source = f"{self.step.parent}'s final.pt" if self.step.parent else "its model_checkpoint"
        return (f"the checkpoint it starts from ({source}) is not the one it was trained from (sha256 {then[:12]}... "
                f"then, {self.input_sha256[:12]}... now)")

    @staticmethod
    def data_changed(then: dict | None, now: dict | None) -> str | None:
        """Why a latest.pt saved on the data `then` (its `data_identity`) does not resume on `now`, or None (the same,
        or either not known: shapes, a latest.pt written before it was recorded). A folder's identity counts its
        items, a webdataset's its shards."""
        if None in (then, now) or then == now:
            return None
        unit, other = (("shard", "shard files at their paths (sizes or modification times)") if "shards" in now
                       else ("item", "files or captions listed"))
        before, after = then.get(f"{unit}s"), now[f"{unit}s"]
        count = (f"{before} -> {counted(after, unit)}" if before != after
                 else f"the same {counted(after, unit)}, but other {other}")
        return f"its dataset changed since latest.pt: {count}"

    def set_aside_latest(self, why: str, say: Callable[[str], None] = print) -> None:
        """Move the step's latest.pt (and what goes with it) aside, saying `why`: the step starts again."""
        self._say_moved(*self._move_aside(self.key, why), say)

    def _say_moved(self, target: Path, why: str, say: Callable[[str], None]) -> None:
        # where the output lives: the store, not this node's staging copy of it
        where = self.remote.url(self._rel(target)) if self.remote is not None else target
        say(f"Re-running step {self.step.name}: {why}; previous files moved to {where}")

    def _move_aside(self, old_key: str, why: str) -> tuple[Path, str]:
        """The step's files to `superseded/<old_key>/` (the next free `<old_key>.N` if that one holds files)."""
        target = self.dir / "superseded" / old_key
        for n in itertools.count(2):  # never over files set aside before (this key may have been trained twice)
            if not target.exists() or not any(target.iterdir()):
                break
            target = self.dir / "superseded" / f"{old_key}.{n}"
        target.mkdir(parents=True, exist_ok=True)
        for path in (self.latest, self.previous, self.final, self.ref_json, self.metrics):
            if path.exists():
                shutil.move(str(path), target / path.name)
                if self.remote is not None:  # the store's copies too: set aside there, never overwritten
                    self.remote.move(self._rel(path), self._rel(target / path.name))
        return target, why

    def _why(self, old_config: dict | None, old_inputs: dict | None) -> str:
        """Why the files of another key are set aside: the step's own values that changed, else (when the run that
        wrote them recorded its key inputs) the model's, the dataset's, or the step it starts from."""
        if old_config:
            own = describe_change(old_config, self.step.model_dump(mode="json"))
            if own:
                return f"its configuration changed ({own})"
        if old_inputs:
            reasons = [f"the model changed ({change})" if part == "model" else f"its dataset changed ({change})"
                       for part in ("model", "dataset")
                       if (change := describe_change(old_inputs.get(part) or {}, self.key_inputs[part]))]
            if old_inputs.get("parent") != self.key_inputs["parent"]:
                parent = self.step.parent
                reasons.append(f"the step it starts from, {parent}, changed" if parent
                               else "its model_checkpoint changed")
            if reasons:
                return "; ".join(reasons)
        return "its configuration or an earlier step changed"

    def reuse_set_aside(self, say: Callable[[str], None] = print) -> bool:
        """Bring back the files of this very key that an earlier run set aside when the config had changed (A, then B,
        then A again): the files of the other key are set aside in their turn and these moved back, so the step is
        skipped, or resumed from its latest.pt, instead of trained again. True when files came back. A local output
        only (on an object store the step trains again)."""
        kept = None if self.remote is not None else self._reusable_set_aside()
        if kept is None:
            return False
        own = (self.latest, self.previous, self.final, self.ref_json, self.metrics)
        moved = self._move_stale_aside(say)
        if any(path.exists() for path in own[:4]):  # files of this key in place already: they are the newer ones
            return False
        for path in own:
            if (kept / path.name).exists():
                shutil.move(str(kept / path.name), path)
        with contextlib.suppress(OSError):
            kept.rmdir()
        what = "final.pt" if self.final.exists() else "latest.pt"
        replaced = f" (the files it replaces, of the configuration before, moved to {moved[0]})" if moved else ""
        say(f"Reusing step {self.step.name}: its {what} for this same configuration, set aside by an earlier run, "
            f"moved back from {kept}{replaced}")
        return True

    def _reusable_set_aside(self) -> Path | None:
        """The folder of `superseded/` with this key's files (`<key>`, `<key>.2`, ...) that were not trained from
        another input than the step's now; a finished one first. None when there is none."""
        found = []
        for kept in sorted([*self.dir.glob(f"superseded/{self.key}"), *self.dir.glob(f"superseded/{self.key}.*")]):
            if not any((kept / name).exists() for name in (self.latest.name, self.previous.name, self.final.name)):
                continue
            try:
                recorded = json.loads((kept / self.ref_json.name).read_text())
            except (OSError, ValueError):
                recorded = None
            if recorded is not None and self._other_input(recorded.get("input_sha256")):
                continue  # trained from another file than the step's input now: not this step's result
            found.append(kept)
        finished = [k for k in found if (k / self.final.name).exists() and (k / self.ref_json.name).exists()]
        return (finished or found or [None])[0]

    def finalize(self) -> str:
        """final.pt from latest.pt (fluxflow/checkpoints/io.py, finalize); its sha256. latest.prev.pt has no use
        once the step is final."""
        from fluxflow.checkpoints.io import finalize

        digest = finalize(self.latest, self.final)
        self.previous.unlink(missing_ok=True)
        return digest

    def write_ref(self, ref: CheckpointRef, result: StepResult) -> None:
        payload = {"ref": ref.to_dict(), "result": result.to_dict(), "step_config": self.step.model_dump(mode="json"),
                   "key_inputs": self.key_inputs, "input_sha256": self.input_sha256, "weights_key": self.weights_key}
        atomic_write(self.ref_json, lambda f: f.write(json.dumps(payload, indent=2).encode()))
        if self.remote is not None:  # last: a reader that finds ref.json finds everything it names
            self.remote.publish(self._rel(self.ref_json))

    # ------------------------------------------------------------------------------- an output on an object store

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.output).as_posix()

    def final_uri(self) -> str:
        """Where the next step (on whatever node) reads final.pt: the store's URI, or the local path."""
        return self.remote.url(self._rel(self.final)) if self.remote is not None else str(self.final)

    def _final_on_store(self, sha256: str) -> bool:
        """Whether the store holds final.pt with this content (its record says so): a finished step on another node."""
        return self.remote is not None and self.remote.recorded_sha256(self._rel(self.final)) == sha256

    def pull_ref(self) -> None:
        """ref.json alone from the store (enough to tell whether the step is complete)."""
        if self.remote is not None:
            self.remote.pull(self._rel(self.ref_json))

    def pull(self) -> None:
        """The step's files from the store into the staging directory, each verified; what the store lacks or cannot
        vouch for is removed from it (the store is the truth). A step complete on the store needs nothing more: its
        final.pt is read through its URI by whoever needs it, not downloaded here to be skipped."""
        if self.remote is None:
            return
        self.pull_ref()
        if self.completed() is not None:
            return
        for path in (self.final, self.latest, self.previous, self.metrics):
            self.remote.pull(self._rel(path))
        # What a kill during an upload left (the step's own names only: other steps may be uploading beside it).
        self.remote.remove_unfinished_uploads(self._rel(self.dir))
        self.remote.remove_unfinished_uploads("graph", self.metrics.name)
        self.remote.remove_unfinished_uploads("samples", self._sample_prefix())

    def publish_latest(self, say=print) -> None:
        """latest.pt (the one it replaces kept as latest.prev.pt), the metrics so far and new samples. A failed upload
        is one line, and training goes on: the store keeps its previous good checkpoint, the next save tries again,
        and the step's end must succeed."""
        if self.remote is None:
            return
        try:
            self.remote.publish(self._rel(self.latest), keep_previous=self._rel(self.previous))
            self._publish_records()
        except OSError as exc:
            say(f"⚠️  could not upload {self.latest.name} of step {self.step.name} to {self.remote.uri} ({exc}); "
                "the store keeps its previous checkpoint, the next save tries again")

    def publish_final(self) -> None:
        """final.pt, the step's metrics and samples (before ref.json, which `write_ref` publishes)."""
        if self.remote is None:
            return
        self.remote.publish(self._rel(self.final))
        self._publish_records()
        self.remote.remove(self._rel(self.previous))

    def _publish_records(self) -> None:
        if self.metrics.exists():
            self.remote.publish(self._rel(self.metrics))
        prefix = self._sample_prefix()
        self.remote.publish_changed("samples", lambda name: name.startswith(prefix))

    def _sample_prefix(self) -> str:
        """How this step's sample files begin (fluxflow/sampling/sample_files.py, sample_name)."""
        return f"{self.step.name}_{self.step.index + 1:03d}_"


def _metadata(path: Path) -> StepState | None:
    """The step state of a checkpoint; None when it is missing or unreadable."""
    from fluxflow.checkpoints.io import load_checkpoint  # torch only where a checkpoint is read

    try:  # a missing file too: "checkpoint not found"
        return StepState.of_checkpoint(load_checkpoint(path))
    except CheckpointError:
        return None


# plan_step's `parent` where the caller only wants the step's files (a pull, promotion's "in place"): the checkpoint
# the step starts from is then not checked.
UNCHECKED = object()


def plan_step(config, step_name: str, parent=UNCHECKED) -> StepFiles:
    """The files of `step_name` in the config's output directory. `parent`: the CheckpointRef the step starts from
    (None for a root step), whose sha256 its finished files must have been trained from (`input_sha256`)."""
    steps = {s.name: s for s in config.resolved_steps()}
    if step_name not in steps:
        raise ValueError(f"unknown step {step_name!r}; the pipeline has {', '.join(steps)}")
    out, uri = output_root(config), remote_uri(config.output.output_path)
    remote = None
    if uri is not None:
        from fluxflow.storage.mirror import OutputMirror  # fsspec: only for an output on an object store

        remote = OutputMirror(uri, out)
    parts = step_key_parts(config)
    inputs = parts[step_name]
    return StepFiles(step=steps[step_name], key=key_of(inputs), n_steps=len(steps), dir=step_dir(out, step_name),
                     output=out, remote=remote, key_inputs=inputs,
                     weights_key=weights_keys(parts, {n: set(unused_fields(s)) for n, s in steps.items()})[step_name],
                     input_sha256=None if parent is UNCHECKED else input_sha256(config, parent))
