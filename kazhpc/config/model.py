"""The ``model`` section (which model, and how to load it) and the prepare-model job's section."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from kazhpc.config.paths import NAME_PATTERN, PATH_PREFIXES, Dtype, Strict, absolute_path


class ModelConfig(Strict):
    """Which model, and how to load it. One file per size in configs/models/."""

    name: str = Field(pattern=NAME_PATTERN, description="short name used in run names and reports")
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
            return absolute_path(value)
        return value


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
        return value if value.startswith("builtin:") else absolute_path(value)
    batch_size: int = Field(4, gt=0)
