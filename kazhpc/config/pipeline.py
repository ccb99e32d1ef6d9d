"""The whole pipeline config: its sections composed, its stages (kazhpc.config.stages), and the
checks across stages."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from kazhpc.config.corpus import TextCorpusConfig
from kazhpc.config.evaluate import EvaluateConfig
from kazhpc.config.export import ExportConfig
from kazhpc.config.messages import suggest
from kazhpc.config.model import ModelConfig, PrepareModelConfig
from kazhpc.config.paths import NAME_PATTERN, Strict, absolute_path, deep_merge, repeated
from kazhpc.config.preprocess import PreprocessConfig
from kazhpc.config.tokenizers import ExtendVocabConfig, TokenizersConfig
from kazhpc.config.tracking import TrackingConfig
from kazhpc.config.train import TrainConfig
from kazhpc.config.stages import StageConfig, resolved_keys, stages_from_jobs, upstream_stages
from kazhpc.errors import KazhpcError


def default_cache_root() -> Path:
    """Where models and caches live unless a config sets cache_dir: $KAZHPC_CACHE, else ~/.cache/kazhpc."""
    return Path(os.environ.get("KAZHPC_CACHE", Path.home() / ".cache" / "kazhpc")).absolute()


class PipelineConfig(Strict):
    """A whole pipeline run: which stages, on which model, logged where."""

    name: str = Field(pattern=NAME_PATTERN)
    stages: list[StageConfig] = Field(min_length=1, description="run in this order (or jobs: [...], one stage per job type)")
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
    corpus: TextCorpusConfig = Field(default_factory=TextCorpusConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    #: Each stage's section (its type's top-level section with its ``with:`` keys), by stage name.
    _sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)
    #: Each stage's upstream: job type -> the earlier stage it reads, by stage name.
    _upstream: dict[str, dict[str, str]] = PrivateAttr(default_factory=dict)
    #: A stage's view hashes as the whole pipeline it belongs to (the run's config hash).
    _pipeline_hash: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _jobs_as_stages(cls, data: Any) -> Any:
        return stages_from_jobs(data)

    @field_validator("stages")
    @classmethod
    def _unique_stages(cls, stages: list[StageConfig]) -> list[StageConfig]:
        twice = repeated([s.name for s in stages])
        if twice:
            raise ValueError(f"stage listed twice: {', '.join(twice)}; give each stage its own name")
        return stages

    @field_validator("runs_root", "cache_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return None if path is None else Path(absolute_path(str(path)))

    @model_validator(mode="after")
    def _stage_sections_and_order(self) -> PipelineConfig:
        # Each stage's section validated as its own (a bad key names the stage), then the checks
        # across stages, so that `kazhpc validate` refuses impossible pipelines before submission.
        for index, stage in enumerate(self.stages):
            section = stage.job.replace("-", "_")
            top = getattr(self, section)
            if stage.settings:
                data = top.model_dump(mode="json")
                deep_merge(data, stage.settings)
                try:
                    merged = type(top).model_validate(data)
                except ValidationError as exc:
                    error = exc.errors()[0]
                    key = ".".join(["with", *(str(p) for p in error["loc"])])  # a check across keys has no loc
                    raise ValueError(f"stages.{stage.name}.{key}: {error['msg'].removeprefix('Value error, ')}") from None
                self._sections[stage.name] = merged
                stage.settings = resolved_keys(stage.settings, merged.model_dump(mode="json"))
            else:
                self._sections[stage.name] = top
            self._upstream[stage.name] = upstream_stages(self.stages, index)
            if stage.job == "train":  # each objective reads one kind of data
                unused = "preprocess" if self._sections[stage.name].objective == "cpt" else "corpus"
                self._upstream[stage.name].pop(unused, None)
        for stage in self.stages:
            check_stage(self, stage)
        return self

    # ----------------------------------------------------------------------------------------
    # Stages.

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> StageConfig:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KazhpcError(f"stage '{name}' is not in this config{suggest(name, self.stage_names)}; "
                          f"its stages: {', '.join(self.stage_names)}")

    def stages_of(self, job: str) -> list[StageConfig]:
        """The stages that run job type ``job``, in order."""
        return [s for s in self.stages if s.job == job]

    def section_of(self, name: str) -> Any:
        """Stage ``name``'s own config section."""
        return self._sections[self.stage(name).name]

    def upstream(self, name: str) -> dict[str, str]:
        """Job type → the earlier stage that stage ``name`` reads."""
        return dict(self._upstream[self.stage(name).name])

    def for_stage(self, name: str) -> PipelineConfig:
        """This config as stage ``name`` sees it: its job type's section is the stage's own. Job
        adapters and libraries read ``cfg.train`` etc. and need not know which stage they run."""
        stage = self.stage(name)
        section = stage.job.replace("-", "_")
        own = self._sections[stage.name]
        if own is getattr(self, section):
            return self
        view = self.model_copy(update={section: own})
        view._sections, view._upstream, view._pipeline_hash = self._sections, self._upstream, self.config_hash()
        return view

    def evaluation_files(self) -> dict[str, str]:
        """Every local file this pipeline's evaluate stages read → the key that names it (what
        training text is decontaminated against), the first stage's key where several name it."""
        keys: dict[str, str] = {}
        for stage in self.stages_of("evaluate"):
            for path, key in self.section_of(stage.name).local_file_keys().items():
                keys.setdefault(path, key)
        return keys

    def decontamination_files(self, own: Any, key: str) -> dict[str, str]:
        """The files a section's training text is checked against (``own``: its DecontaminationConfig,
        named ``key``) → the config key naming each: its own files, then, with ``evaluation_files``,
        every local file of the evaluate stages."""
        files = {path: key for path in own.files}
        if own.evaluation_files:
            for path, named_by in self.evaluation_files().items():
                files.setdefault(path, named_by)
        return files

    @property
    def cache_root(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        return default_cache_root()

    def resolved_dict(self) -> dict[str, Any]:
        """The resolved config as plain JSON-able data (what jobs receive and MLflow stores)."""
        return self.model_dump(mode="json", by_alias=True)

    def config_hash(self) -> str:
        """A short content hash of the resolved config: equal configs, equal hashes (a stage's
        view: its pipeline's)."""
        if self._pipeline_hash is not None:
            return self._pipeline_hash
        canonical = json.dumps(self.resolved_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def check_stage(cfg: PipelineConfig, stage: StageConfig) -> None:
    """What a stage needs from its section and from earlier stages (ValueError, naming the stage)."""
    section = cfg.section_of(stage.name)
    upstream = cfg.upstream(stage.name)
    later = cfg.stages[cfg.stages.index(stage) + 1:]
    # Keys as a legacy one-stage-per-type config spells them; a named stage's own prefix otherwise.
    at = "" if stage.name == stage.job else f"stages.{stage.name}: "
    if stage.job == "preprocess" and not section.sources:
        raise ValueError(f"{at}preprocess.sources: the {stage.name} job needs at least one source")
    if stage.job == "tokenizers" and section.corpus is None:
        raise ValueError(f"{at}tokenizers.corpus: the {stage.name} job needs a corpus (tokenizers.corpus.path)")
    if stage.job == "extend-vocab":
        if section.corpus is None:
            raise ValueError(f"{at}extend_vocab.corpus: the {stage.name} job needs a Kazakh corpus (extend_vocab.corpus.path)")
        trains = cfg.stages_of("train")
        if trains and not any(s.job == "train" for s in later):
            raise ValueError(f"stages: {stage.name} must come before {trains[0].name} (train fine-tunes the extended model)")
    if stage.job == "corpus" and not section.sources:
        raise ValueError(f"{at}corpus.sources: the {stage.name} job needs at least one source")
    if stage.job == "train" and section.objective == "cpt" and "corpus" not in upstream:
        after = [s.name for s in later if s.job == "corpus"]
        raise ValueError(f"stages: {after[0]} must come before {stage.name}" if after else
                         f"stages: {stage.name} (train.objective: cpt) trains on a corpus stage's blocks; list corpus before it")
    if stage.job == "train" and section.objective == "sft" and "preprocess" not in upstream:
        after = [s.name for s in later if s.job == "preprocess"]
        if after:
            raise ValueError(f"stages: {after[0]} must come before {stage.name}")
        raise ValueError(f"stages: {stage.name} reads the preprocess job's output; list preprocess before it")
    if stage.job == "export" and "train" not in upstream:
        after = [s.name for s in later if s.job == "train"]
        raise ValueError(f"stages: {after[0]} must come before {stage.name}" if after else
                         f"stages: {stage.name} exports a train stage's model; list train before it")
    if stage.job == "evaluate":
        for m in section.models:
            if m.kind != "base" and m.adapter is None and "train" not in upstream:
                raise ValueError(
                    f"{at}evaluate.models[{m.label}]: no adapter given and no train job before {stage.name}; "
                    "set evaluate.models[].adapter or list train before evaluate"
                )


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
