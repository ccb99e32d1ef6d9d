"""The train job: QLoRA supervised fine-tuning with loss on the assistant's answers only.

bitsandbytes loads the base model in 4 bit (NF4, double quantization, compute dtype from the
config), peft adds LoRA adapters, trl's SFTTrainer trains them on the preprocess job's Parquet
(conversations formatted with the model's chat template; ``assistant_only_loss`` uses its
generation markers). The job writes the adapter, the tokenizer and a model card, and then checks
what matters: a freshly loaded base model and the reloaded adapter are scored on training rows,
and the adapter must have the lower loss.
"""

from __future__ import annotations

import logging
import os
import resource
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError
from kazhpc.train import distributed
from kazhpc.train.guard import ensure_trainable, watch
from kazhpc.train.progress import TokenRate, use_console_progress
from kazhpc.train.resume import PreemptionHandler, last_checkpoint, train_resumably
from kazhpc.train.stage_inputs import continue_adapter, earlier_adapter, extended_model_for_training, training_data

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext
    from kazhpc.tracking import JobRun

log = logging.getLogger(__name__)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def quantization_config(cfg: PipelineConfig) -> Any:
    """The BitsAndBytesConfig for the train section, or None for plain LoRA."""
    import torch
    from transformers import BitsAndBytesConfig

    q = cfg.train.quantization
    if q is None:
        return None
    compute = getattr(torch, q.compute_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute,
        bnb_4bit_quant_storage=getattr(torch, q.quant_storage) if q.quant_storage else torch.uint8,
    )


def load_for_training(cfg: PipelineConfig) -> Any:
    """A fresh base model for training, watched by the no-grad guard."""
    from kazhpc.models import load_model

    bnb = quantization_config(cfg)
    kwargs: dict[str, Any] = {}
    if bnb is not None:
        kwargs.update(quantization_config=bnb, **distributed.quantized_placement(cfg.train, _device()))
    return watch(load_model(cfg.model, cfg.cache_root, **kwargs))


def tracking_callback(tracking: JobRun) -> Any:
    """A TrainerCallback that forwards the trainer's logs (loss, lr, grad norm) to the job's MLflow
    run, adding tokens/s and peak memory. Only rank 0 logs."""
    from transformers import TrainerCallback

    class TrackingCallback(TrainerCallback):
        def __init__(self) -> None:
            self.rate = TokenRate()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            metrics = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
            if "num_tokens" in metrics:
                metrics["tokens_per_s"] = self.rate.update(metrics["num_tokens"])
            metrics["peak_memory_gb"] = peak_memory_gb()
            tracking.log_metrics(metrics, step=state.global_step)

    return TrackingCallback()


def peak_memory_gb() -> float:
    """Peak GPU memory on CUDA, else the process's peak resident memory."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def trainer_arguments(cfg: PipelineConfig, output_dir: Path) -> dict[str, Any]:
    """The Trainer arguments SFT and CPT share: batch, schedule, checkpoints, precision, devices."""
    t = cfg.train
    device = _device()
    # DeepSpeed on CPU ranks (tests): the Trainer must not be told use_cpu, and then refuses bf16.
    cpu_deepspeed = device == "cpu" and t.distributed.deepspeed is not None
    return dict(
        output_dir=str(output_dir),
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of all steps
        gradient_checkpointing=t.gradient_checkpointing,
        logging_steps=t.logging_steps,
        save_steps=t.save_steps,
        save_total_limit=2,
        # No evaluation during training: on CPU a no-grad eval forward of a 4-bit model corrupts
        # the gradients that follow (kazhpc.train.guard). The job scores a separate object after.
        eval_strategy="no",
        bf16=cfg.model.dtype == "bfloat16" and (device == "cuda" or (t.quantization is not None and not cpu_deepspeed)),
        fp16=cfg.model.dtype == "float16" and device == "cuda",
        use_cpu=device == "cpu" and not cpu_deepspeed,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        dataloader_num_workers=0,
        **distributed.trainer_kwargs(t, device),
    )


def sft_config(cfg: PipelineConfig, output_dir: Path) -> Any:
    from trl import SFTConfig

    t = cfg.train
    return SFTConfig(
        **trainer_arguments(cfg, output_dir),
        max_length=t.max_length,
        packing=t.packing,
        padding_free=t.packing,
        assistant_only_loss=True,
        remove_unused_columns=True,
    )


def load_for_scoring(cfg: PipelineConfig) -> Any:
    """A fresh base model to score an adapter on: on a GPU as it was trained (4 bit; a 27B model in
    bf16 would not fit on the one device that scores it), on a CPU in bf16 (a no-grad 4-bit forward
    is the pitfall of kazhpc.train.guard)."""
    from kazhpc.models import load_model

    bnb = quantization_config(cfg) if _device() == "cuda" else None
    return load_model(cfg.model, cfg.cache_root, device_map={"": _device()},
                      **({"quantization_config": bnb} if bnb is not None else {}))


def register_adapter(ctx: JobContext, cfg: PipelineConfig, adapter_dir: Path, tokenizer: Any,
                     datasets: list[dict[str, Any]], adapted: Any = None) -> dict[str, str] | None:
    """Log the trained datasets, then the adapter as an MLflow model registered as a version of
    ``kazhpc-<pipeline>`` with the data digests as tags; return its {name, uid} (the manifest's
    ``mlflow_model``, which evaluate tags with scores). ``cfg``: the stage's config with the model
    it trained on (an extend-vocab stage's); ``adapted``: the adapter loaded already."""
    from peft import PeftModel

    from kazhpc.models import local_checkpoint
    from kazhpc.tracking.lineage import save_transformers_model

    for record in datasets:
        ctx.tracking.log_dataset(record)
    if not (ctx.tracking.active and cfg.tracking.register_models):
        return None
    if adapted is None:
        adapted = PeftModel.from_pretrained(load_for_scoring(cfg), str(adapter_dir))
    base_dir = local_checkpoint(cfg.model, cfg.cache_root)
    folder = save_transformers_model(adapted, tokenizer, base_dir, ctx.job_dir / "mlflow-model")
    tags = {"base_model": cfg.model.source, "base_revision": cfg.model.revision or "", "pipeline": cfg.name,
            "stage": ctx.job_dir.name, "objective": cfg.train.objective, "config_hash": ctx.cfg.config_hash(),
            **{f"data.{r['name']}": r["digest"] for r in datasets}}
    return ctx.tracking.log_model(f"kazhpc-{cfg.name}", folder, tags)


def lora_config(cfg: PipelineConfig, new_token_ids: list[int] | None = None) -> Any:
    """LoRA on the configured modules; with ``new_token_ids`` (a vocabulary extension) those
    embedding rows are trained too (peft ``trainable_token_indices``; tied ``lm_head`` follows)."""
    from peft import LoraConfig

    lora = cfg.train.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
        trainable_token_indices={"embed_tokens": new_token_ids} if new_token_ids else None,
    )


