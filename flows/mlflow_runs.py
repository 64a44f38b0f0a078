"""MLflow runs of a pipeline: how they are found, the pipeline's parent run, and the tracking store: its checks, and
a new local one made as a copy of an empty one (flows/database_template.py: MLflow's migrations take 1.2-4 s on 2
cores, paid by every first run in a new working directory, whose default store is ./mlflow.db).

The parent run is found by the output directory (`fluxflow.output_dir` tag): re-running a pipeline continues its parent
run, so that its steps stay one tree in the MLflow UI. A step's nested run is found by output directory, step key and
step name (flows/mlflow_step_run.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import sqlite3
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from flows import env  # must precede mlflow

import mlflow
from mlflow.entities import Experiment, LifecycleStage, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from flows.credentials import mlflow_answer, mlflow_refusal, unreachable_reason
from flows.mlflow_names import TAG_CREATED_BY, TAG_KIND, TAG_OUTPUT_DIR, TAG_STEP_KEY, TAG_STEP_NAME, tags_filter
from flows.database_template import copy_database, sqlite_file, template_path
from fluxflow.config.file_checks import not_a_regular_file
from fluxflow.errors import NonRetryable
from fluxflow.storage.location import local_path, remote_uri

SQLITE_PREFIX = "sqlite:///"  # MLflow's SQLite tracking URIs


@dataclass(frozen=True)
class TrackingTarget:
    """Where a step's MLflow run goes; built once by the flow, passed to every task as a dict."""

    tracking_uri: str
    experiment_id: str  # "" (and parent_run_id "") when MLflow did not answer at the flow's start: found by name later
    parent_run_id: str
    session: str  # the Prefect flow-run id: retries within one session continue the same run
    pipeline: str  # short pipeline name for Prefect artifact keys
    experiment_name: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def output_dir_of(config) -> str:
    """The pipeline's output directory, the key of its MLflow runs: its absolute path, or its object-store URI."""
    return remote_uri(config.output.output_path) or str(local_path(config.output.output_path).resolve())


def resolve_tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the config's `tracking.tracking_uri`, else MLflow's default (./mlflow.db, absolute)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured or mlflow.get_tracking_uri()


