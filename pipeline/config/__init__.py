"""The run configuration: one YAML file fills one :class:`RayppoConfig` (the schema and its
loading in :mod:`pipeline.config.schema`; each other section in its own module with its checks;
:mod:`pipeline.config.checks` validates the whole)."""

from pipeline.config.schema import (
    AlgorithmConfig,
    CheckpointConfig,
    DataConfig,
    InitModelConfig,
    LearnerConfig,
    LoggingConfig,
    ModelConfig,
    RayppoConfig,
    ResourcesConfig,
    RolloutConfig,
    config_hash,
    field_docs,
    load_config,
    resolve_storage,
    save_config,
)

__all__ = [
    "AlgorithmConfig", "CheckpointConfig", "DataConfig", "InitModelConfig", "LearnerConfig", "LoggingConfig",
    "ModelConfig", "RayppoConfig", "ResourcesConfig", "RolloutConfig", "config_hash", "field_docs", "load_config",
    "resolve_storage", "save_config",
]
