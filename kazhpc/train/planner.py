"""A memory planner for QLoRA training: will this config fit on its GPUs, and what batch would?

It takes a whole PipelineConfig (a library exception, on purpose): a plan is of the model, its
train section and the cache where the model's config.json lives, and `kazhpc plan` compares sizes
by loading each size's config as the YAML engine composes it (``plans_for_sizes``).

Everything here is an ESTIMATE from architecture numbers, written to be checkable rather than
exact. It counts, per GPU:

* **frozen base weights**: the decoder's linear layers in 4 bit (0.5 byte per weight) plus their
  quantization constants (one absmax per 64-weight block: fp32, or 8 bit plus one fp32 per 256
  blocks with double quantization); embeddings and norms stay in the compute dtype (bitsandbytes
  does not quantize them; Gemma ties the output head to the embedding). ZeRO-3 shards them over the
  world size and gathers about one layer at a time; ZeRO-3 parameter offload keeps only that layer.
* **trainable (LoRA) states**: counted exactly like DeepSpeed's own estimators
  (``estimate_zero2/zero3_model_states_mem_needs``) for the trainable parameters, so that the two
  agree (tests/test_planner.py checks it); without DeepSpeed, fp32 LoRA weights + fp32 gradients +
  two fp32 Adam moments (16 bytes per trainable weight).
* **activations** for ``per_device_batch_size × max_length`` tokens (packing fills every row; padded
  batches use less), in the compute dtype, for eager attention (Gemma-3 keeps the full
  ``heads × seq`` probability matrix per token: 8 bytes per entry in bf16, measured; with
  padding-free packing "seq" is the whole flattened batch); with gradient checkpointing only each
  layer's input is kept, plus one layer recomputed during backward.
* **loss**: trl's SFTTrainer (pinned) computes it through its fused LM head
  (``trl.kernels.chunked_logprob``): the ``tokens × 262k`` logits are never materialised, only tiles
  of 4096 tokens × 32768 vocabulary entries, plus an fp32 gradient of the final hidden states. A stack
  that materialises fp32 logits needs 4 bytes × 262k per token in one allocation: 24 GiB at batch
  12 × 2048 tokens, more than the 22 GiB the reference project's 40 GB A100 had free when its batch
  12 failed (17 GiB allocated by PyTorch): most likely what it ran out on.
* a fixed **overhead** (CUDA context, cuBLAS workspace, allocator) and a 10 % fragmentation margin on
  activations and loss.

Checked against measured peaks (``torch.cuda.max_memory_allocated``) of 4B and 12B on an H200
(docs/benchmarks.md; tests/test_planner.py keeps the estimate above them and within 30 %).
Not counted: CPU memory, communication buffers beyond ZeRO-3's live layer, and the gap between
``max_memory_allocated`` and ``nvidia-smi``. Compare a prediction with a measured peak before
trusting it at the edge.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig

GB = 2**30
OVERHEAD_BYTES = 1.0 * GB
FRAGMENTATION = 1.10
#: trl.kernels.chunked_logprob's tile: TOKEN_CHUNK_SIZE tokens x _CHUNKED_LOGPROB_CHUNK_SIZE vocabulary entries.
LOSS_TILE_TOKENS, LOSS_TILE_VOCAB = 4096, 32768
#: Eager attention keeps, per probability entry, the fp32 softmax output (these 4 bytes) and two
#: compute-dtype copies (the one the product with V saves, and one more). Measured on 4B and 12B on
#: an H200 (benchmarks/train_throughput.py --suite memory): 8 bytes per entry in bf16.
ATTENTION_EXTRA_BYTES = 4
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class Architecture:
    """What the memory of a decoder-only transformer depends on."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool = True

    @property
    def layer_linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of every linear layer in one decoder layer (Gemma/Llama naming)."""
        h, q, kv, i = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.intermediate_size
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    @property
    def linear_params_per_layer(self) -> int:
        return sum(a * b for a, b in self.layer_linear_shapes.values())

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)

    @property
    def total_params(self) -> int:
        norms = self.num_layers * (4 * self.hidden_size + 2 * self.head_dim) + self.hidden_size
        return self.num_layers * self.linear_params_per_layer + self.embedding_params + norms


#: Gemma-3 text decoders, from the `text_config` of google/gemma-3-{size}-pt/config.json (270m and
#: 1b are text-only configs). Parameter counts agree with the Gemma 3 technical report
#: (arXiv:2503.19786, Table 1: embedding / non-embedding parameters 302M/698M for 1B,
#: 675M/3,209M for 4B, 1,012M/10,759M for 12B, 1,416M/25,600M for 27B); the vision encoder (417M)
#: is not loaded for text training (kazhpc.models.load_model).
GEMMA3: dict[str, Architecture] = {
    "gemma3-270m": Architecture(640, 18, 4, 1, 256, 2048, 262144),
    "gemma3-1b": Architecture(1152, 26, 4, 1, 256, 6912, 262144),
    "gemma3-4b": Architecture(2560, 34, 8, 4, 256, 10240, 262208),
    "gemma3-12b": Architecture(3840, 48, 16, 8, 256, 15360, 262208),
    "gemma3-27b": Architecture(5376, 62, 32, 16, 128, 21504, 262208),
}
_HUB_IDS = {f"google/gemma-3-{name.split('-')[1]}-{kind}": name for name in GEMMA3 for kind in ("pt", "it")}


def architecture_from_config(config: dict[str, Any]) -> Architecture:
    """From a checkpoint's config.json (the text part of a multimodal one)."""
    text = config.get("text_config") or config
    try:
        heads = text["num_attention_heads"]
        return Architecture(
            hidden_size=text["hidden_size"],
            num_layers=text["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=text.get("num_key_value_heads", heads),
            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
            intermediate_size=text["intermediate_size"],
            vocab_size=text["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True))),
        )
    except KeyError as exc:
        raise KazhpcError(f"config.json has no {exc.args[0]!r}: cannot estimate memory for this architecture") from None


def architecture_for(cfg: PipelineConfig) -> tuple[Architecture, str]:
    """The model's architecture and where it came from: a local config.json, the hub cache, the table."""
    from kazhpc.models import bundled_checkpoint_dir, parse_source

    source = parse_source(cfg.model.source)
    candidates: list[Path] = []
    if source.kind == "local":
        candidates.append(Path(source.ref) / "config.json")
    elif source.kind == "bundled":
        candidates.append(bundled_checkpoint_dir(source.ref, cfg.cache_root) / "config.json")
    else:
        try:  # a file already in HF_HOME's cache; never a download
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source.ref, "config.json", revision=cfg.model.revision)
            if isinstance(cached, str):
                candidates.append(Path(cached))
        except Exception:  # noqa: BLE001 - an unreadable cache only means: use the table
            pass
    for path in candidates:
        if path.is_file():
            return architecture_from_config(json.loads(path.read_text())), str(path)
    name = _HUB_IDS.get(source.ref) or (f"gemma3-{source.ref.split('-')[1]}" if source.kind == "bundled" else cfg.model.name)
    if name in GEMMA3:
        return GEMMA3[name], f"built-in table ({name})"
    raise KazhpcError(
        f"model '{cfg.model.source}': no local config.json and no built-in architecture "
        f"(known: {', '.join(GEMMA3)}); cannot estimate memory"
    )


# -- the parts --------------------------------------------------------------------------------


def quantized_bytes_per_weight(double_quant: bool) -> float:
    """NF4/FP4: half a byte per weight plus the absmax constants of its 64-weight block."""
    constants = (1 / 64 + 4 / (64 * 256)) if double_quant else 4 / 64
    return 0.5 + constants


def lora_params(arch: Architecture, r: int, target_modules: str | list[str]) -> tuple[int, int]:
    """(all LoRA weights, the largest single LoRA matrix) for 'all-linear' or a list of module names.

    'all-linear' means what peft means: every linear layer of the decoder, not the output head. The
    largest matrix is DeepSpeed's "largest layer" (A and B are separate nn.Linear modules).
    """
    shapes = arch.layer_linear_shapes
    names = list(shapes) if target_modules == "all-linear" else [m for m in target_modules if m in shapes]
    per_module = [r * (shapes[m][0] + shapes[m][1]) for m in names]
    largest = max((r * max(shapes[m]) for m in names), default=0)
    return arch.num_layers * sum(per_module), largest


def trainable_states_bytes(params: int, largest_layer: int, stage: int, world: int, offload_optimizer: bool, offload_param: bool) -> float:
    """Per-GPU bytes for trainable weights, their gradients and Adam states.

    ZeRO-2 and ZeRO-3 follow DeepSpeed 0.19's estimators (deepspeed.runtime.zero.stage_1_and_2 /
    stage3 ``estimate_zero*_model_states_mem_needs``): 16-bit weights on every GPU, and 16-bit +
    fp32 gradients, fp32 master weights and the two Adam moments (18 bytes) sharded; ZeRO-3 also
    shards the 16-bit weights and keeps the largest layer gathered (4 bytes per weight). Without
    DeepSpeed (or stage 0/1, counted as unsharded): fp32 weights + fp32 gradients + 2 fp32 moments.
    """
    if stage == 2:
        return 2 * params if offload_optimizer else 2 * params + int(18 * params / world)
    if stage == 3:
        live = 4 * largest_layer
        if offload_optimizer:
            return live if offload_param else live + int(2 * params / world)
        return live + int(18 * params / world)
    return 16 * params


def activation_bytes(arch: Architecture, tokens: int, seq: int, dtype_bytes: int, checkpointing: bool, lora_dropout: bool) -> float:
    """Saved activations for ``tokens`` tokens in rows of ``seq`` (eager attention)."""
    h, i = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_heads * arch.head_dim, arch.num_kv_heads * arch.head_dim
    # Norm inputs/outputs and residuals (6h), q/k/v and attention output (q + 2kv + q), MLP gate,
    # up, activation and product (4i); LoRA dropout keeps a copy of each adapted input (4h + q + i).
    per_token = dtype_bytes * (6 * h + 2 * q + 2 * kv + 4 * i + ((4 * h + q + i) if lora_dropout else 0))
    per_token += (ATTENTION_EXTRA_BYTES + 2 * dtype_bytes) * arch.num_heads * seq  # attention probabilities
    one_layer = per_token * tokens
    if checkpointing:
        return arch.num_layers * dtype_bytes * h * tokens + one_layer
    return arch.num_layers * one_layer


def loss_bytes(arch: Architecture, tokens: int, dtype_bytes: int) -> float:
    """trl's fused LM head: one logits tile in the compute dtype and its fp32 view in the gradient
    GEMMs, plus the final hidden states' fp32 gradient and compute-dtype copy."""
    tile = min(tokens, LOSS_TILE_TOKENS) * min(arch.vocab_size, LOSS_TILE_VOCAB)
    return tile * (dtype_bytes + 4) + tokens * arch.hidden_size * (4 + dtype_bytes)


@dataclass(frozen=True)
class Plan:
    """One estimate; sizes in GiB."""

    model: str
    arch_source: str
    nodes: int
    gpus_per_node: int
    deepspeed: str | None
    zero_stage: int
    offload: str
    per_device_batch_size: int
    max_length: int
    gradient_checkpointing: bool
    gpu_memory_gb: float
    total_params_b: float
    trainable_params_m: float
    weights_gb: float
    trainable_states_gb: float
    activations_gb: float
    loss_gb: float
    overhead_gb: float
    total_gb: float
    fits: bool
    max_batch_that_fits: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _deepspeed_layout(spec: str | None) -> tuple[int, bool, bool]:
    if spec is None:
        return 0, False, False
    from kazhpc.train.distributed import load_deepspeed, offloads, zero_stage

    ds = load_deepspeed(spec)
    found = offloads(ds)
    return zero_stage(ds), "optimizer" in found, "param" in found


def estimate(cfg: PipelineConfig, per_device_batch_size: int | None = None, arch: Architecture | None = None, arch_source: str = "") -> Plan:
    """The per-GPU memory estimate for ``cfg`` (optionally at another per-device batch)."""
    if arch is None:
        arch, arch_source = architecture_for(cfg)
    t, dist = cfg.train, cfg.train.distributed
    batch = per_device_batch_size or t.per_device_batch_size
    world = dist.world_size
    stage, off_opt, off_param = _deepspeed_layout(dist.deepspeed)
    compute = t.quantization.compute_dtype if t.quantization else cfg.model.dtype
    dtype_bytes = _DTYPE_BYTES[compute]

    linear = arch.num_layers * arch.linear_params_per_layer
    other = arch.total_params - linear
    if t.quantization is not None:
        per_weight = quantized_bytes_per_weight(t.quantization.double_quant)
    else:
        per_weight = _DTYPE_BYTES[cfg.model.dtype]
    weights = linear * per_weight + other * _DTYPE_BYTES[cfg.model.dtype]
    if stage == 3:
        live_layer = arch.linear_params_per_layer * per_weight
        weights = live_layer if off_param else weights / world + live_layer

    trainable, largest = lora_params(arch, t.lora.r, t.lora.target_modules)
    states = trainable_states_bytes(trainable, largest, stage, world, off_opt, off_param)
    tokens = batch * t.max_length
    # Padding-free packing flattens the batch into one row; eager/sdpa attention then spans all of
    # it (the block-diagonal mask is materialised); flash-attention's varlen kernels do not.
    attn_span = tokens if t.packing and cfg.model.attn_implementation != "flash_attention_2" else t.max_length
    activations = FRAGMENTATION * activation_bytes(arch, tokens, attn_span, dtype_bytes, t.gradient_checkpointing, t.lora.dropout > 0)
    loss = FRAGMENTATION * loss_bytes(arch, tokens, dtype_bytes)
    total = weights + states + activations + loss + OVERHEAD_BYTES
    plan = Plan(
        model=cfg.model.name, arch_source=arch_source, nodes=dist.nodes, gpus_per_node=dist.gpus_per_node,
        deepspeed=dist.deepspeed, zero_stage=stage,
        offload="+".join(k for k, on in (("optimizer", off_opt), ("param", off_param)) if on) or "none",
        per_device_batch_size=batch, max_length=t.max_length, gradient_checkpointing=t.gradient_checkpointing,
        gpu_memory_gb=dist.gpu_memory_gb, total_params_b=round(arch.total_params / 1e9, 3),
        trainable_params_m=round(trainable / 1e6, 2), weights_gb=weights / GB, trainable_states_gb=states / GB,
        activations_gb=activations / GB, loss_gb=loss / GB, overhead_gb=OVERHEAD_BYTES / GB,
        total_gb=total / GB, fits=total / GB <= dist.gpu_memory_gb, max_batch_that_fits=0,
    )
    return plan


def plan(cfg: PipelineConfig) -> Plan:
    """:func:`estimate`, plus the largest per-device batch that fits (0: not even batch 1)."""
    arch, source = architecture_for(cfg)
    current = estimate(cfg, arch=arch, arch_source=source)
    best, batch = 0, 1
    while batch <= 4096 and estimate(cfg, batch, arch, source).fits:  # memory grows linearly with batch
        best, batch = batch, batch * 2
    low, high = best, batch
    while high - low > 1 and best:
        mid = (low + high) // 2
        low, high = (mid, high) if estimate(cfg, mid, arch, source).fits else (low, mid)
        best = low
    return replace(current, max_batch_that_fits=best)


def packing_warning(cfg: PipelineConfig) -> str | None:
    """Padding-free packing with eager/sdpa attention is quadratic in the whole batch's tokens."""
    t = cfg.train
    if not t.packing or t.per_device_batch_size == 1 or cfg.model.attn_implementation == "flash_attention_2":
        return None
    return (f"train.packing flattens each batch into one row of up to {t.per_device_batch_size * t.max_length} tokens; "
            f"with {cfg.model.attn_implementation} attention every layer computes attention over all of it (masked), "
            "so cost grows with per_device_batch_size squared: prefer per_device_batch_size 1 with a longer max_length, "
            "or flash_attention_2 on GPUs")


def fit_warning(cfg: PipelineConfig) -> str | None:
    """A one-line warning for `kazhpc validate` when the config will not fit (None if it fits)."""
    p = plan(cfg)
    if p.fits:
        return None
    hint = (f"per_device_batch_size {p.max_batch_that_fits} would (raise gradient_accumulation_steps to keep the effective batch)"
            if p.max_batch_that_fits else "no batch fits: enable gradient_checkpointing, a ZeRO stage, offload or more GPUs")
    return (f"memory plan: ~{p.total_gb:.1f} GB per GPU at per_device_batch_size {p.per_device_batch_size} x max_length "
            f"{p.max_length} exceeds train.distributed.gpu_memory_gb {p.gpu_memory_gb:g}; {hint} (estimate; `kazhpc plan` shows the parts)")


COLUMNS = [
    ("model", "model"), ("GPUs", None), ("ZeRO", None), ("batch x len", None), ("ckpt", None),
    ("weights", "weights_gb"), ("LoRA+optim", "trainable_states_gb"), ("activ.", "activations_gb"),
    ("loss", "loss_gb"), ("total GB", "total_gb"), ("GPU GB", "gpu_memory_gb"), ("fits", None), ("max batch", "max_batch_that_fits"),
]


def table_rows(plans: list[Plan]) -> list[list[str]]:
    rows = []
    for p in plans:
        zero = f"{p.zero_stage}" + (f" ({p.offload} offload)" if p.offload != "none" else "") if p.deepspeed else "-"
        rows.append([
            p.model, f"{p.nodes}x{p.gpus_per_node}", zero, f"{p.per_device_batch_size} x {p.max_length}",
            "yes" if p.gradient_checkpointing else "no", f"{p.weights_gb:.2f}", f"{p.trainable_states_gb:.2f}",
            f"{p.activations_gb:.2f}", f"{p.loss_gb:.2f}", f"{p.total_gb:.1f}", f"{p.gpu_memory_gb:g}",
            "yes" if p.fits else "NO", str(p.max_batch_that_fits),
        ])
    return rows


def plans_for_sizes(config: Path, overrides: list[str], sizes: tuple[str, ...] = ("gemma3-4b", "gemma3-12b", "gemma3-27b")) -> list[Plan]:
    """The configured model's plan, then each size's with its own model file's layout.

    Each size is loaded as ``model=<size>`` on the same config (kazhpc.config precedence: the
    pipeline's own train keys, e.g. max_length, still apply).
    """
    from kazhpc.config import load_config

    cfg = load_config(config, overrides)
    plans = [plan(cfg)]
    for size in sizes:
        if size != cfg.model.name:
            plans.append(plan(load_config(config, [*overrides, f"model={size}"])))
    return plans

