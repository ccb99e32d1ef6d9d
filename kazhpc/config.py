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
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from kazhpc.errors import ConfigError, KazhpcError, read_user_text

Dtype = Literal["bfloat16", "float16", "float32"]

#: Sections that may be given as a bare fragment name, and the folder under configs/ that holds them.
FRAGMENT_DIRS: dict[str, str] = {"model": "models"}

#: Job names in pipeline order; each is implemented in kazhpc.runner's registry.
JOB_NAMES: tuple[str, ...] = ("prepare-model", "tokenizers", "extend-vocab", "preprocess", "train", "evaluate")

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


#: ``$NAME`` / ``${NAME}``, the forms os.path.expandvars (and datasets' loaders after it) expand.
_ENV_VAR = re.compile(r"\$(\w+|\{[^}]*\})")
#: How a configured value says it is a path rather than a name (hub id, built-in, template name).
PATH_PREFIXES = (".", "/", "~", "$")


def _abs_path(value: str) -> str:
    """A relative path means relative to where kazhpc runs; stored absolute for SLURM steps.

    ``~`` and ``$VAR`` / ``${VAR}`` are expanded here, once, at load time: the resolved config holds
    the path every job opens, and the path checked is the path used (datasets' loaders would
    otherwise expand a ``$`` left in a path again, after validation). A variable that is not set is
    an error, not a literal folder name.
    """
    expanded = os.path.expandvars(os.path.expanduser(value))
    unset = _ENV_VAR.search(expanded)
    if unset:
        raise ValueError(
            f"environment variable {unset.group(0)} is not set; set it, or write the path out"
        )
    return os.path.abspath(os.path.expanduser(expanded))


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    """Which model, and how to load it. One file per size in configs/models/."""

    name: str = Field(pattern=_NAME_PATTERN, description="short name used in run names and reports")
    source: str = Field(
        min_length=1,
        description="'bundled:gemma3-270m', a hub id ('google/gemma-3-4b-pt') or a local checkpoint dir",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Dtype = "bfloat16"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = Field(
        "eager", description="Gemma-3 trains stably with eager attention (soft-capping)"
    )
    chat_template: str = Field(
        "gemma3", description="a built-in template name ('gemma3') or a path to a .jinja file"
    )

    @field_validator("source", "chat_template")
    @classmethod
    def _absolute_if_path(cls, value: str) -> str:
        # Local checkpoint dirs and template files, not 'bundled:...', hub ids or template names.
        if value.startswith(PATH_PREFIXES) or value.endswith((".jinja", ".j2")):
            return _abs_path(value)
        return value


class TrackingConfig(Strict):
    """Where runs are logged. The default is a sqlite store under runs_root, no server needed."""

    enabled: bool = True
    uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<runs_root>/mlflow.db"
    )
    experiment: str = Field("kazhpc", min_length=1)
    timeout_s: float = Field(
        5.0, gt=0, description="how long to wait for a tracking server before logging offline"
    )


class PrepareModelConfig(Strict):
    """The prepare-model job: materialise the model, check template + BOS, score perplexity."""

    perplexity_texts: str = Field(
        "builtin:kk-sentences",
        description="'builtin:kk-sentences' or a UTF-8 text file with one passage per line",
    )
    max_length: int = Field(256, gt=0, description="tokens per passage, longer ones are truncated")

    @field_validator("perplexity_texts")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return value if value.startswith("builtin:") else _abs_path(value)
    batch_size: int = Field(4, gt=0)


SourceKind = Literal["muri-it", "alpaca", "kazparc", "ner-kazakh", "mc", "custom"]
SHORT_ANSWER_KINDS = ("mc", "ner-kazakh", "kazparc")
#: Languages of a kazparc-style parallel source (its directions and its columns mapping).
SOURCE_LANGUAGES = ("kk", "en", "ru", "tr")


