"""The ``tokenizers`` and ``extend_vocab`` sections, and the corpus files both read."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from kazhpc.config.paths import Dtype, Strict, absolute_path

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
        return absolute_path(path)


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
