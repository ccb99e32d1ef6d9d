"""The ``evaluate`` section: the task suite, the models under test, and their local files."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kazhpc.config.messages import suggest
from kazhpc.config.model import ModelConfig
from kazhpc.config.paths import NAME_PATTERN, Strict, absolute_path
from kazhpc.config.preprocess import SpecialTokenHandling


class EvalTaskConfig(Strict):
    """A task built from a user's file by config alone (kazhpc.evaluation.suite)."""

    name: str = Field(pattern=NAME_PATTERN, description="the task's name in results and reports")
    kind: Literal["mc", "translation", "ifeval", "open", "tool", "judge"]
    path: str | None = Field(
        None,
        description="JSONL / JSON / CSV / Parquet: mc rows {question, choices, answer (index or letter)}; "
        "translation rows with one field per language (names changed by columns); ifeval rows {key, prompt, "
        "instruction_id_list, kwargs} (default: kazhpc's Kazakh prompts, kazhpc/resources/kk-ifeval.jsonl); open rows "
        "{prompt, reference} (judge: {prompt}; default for both: the held-out split of the preprocess stage before this evaluation); tool rows "
        "{query, tools, answers} as in xLAM (default: kazhpc's Kazakh queries, kazhpc/resources/kk-tools.jsonl)",
    )
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
    max_gen_toks: int | None = Field(
        None, gt=0, description="tokens generated at most (default: translation 64, ifeval 512, open 256, tool 128)"
    )

    judge: ModelConfig | None = Field(
        None, description="judge: the model that compares answers (default: the pipeline's model; on a cluster "
        "typically a larger one, e.g. {name: judge, source: google/gemma-3-27b-it})",
    )
    rubric: str | None = Field(None, description="judge: the instruction the judge reads (default: kazhpc's Kazakh rubric)")
    judge_max_tokens: int = Field(4, gt=0, description="judge: tokens of each verdict (A, B or T)")

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        return None if path is None else absolute_path(path)

    @model_validator(mode="after")
    def _mapping(self) -> EvalTaskConfig:
        if self.kind != "judge" and (self.judge is not None or self.rubric is not None):
            raise ValueError("judge and rubric are for kind: judge")
        if self.path is None and self.kind not in ("ifeval", "open", "tool", "judge"):
            raise ValueError(f"path: required for kind: {self.kind}")
        layout = {"ifeval": "the IFEval schema", "tool": "xLAM's layout"}.get(self.kind)
        if layout and (self.columns or self.instruction or self.answer_format != "auto"):
            raise ValueError(f"kind: {self.kind} reads {layout} as it is (no columns, instruction or answer_format)")
        if layout:
            return self
        known = {"mc": ("question", "choices", "answer"), "open": ("prompt", "reference"), "judge": ("prompt",)}.get(
            self.kind, (self.source_lang, self.target_lang))  # fmt: skip
        if self.kind in ("open", "judge") and self.columns and self.path is None:
            raise ValueError("columns: the held-out split (no path) has its own fields; columns map a file's")
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
        if self.kind in ("translation", "open", "judge") and self.answer_format != "auto":
            raise ValueError("answer_format is for kind: mc")
        if self.kind == "translation" and self.source_lang == self.target_lang:
            raise ValueError(f"source_lang and target_lang are both '{self.source_lang}'")
        return self

    def column(self, field: str) -> str | list[str]:
        """The file's column for a canonical field (mc: question / choices / answer; translation: a language)."""
        return self.columns.get(field, field)


class EvalModelConfig(Strict):
    """One model under test: the configured base model, with or without a LoRA adapter."""

    label: str = Field(pattern=NAME_PATTERN, description="the model's name in results and reports")
    kind: Literal["base", "adapter", "merged"] = Field(
        "base", description="base model; base + peft adapter; adapter merged into the weights (merge_and_unload)"
    )
    adapter: str | None = Field(
        None, description="adapter folder; default for adapter/merged: <run dir>/train/adapter (train job)"
    )

    @field_validator("adapter")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        return None if path is None else absolute_path(path)


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
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers through lm-eval's HFLM (every request checked: one <bos>, no stray "
        "control token); vllm: lm-eval's vLLM model on GPU nodes where vllm is installed (faster generation, "
        "LoRA applied by vLLM; no perplexity)",
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
                out[task] = absolute_path(path)
            except ValueError as exc:
                raise ValueError(f"{task}: {path}: {exc}") from None
        return out

    @field_validator("perplexity_texts", "generation_prompts")
    @classmethod
    def _absolute_texts(cls, value: str | None) -> str | None:
        return value if value is None or value.startswith("builtin:") else absolute_path(value)

    @model_validator(mode="after")
    def _vllm(self) -> EvaluateConfig:
        if self.backend == "vllm" and self.perplexity_texts is not None:
            raise ValueError("backend: vllm scores no perplexity (it needs the model's logits); set perplexity_texts: null")
        return self

    @model_validator(mode="after")
    def _labels(self) -> EvaluateConfig:
        labels = [m.label for m in self.models]
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        if duplicates:
            raise ValueError(f"models: label used twice: {', '.join(duplicates)}")
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"baseline: '{self.baseline}' is not a model label{suggest(self.baseline, labels)}")
        return self

    def judge_tasks(self) -> list[EvalTaskConfig]:
        """The judge tasks: their merge loads the judge model (on SLURM it gets the stage's GPUs)."""
        return [t for t in self.tasks if isinstance(t, EvalTaskConfig) and t.kind == "judge"]

    def local_files(self) -> list[str]:
        """Every local file this job reads (what preprocess decontaminates training data against)."""
        return list(self.local_file_keys())

    def local_file_keys(self) -> dict[str, str]:
        """Every local file this job reads → the config key that names it (the first, if several do)."""
        keys: dict[str, str] = {}
        for t in self.tasks:
            if isinstance(t, EvalTaskConfig) and t.path is not None:
                keys.setdefault(t.path, f"evaluate.tasks[{t.name}].path")
        for task, path in self.data_overrides.items():
            keys.setdefault(path, f"evaluate.data_overrides.{task}")
        for key in ("perplexity_texts", "generation_prompts"):
            path = getattr(self, key)
            if path and not path.startswith("builtin:"):
                keys.setdefault(path, f"evaluate.{key}")
        return keys
