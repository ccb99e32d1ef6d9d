"""The ``corpus`` section: raw Kazakh text for continued pretraining, processed with datatrove.

Sources are files or folders of JSONL, Parquet, CSV or plain text, or Hugging Face data sets (a hub
id, or a local copy of its repository). The steps run in this order, each
with its thresholds here: cleaning (kazhpc's own), document language ID (lingua, offline),
Gopher quality and repetition filters, decontamination against the evaluation sets, MinHash near
deduplication (datatrove's four distributed stages), a held-out split, and tokenization into packed
fixed-length blocks (kazhpc.data.corpus).
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kazhpc.config.paths import NAME_PATTERN, Strict, absolute_path, repeated
from kazhpc.config.preprocess import DecontaminationConfig, SpecialTokenHandling

HUB_DATASET_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

#: Common Kazakh function words: Gopher's stop-word rule (a real text has some) needs them; its
#: default list is English and would drop every Kazakh document.
KAZAKH_STOP_WORDS = (
    "және", "мен", "бен", "пен", "да", "де", "та", "те", "ал", "әрі", "бірақ", "немесе", "егер", "себебі",
    "сондықтан", "бұл", "ол", "осы", "сол", "оның", "өз", "біз", "сен", "олар", "үшін", "деп", "деген",
    "туралы", "кейін", "дейін", "арқылы", "бойынша", "ретінде", "сияқты", "кезде", "соң", "ғана", "тек",
    "ең", "әр", "көп", "барлық", "басқа", "бір", "бірі", "тағы", "енді", "қазір", "еді", "емес", "бар",
    "жоқ", "болып", "болды", "болған", "болады", "табылады", "жылы",
)  # fmt: skip


class TextSourceConfig(Strict):
    """One raw-text source: a file, or a folder of files (``glob`` picks them); or a Hugging Face
    data set, from the hub or a local copy of it in its own layout (``dataset``)."""

    name: str = Field(pattern=NAME_PATTERN, description="short name used in counts and rejects")
    path: str | None = Field(None, description="a file, or a folder read recursively")
    dataset: str | None = Field(
        None, description="a data set's hub id ('HuggingFaceFW/fineweb-2') or a local copy of its repository "
        "(a folder in the same layout: what `hf download --repo-type dataset` writes); its files for `subset` "
        "and `split` are the ones `datasets` resolves"
    )
    subset: str | None = Field(None, description="dataset: its configuration (FineWeb-2 'kaz_Cyrl', CulturaX 'kk')")
    split: str = Field("train", description="dataset: the split to read")
    revision: str | None = Field(None, description="dataset: a branch, tag or commit; pin a commit for a corpus that stays the same")
    format: Literal["jsonl", "parquet", "csv", "text"] | None = Field(
        None, description="default: each file's extension (.jsonl/.json[.gz|.zst], .parquet, .csv, .txt)"
    )
    text_key: str = Field("text", description="jsonl/parquet/csv: the field holding the document's text")
    glob: str | None = Field(None, description="a folder: the files to read, e.g. '*.jsonl.gz' (default: all)")
    unit: Literal["file", "paragraph", "line"] = Field(
        "paragraph", description="text format: what one document is (a blank line separates paragraphs)"
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else absolute_path(value)

    @field_validator("dataset")
    @classmethod
    def _hub_id_or_folder(cls, value: str | None) -> str | None:
        """A folder that exists (or a path: './', '/', '~') is a local copy, stored absolute; else a hub id."""
        if value is None:
            return None
        if value.startswith((".", "/", "~")) or os.path.isdir(os.path.expanduser(value)):
            return absolute_path(value)
        if not HUB_DATASET_ID.match(value):
            raise ValueError(f"{value!r} is neither a folder nor a hub id 'owner/name'")
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> TextSourceConfig:
        if (self.path is None) == (self.dataset is None):
            raise ValueError(f"source {self.name!r}: give either path (files) or dataset (a Hugging Face data set)")
        return self

    @property
    def origin(self) -> str:
        """What the source reads, for messages: its path, or its data set with subset and split."""
        if self.path is not None:
            return self.path
        return f"{self.dataset} ({', '.join(filter(None, [self.subset, self.split, self.revision]))})"


class QualityConfig(Strict):
    """Gopher's quality and repetition rules (datatrove's filters); null disables a rule."""

    enabled: bool = True
    min_doc_words: int | None = Field(20, ge=0)
    max_doc_words: int | None = Field(100_000, gt=0)
    min_avg_word_length: float | None = Field(2.0, ge=0)
    max_avg_word_length: float | None = Field(15.0, gt=0)
    max_symbol_word_ratio: float | None = Field(0.1, ge=0)
    max_non_alpha_words_ratio: float | None = Field(0.8, ge=0, le=1)
    min_stop_words: int | None = Field(
        1, ge=0, description="distinct stop_words a document must have; Gopher's English rule asks 2, but "
        "Kazakh puts case and conjunction in suffixes, and 2 dropped a third of short encyclopedic passages"
    )
    stop_words: list[str] = Field(default_factory=lambda: list(KAZAKH_STOP_WORDS))
    dup_line_frac: float | None = Field(0.3, ge=0, le=1, description="share of lines that repeat another")
    dup_para_frac: float | None = Field(0.3, ge=0, le=1)
    top_ngram_frac: float | None = Field(0.2, ge=0, le=1, description="characters in the most frequent word 2-gram")
    dup_ngram_frac: float | None = Field(0.15, ge=0, le=1, description="characters in repeated word 5-grams")


class MinhashConfig(Strict):
    """datatrove's MinHash near deduplication: ``buckets`` × ``hashes_per_bucket`` hashes of word
    ``ngram``s; two documents sharing every hash of any bucket are duplicates."""

    enabled: bool = True
    ngram: int = Field(5, ge=1)
    buckets: int = Field(14, ge=1, description="also the number of tasks of the buckets stage")
    hashes_per_bucket: int = Field(8, ge=1)


class BlocksConfig(Strict):
    """Tokenization into packed blocks: every kept document as ``<bos> text <eos>``, concatenated,
    cut into ``length``-token blocks (the last partial block is dropped, counted)."""

    length: int = Field(1024, gt=1, description="tokens per block: the CPT sequence length")


class TextCorpusConfig(Strict):
    """The corpus job: raw text → cleaned, filtered, deduplicated documents → packed token blocks."""

    sources: list[TextSourceConfig] = Field(default_factory=list)
    language: str = Field("kk", description="documents identified as another language are dropped")
    languages: list[str] = Field(
        default_factory=lambda: ["kk", "ru", "en", "tr", "mn"],
        description="the languages lingua chooses among",
    )
    min_confidence: float = Field(0.5, ge=0, le=1, description="lingua's confidence in `language`")
    min_chars: int = Field(50, ge=0, description="documents shorter than this (after cleaning) are dropped")
    special_tokens: SpecialTokenHandling = Field(
        "neutralise", description="text spelling a tokenizer special token: reject the document, or neutralise it"
    )
    quality: QualityConfig = Field(default_factory=QualityConfig)
    minhash: MinhashConfig = Field(default_factory=MinhashConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    heldout_fraction: float = Field(
        0.02, ge=0, lt=1, description="documents kept out of the blocks (chosen by a hash of their text) for held-out bits/char"
    )
    blocks: BlocksConfig = Field(default_factory=BlocksConfig)
    tasks: int = Field(1, ge=1, description="datatrove tasks of the filter and blocks stages (the result does not "
                       "depend on it); above 1, a SLURM submission runs each stage as an array of tasks")
    workers: int = Field(1, ge=1, description="tasks run at once in one process tree (a local run, or a one-job submission)")

    def stage_tasks(self) -> dict[str, int]:
        """datatrove's stages in order, with their number of tasks (kazhpc.data.corpus.flow):
        MinHash's buckets and clusters only when it is on."""
        dedup = {"buckets": self.minhash.buckets, "clusters": 1} if self.minhash.enabled else {}
        return {"filter": self.tasks, **dedup, "blocks": self.tasks}

    @model_validator(mode="after")
    def _names_and_language(self) -> TextCorpusConfig:
        twice = repeated([s.name for s in self.sources])
        if twice:
            raise ValueError(f"source names must differ; listed twice: {', '.join(twice)}")
        if self.language not in self.languages:
            raise ValueError(f"language {self.language!r} must be one of languages {self.languages}")
        return self