def answer_loss(model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_length: int,
                what: str = "answer loss") -> float:
    """Mean loss over the answer tokens of ``conversations`` (what the adapter was trained on).

    Logits are computed only at the positions that predict an answer token (``logits_to_keep``):
    a full 262k-wide row per prompt token made this check take minutes on a CPU."""
    import torch

    from kazhpc.console import progress
    from kazhpc.models import format_chats

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for formatted in progress(format_chats(tokenizer, conversations), len(conversations), what):
            if isinstance(formatted, Exception):
                raise formatted
            ids = torch.tensor([formatted["input_ids"][:max_length]], device=model.device)
            mask = torch.tensor(formatted["assistant_masks"][:max_length], device=model.device)
            predicts_answer = torch.nonzero(mask[1:]).flatten()  # position p predicts token p + 1
            if predicts_answer.numel() == 0:
                continue
            logits = model(input_ids=ids, logits_to_keep=predicts_answer).logits[0].float()
            target = ids[0, predicts_answer + 1]
            total += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
            count += int(target.numel())
    return total / max(count, 1)


def _model_card(cfg: PipelineConfig, manifest: dict[str, Any], config_hash: str) -> str:
    """``config_hash``: the run's own (with extend-vocab, ``cfg`` points at the extended model)."""
    check = manifest["loss_check"]
    fmt = lambda value: "not checked" if value is None else f"{value:.4f}"  # noqa: E731
    return f"""---
base_model: {cfg.model.source}
library_name: peft
language: [kk]
tags: [kazhpc, qlora, kazakh]
---
# {cfg.name}: {cfg.model.name} + LoRA for Kazakh

Trained by kazhpc (config hash {config_hash}) with QLoRA
({cfg.train.quantization.quant_type if cfg.train.quantization else 'no quantization'}), LoRA r={cfg.train.lora.r},
alpha={cfg.train.lora.alpha}, on {manifest['train_rows']} conversations, loss on the answers only.

| | answer loss on {manifest['loss_check']['rows']} training rows |
|---|---|
| base model | {fmt(check['base'])} |
| base + this adapter | {fmt(check['adapter'])} |

Load it with `peft.PeftModel.from_pretrained(base, this_folder)`; the tokenizer here carries the
chat template it was trained with.
"""


def preflight(cfg: PipelineConfig) -> list[str]:
    from kazhpc.models import parse_source

    parse_source(cfg.model.source)
    distributed.check(cfg.train)  # ZeRO stage vs QLoRA, the DeepSpeed JSON vs the batch sizes
    warnings = []
    if cfg.train.quantization is not None and _device() == "cpu" and cfg.model.dtype != "bfloat16":
        warnings.append("4-bit training on CPU is tested with bfloat16 compute only")
    warnings += distributed.warnings(cfg.train)
    from kazhpc.train.planner import fit_warning, packing_warning

    try:
        warning = fit_warning(cfg)
    except KazhpcError as exc:
        warning = f"memory plan: {exc}"
    warnings += [w for w in (warning, packing_warning(cfg)) if w]
    return warnings


