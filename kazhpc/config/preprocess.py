"""The ``preprocess`` section: the SFT data sources and every cleaning step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kazhpc.config.messages import suggest
from kazhpc.config.paths import NAME_PATTERN, PATH_PREFIXES, Strict, absolute_path, repeated

SourceKind = Literal["muri-it", "alpaca", "kazparc", "ner-kazakh", "mc", "custom", "xlam", "tool-chat"]
#: Function-calling layouts (kazhpc.data.tools): their answers are JSON calls.
TOOL_KINDS = ("xlam", "tool-chat")
SHORT_ANSWER_KINDS = ("mc", "ner-kazakh", "kazparc", *TOOL_KINDS)
#: Languages of a kazparc-style parallel source (its directions and its columns mapping).
SOURCE_LANGUAGES = ("kk", "en", "ru", "tr")


class SourceConfig(Strict):
    """One input data set, adapted to the canonical record (kazhpc.data.adapters)."""

    name: str = Field(pattern=NAME_PATTERN, description="short name used in counts and rejects")
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
    language: str | None = Field(
        None, description="xlam / tool-chat kinds: the language of the queries (default kk; the original "
        "Salesforce/xlam-function-calling-60k is en): what language ID checks them against",
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
        return None if path is None else absolute_path(path)

    @field_validator("hub")
    @classmethod
    def _local_hub_copy_absolute(cls, hub: str | None) -> str | None:
        # A local dataset folder given as `hub` (offline copies) is resolved like any path.
        if hub is not None and hub.startswith(PATH_PREFIXES):
            return absolute_path(hub)
        return hub

    @model_validator(mode="after")
    def _one_location(self) -> SourceConfig:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of path or hub")
        if self.kind == "custom" and not {"prompt", "response"} <= set(self.columns):
            raise ValueError("a custom source needs columns.prompt and columns.response")
        if self.language is not None and self.kind not in TOOL_KINDS:
            raise ValueError(f"language is for the tool kinds ({', '.join(TOOL_KINDS)})")
        if self.language is not None and self.language not in SOURCE_LANGUAGES:
            raise ValueError(f"language: {self.language!r} is not one of {', '.join(SOURCE_LANGUAGES)}")
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
        return [absolute_path(f) for f in files]


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
        duplicates = repeated([s.name for s in sources])
        if duplicates:
            raise ValueError(f"source name used twice: {', '.join(duplicates)}")
        return sources
