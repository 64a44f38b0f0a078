"""The whole config file: model, data, training (with the pipeline), output, tracking.

Defaults are small enough to train on a CPU. Keys of the original tool that are accepted for compatibility are not
fields here: `legacy.py` maps or reports them before these models see the file.
"""
from __future__ import annotations

import re
import urllib.parse
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator
from pydantic_core import PydanticCustomError

from fluxflow.config.executor import ExecutorConfig
from fluxflow.config.heldout_pairs import heldout_pairs, max_heldout_pairs, untrained_words
from fluxflow.config.file_checks import expand_shards, substitute_wds_variables
from fluxflow.config.optim import OmitsDefaults, StrictModel
from fluxflow.storage.location import check_output_uri, remote_uri
from fluxflow.config.promotion import PromotionConfig, registered_model_name_problem
from fluxflow.config.steps import (TRAINING_GLOBALS, Precision, ReplicatesConfig, ResolvedStep, Seed, StepConfig,
                                   StepDefaults, Workers, replicate_steps, resolve_step)


class TextEncoderConfig(StrictModel):
    """`byte`: the byte-level encoder of fluxflow/models/text_encoder.py, trained here. `pretrained`: a frozen
    Hugging Face text encoder (CLIP text or T5 encoder) loaded from the local directory `path`, never downloaded
    (fluxflow/config/file_checks.py)."""

    type: Literal["byte", "pretrained"] = "byte"
    path: str | None = None


class ModelConfig(OmitsDefaults):
    """Component sizes. With a pretrained text encoder, text_embedding_dim is its width: load_config fills it from
    the encoder's config.json when the file leaves it out (fluxflow/config/file_checks.py)."""

    OMITTED_AT_DEFAULT = ("text_encoder", "text_pooled")  # absent = the byte encoder, pooled text

    vae_dim: int = Field(32, ge=1, description="base conv width of compressor/expander")
    latent_channels: int = Field(4, ge=1)
    downscale: Literal[2, 4, 8] = 4
    feature_maps_dim: int = Field(128, ge=1, description="flow transformer width")
    flow_depth: int = Field(4, ge=1)
    flow_heads: int = Field(4, ge=1)
    patch_size: Literal[1, 2] = 2
    text_embedding_dim: int = Field(64, ge=1)
    text_encoder_depth: int = Field(2, ge=1)
    text_max_len: int = Field(64, ge=2)
    feature_maps_dim_disc: int = Field(32, ge=1)
    text_encoder: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    # The flow model sees the text twice: adaLN on the pooled (mean) embedding and cross-attention to the tokens.
    # false: cross-attention only, a composition experiment (docs/COMPOSITION.md).
    text_pooled: bool = True


class DataConfig(StrictModel):
    img_size: int = Field(32, ge=8)
    # The channel counts an image converts to (fluxflow/data/transforms.py _MODES: L, RGB, RGBA); 2 passed here and
    # failed the first step (a retry, a traceback) instead of naming this field.
    channels: Literal[1, 3, 4] = 3


# The keys every dataset's dump holds, None where its type has none (DatasetBase._dump_as_one_model).
TYPE_KEYS = ("size", "seed", "path", "captions_file", "urls", "length")


