"""The config file: schema, validation and loading (pydantic, no torch).

    loaded = load_config("configs/quickstart.yaml")     # or a dict; raises ConfigError listing every problem
    for step in loaded.config.resolved_steps(): ...
"""
from fluxflow.config.errors import ConfigError, ConfigIssue
from fluxflow.config.load import LoadedConfig, load_config
from fluxflow.config.optim import Optimization, OptimizerConfig, SchedulerConfig
from fluxflow.config.promotion import PromotionConfig
from fluxflow.config.schema import (DataConfig, DatasetConfig, DistributedConfig, FolderDataset, ModelConfig,
                                    OutputConfig, PipelineConfig, PipelineSection, ShapesDataset, TrackingConfig,
                                    TrainingConfig, WebDatasetConfig)
from fluxflow.config.steps import ResolvedStep, StepConfig, StepDefaults, Transition

__all__ = [
    "ConfigError", "ConfigIssue", "DataConfig", "DatasetConfig", "DistributedConfig", "FolderDataset", "LoadedConfig",
    "ModelConfig", "Optimization", "OptimizerConfig", "OutputConfig", "PipelineConfig", "PipelineSection",
    "PromotionConfig", "ResolvedStep", "SchedulerConfig", "ShapesDataset", "StepConfig", "StepDefaults",
    "TrackingConfig", "TrainingConfig", "Transition", "WebDatasetConfig", "load_config",
]