def experiment_id_for(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created when there is none. A deleted one (MLflow UI's "Delete") is refused:
    MLflow rejects every record into it, so a run would train and keep nothing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == LifecycleStage.DELETED:
        raise StoreUnusable(deleted_run_experiment(client, experiment))
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another process created it between the two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def deleted_experiment(client: MlflowClient, experiment) -> str:
    """That `experiment` is deleted (its runs are kept, deleted with it), and the command that restores it. The store
    is named in the command: without it, `mlflow` uses (and creates) ./mlflow.db wherever it is run."""
    return (f"experiment {experiment.name!r} at {client.tracking_uri} is deleted; restore it with: MLFLOW_TRACKING_URI="
            f"{shlex.quote(client.tracking_uri)} mlflow experiments restore -x {experiment.experiment_id}")


def deleted_run_experiment(client: MlflowClient, experiment) -> str:
    """`deleted_experiment` for a run's experiment: the field that names it, and the other way out (MLflow refuses to
    create an experiment under a deleted one's name until it is purged)."""
    return f"tracking.experiment_name: {deleted_experiment(client, experiment)}; or choose another name"


def flatten_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"optimization.optimizers.vae.lr": "0.0001", ...} (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = param_value(json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value))
    return flat


def param_value(text: str) -> str:
    """`text`, or for one longer than MLflow keeps (6000 characters: it cuts the rest off silently, leaving e.g.
    a webdataset's list of shard URLs as broken JSON that two different lists can share) its start, its length and
    its sha256, so that two different values stay different; the whole value is in the pipeline run's config.json."""
    if len(text) <= MAX_PARAM_VAL_LENGTH:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{text[:200]}... ({len(text)} characters, sha256 {digest}; whole in the pipeline run's config.json)"


def step_context_params(config, step) -> dict[str, str]:
    """The values a step's weights depend on besides its own resolved fields, as its run's params: the model's
    (`model.vae_dim`, ...) and its dataset's (`dataset.size`, ...). Its step key covers both (a change trains it again
    in a fresh run), so these params never change within a run; without them two pipelines that differ only in
    `--set model.X=...` or their dataset look the same in the MLflow UI and in `fluxflow-compare`."""
    return {**flatten_params(config.model.model_dump(mode="json"), "model."),
            **flatten_params(config.dataset_values(step), "dataset.")}


# Runs per request of `find_runs` (MLflow's default and the most a server returns by default): one request answers
# only that many, so every later page is asked for too.
RUNS_PER_PAGE = 1000


def find_runs(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> list:
    """All runs carrying the given tags, newest first (every page: an experiment of nightly runs passes one page's
    1,000 runs within months, and `fluxflow-compare` counted only the newest 1,000)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=tags_filter(tags), max_results=RUNS_PER_PAGE,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def create_run_once(client: MlflowClient, experiment_id: str, tags: dict[str, str], run_name: str) -> str:
    """`create_run`, without a twin. MLflow's client sends a request again when its answer was lost (a server killed
    after it committed the run, then started again): the server then holds two runs, and a search finds a step run
    twice. Each call tags its run with a nonce; the twins that share it, other than the run the answer named, are
    deleted."""
    nonce = uuid.uuid4().hex
    run_id = client.create_run(experiment_id, tags={**tags, TAG_CREATED_BY: nonce}, run_name=run_name).info.run_id
    for twin in find_runs(client, experiment_id, {TAG_CREATED_BY: nonce}):
        if twin.info.run_id != run_id:
            client.delete_run(twin.info.run_id)
    return run_id


def find_step_runs(client: MlflowClient, experiment_id: str, output_dir: str, step_key: str | None,
                   step_name: str) -> list:
    """The runs of one step (this output directory, step key, or any for None, and name), newest first."""
    tags = {TAG_KIND: "step", TAG_OUTPUT_DIR: output_dir, TAG_STEP_KEY: step_key, TAG_STEP_NAME: step_name}
    return find_runs(client, experiment_id, {key: value for key, value in tags.items() if value is not None})


def store_to_read_problem(uri: str, names: str = "--tracking-uri or MLFLOW_TRACKING_URI") -> str | None:
    """Why the store at `uri` cannot be read, for commands that only read it (generate, export, compare), or None:
    a server that does not answer (asking it would sit in MLflow's retries for minutes), or that refuses this
    process's credentials (or a secret file that could not be used: MLflow's 401 came up as a traceback), a sqlite
    file that does not exist (MLflow would create an empty store there), or a store MLflow fails to read. `names`:
    what the caller reads the store from, for the hint (scripts/serve_model.sh has no --tracking-uri)."""
    reason = unreachable_reason(uri)
    if reason is not None:
        return f"the MLflow server at {uri} does not answer ({reason}); start it, or name another store with {names}"
    refused = uri.startswith(("http://", "https://")) and (env.CREDENTIALS_PROBLEM or mlflow_refusal(uri))
    if refused:
        return refused
    path = sqlite_file(uri, SQLITE_PREFIX)
    if path is not None and (not path.exists() or path.is_file() and path.stat().st_size == 0):
        # an empty file: MLflow would make it a store, which a command that only reads must not
        return f"no MLflow store at {uri} ({'the file is empty' if path.exists() else 'no such file'}); name the " \
               f"store with {names}"
    problem = unreadable_store(uri)
    return problem and f"{problem}; name another with {names}"


def unreadable_store(uri: str) -> str | None:
    """Why MLflow fails to open the store at `uri` (a file that is not a database, a folder, a scheme it does not
    read: one line, not its traceback), or None. Neither a server nor a sqlite file not made yet is asked."""
    path = sqlite_file(uri, SQLITE_PREFIX)
    if uri.startswith(("http://", "https://")) or path is not None and not path.exists():
        return None
    # A folder, a FIFO, a device: asked, MLflow retries "unable to open database file" or "disk I/O error" for 100 s
    odd = path is not None and (not_a_regular_file(path) or foreign_database(path))
    if odd:
        return f"cannot read the MLflow store at {uri}: {odd}"
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        if "://" not in uri and is_sqlite_database(uri):  # MLflow read the path as its (refused) file store
            return f"cannot read the MLflow store at {uri}: a SQLite file is named as a URI, {SQLITE_PREFIX}{uri}"
        if "MLFLOW_ALLOW_FILE_STORE" in str(exc):  # its first sentence ("... is in maintenance mode") said no remedy
            return (f"cannot read the MLflow store at {uri}: MLflow reads a folder or file: URI as a file store, "
                    f"which it no longer opens (unless MLFLOW_ALLOW_FILE_STORE=true); name a database, e.g. "
                    f"{SQLITE_PREFIX}mlflow.db")
        return f"cannot read the MLflow store at {uri}: {mlflow_said(exc)}"
    return None


def mlflow_said(exc: Exception) -> str:
    """MLflow's refusal in one line: its first two sentences. The second is where MLflow gives its advice (the schemes
    it reads, after "got unsupported URI 'mlfow://x'"; what to configure for Databricks), which the first sentence
    alone left out; the rest (links, details) is long."""
    return ". ".join(str(exc).strip().splitlines()[0].split(". ")[:2])


def unwritable_store(uri: str) -> str | None:
    """Why a local SQLite store cannot be made or written, for a run (a read-only checkout, a folder not the user's:
    MLflow retried "unable to open database file" for 100 s, then the run failed with its traceback), or None. SQLite
    writes its journal beside the file, so the folder must be writable too."""
    path = sqlite_file(uri, SQLITE_PREFIX)
    if path is None:
        return None
    folder = path.parent
    if not folder.is_dir():  # not made here: a typo in the path would leave a store where no one looks for it
        problem = f"{folder} is not a folder" if folder.exists() else f"folder {folder} does not exist"
    elif not os.access(folder, os.W_OK | os.X_OK):
        problem = f"folder {folder} cannot be written"
    elif path.exists() and not os.access(path, os.W_OK):
        problem = f"{path} cannot be written"
    else:
        return None
    return (f"cannot {'write' if path.exists() else 'create'} the MLflow store at {uri}: {problem}; run from a "
            "folder you can write, or name another store (MLFLOW_TRACKING_URI or tracking.tracking_uri)")


def unusable_store(uri: str, experiment_name: str | None = None) -> str | None:
    """Why a run cannot record into the store at `uri` (unwritable_store, unreadable_store, then its experiment
    `experiment_name` deleted), or None: asked by `fluxflow-train` before the flow starts, and by the flow itself,
    which a deployment runs without it."""
    problem = unwritable_store(uri) or unreadable_store(uri)
    if problem or experiment_name is None:
        return problem
    return deleted_experiment_problem(uri, experiment_name)


def deleted_experiment_problem(uri: str, name: str) -> str | None:
    """Why a run cannot record into experiment `name` at `uri` (it is deleted: MLflow rejects each record, and the run
    trained, kept nothing and exited 0), or None, also when it is not known: a best-effort check, before the run
    starts (`experiment_id_for` refuses it when the server answers). Not asked: a store not made yet. A server is
    asked once, without MLflow's retries (minutes); a server that does not answer, or errs (its database down, a
    proxy's 503 or 403), is not known: the run starts and its records wait, as they do for an outage."""
    if uri.startswith(("http://", "https://")):
        answer = mlflow_answer(uri, "/api/2.0/mlflow/experiments/get-by-name?" + urlencode({"experiment_name": name}))
        found = (answer or {}).get("experiment")
        if not isinstance(found, dict) or found.get("lifecycle_stage") != LifecycleStage.DELETED:
            return None
        experiment = Experiment(str(found.get("experiment_id", "")), str(found.get("name", name)), "",
                                LifecycleStage.DELETED)
        return deleted_run_experiment(MlflowClient(uri), experiment)
    path = sqlite_file(uri, SQLITE_PREFIX)
    if path is not None and not path.exists():  # checked before the client, whose store would make it
        return None
    client = MlflowClient(uri)
    try:
        experiment = client.get_experiment_by_name(name)
    except Exception:  # not known: the run's own calls say what is wrong with the store
        return None
    if experiment is None or experiment.lifecycle_stage != LifecycleStage.DELETED:
        return None
    return deleted_run_experiment(client, experiment)


def is_sqlite_database(path: str) -> bool:
    """Whether `path` is a readable regular file that starts as a SQLite database does."""
    if not os.path.isfile(path):  # first: opening a FIFO would wait for a writer
        return False
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def foreign_database(path: Path) -> str | None:
    """Why the existing SQLite file at `path` is not an MLflow store to open (it holds tables, none of them MLflow's),
    or None: MLflow runs its migrations on any database it opens, so naming another program's file as the store
    added MLflow's 60-odd tables to it, even for commands that only read."""
    if not is_sqlite_database(str(path)):
        return None  # empty, or not SQLite: MLflow's own error says so
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return None
    if tables and not tables & {"experiments", "alembic_version"}:
        return f"{path} is a SQLite database of another program (its tables: {', '.join(sorted(tables)[:3])}" \
               f"{', ...' if len(tables) > 3 else ''}), not an MLflow store; it was left as it is"
    return None


def prepare_store(tracking_uri: str) -> None:
    """Before the first use of `tracking_uri`: a new SQLite store is copied from the template (made once, here, when
    missing). Any failure leaves the store for MLflow to create as usual."""
    target = sqlite_file(tracking_uri, SQLITE_PREFIX)
    if target is None or target.exists():
        return
    template = template_path("mlflow", mlflow.__version__)
    try:
        if not template.exists():
            with tempfile.TemporaryDirectory() as scratch:
                made = Path(scratch) / "mlflow.db"
                MlflowClient(f"{SQLITE_PREFIX}{made}").search_experiments()  # runs the migrations
                copy_database(made, template)
        copy_database(template, target, _default_experiment_here)
    except (OSError, sqlite3.Error):
        return


def _default_experiment_here(db: str) -> None:
    """MLflow gives the "Default" experiment (id 0) of a new store its artifact folder under ./mlruns of the process
    that creates the store; the template's points to where the template was made."""
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                           (os.path.join(os.path.abspath("mlruns"), "0"),))


