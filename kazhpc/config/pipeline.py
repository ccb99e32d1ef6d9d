"""The whole pipeline config: its sections composed, the job list, and the cross-field checks."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator, model_validator

from kazhpc.config.evaluate import EvaluateConfig
from kazhpc.config.messages import suggest
from kazhpc.config.model import ModelConfig, PrepareModelConfig
from kazhpc.config.paths import NAME_PATTERN, Strict, absolute_path
from kazhpc.config.preprocess import PreprocessConfig
from kazhpc.config.tokenizers import ExtendVocabConfig, TokenizersConfig
from kazhpc.config.tracking import TrackingConfig
from kazhpc.config.train import TrainConfig
from kazhpc.registry import JOB_TYPES

#: Job names in pipeline order; each is implemented in kazhpc.runner's registry.
#: The job types, in their canonical order (kazhpc.registry is the one list).
JOB_NAMES: tuple[str, ...] = tuple(job.name for job in JOB_TYPES)


def default_cache_root() -> Path:
    """Where models and caches live unless a config sets cache_dir: $KAZHPC_CACHE, else ~/.cache/kazhpc."""
    return Path(os.environ.get("KAZHPC_CACHE", Path.home() / ".cache" / "kazhpc")).absolute()


class PipelineConfig(Strict):
    """A whole pipeline run: which jobs, on which model, logged where."""

    name: str = Field(pattern=NAME_PATTERN)
    jobs: list[str] = Field(min_length=1, description="job names, run in this order")
    model: ModelConfig
    runs_root: Path = Field(Path("runs"), description="run folders and the default MLflow store")
    cache_dir: Path | None = Field(
        None, description="converted models etc.; default $KAZHPC_CACHE or ~/.cache/kazhpc"
    )
    seed: int = 1234
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    prepare_model: PrepareModelConfig = Field(default_factory=PrepareModelConfig)
    tokenizers: TokenizersConfig = Field(default_factory=TokenizersConfig)
    extend_vocab: ExtendVocabConfig = Field(default_factory=ExtendVocabConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    @field_validator("jobs")
    @classmethod
    def _known_unique_jobs(cls, jobs: list[str]) -> list[str]:
        for job in jobs:
            if job not in JOB_NAMES:
                raise ValueError(f"unknown job '{job}'{suggest(job, JOB_NAMES)}; known: {', '.join(JOB_NAMES)}")
        duplicates = sorted({j for j in jobs if jobs.count(j) > 1})
        if duplicates:
            raise ValueError(f"job listed twice: {', '.join(duplicates)}")
        return jobs

    @field_validator("runs_root", "cache_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else Path(absolute_path(str(path)))

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineConfig:
        # Cross-field checks (ZeRO stage vs GPUs, quant storage, time limits) live here, so that
        # `kazhpc validate` refuses impossible combinations before submission.
        if "preprocess" in self.jobs and not self.preprocess.sources:
            raise ValueError("preprocess.sources: the preprocess job needs at least one source")
        if "tokenizers" in self.jobs and self.tokenizers.corpus is None:
            raise ValueError("tokenizers.corpus: the tokenizers job needs a corpus (tokenizers.corpus.path)")
        if "extend-vocab" in self.jobs and self.extend_vocab.corpus is None:
            raise ValueError("extend_vocab.corpus: the extend-vocab job needs a Kazakh corpus (extend_vocab.corpus.path)")
        if "extend-vocab" in self.jobs and "train" in self.jobs and self.jobs.index("train") < self.jobs.index("extend-vocab"):
            raise ValueError("jobs: extend-vocab must come before train (train fine-tunes the extended model)")
        if "train" in self.jobs and "preprocess" not in self.jobs:
            raise ValueError("jobs: train reads the preprocess job's output; list preprocess before it")
        if "train" in self.jobs and self.jobs.index("train") < self.jobs.index("preprocess"):
            raise ValueError("jobs: preprocess must come before train")
        for m in self.evaluate.models:
            if "evaluate" in self.jobs and m.kind != "base" and m.adapter is None and (
                "train" not in self.jobs or self.jobs.index("train") > self.jobs.index("evaluate")
            ):
                raise ValueError(
                    f"evaluate.models[{m.label}]: no adapter given and no train job before evaluate; "
                    "set evaluate.models[].adapter or list train before evaluate"
                )
        return self

    @property
    def cache_root(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        return default_cache_root()

    def resolved_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able data (what jobs receive and MLflow stores)."""
        return self.model_dump(mode="json")

    def config_hash(self) -> str:
        """A short content hash of the resolved config: equal configs, equal hashes."""
        canonical = json.dumps(self.resolved_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Helpers for tracking.


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} → {'a.b': 1}: the resolved config as MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def dump_yaml(cfg: PipelineConfig) -> str:
    """The resolved config as YAML, keys in schema order."""
    return yaml.safe_dump(cfg.resolved_dict(), sort_keys=False, allow_unicode=True)