def run(ctx: JobContext) -> dict[str, Any]:
    from peft import PeftModel
    from trl import SFTTrainer

    from kazhpc.preprocess import split_datasets
    from kazhpc.models import load_tokenizer
    from kazhpc.tokenization.extend_model import expose_tied_head_bias

    # Reading an extend-vocab stage: its model and tokenizer (cfg.model.source points there);
    # reading an earlier train stage: its adapter, trained further (kazhpc.train.stage_inputs).
    cfg, new_token_ids = extended_model_for_training(ctx)
    continued = earlier_adapter(ctx, cfg.model.source)
    # Installed first: a preemption warning that arrives while the model loads is not lost.
    preemption = PreemptionHandler(cfg.train.preemption_signal).install()
    tokenizer = load_tokenizer(cfg.model, cfg.cache_root)
    train, validation = training_data(ctx)
    checkpoints = ctx.job_dir / "checkpoints"
    # The training arguments first: under ZeRO-3 they make from_pretrained shard the model as it loads.
    args = sft_config(cfg, checkpoints)
    model = load_for_training(cfg)
    ensure_trainable(model)
    if continued is not None:
        model = continue_adapter(model, continued)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, new_token_ids) if continued is None else None,
        callbacks=[tracking_callback(ctx.tracking), preemption.callback()],
    )
    use_console_progress(trainer, f"{ctx.job_dir.name}: SFT steps")
    if new_token_ids:
        expose_tied_head_bias(trainer.model)  # trl's fused LM head and peft's tied trainable tokens
    resumed_from = last_checkpoint(checkpoints) if cfg.train.resume else None
    result, seconds = train_resumably(trainer, checkpoints, resumed_from, preemption)
    adapter_dir = ctx.job_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # on every rank: under ZeRO-3 it gathers the sharded LoRA weights
    if not trainer.is_world_process_zero():
        return {}  # rank 0 alone checks, scores and reports; the runner records nothing for other ranks
    tokenizer.save_pretrained(str(adapter_dir))
    adapter_tensors = distributed.check_adapter(adapter_dir)
    history = [h for h in trainer.state.log_history if "loss" in h]
    del trainer, model
    distributed.forget_deepspeed()

    # The check that matters, on fresh objects: does the reloaded adapter fit the answers better?
    rows = [train[i]["messages"] for i in range(min(cfg.train.loss_check_rows, len(train)))]
    base_loss = adapter_loss = None
    if rows:  # loss_check_rows: 0 skips the two reloads (e.g. tests that only need the checkpoints)
        base = load_for_scoring(cfg)
        base_loss = answer_loss(base, tokenizer, rows, cfg.train.max_length, "loss check: base model")
        adapted = PeftModel.from_pretrained(base, str(adapter_dir))
        adapter_loss = answer_loss(adapted, tokenizer, rows, cfg.train.max_length, "loss check: adapter")
        log.info("answer loss on %d training rows: base %.4f, adapter %.4f", len(rows), base_loss, adapter_loss)
    else:
        log.warning("train.loss_check_rows is 0: the adapter's effect on the answer loss is not checked")
    if rows and adapter_loss >= base_loss:
        raise KazhpcError(
            f"train: the adapter does not lower the answer loss on {len(rows)} training rows "
            f"(base {base_loss:.4f}, adapter {adapter_loss:.4f}); it is in {adapter_dir} for inspection"
        )

    metrics = {
        "train_loss": float(result.training_loss),
        **({"loss_check_base": base_loss, "loss_check_adapter": adapter_loss} if rows else {}),
        "train_seconds": seconds,
        "peak_memory_gb": peak_memory_gb(),
    }
    ctx.tracking.log_metrics(metrics)
    manifest: dict[str, Any] = {
        "adapter": str(adapter_dir),
        "train_rows": len(train),
        "validation_rows": len(validation) if validation is not None else 0,
        "steps": int(result.global_step),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "continued_from": str(continued) if continued else None,
        "train_loss": float(result.training_loss),
        "loss_check": {"rows": len(rows), "base": base_loss, "adapter": adapter_loss},
        "device": _device(),
        "peak_memory_gb": round(peak_memory_gb(), 3),
        "history": history,
        "base_model": cfg.model.source,
        "new_token_rows_trained": len(new_token_ids),
        "adapter_tensors": adapter_tensors,
        "distributed": {"world_size": int(os.environ.get("WORLD_SIZE", "1")), "deepspeed": cfg.train.distributed.deepspeed},
    }
    (adapter_dir / "README.md").write_text(_model_card(cfg, manifest, ctx.cfg.config_hash()), encoding="utf-8")
    manifest["files"] = {p.name: p.stat().st_size for p in sorted(adapter_dir.iterdir())}
    ctx.tracking.log_artifact(adapter_dir, artifact_path="adapter")
    splits = split_datasets(ctx.upstream_dir("preprocess"), ctx.manifest_of("preprocess"),
                            {"train": "training", "validation": "validation"})
    manifest["mlflow_model"] = register_adapter(ctx, cfg, adapter_dir, tokenizer, splits, adapted if rows else None)
    return manifest

