"""The experiment config: schema (frozen dataclasses), loader (YAML, validation, overrides) and run
identity (which settings decide what a run learns)."""

from debiaspl.config.identity import EXECUTION_KEYS, flatten, training_settings
from debiaspl.config.loader import (AbsentPartOptions, ConfigError, describe_fields, from_dict, load_experiment,
                                    load_saved_config, parse_override, protocol_deviations, replace_dotted,
                                    save_config, to_dict, upgrade_legacy_config)
from debiaspl.config.overrides import get_dotted
from debiaspl.config.protocols import PROTOCOLS, protocol_table
from debiaspl.config.schema import (AlgorithmConfig, DataConfig, EvalConfig, ExperimentConfig, HookConfig, LoggingConfig,
                                    ModelConfig, OptimConfig, TrainConfig)
from debiaspl.options import option

__all__ = [
    "EXECUTION_KEYS", "AbsentPartOptions", "AlgorithmConfig", "ConfigError", "DataConfig", "EvalConfig",
    "ExperimentConfig", "HookConfig", "LoggingConfig", "ModelConfig", "OptimConfig", "TrainConfig",
    "PROTOCOLS", "describe_fields", "flatten", "from_dict", "get_dotted", "load_experiment", "load_saved_config", "option",
    "parse_override", "protocol_deviations", "protocol_table", "replace_dotted", "save_config", "to_dict", "training_settings", "upgrade_legacy_config",
]
