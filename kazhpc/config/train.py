"""The ``train`` section: QLoRA SFT, with its quantization, LoRA and distributed settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from kazhpc.config.paths import PATH_PREFIXES, Dtype, Strict, absolute_path
from kazhpc.errors import KazhpcError


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
            return absolute_path(value)
        return value

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


class CptSettings(Strict):
    """Continued pretraining (``objective: cpt``): what is measured while it trains."""

    eval_steps: int = Field(0, ge=0, description="held-out bits/char every N optimizer steps (0: before and after only)")
    heldout_english: str = Field(
        "builtin:en-heldout", description="English passages (text, one per line): what CPT must not break"
    )
    heldout_extra: dict[str, str] = Field(
        default_factory=lambda: {"kk_ood": "builtin:kk-ood"},
        description="more held-out sets, name → passages (one per line): by default 52 Kazakh passages of "
        "other genres (encyclopedic, conversational, legal, literary), out of the corpus's domain",
    )
    heldout_texts: int = Field(32, gt=0, description="at most this many held-out passages per set")
    heldout_max_length: int = Field(256, gt=1, description="tokens per held-out passage, longer ones cut")

    @field_validator("heldout_english")
    @classmethod
    def _path(cls, value: str) -> str:
        return absolute_path(value) if value.startswith(PATH_PREFIXES) else value

    @field_validator("heldout_extra")
    @classmethod
    def _names_and_paths(cls, sets: dict[str, str]) -> dict[str, str]:
        import re

        for name in sets:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in ("kk", "en"):
                raise ValueError(f"held-out set name {name!r}: lower-case letters, digits and _, not kk or en "
                                 "(they name the metric heldout_<name>_bits_per_char)")
        return {k: absolute_path(v) if v.startswith(PATH_PREFIXES) else v for k, v in sets.items()}


class TrainConfig(Strict):
    """The train job: QLoRA supervised fine-tuning with loss on the answers only (``objective:
    sft``, on a preprocess stage's conversations), or continued pretraining with loss on every
    token (``objective: cpt``, on a corpus stage's packed blocks)."""

    objective: Literal["sft", "cpt"] = "sft"
    max_tokens: int | None = Field(
        None, gt=0, description="cpt: stop after this many training tokens (sets max_steps; a budget, not an epoch count)"
    )
    method: Literal["lora", "full"] = Field(
        "lora", description="lora: LoRA adapters (and the trainable_embeddings rows) on a frozen base; full: every "
        "weight (objective cpt, no quantization; a large model under train.distributed.deepspeed: zero3)"
    )
    trainable_embeddings: Literal["new", "all", "none"] = Field(
        "new", description="embedding rows trained besides LoRA: an extended vocabulary's new rows, all rows "
        "(Gemma-3 ties lm_head to them), or none"
    )
    cpt: CptSettings = Field(default_factory=CptSettings)
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

    @model_validator(mode="after")
    def _full_fine_tuning(self) -> TrainConfig:
        if self.method == "full" and self.objective != "cpt":
            raise ValueError("train.method: full trains every weight in continued pretraining (objective: cpt); "
                             "SFT trains LoRA on it (method: lora)")
        if self.method == "full" and self.quantization is not None:
            raise ValueError("train.method: full cannot train 4-bit weights; set train.quantization: null "
                             "(and shard the model with train.distributed.deepspeed: zero3)")
        return self

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