class SourceConfig(Strict):
    """One input data set, adapted to the canonical record (kazhpc.data.adapters)."""

    name: str = Field(pattern=_NAME_PATTERN, description="short name used in counts and rejects")
    kind: SourceKind
    path: str | None = Field(None, description="a local JSONL / JSON / CSV / Parquet file")
    hub: str | None = Field(None, description="a hub dataset id (or a local dataset folder) for datasets.load_dataset")
    hub_config: str | None = Field(None, description="the hub dataset's config (subset), e.g. 'kaz'")
    split: str = "train"
    max_rows: int | None = Field(None, gt=0, description="keep at most this many rows after cleaning")
    weight: float = Field(1.0, ge=0, description="copies of each kept row in the train split (0.5: half)")
    min_answer_words: int | None = Field(
        None,
        ge=0,
        description="overrides cleaning.min_answer_words; default 0 for kinds whose answers are short by "
        "nature (mc, ner-kazakh, kazparc), the cleaning setting otherwise",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="custom kind: canonical field → column (prompt, response, input, system); kazparc kind: "
        "language → column, e.g. {kk: Kazakh, en: English} (default: the language codes themselves)",
    )
    directions: list[str] = Field(
        default_factory=lambda: ["kk-en", "en-kk", "kk-ru", "ru-kk"],
        description="kazparc kind: translation directions to emit",
    )

    def answer_word_minimum(self, default: int) -> int:
        """The reference project's 5-word minimum fits free-form answers, not labels or translations."""
        if self.min_answer_words is not None:
            return self.min_answer_words
        return 0 if self.kind in SHORT_ANSWER_KINDS else default

    @field_validator("columns")
    @classmethod
    def _known_fields(cls, columns: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        known = SOURCE_LANGUAGES if info.data.get("kind") == "kazparc" else ("prompt", "response", "input", "system")
        for key in columns:
            if key not in known:
                raise ValueError(f"unknown field {key!r}{suggest(key, known)}; fields: {', '.join(known)}")
        return columns

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: str | None) -> str | None:
        return None if path is None else _abs_path(path)

    @field_validator("hub")
    @classmethod
    def _local_hub_copy_absolute(cls, hub: str | None) -> str | None:
        # A local dataset folder given as `hub` (offline copies) is resolved like any path.
        if hub is not None and hub.startswith(PATH_PREFIXES):
            return _abs_path(hub)
        return hub

    @model_validator(mode="after")
    def _one_location(self) -> SourceConfig:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of path or hub")
        if self.kind == "custom" and not {"prompt", "response"} <= set(self.columns):
            raise ValueError("a custom source needs columns.prompt and columns.response")
        if self.kind not in ("custom", "kazparc") and self.columns:
            raise ValueError("columns is only for kind: custom (fields) and kind: kazparc (languages)")
        bad = [d for d in self.directions if d not in ("kk-en", "en-kk", "kk-ru", "ru-kk", "kk-tr", "tr-kk")]
        if bad:
            raise ValueError(f"unknown translation direction {bad[0]!r}; use kk-en, en-kk, kk-ru, ru-kk, kk-tr, tr-kk")
        return self


class LanguageIdConfig(Strict):
    enabled: bool = True
    min_confidence: float = Field(0.5, ge=0, le=1, description="lingua confidence for the expected language")
    drop_mixed_kk_ru: bool = Field(
        False, description="drop answers that switch between Kazakh and Russian (always counted)"
    )


class DedupConfig(Strict):
    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0, le=1, description="estimated Jaccard similarity of word shingles")
    num_perm: int = Field(64, ge=16, le=512)
    shingle_words: int = Field(3, ge=1)


class DecontaminationConfig(Strict):
    files: list[str] = Field(
        default_factory=list, description="evaluation items (JSONL with question/choices, or plain text)"
    )
    ngram: int = Field(8, ge=3, description="word n-gram length that counts as overlap")
    evaluation_files: bool = Field(
        True,
        description="also the local files of this pipeline's evaluate section (data_overrides, task paths, "
        "perplexity texts, generation prompts) when evaluate is among its jobs",
    )

    @field_validator("files")
    @classmethod
    def _absolute(cls, files: list[str]) -> list[str]:
        return [_abs_path(f) for f in files]


#: What happens to text that spells a tokenizer's special token (kazhpc.models.SpecialTexts):
#: ``reject`` drops the row or document, counted; ``neutralise`` keeps it with U+2060 inserted.
SpecialTokenHandling = Literal["reject", "neutralise"]