class StoreUnusable(NonRetryable):
    """The run's MLflow store cannot be made, written or read, or its experiment is deleted (unusable_store's line):
    the flow run fails with it."""


class PipelineRun:
    """The pipeline's parent run, opened by a call on the tracking queue (`open`: find or create it, log the
    resolved config) so that a server that does not answer at the start delays only the record, not the run; whoever
    needs its ids before that finds them by its tags. `experiment_id` and `run_id` are None until `open` has run."""

    def __init__(self, client: MlflowClient, experiment_name: str, output_dir: str, tags: dict[str, str],
                 config: dict):
        self.client, self.experiment_name, self.output_dir = client, experiment_name, output_dir
        self.tags, self.config = tags, config
        self.experiment_id: str | None = None
        self.run_id: str | None = None

    def open(self) -> None:
        experiment_id = experiment_id_for(self.client, self.experiment_name)
        run_id = open_pipeline_run(self.client, experiment_id, self.output_dir, self.tags)
        self.client.log_dict(run_id, self.config, "config.json")
        self.experiment_id, self.run_id = experiment_id, run_id

    def terminate(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)


def pipeline_run_tags(output_dir: str) -> dict[str, str]:
    """What marks the pipeline (parent) runs of an output directory."""
    return {TAG_KIND: "pipeline", TAG_OUTPUT_DIR: output_dir}


def pipeline_name(output_dir: str) -> str:
    """The pipeline's name, its output folder's: its parent run's name and its artifacts' key."""
    return Path(output_dir.rstrip("/")).name or "pipeline"


def open_pipeline_run(client: MlflowClient, experiment_id: str, output_dir: str, tags: dict[str, str]) -> str:
    """The parent run of the pipeline writing to `output_dir` (named `pipeline_name`), marked RUNNING."""
    found = find_runs(client, experiment_id, pipeline_run_tags(output_dir))
    all_tags = {**pipeline_run_tags(output_dir), **tags}
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        return run_id
    return create_run_once(client, experiment_id, all_tags, pipeline_name(output_dir))