class DatasetBase(StrictModel):
    """What every dataset type takes: `holdout` images kept out of training for samples and evaluation, and the size
    the steps on it train at (None: data.img_size)."""

    holdout: int = Field(16, ge=0)
    img_size: int | None = Field(None, ge=8)

    @model_validator(mode="before")
    @classmethod
    def _accept_dumps_of_one_model(cls, data: Any) -> Any:
        """A dump names every type's keys; None under another type's key means "not given"."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k in cls.model_fields}
        return data

    @model_serializer(mode="wrap")
    def _dump_as_one_model(self, handler):
        """Dumps keep the shape they had when one model held every type's fields (TYPE_KEYS always, None where this
        type has none; other optional fields only when set), so that the step keys, cache keys and config hash of
        runs made before the types were separate models stay the same."""
        data = {key: None for key in TYPE_KEYS} | handler(self)
        return {k: v for k, v in data.items() if v is not None or k in TYPE_KEYS}


class ShapesDataset(DatasetBase):
    """Built-in procedural images of coloured shapes. Composition (fluxflow/config/heldout_pairs.py): `holdout_pairs`
    keeps colour x shape pairs out of training (["blue triangle"], or a count drawn with `holdout_pairs_seed`,
    default: seed); `caption_dropout` drops caption words in training. Evaluation then also scores the unseen pairs."""

    type: Literal["shapes"] = "shapes"
    size: int = Field(2048, ge=1)
    seed: Seed = 0
    holdout_pairs: list[str] | int | None = None
    holdout_pairs_seed: Seed | None = None
    caption_dropout: float | None = Field(None, ge=0.0, le=1.0)

    @field_validator("holdout_pairs", mode="before")  # before: one line, not one per member of the union
    @classmethod
    def _pairs_the_data_has(cls, pairs: Any) -> Any:
        if pairs is not None and (isinstance(pairs, bool) or not isinstance(pairs, (int, list))
                                  or isinstance(pairs, list) and not all(isinstance(p, str) for p in pairs)):
            raise ValueError("must be a list of '<colour> <shape>' pairs, e.g. [blue triangle, red star], or a count "
                             "of pairs to draw")
        if isinstance(pairs, int) and not 0 <= pairs <= max_heldout_pairs():
            raise ValueError(f"a count must be 0 to {max_heldout_pairs()} (every colour and every shape keeps a "
                             "trained pair)")
        held = heldout_pairs(pairs) if isinstance(pairs, list) else ()  # a ValueError names a pair of unknown words
        if untrained := untrained_words(held):  # as a count's draw: every word keeps a trained pair
            raise ValueError(f"holds out every pair of {', '.join(untrained)}: each colour and each shape must keep a "
                             "trained pair (the unseen pairs score the composition of words training saw)")
        return pairs


class FolderDataset(DatasetBase):
    """Images in `path` and a `filename<TAB>caption` file; `holdout_captions` (globs or `re:` patterns) are kept out
    of training and scored as unseen captions."""

    type: Literal["folder"]
    path: str
    captions_file: str
    holdout_captions: list[str] | None = None

    @field_validator("holdout_captions")
    @classmethod
    def _patterns_compile(cls, patterns: list[str] | None) -> list[str] | None:
        for pattern in patterns or ():
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    raise ValueError(f"{pattern!r} is not a regular expression ({exc})") from None
        return patterns


class WebDatasetConfig(DatasetBase):
    """Tar shards: `urls` is a brace pattern, a list, or fsspec URLs; `length` the samples per epoch if known."""

    type: Literal["webdataset"]
    urls: str | list[str]
    length: int | None = Field(None, ge=1)

    @field_validator("urls")
    @classmethod
    def _urls_expand(cls, urls: str | list[str]) -> str | list[str]:
        if "${" not in str(urls):  # $WDS_ variables need only be set where the step runs
            expand_shards(urls)  # unbalanced braces, an empty list: said by --validate-pipeline
        return urls


DatasetConfig = Annotated[ShapesDataset | FolderDataset | WebDatasetConfig, Field(discriminator="type")]
DATASET_TYPES: dict[str, type[DatasetBase]] = {"shapes": ShapesDataset, "folder": FolderDataset,
                                               "webdataset": WebDatasetConfig}


class PipelineSection(StrictModel):
    defaults: StepDefaults = Field(default_factory=StepDefaults)
    steps: list[StepConfig] = Field(min_length=1)
    datasets: dict[str, DatasetConfig] = Field(default_factory=dict)
    default_dataset: str | None = None
    retries: int = Field(1, ge=0, description="Prefect task retries; a retry resumes from the latest checkpoint")

    @model_validator(mode="after")
    def _implicit_datasets(self) -> "PipelineSection":
        self.datasets, self.default_dataset = implicit_datasets(self.datasets, self.default_dataset)
        return self


IMPLICIT_DATASET = "shapes"  # the name of the built-in dataset a config without datasets trains on


def implicit_datasets(datasets: dict[str, DatasetConfig],
                      default: str | None) -> tuple[dict[str, DatasetConfig], str | None]:
    """No dataset declared: the built-in procedural one, so that nothing needs a download. One dataset: the default."""
    if not datasets:
        datasets = {IMPLICIT_DATASET: ShapesDataset()}
    if default is None and len(datasets) == 1:
        default = next(iter(datasets))
    return datasets, default


class DistributedConfig(StrictModel):
    """A step's processes: `nodes` × `nproc_per_node`. On one node (nodes 1) more than one process runs under
    torchrun (fluxflow/runtime/launch.py); across nodes the step trains through Ray Train
    (fluxflow/runtime/ray_train_launch.py). Either way every process runs the same per-rank step runner."""

    nproc_per_node: int = Field(1, ge=1, description="processes (GPUs) per node of a step; > 1 on one node runs "
                                                     "the step under torchrun")
    nodes: int = Field(1, ge=1, description="nodes a step spans; > 1 trains it through Ray Train's TorchTrainer "
                                            "with nodes × nproc_per_node workers (needs Ray)")

    @property
    def processes(self) -> int:
        return self.nodes * self.nproc_per_node

    @property
    def uses_ray_train(self) -> bool:
        return self.nodes > 1


class TrainingConfig(OmitsDefaults):
    OMITTED_AT_DEFAULT = ("executor",)  # absent = local
    batch_size: int = Field(8, ge=1)
    workers: Workers = Field("auto", description="DataLoader workers per process; auto: 0 on CPU, up to 8 on CUDA")
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Precision = "auto"
    n_epochs: int | None = Field(None, ge=1, description="default n_epochs of steps")
    lr: float = Field(1e-4, gt=0.0, le=1.0, description="default lr of steps and their optimizers")
    max_steps: int | None = Field(None, ge=1, description="default max batches per epoch of steps")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    compile: bool = Field(False, description="torch.compile each trained component (fluxflow/train/speed.py)")
    activation_checkpointing: bool = Field(False, description="recompute each flow transformer block in backward")
    replicates: ReplicatesConfig | None = None  # seed replicates (fluxflow/config/steps.py)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)  # local or Ray (fluxflow/config/executor.py)
    pipeline: PipelineSection


class OutputConfig(StrictModel):
    output_path: str = "outputs/run"
    log_interval: int = Field(10, ge=1)
    checkpoint_save_interval: int = Field(50, ge=1)
    sample_captions: list[str] = Field(default_factory=lambda: ["a red circle", "a blue square", "a green triangle",
                                                                "a yellow circle"])
    sample_sizes: list[int] | None = None  # None: each step's img_size
    no_samples: bool = False
    # GAN steps: warn (console line, MLflow tag) once D has been flat this many updates; 0: never
    # (fluxflow/train/gan_health.py).
    d_flat_warn_updates: int = Field(200, ge=0)
    # Where latent_cache/ and text_cache/ go (None: output_path); runs that share it share their caches.
    cache_dir: str | None = None

    # A local directory, file://, or an object store's URI whose protocol, package and bucket are known; the store
    # itself is asked at the run's start (fluxflow/storage/store_lock.py).
    _output = field_validator("output_path")(check_output_uri)
    @field_validator("cache_dir")
    @classmethod
    def _local_cache(cls, value: str | None) -> str | None:
        if value is not None and remote_uri(value) is not None:
            raise ValueError("must be a local or mounted directory: the caches are written in place (memory-mapped "
                             "files); with an object-store output_path they stay in the staging directory of each node")
        return value


SECRET_VALUE = "secret_value"  # the error type of a value never to be echoed (fluxflow/config/load.py)


class TrackingConfig(StrictModel):
    experiment_name: str = "fluxflow"
    tracking_uri: str | None = None  # MLFLOW_TRACKING_URI wins; None and no variable: MLflow's default (./mlflow.db)
    registered_model: str | None = None  # None: the experiment name
    register_steps: list[str] | None = None  # None: the text-to-image leaf steps (fluxflow/config/promotion.py)

    # MLflow refuses these names only when the run reaches it: an empty experiment name made every MLflow call of
    # the run fail (the run went on without tracking), a bad model name failed the register task after training.
    @field_validator("experiment_name", "registered_model")
    @classmethod
    def _mlflow_name(cls, name: str | None, info) -> str | None:
        # Not empty: MLflow's only rule for experiment names (mlflow/utils/validation.py) besides their length.
        if info.field_name == "experiment_name":
            problem = None if name else "must not be empty: MLflow refuses an experiment without a name"
        else:
            problem = None if name is None else registered_model_name_problem(name)
        if problem:
            raise PydanticCustomError("mlflow_name", problem)
        return name

    @field_validator("tracking_uri")
    @classmethod
    def _no_password(cls, uri: str | None) -> str | None:
        # The resolved config is logged as MLflow params and passed to every Prefect task as a parameter: a password
        # here would be in both (flows/credentials.py reads credentials from the environment or a secret file).
        if uri and urllib.parse.urlsplit(uri).password:
            raise PydanticCustomError(  # a type of its own: the error message must not show the value
                SECRET_VALUE, "holds a password (user:password@): the config is logged as MLflow params, so give "
                "credentials through FLUXFLOW_MLFLOW_AUTH_FILE or MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD instead")
        return uri

    @property
    def model_name(self) -> str:
        """The MLflow registered model that the pipeline's final checkpoints become versions of."""
        return self.registered_model or self.experiment_name