class CleaningConfig(Strict):
    """Every step is switchable and counted."""

    nfc: bool = True
    lookalikes: bool = True
    whitespace: bool = True
    min_answer_words: int = Field(5, ge=0, description="the reference project's minimum; 0 disables")
    max_tokens: int | None = Field(2048, gt=0, description="formatted length in the target model's tokens")
    language_id: LanguageIdConfig = Field(default_factory=LanguageIdConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    special_tokens: SpecialTokenHandling = Field(
        "reject", description="a turn that spells a special token (<end_of_turn>, <eos>, ...): reject the row, "
        "or neutralise the text (U+2060 after its first character) and keep it"
    )


class PreprocessConfig(Strict):
    """The preprocess job: sources → cleaned, deduplicated, formatted Parquet shards."""

    sources: list[SourceConfig] = Field(default_factory=list)
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    system_prompt: str | None = Field(None, description="a system message added to every conversation")
    validation_fraction: float = Field(0.05, ge=0, lt=1)
    rows_per_file: int = Field(50_000, gt=0, description="rows per output Parquet file")
    shards: int = Field(1, ge=1, description="parts processed separately, then merged (SLURM array tasks)")

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        names = [s.name for s in sources]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"source name used twice: {', '.join(duplicates)}")
        return sources


TokenizerLanguage = Literal["kk", "en", "ru", "tr"]


class CorpusConfig(Strict):
    path: str = Field(description="plain text, JSONL (with field), KazNERD-style IOB2, or parallel JSONL/CSV")
    format: Literal["auto", "text", "jsonl", "iob2", "parallel"] = "auto"
    field: str | None = Field(None, description="the JSONL field holding the text")
    name: str | None = Field(None, description="the corpus's name in the report (default: the file name)")
    language: TokenizerLanguage = Field("kk", description="language of a monolingual corpus")
    max_texts: int | None = Field(None, gt=0, description="only the first N passages")

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        return _abs_path(path)


class TokenizersConfig(Strict):
    """The tokenizers job: the Kazakh tokenizer tax of several tokenizers on one corpus."""

    tokenizers: list[str] = Field(
        default_factory=lambda: ["gemma3", "llama3", "llama4", "qwen2.5", "tekken"],
        min_length=1,
        description="offline names (gemma3, llama3, llama4, qwen2.5, tekken), bundled:..., hub ids or dirs",
    )
    corpus: CorpusConfig | None = None
    languages: list[TokenizerLanguage] = Field(default_factory=lambda: ["kk", "en", "ru", "tr"], min_length=1)
    add_special_tokens: bool = Field(False, description="count <bos> etc. (the reference project did)")
    check_language: bool = Field(True, description="refuse a 'Kazakh' corpus that lingua says is not")
    min_kk_share: float = Field(0.5, ge=0, le=1)


class ExtendVocabConfig(Strict):
    """The extend-vocab job: Kazakh tokens added to the model's own BPE (vocab + merges), new
    embedding rows initialised from their pieces, and the effect measured (kazhpc.tokenization.extend)."""

    corpus: CorpusConfig | None = Field(None, description="Kazakh training text (text, JSONL field or IOB2)")
    heldout: CorpusConfig | None = Field(
        None, description="Kazakh text never trained on; default: the last heldout_fraction of the corpus"
    )
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="tail of the corpus held out when heldout is unset")
    english: CorpusConfig | None = Field(
        None, description="English text for the fertility check (a text file, or a parallel file's en column)"
    )
    new_tokens: int = Field(16000, gt=0, description="K: new tokens to add")
    min_frequency: int = Field(2, ge=2, description="a new token's pair must occur this often in the corpus")
    k_curve: list[int] = Field(default_factory=list, description="also measure fertility with these smaller K")
    bpc_texts: int = Field(64, ge=0, description="held-out texts scored for bits per character; 0 skips the model")
    max_length: int = Field(256, gt=0, description="tokens per scored text")
    dtype: Dtype = Field("float32", description="dtype for scoring and adaptation (saved in model.dtype)")
    init_scale: float = Field(
        0.7, gt=0, le=2, description="new row = init_scale x the mean of its pieces' rows (docs/benchmarks.md)"
    )
    adapt_steps: int = Field(32, ge=0, description="steps of the short adaptation run; 0 skips it")
    adapt_batch_size: int = Field(8, gt=0)
    adapt_learning_rate: float = Field(1e-3, gt=0)
    adapt_max_length: int = Field(128, gt=0)
    adapt_lora: bool = Field(True, description="LoRA (r=8) next to the new rows; false: the new rows only")
    check_language: bool = Field(True, description="refuse a 'Kazakh' corpus that lingua says is not")
    min_kk_share: float = Field(0.5, ge=0, le=1)


class QuantizationConfig(Strict):
    """bitsandbytes 4-bit loading (QLoRA). `train.quantization: null` trains plain LoRA."""

    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Dtype = "bfloat16"
    quant_storage: Dtype | None = Field(
        None, description="storage dtype of the packed weights; ZeRO-3 needs it equal to compute_dtype"
    )


