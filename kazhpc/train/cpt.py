"""The train job's ``objective: cpt``: continued pretraining on a corpus stage's packed blocks.

Loss on every token of each block (no chat template, no answer mask). LoRA or QLoRA as for SFT,
with embedding rows trainable (``train.trainable_embeddings``: an extended vocabulary's new rows,
all rows, or none; Gemma-3's ``lm_head`` is tied to them), or every weight (``train.method:
full``, saved to ``model/``; for a large model under DeepSpeed ZeRO-3, which the Trainer gathers
on save). Training FLOPs are counted as (4 N + 2 N_trainable) per token. The blocks are read memory-mapped
(kazhpc.data.corpus.blocks), so memory does not grow with the corpus. ``train.max_tokens`` is the
budget: it sets the number of optimizer steps, and a budget the corpus cannot fill in
``train.epochs`` passes is refused before the model loads. Preemption and resume are the SFT
path's (the Trainer's checkpoint holds the data position).

Measured, in MLflow and the manifest: tokens and characters seen, tokens/s and characters/s, and
bits per character on held-out Kazakh (the corpus stage's held-out documents), held-out English
(``train.cpt.heldout_english``) and the sets of ``train.cpt.heldout_extra`` (by default 52 Kazakh
passages of other genres, out of the corpus's domain). Before and after are scored on fresh loads:
one object, the adapter switched off and on (so both are the same kind of model on any device), or
for full fine-tuning the base and then the saved model; every
``train.cpt.eval_steps`` steps the training object is scored too, for the curve, except with
4-bit weights on a CPU, where a no-grad forward corrupts the LoRA gradients that follow
(kazhpc.train.guard). The run fails if the adapter does not lower the loss on training blocks.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext

log = logging.getLogger(__name__)


def tokens_per_step(cfg: PipelineConfig, block_length: int) -> int:
    t = cfg.train
    return block_length * t.per_device_batch_size * t.gradient_accumulation_steps * t.distributed.world_size


def planned_steps(cfg: PipelineConfig, blocks: int, block_length: int, corpus_stage: str) -> int:
    """Optimizer steps for the token budget (``max_tokens``), else ``max_steps``, else ``epochs``;
    refuses a budget the corpus cannot fill in ``epochs`` passes, saying what it holds."""
    t = cfg.train
    per_step = tokens_per_step(cfg, block_length)
    available = blocks * block_length
    if t.max_tokens is not None:
        if t.max_tokens > available * t.epochs:
            raise KazhpcError(
                f"train.max_tokens: {t.max_tokens:,} tokens, but the {corpus_stage} stage's blocks hold {available:,} "
                f"({blocks:,} blocks of {block_length}) and train.epochs is {t.epochs:g}; lower the budget, "
                f"raise train.epochs to {math.ceil(t.max_tokens / available)}, or add text"
            )
        return max(1, math.ceil(t.max_tokens / per_step))
    if t.max_steps != -1:
        return t.max_steps
    return max(1, math.ceil(blocks * t.epochs / (per_step // block_length)))


def trainable_rows(cfg: PipelineConfig, new_token_ids: list[int], vocab: int) -> list[int]:
    rule = cfg.train.trainable_embeddings
    return {"new": new_token_ids, "all": list(range(vocab)), "none": []}[rule]


def heldout_texts(ctx: JobContext, cfg: PipelineConfig) -> dict[str, list[str]]:
    """Held-out Kazakh (the corpus stage's held-out documents), English and the extra sets' passages."""
    import gzip
    import json

    from kazhpc.evaluation.perplexity import read_passages

    manifest = ctx.manifest_of("corpus")
    kk: list[str] = []
    for path in sorted(Path(manifest["heldout_dir"]).glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            kk += [json.loads(line)["text"] for line in f]
    n = cfg.train.cpt.heldout_texts
    english, _ = read_passages(cfg.train.cpt.heldout_english, "train.cpt.heldout_english")
    texts = {"kk": kk[:n], "en": english[:n]}
    for name, spec in cfg.train.cpt.heldout_extra.items():
        texts[name] = read_passages(spec, f"train.cpt.heldout_extra.{name}")[0][:n]
    if not texts["kk"]:
        log.warning("%s: the corpus stage held out no document (corpus.heldout_fraction); no Kazakh held-out score",
                    ctx.job_dir.name)
        del texts["kk"]
    return texts


def score_heldout(model: Any, tokenizer: Any, texts: dict[str, list[str]], max_length: int) -> dict[str, float]:
    """Bits per character (and per token) of each held-out set; leaves the model in train mode."""
    from kazhpc.evaluation.perplexity import score_texts

    was_training = model.training
    scores: dict[str, float] = {}
    for language, passages in texts.items():
        result = score_texts(model, tokenizer, passages, max_length=max_length, batch_size=4)
        scores[f"heldout_{language}_bits_per_char"] = result.bits_per_char
        scores[f"heldout_{language}_loss"] = result.loss
    if was_training:
        model.train()
    return scores


def read_curve(path: Path, up_to_step: int) -> list[dict[str, float]]:
    """The held-out rows an earlier attempt of this stage scored, up to the step it resumes from
    (a preempted run keeps its curve; rows past its checkpoint are scored again)."""
    import json

    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= up_to_step]


def heldout_callback(texts: dict[str, list[str]], tokenizer: Any, cfg: PipelineConfig, per_step: int,
                     chars_per_token: float, tracking: Any, history: list[dict[str, float]], curve_file: Path) -> Any:
    """Scores the held-out sets at the start, every ``eval_steps``, and at the end of training;
    each row is appended to ``history`` and to ``curve_file``."""
    import json

    from transformers import TrainerCallback

    every = cfg.train.cpt.eval_steps
    max_length = cfg.train.cpt.heldout_max_length
    curve_file.write_text("".join(json.dumps(r) + "\n" for r in history), encoding="utf-8")
    for row in history:  # a resumed attempt's MLflow run gets the whole curve
        tracking.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    class HeldoutCallback(TrainerCallback):
        def _score(self, state: Any, model: Any) -> None:
            if not state.is_world_process_zero or any(r["step"] == state.global_step for r in history):
                return
            tokens = state.global_step * per_step
            row = {"step": state.global_step, "tokens_seen": tokens, "chars_seen": round(tokens * chars_per_token),
                   **score_heldout(model, tokenizer, texts, max_length)}
            history.append(row)
            with curve_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            tracking.log_metrics({k: v for k, v in row.items() if k != "step"}, step=state.global_step)
            log.info("step %d: %s", state.global_step, ", ".join(f"{k} {v:.4f}" for k, v in row.items() if "bits" in k))

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self._score(state, model)

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if every and state.global_step % every == 0:
                self._score(state, model)

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self._score(state, model)

    return HeldoutCallback()


def training_arguments(cfg: PipelineConfig, output_dir: Path, steps: int) -> Any:
    from transformers import TrainingArguments

    from kazhpc.train.qlora import trainer_arguments

    return TrainingArguments(**{**trainer_arguments(cfg, output_dir), "max_steps": steps}, remove_unused_columns=False)


def trainable_model(cfg: PipelineConfig, continued: Path | None, rows: list[int]) -> Any:
    """The model to train: every weight (``train.method: full``), or LoRA on the frozen base (a new
    adapter with ``rows`` of the embedding trainable, or an earlier stage's adapter to go on with)."""
    from peft import get_peft_model

    from kazhpc.train.guard import ensure_trainable
    from kazhpc.train.qlora import load_for_training, lora_config
    from kazhpc.train.stage_inputs import continue_adapter

    if cfg.train.method == "full" and continued is not None:
        raise KazhpcError(f"train.method: full trains a model, but this stage reads an earlier train stage's adapter "
                          f"({continued}); train LoRA on it (method: lora), or read no train stage")
    model = load_for_training(cfg)
    ensure_trainable(model)
    if cfg.train.method == "full":
        return model
    return continue_adapter(model, continued) if continued is not None else get_peft_model(model, lora_config(cfg, rows))


def before_and_after(cfg: PipelineConfig, saved: Path, full: bool, tokenizer: Any, texts: dict[str, list[str]],
                     blocks: Any) -> tuple[dict[str, float], dict[str, float], float, float]:
    """Held-out scores and the training-block loss of the starting model and of the trained one, on
    fresh loads (on a GPU as trained; on a CPU in bf16): for LoRA one object, the adapter off and
    on; for full fine-tuning the base, then the saved model."""
    from kazhpc.train.qlora import load_for_scoring

    max_length, rows = cfg.train.cpt.heldout_max_length, cfg.train.loss_check_rows
    if full:
        scores = []
        for model_cfg in (cfg, cfg.model_copy(update={"model": cfg.model.model_copy(update={"source": str(saved), "revision": None})})):
            scored = load_for_scoring(model_cfg)
            scores.append((score_heldout(scored, tokenizer, texts, max_length), block_loss(scored, blocks, rows)))
            del scored
        (before, base_loss), (after, trained_loss) = scores
        return before, after, base_loss, trained_loss
    scored = reload_with_adapter(cfg, saved)
    after, trained_loss = score_heldout(scored, tokenizer, texts, max_length), block_loss(scored, blocks, rows)
    with scored.disable_adapter():
        before, base_loss = score_heldout(scored, tokenizer, texts, max_length), block_loss(scored, blocks, rows)
    return before, after, base_loss, trained_loss


def reload_with_adapter(cfg: PipelineConfig, adapter_dir: Path) -> Any:
    """A fresh base model with the saved adapter (not the training object: kazhpc.train.guard)."""
    from peft import PeftModel

    from kazhpc.train.qlora import load_for_scoring

    return PeftModel.from_pretrained(load_for_scoring(cfg), str(adapter_dir))


def block_loss(model: Any, blocks: Any, count: int) -> float:
    """Mean token loss over the first ``count`` training blocks (the end-of-run check)."""
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(min(count, len(blocks))):
            ids = blocks[i]["input_ids"].unsqueeze(0).to(model.device)
            total += float(model(input_ids=ids, labels=ids).loss)
    return total / max(min(count, len(blocks)), 1)


def parameter_counts(model: Any) -> tuple[int, int]:
    """All parameters (a tied embedding once: it is also the output projection, a matmul over the
    whole vocabulary) and the trainable ones; under ZeRO-3 a parameter's full size is ``ds_numel``."""
    seen: set[int] = set()
    total = trainable = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        n = int(getattr(parameter, "ds_numel", 0) or parameter.numel())
        total += n
        trainable += n if parameter.requires_grad else 0
    return total, trainable


def training_flops(parameters: int, trainable: int, tokens: int, chars_per_token: float) -> dict[str, Any]:
    """Training compute by the usual dense-transformer count: 2N per token forward, 2N backward for
    the activations' gradients, and 2N more only for weights that get a gradient (6N when all do;
    about 4N under LoRA). Attention over the context is left out, as at these block lengths it is a
    few percent. An extended vocabulary has more parameters (output rows) but fewer tokens per
    character, hence ``per_char``: the figure that compares tokenizers on the same text."""
    per_token = 4 * parameters + 2 * trainable
    return {"parameters": parameters, "trainable": trainable, "per_token": per_token, "total": per_token * tokens,
            "per_char": per_token / chars_per_token,
            "rule": "(4 N + 2 N_trainable) per token; attention's context term left out"}


def _corpus_blocks(ctx: JobContext, tokenizer: Any) -> tuple[Any, dict[str, Any], str]:
    from kazhpc.data.corpus.blocks import PackedBlocks

    manifest = ctx.manifest_of("corpus")
    stage = ctx.upstream_dir("corpus").name  # type: ignore[union-attr]  # manifest_of raised otherwise
    made = manifest["blocks"]
    if made["vocab_size"] != len(tokenizer):
        raise KazhpcError(
            f"{ctx.job_dir.name}: the {stage} stage's blocks were made with a tokenizer of {made['vocab_size']:,} tokens, "
            f"but this stage trains a model whose tokenizer has {len(tokenizer):,}; read the same extend-vocab stage in both"
        )
    blocks = PackedBlocks([Path(f) for f in made["files"]], made["length"], made["token_bytes"])
    return blocks, manifest, stage


def run(ctx: JobContext) -> dict[str, Any]:
    from transformers import Trainer, default_data_collator

    from kazhpc.models import load_tokenizer
    from kazhpc.train import distributed
    from kazhpc.corpus_job import corpus_datasets
    from kazhpc.train.progress import use_console_progress
    from kazhpc.train.qlora import _device, peak_memory_gb, register_adapter, tracking_callback
    from kazhpc.train.resume import PreemptionHandler, last_checkpoint, train_resumably
    from kazhpc.train.stage_inputs import earlier_adapter, extended_model_for_training

    cfg, new_token_ids = extended_model_for_training(ctx)
    continued = earlier_adapter(ctx, cfg.model.source)
    preemption = PreemptionHandler(cfg.train.preemption_signal).install()
    tokenizer = load_tokenizer(cfg.model, cfg.cache_root)
    blocks, corpus, corpus_stage = _corpus_blocks(ctx, tokenizer)
    length = blocks.length
    steps = planned_steps(cfg, len(blocks), length, corpus_stage)  # before the model loads
    per_step = tokens_per_step(cfg, length)
    chars_per_token = corpus["counts"]["chars_kept"] / max(corpus["counts"]["tokens"], 1)
    texts = heldout_texts(ctx, cfg)
    # 4-bit weights on a CPU: no no-grad forward of the training object (kazhpc.train.guard).
    in_training = not (cfg.train.quantization is not None and _device() == "cpu")
    checkpoints = ctx.job_dir / "checkpoints"
    args = training_arguments(cfg, checkpoints, steps)
    full = cfg.train.method == "full"
    rows = list(range(len(tokenizer))) if full else trainable_rows(cfg, new_token_ids, len(tokenizer))
    model = trainable_model(cfg, continued, rows)
    if cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()
    parameters, trainable = parameter_counts(model)
    resumed_from = last_checkpoint(checkpoints) if cfg.train.resume else None
    resumed_step = int(resumed_from.name.rpartition("-")[2]) if resumed_from else 0
    curve_file = ctx.job_dir / "heldout-curve.jsonl"
    history = read_curve(curve_file, resumed_step)
    callbacks = [tracking_callback(ctx.tracking), preemption.callback()]
    if in_training and cfg.train.cpt.eval_steps:  # the curve; before and after are scored below anyway
        callbacks.append(heldout_callback(texts, tokenizer, cfg, per_step, chars_per_token, ctx.tracking, history, curve_file))
    trainer = Trainer(model=model, args=args, train_dataset=blocks, data_collator=default_data_collator, callbacks=callbacks)
    use_console_progress(trainer, f"{ctx.job_dir.name}: CPT steps")
    result, seconds = train_resumably(trainer, checkpoints, resumed_from, preemption)
    saved = ctx.job_dir / ("model" if full else "adapter")
    trainer.save_model(str(saved))  # under ZeRO-3 the Trainer gathers the shards first
    if not trainer.is_world_process_zero():
        return {}
    tokenizer.save_pretrained(str(saved))
    saved_tensors = distributed.check_saved_model(saved) if full else distributed.check_adapter(saved)
    losses = [h for h in trainer.state.log_history if "loss" in h]
    del trainer, model
    distributed.forget_deepspeed()
    before, after, base_loss, adapter_loss = before_and_after(cfg, saved, full, tokenizer, texts, blocks)
    check_blocks = cfg.train.loss_check_rows
    if check_blocks and adapter_loss >= base_loss:
        raise KazhpcError(f"train: CPT does not lower the loss on {check_blocks} training blocks "
                          f"(before {base_loss:.4f}, after {adapter_loss:.4f}); it is in {saved}")
    tokens_seen = int(result.global_step) * per_step
    ctx.tracking.log_metrics({**{f"{k}_before": v for k, v in before.items()}, **{f"{k}_after": v for k, v in after.items()}})
    metrics = {"train_loss": float(result.training_loss), "train_seconds": seconds, "tokens_seen": tokens_seen,
               "chars_seen": round(tokens_seen * chars_per_token), "tokens_per_s": tokens_seen / max(seconds, 1e-9),
               "chars_per_s": tokens_seen * chars_per_token / max(seconds, 1e-9),
               "loss_check_base": base_loss, "loss_check_adapter": adapter_loss, "peak_memory_gb": peak_memory_gb()}
    flops = training_flops(parameters, trainable, tokens_seen, chars_per_token)
    ctx.tracking.log_metrics({"flops": flops["total"], "flops_per_char": flops["per_char"], **metrics})
    manifest: dict[str, Any] = {
        "objective": "cpt",
        "method": cfg.train.method,
        "flops": flops,
        "adapter": None if full else str(saved),
        **({"model": str(saved)} if full else {}),
        "base_model": cfg.model.source,
        "corpus": {"stage": corpus_stage, "blocks": len(blocks), "block_length": length, "sha256": corpus["blocks"]["sha256"]},
        "steps": int(result.global_step),
        "tokens_per_step": per_step,
        "max_tokens": cfg.train.max_tokens,
        **{k: v for k, v in metrics.items() if k != "peak_memory_gb"},
        "heldout": {"before": before, "after": after, "during_training": history,
                    "texts": {k: len(v) for k, v in texts.items()}},
        "loss_check": {"rows": check_blocks, "base": base_loss, "adapter": adapter_loss},
        "resumed_from": str(resumed_from) if resumed_from else None,
        "continued_from": str(continued) if continued else None,
        "train_loss": float(result.training_loss),
        "new_token_rows_trained": len(rows),
        ("model_tensors" if full else "adapter_tensors"): saved_tensors,
        "history": losses,
        "device": _device(),
        "distributed": {"world_size": int(os.environ.get("WORLD_SIZE", "1")), "deepspeed": cfg.train.distributed.deepspeed},
        "peak_memory_gb": round(peak_memory_gb(), 3),
    }
    manifest["files"] = {p.name: p.stat().st_size for p in sorted(saved.iterdir())}
    ctx.tracking.log_artifact(saved, artifact_path=saved.name)
    datasets = corpus_datasets(ctx.upstream_dir("corpus"), corpus, "training", "evaluation")
    if full:  # a merged model is no adapter: its export is the export stage's (not yet here)
        for record in datasets:
            ctx.tracking.log_dataset(record)
    else:
        manifest["mlflow_model"] = register_adapter(ctx, cfg, saved, tokenizer, datasets)
    return manifest
