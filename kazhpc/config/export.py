"""The ``export`` section: a deployable model from a train stage (kazhpc.export)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from kazhpc.config.paths import Strict

#: GGUF tensor types kazhpc writes (kazhpc.export.gguf); ``none``: no GGUF file.
GgufType = Literal["none", "f32", "f16", "bf16", "q8_0"]


class ExportConfig(Strict):
    """Merge a train stage's adapter into the unquantized base, save it with its tokenizer, chat
    template, generation config and model card, and check it reloads with plain transformers."""

    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="the exported weights' dtype (the base is loaded unquantized in it)"
    )
    check_texts: str = Field(
        "builtin:kk-sentences", description="passages the exported model must score as the adapter does "
        "(builtin:NAME or a UTF-8 text file, one passage per line)",
    )
    check_passages: int = Field(16, ge=1, description="how many of them")
    check_max_length: int = Field(128, ge=8, description="tokens per passage at most")
    check_tolerance: float = Field(
        0.01, gt=0, description="bits per character by which the reloaded export may differ from the adapter "
        "(rounding the merged weights to the export dtype)",
    )
    gguf: GgufType = Field("none", description="also write a GGUF file of this tensor type for llama.cpp / Ollama")
    gguf_tolerance: float = Field(
        0.05, gt=0, description="bits per character by which the GGUF file, reloaded, may differ from the export"
    )
    push_to_hub: str | None = Field(None, description="a hub repository ('org/name') to upload the export to")
    private: bool = Field(True, description="create the hub repository private")
    register_model: bool = Field(
        True, description="log the exported model as an MLflow model and register it as a version of "
        "'kazhpc-<pipeline>' (with tracking.register_models)",
    )

    @field_validator("push_to_hub")
    @classmethod
    def _repo_id(cls, repo: str | None) -> str | None:
        if repo is not None and (repo.count("/") != 1 or not all(repo.split("/"))):
            raise ValueError(f"'{repo}': a hub repository is 'owner/name'")
        return repo