class LoraSettings(Strict):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = Field("all-linear", description="'all-linear' or module names")


class DistributedConfig(Strict):
    """How many devices train together, and how (DeepSpeed ZeRO). One GPU is the default."""

    nodes: int = Field(1, ge=1, description="SLURM nodes; one `accelerate launch` per node under srun")
    gpus_per_node: int = Field(1, ge=1, description="processes (GPUs) per node")
    deepspeed: str | None = Field(
        None,
        description="a name in configs/deepspeed/ (zero2, zero2-offload, zero3, zero3-offload) or a "
        "DeepSpeed JSON path; null trains without DeepSpeed",
    )
    gpu_memory_gb: float = Field(
        40.0, gt=0, description="memory of one GPU (A100-40GB by default), for the memory planner"
    )
    rendezvous_timeout_s: int = Field(
        900, gt=0, description="how long the nodes of a multi-node job wait for each other at start"
    )

    @field_validator("deepspeed")
    @classmethod
    def _absolute_if_path(cls, value: str | None) -> str | None:
        # A JSON path is made absolute like other paths; a name stays a name (configs/deepspeed/).
        if value is not None and (value.endswith(".json") or "/" in value or value.startswith(PATH_PREFIXES)):
            return _abs_path(value)
        return value

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


class TrainConfig(Strict):
    """The train job: QLoRA SFT (bitsandbytes + peft + trl) with loss on the answers only."""

    quantization: QuantizationConfig | None = Field(default_factory=QuantizationConfig)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: run `epochs`)")
    epochs: float = Field(1.0, gt=0)
    per_device_batch_size: int = Field(4, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    max_length: int = Field(1024, gt=0, description="tokens per example; longer ones are truncated")
    packing: bool = Field(False, description="pack examples (padding-free, per-example attention)")
    gradient_checkpointing: bool = False
    logging_steps: int = Field(1, gt=0)
    save_steps: int = Field(50, gt=0, description="checkpoint every N steps (resume point)")
    resume: bool = Field(True, description="continue from the last checkpoint in the run dir (a requeued job)")
    preemption_signal: str = Field(
        "USR2", description="SLURM's warning signal (sbatch --signal; submitit uses USR2): save, stop, requeue"
    )

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, steps: int) -> int:
        # transformers reads any max_steps <= 0 as "train by epochs"; kazhpc keeps one spelling of that.
        if steps != -1 and steps < 1:
            raise ValueError("expected a positive number of optimizer steps, or -1 to train for `epochs`")
        return steps

    @field_validator("preemption_signal")
    @classmethod
    def _catchable_signal(cls, name: str) -> str:
        from kazhpc.signals import signal_number

        try:
            return signal_number(name).name.removeprefix("SIG")
        except KazhpcError as exc:
            raise ValueError(str(exc).removeprefix("train.preemption_signal: ")) from None
    loss_check_rows: int = Field(
        32, ge=0, description="train rows on which base and adapter losses are compared after training"
    )
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)


class EvalTaskConfig(Strict):
    """A task built from a user's file by config alone (kazhpc.evaluation.suite)."""

    name: str = Field(pattern=_NAME_PATTERN, description="the task's name in results and reports")
    kind: Literal["mc", "translation"]
    path: str = Field(description="JSONL / JSON / CSV / Parquet: mc rows {question, choices, answer (index or "
                      "letter)}; translation rows with one field per language (names changed by columns)")
    source_lang: str = Field("kk", description="translation: field (language code) of the source text")
    target_lang: str = Field("en", description="translation: field (language code) of the reference")
    columns: dict[str, str | list[str]] = Field(
        default_factory=dict,
        description="the file's own column names. mc: {question: COL, choices: LIST_COL or [COL, COL, ...], "
        "answer: COL}; translation: {LANG: COL} for source_lang / target_lang (e.g. {kk: Kazakh, en: English})",
    )
    answer_format: Literal["auto", "index", "letter", "number"] = Field(
        "auto",
        description="mc: the answer as a 0-based index, a letter (A, B, ...) or a 1-based number; "
        "auto: an integer is an index, anything else a letter",
    )
    instruction: str | None = Field(None, description="replaces the built-in Kazakh instruction")
    max_gen_toks: int = Field(64, gt=0, description="translation: tokens generated at most")

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        return _abs_path(path)

    @model_validator(mode="after")
    def _mapping(self) -> EvalTaskConfig:
        known = ("question", "choices", "answer") if self.kind == "mc" else (self.source_lang, self.target_lang)
        for key, column in self.columns.items():
            if key not in known:
                raise ValueError(f"columns.{key}: unknown field{suggest(key, known)}; {self.kind} maps {', '.join(known)}")
            several = isinstance(column, list)
            if several and key != "choices":
                raise ValueError(f"columns.{key}: expected one column name, got a list")
            if several and (len(column) < 2 or len(set(column)) != len(column)):
                raise ValueError("columns.choices: a list names two or more different columns, one per choice")
            if any(not c.strip() for c in (column if several else [column])):
                raise ValueError(f"columns.{key}: empty column name")
        if self.kind == "translation" and self.answer_format != "auto":
            raise ValueError("answer_format is for kind: mc")
        if self.kind == "translation" and self.source_lang == self.target_lang:
            raise ValueError(f"source_lang and target_lang are both '{self.source_lang}'")
        return self

    def column(self, field: str) -> str | list[str]:
        """The file's column for a canonical field (mc: question / choices / answer; translation: a language)."""
        return self.columns.get(field, field)


