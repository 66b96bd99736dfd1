"""Run configuration: the sectioned YAML schema and its loader."""

from damoc.config.load import apply_overrides, config_to_yaml, load_config, read_yaml, validate_config
from damoc.config.schema import (
    CandidateConfig,
    ClusterConfig,
    DataCompressionConfig,
    DataConfig,
    ModelCompressionConfig,
    OutputConfig,
    RankingConfig,
    RunConfig,
    TrainingConfig,
)

__all__ = [
    "CandidateConfig", "ClusterConfig", "DataCompressionConfig", "DataConfig", "ModelCompressionConfig",
    "OutputConfig", "RankingConfig", "RunConfig", "TrainingConfig",
    "apply_overrides", "config_to_yaml", "load_config", "read_yaml", "validate_config",
]