class PipelineConfig(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig
    output: OutputConfig = Field(default_factory=OutputConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    model_checkpoint: str | None = None  # starting checkpoint of the first step(s): a path or fsspec URI

    def written_steps(self) -> list[ResolvedStep]:
        """Every step of the file with defaults, globals and parent filled in, in file order."""
        pipe = self.training.pipeline
        globals_ = {**{key: getattr(self.training, key) for key in TRAINING_GLOBALS}, "dataset": pipe.default_dataset,
                    "img_size": self.data.img_size}
        sizes = {name: dataset.img_size for name, dataset in pipe.datasets.items()}
        return [resolve_step(i, step, pipe.defaults, globals_, pipe.steps[i - 1].name if i else None, sizes)
                for i, step in enumerate(pipe.steps)]

    def resolved_steps(self) -> list[ResolvedStep]:
        """The steps that run: the written ones, each replicated step as one step per seed (`training.replicates`)."""
        return replicate_steps(self.written_steps(), self.training.replicates)

    def step(self, name: str) -> ResolvedStep:
        for step in self.resolved_steps():
            if step.name == name:
                return step
        raise KeyError(f"no step named {name!r}")

    def dataset_for(self, step: ResolvedStep) -> DatasetConfig:
        return self.training.pipeline.datasets[step.dataset]

    def dataset_values(self, step: ResolvedStep) -> dict[str, Any]:
        """The step's dataset config as JSON, with a webdataset's `${NAME}` in urls replaced by $WDS_NAME: what its
        step key and MLflow params hold. Keyed on the variable's name, a run with another value skipped finished
        steps for shards they never saw and resumed an interrupted one on them. Urls without a variable are the
        config's own (keys made before stay the same); an unset variable is kept as written (the run does not start:
        file_checks.shards_issues)."""
        values = self.dataset_for(step).model_dump(mode="json")
        if values["type"] == "webdataset":
            urls = values["urls"]
            values["urls"] = (substitute_wds_variables(urls, keep_unset=True) if isinstance(urls, str)
                              else [substitute_wds_variables(url, keep_unset=True) for url in urls])
        return values