class EvalModelConfig(Strict):
    """One model under test: the configured base model, with or without a LoRA adapter."""

    label: str = Field(pattern=_NAME_PATTERN, description="the model's name in results and reports")
    kind: Literal["base", "adapter", "merged"] = Field(
        "base", description="base model; base + peft adapter; adapter merged into the weights (merge_and_unload)"
    )
    adapter: str | None = Field(
        None, description="adapter folder; default for adapter/merged: <run dir>/train/adapter (train job)"
    )

    @field_validator("adapter")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        return None if path is None else _abs_path(path)


class EvaluateConfig(Strict):
    """The evaluate job: the Kazakh lm-eval suite on each model, sharded, merged exactly."""

    tasks: list[str | EvalTaskConfig] = Field(
        default_factory=lambda: ["kk-leaderboard", "belebele_kaz_Cyrl"],
        min_length=1,
        description="kazhpc task names, suite names (kk-leaderboard), lm-eval task names, or mc/translation builders",
    )
    data_overrides: dict[str, str] = Field(
        default_factory=dict, description="task name → local copy (JSONL/JSON/CSV/Parquet) in the hub schema"
    )
    models: list[EvalModelConfig] = Field(
        default_factory=lambda: [EvalModelConfig(label="base")], min_length=1
    )
    baseline: str | None = Field(None, description="model label the others are compared with (default: the first)")
    shards: int = Field(1, ge=1, description="parts evaluated separately (SLURM array tasks), then merged")
    limit: int | None = Field(None, gt=0, description="first N documents per task (smoke tests only)")
    batch_size: int = Field(
        1,
        gt=0,
        description="1 keeps every document's scores independent of its shard (the merge is then bit-identical "
        "to an unsharded run); larger batches pad requests together, which moves bf16 log-likelihoods by "
        "rounding and can flip near-ties",
    )
    bootstrap_iters: int = Field(1000, ge=0, description="lm-eval's bootstrap draws for non-mean metrics' stderr")
    perplexity_texts: str | None = Field(
        "builtin:kk-sentences", description="held-out Kazakh text (one passage per line); null skips perplexity"
    )
    perplexity_max_length: int = Field(256, gt=0)
    generation_prompts: str | None = Field(
        None, description="text file, one Kazakh prompt per line: side-by-side generations of the models"
    )
    generation_max_new_tokens: int = Field(48, gt=0, description="tokens each model generates per prompt")
    special_tokens: SpecialTokenHandling = Field(
        "reject", description="a document or generation prompt that spells a special token: leave it out "
        "(counted, in rejects.jsonl), or neutralise the text (U+2060 after its first character) and score it"
    )

    @field_validator("data_overrides")
    @classmethod
    def _absolute_overrides(cls, overrides: dict[str, str]) -> dict[str, str]:
        out = {}
        for task, path in overrides.items():
            try:
                out[task] = _abs_path(path)
            except ValueError as exc:
                raise ValueError(f"{task}: {path}: {exc}") from None
        return out

    @field_validator("perplexity_texts", "generation_prompts")
    @classmethod
    def _absolute_texts(cls, value: str | None) -> str | None:
        return value if value is None or value.startswith("builtin:") else _abs_path(value)

    @model_validator(mode="after")
    def _labels(self) -> EvaluateConfig:
        labels = [m.label for m in self.models]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"models: label used twice: {', '.join(duplicates)}")
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"baseline: '{self.baseline}' is not a model label{suggest(self.baseline, labels)}")
        return self

    def local_files(self) -> list[str]:
        """Every local file this job reads (what preprocess decontaminates training data against)."""
        return list(self.local_file_keys())

    def local_file_keys(self) -> dict[str, str]:
        """Every local file this job reads → the config key that names it (the first, if several do)."""
        keys: dict[str, str] = {}
        for t in self.tasks:
            if isinstance(t, EvalTaskConfig):
                keys.setdefault(t.path, f"evaluate.tasks[{t.name}].path")
        for task, path in self.data_overrides.items():
            keys.setdefault(path, f"evaluate.data_overrides.{task}")
        for key in ("perplexity_texts", "generation_prompts"):
            path = getattr(self, key)
            if path and not path.startswith("builtin:"):
                keys.setdefault(path, f"evaluate.{key}")
        return keys


