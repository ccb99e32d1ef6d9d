"""Configs as validated data.

A pipeline config is YAML validated by pydantic models that forbid unknown keys. Three things
happen before validation, in this order:

1. **Composition.** Any mapping may say ``include: PATH`` (or a list of paths); the included files
   are merged under it and the mapping's own keys win. A section that has a fragment library
   (``model`` → ``configs/models/``) may be given as a bare name: ``model: gemma3-4b``.
2. **Overrides.** ``key.path=value`` strings from the command line; values are parsed as YAML
   (``3`` is an int, ``true`` a bool), and an override may name a fragment (``model=gemma3-4b``).
3. **Path resolution.** Relative paths become absolute against the working directory, and ``~`` and
   ``$VAR`` are expanded (an unset variable is an error), so that the resolved config a SLURM job
   receives means the same thing on a compute node and holds the very path that was checked.

Every error says where it comes from: the file and line of the offending key (or the override),
the dotted key path, and for a misspelt key the closest valid one.

The modules, lowest first (each imports only those before it): ``paths`` (the ``Strict`` base and
path resolution), ``messages`` (origins, ``suggest``, the validation-error describer), one schema
module per section (``model``, ``tracking``, ``preprocess``, ``tokenizers``, ``train``,
``evaluate``, ``export``), ``stages`` (named stages, what each reads), ``pipeline`` (the sections composed, the
checks across stages) and
``loading`` (the YAML include/override engine and ``load_config``). Import from here.
"""

from kazhpc.config.evaluate import EvalModelConfig, EvalTaskConfig, EvaluateConfig
from kazhpc.config.export import ExportConfig
from kazhpc.config.loading import FRAGMENT_DIRS, find_configs_root, load_config, load_yaml_file
from kazhpc.config.messages import ConfigDoc, Origin, describe_validation_error, suggest
from kazhpc.config.model import ModelConfig, PrepareModelConfig
from kazhpc.config.paths import NAME_PATTERN, PATH_PREFIXES, Dtype, Strict, absolute_path
from kazhpc.config.pipeline import PipelineConfig, default_cache_root, dump_yaml, flatten
from kazhpc.config.stages import JOB_NAMES, StageConfig
from kazhpc.config.preprocess import (
    SHORT_ANSWER_KINDS,
    SOURCE_LANGUAGES,
    CleaningConfig,
    DecontaminationConfig,
    DedupConfig,
    LanguageIdConfig,
    PreprocessConfig,
    SourceConfig,
    SourceKind,
    SpecialTokenHandling,
)
from kazhpc.config.tokenizers import CorpusConfig, ExtendVocabConfig, TokenizerLanguage, TokenizersConfig
from kazhpc.config.tracking import TrackingConfig
from kazhpc.config.train import DistributedConfig, LoraSettings, QuantizationConfig, TrainConfig

__all__ = [
    "FRAGMENT_DIRS",
    "JOB_NAMES",
    "NAME_PATTERN",
    "PATH_PREFIXES",
    "SHORT_ANSWER_KINDS",
    "SOURCE_LANGUAGES",
    "CleaningConfig",
    "ConfigDoc",
    "CorpusConfig",
    "DecontaminationConfig",
    "DedupConfig",
    "DistributedConfig",
    "Dtype",
    "EvalModelConfig",
    "EvalTaskConfig",
    "EvaluateConfig",
    "ExportConfig",
    "ExtendVocabConfig",
    "LanguageIdConfig",
    "LoraSettings",
    "ModelConfig",
    "Origin",
    "PipelineConfig",
    "PrepareModelConfig",
    "PreprocessConfig",
    "QuantizationConfig",
    "SourceConfig",
    "SourceKind",
    "SpecialTokenHandling",
    "StageConfig",
    "Strict",
    "TokenizerLanguage",
    "TokenizersConfig",
    "TrackingConfig",
    "TrainConfig",
    "absolute_path",
    "default_cache_root",
    "describe_validation_error",
    "dump_yaml",
    "find_configs_root",
    "flatten",
    "load_config",
    "load_yaml_file",
    "suggest",
]