def default_cache_root() -> Path:
    """Where models and caches live unless a config sets cache_dir: $KAZHPC_CACHE, else ~/.cache/kazhpc."""
    return Path(os.environ.get("KAZHPC_CACHE", Path.home() / ".cache" / "kazhpc")).absolute()


class PipelineConfig(Strict):
    """A whole pipeline run: which jobs, on which model, logged where."""

    name: str = Field(pattern=_NAME_PATTERN)
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
        return None if path is None else Path(_abs_path(str(path)))

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
# Loading: YAML with line numbers, includes, fragments, overrides.


@dataclass(frozen=True)
class Origin:
    """Where a key's value came from, for error messages."""

    source: str  # a file path, or "override 'a.b=c'"
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass
class _Doc:
    """Merged raw data plus the origin of every key path in it."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[tuple[str, ...], Origin] = field(default_factory=dict)


def find_configs_root(start: Path | None = None) -> Path | None:
    """The configs/ folder that holds fragment libraries (models/, deepspeed/, clusters/).

    Looked up in order: $KAZHPC_CONFIGS, the nearest ancestor of ``start`` named ``configs``,
    ``./configs``, and the configs/ beside the installed package (a source checkout).
    """
    candidates: list[Path] = []
    if os.environ.get("KAZHPC_CONFIGS"):
        candidates.append(Path(os.environ["KAZHPC_CONFIGS"]))
    if start is not None:
        candidates += [p for p in [start, *start.parents] if p.name == "configs"]
    candidates += [Path.cwd() / "configs", Path(__file__).resolve().parent.parent / "configs"]
    return next((c.absolute() for c in candidates if c.is_dir()), None)


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """Parse a YAML file; also return the 1-based line of every mapping key path."""
    text = read_user_text(path, "config file", ConfigError)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    lines: dict[tuple[str, ...], int] = {}

    def walk(n: yaml.Node | None, prefix: tuple[str, ...]) -> None:
        if isinstance(n, yaml.MappingNode):
            for key_node, value_node in n.value:
                key = prefix + (str(key_node.value),)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)

    walk(node, ())
    return data, lines


def _fragment_path(name: str, section: str, base_dir: Path, origin: Origin) -> Path:
    """A bare fragment name ('gemma3-4b') or a path, as the file to include."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name).expanduser()
        return path if path.is_absolute() else base_dir / path
    root = find_configs_root(base_dir)
    folder = FRAGMENT_DIRS.get(section)
    if folder is None:
        raise ConfigError(f"{origin}: {section}: '{name}': '{section}' has no fragment library; give a .yaml path")
    if root is None:
        raise ConfigError(f"{origin}: {section}: cannot resolve '{name}': no configs/ folder found")
    path = root / folder / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / folder).glob("*.yaml"))
        raise ConfigError(
            f"{origin}: {section}: no fragment '{name}' in {root / folder}"
            f"{suggest(name, known)}; known: {', '.join(known) or 'none'}"
        )
    return path


def _load_file(path: Path, prefix: tuple[str, ...], stack: tuple[Path, ...]) -> _Doc:
    path = path.absolute()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"{path}: include cycle: {chain}")
    data, lines = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of keys at the top, got {type(data).__name__}")
    origins = {prefix + k: Origin(str(path), line) for k, line in lines.items()}
    return _expand(data, prefix, path.parent, origins, (*stack, path))


def _expand(
    data: dict[str, Any],
    prefix: tuple[str, ...],
    base_dir: Path,
    origins: dict[tuple[str, ...], Origin],
    stack: tuple[Path, ...],
) -> _Doc:
    """Resolve `include:` keys and fragment names inside ``data`` (which sits at ``prefix``)."""
    doc = _Doc()
    includes = data.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        where = origins.get(prefix + ("include",), Origin(str(stack[-1]) if stack else "config"))
        raise ConfigError(f"{where}: include: expected a path or a list of paths")
    section = prefix[-1] if prefix else ""
    for inc in includes:
        where = origins.get(prefix + ("include",), Origin(str(stack[-1]) if stack else "config"))
        included = _fragment_path(inc, section, base_dir, where)
        if not included.is_file():  # named where it is included, not only by its own path
            raise ConfigError(f"{where}: {'.'.join((*prefix, 'include'))}: {included}: config file not found")
        _merge(doc, _load_file(included, prefix, stack))
    own = _Doc()
    for key, value in data.items():
        if key == "include":
            continue
        path = prefix + (str(key),)
        where = origins.get(path, Origin("config"))
        if not prefix and key in FRAGMENT_DIRS and isinstance(value, str):
            sub = _load_file(_fragment_path(value, key, base_dir, where), path, stack)
            own.data[key] = sub.data
            own.origins.update(sub.origins)
        elif isinstance(value, dict):
            sub = _expand(value, path, base_dir, origins, stack)
            own.data[key] = sub.data
            own.origins.update(sub.origins)
        else:
            own.data[key] = value
        own.origins[path] = where
    _merge(doc, own)
    return doc


def _merge(into: _Doc, other: _Doc) -> None:
    """Deep-merge ``other`` into ``into``; mappings merge, anything else is replaced."""

    def merge(a: dict[str, Any], b: dict[str, Any]) -> None:
        for key, value in b.items():
            if isinstance(value, dict) and isinstance(a.get(key), dict):
                merge(a[key], value)
            else:
                a[key] = value

    merge(into.data, other.data)
    into.origins.update(other.origins)


def _apply_override(doc: _Doc, override: str) -> None:
    key, sep, raw = override.partition("=")
    origin = Origin(f"override '{override}'")
    if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z0-9_.-]+", key.strip()):
        raise ConfigError(f"{origin}: expected key.path=value")
    path = tuple(key.strip().split("."))
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if len(path) == 1 and path[0] in FRAGMENT_DIRS and isinstance(value, str):
        sub = _load_file(_fragment_path(value, path[0], Path.cwd(), origin), path, ())
        value = sub.data
        for p in [k for k in doc.origins if k[:1] == path]:
            del doc.origins[p]
        doc.origins.update(sub.origins)
    node = doc.data
    for i, part in enumerate(path[:-1]):
        if not isinstance(node.get(part), dict):
            if part in node:
                raise ConfigError(f"{origin}: {'.'.join(path[: i + 1])} is not a section")
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    doc.origins[path] = origin


def _leaves(data: dict[str, Any], prefix: tuple[str, ...]) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for key, value in data.items():
        path = prefix + (str(key),)
        out |= _leaves(value, path) if isinstance(value, dict) and value else {path}
    return out


def _lift_model_train(doc: _Doc, lifted: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    """Move a model file's ``train:`` block (per-size defaults) under the top-level ``train``.

    Precedence, lowest first: schema defaults < the model file's ``train:`` block < the pipeline's
    own ``train:`` keys < ``train.*`` overrides. The rule is the same whether the model is named in
    the pipeline or by a ``model=...`` override: ``smoke.yaml model=gemma3-27b`` gets the 27B layout
    (nodes, ZeRO-3, quant storage, batch) except where smoke.yaml itself sets a train key. Defaults
    lifted from a previous model (``lifted``, the leaf paths that came from it and nothing else)
    are removed first, so that switching models leaves none of the old model's layout behind.
    Returns the leaf paths that now come from the model file.
    """
    model = doc.data.get("model")
    if not isinstance(model, dict) or "train" not in model:
        return lifted
    defaults = model.pop("train")
    where = doc.origins.get(("model", "train"), Origin("config"))
    if not isinstance(defaults, dict):
        raise ConfigError(f"{where}: model.train: expected a mapping of train keys (per-size defaults)")
    train = doc.data.get("train")
    if train is not None and not isinstance(train, dict):
        raise ConfigError(f"{doc.origins.get(('train',), where)}: train: expected a mapping")
    train = train or {}
    for leaf in lifted:  # the previous model's defaults that no override replaced since
        if any(str(doc.origins.get(leaf[:i], "")).startswith("override") for i in range(1, len(leaf) + 1)):
            continue
        node: Any = train
        for part in leaf[1:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf[-1], None)
        doc.origins.pop(leaf, None)
    merged = _Doc(data={"train": defaults})
    _merge(merged, _Doc(data={"train": train}))
    own = _leaves(train, ("train",))
    doc.data["train"] = merged.data["train"]
    for key in [k for k in doc.origins if k[:2] == ("model", "train")]:
        origin = doc.origins.pop(key)
        doc.origins.setdefault(("train",) + key[2:], origin)
    return _leaves(defaults, ("train",)) - own


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load, compose, override and validate a pipeline config; raise ConfigError on any problem."""
    path = Path(path)
    doc = _load_file(path, (), ())
    lifted = _lift_model_train(doc, set())
    for override in overrides:
        _apply_override(doc, override)
        lifted = _lift_model_train(doc, lifted)
    try:
        return PipelineConfig.model_validate(doc.data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, doc, path)) from None


# --------------------------------------------------------------------------------------------
# Error messages.


def suggest(word: str, options: typing.Iterable[str]) -> str:
    """' (did you mean X?)' for the closest option: a near spelling, or the one option it abbreviates.
    The one "did you mean" of kazhpc: config keys, job names, task names, data columns."""
    options = list(options)
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not match and len(word) >= 3:
        match = [o for o in options if o.startswith(word)]
    return f" (did you mean '{match[0]}'?)" if len(match) == 1 else ""


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that sits at ``loc`` inside ``model`` (for key suggestions)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        if str(part).isdigit():  # a list position: the list's item model stays current
            continue
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        current = _unwrap(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Optional[X] / X | None / list[X] / dict[str, X] → X (the first model class found)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict, tuple):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def _without_union_tags(errors: list[Any]) -> list[Any]:
    """Errors of a ``str | Model`` field (``evaluate.tasks``) as the user wrote it.

    Given a mapping, pydantic reports every member: 'tasks.0.str: Input should be a valid string',
    then the model's own errors under its class name ('tasks.0.EvalTaskConfig.kind: ...'). The other
    members' type errors are dropped and the class name is taken out of the key.
    """
    members = {cls.__name__ for cls in _strict_models()}

    def member(part: Any) -> bool:  # 'EvalTaskConfig', or 'function-after[_mapping(), EvalTaskConfig]'
        return isinstance(part, str) and (part in members or part.rsplit(", ", 1)[-1].rstrip("]") in members)

    tagged = {tuple(e["loc"][:i]) for e in errors for i, part in enumerate(e["loc"]) if member(part)}
    kept = [
        {**e, "loc": tuple(part for part in e["loc"] if not member(part))}
        for e in errors
        if tuple(e["loc"][:-1]) not in tagged or member(e["loc"][-1])
    ]
    return kept or errors


def _strict_models() -> list[type[Strict]]:
    found: list[type[Strict]] = []
    todo = list(Strict.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def _describe(exc: ValidationError, doc: _Doc, path: Path, root: type[BaseModel] | None = None) -> str:
    """One line for a validation error; ``root`` is the validated model (PipelineConfig by default)."""
    errors = _without_union_tags(exc.errors())
    first = errors[0]
    loc = tuple(str(p) for p in first["loc"])
    key = ".".join(loc)
    # The key itself, else where its keys were written (an override 'a.typo.b=1' has no line for
    # 'a.typo'), else the closest section above it.
    origin = doc.origins.get(loc) or next((o for k, o in doc.origins.items() if loc and k[: len(loc)] == loc), None)
    if origin is None:
        origin = next((doc.origins[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in doc.origins), None)
    where = str(origin) if origin else str(path)
    if first["type"] == "extra_forbidden":
        parent = _model_at(root or PipelineConfig, loc[:-1])
        hint = suggest(loc[-1], parent.model_fields) if parent else ""
        message = f"{where}: {key}: unknown key{hint}"
    elif first["type"] == "missing":
        message = f"{where}: {key}: required key is missing"
    else:
        got = first.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        text = first["msg"].removeprefix("Value error, ")
        message = f"{where}: {key}: {text}{shown}" if key else f"{where}: {text}"
    if len(errors) > 1:
        message += f" (+{len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return message


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
