"""The model side of a vocabulary extension: new embedding rows, a short adaptation, and the
hand-over to the training job.

Initialisation rule: each new row is the **mean of the base rows of the pieces** the base
tokenizer splits the new token into (its pieces in the training text, :class:`Extension.pieces`),
**scaled by** ``extend_vocab.init_scale`` (0.7). The mean keeps the new input embedding in the
span of what the model already reads for that string. Gemma-3 ties input and output embeddings,
so the row is also the new token's logit direction; untied models get the same rule on the output
matrix. The scale was chosen on a development split carved from the training text, never on the
held-out text that is reported (docs/benchmarks.md): every base row of Gemma-3-270M has norm 1.03,
the plain mean of k pieces is shorter (median 0.75), and shortening it further, to ~0.52, gave the
lowest bits per character right after initialisation (+8.9% over the base model against +12.5%
for the plain mean; norm-matching back to 1.03 gave +23%).

The new rows are trained with peft's ``trainable_token_indices`` (only those rows get a trainable
delta; with tied weights peft ties the ``lm_head`` delta to the embedding one), next to LoRA.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.tokenization.extend import Extension

log = logging.getLogger(__name__)

MODEL_DIR = "model"


def resize_and_initialise(model: Any, ext: Extension, scale: float = 1.0) -> dict[str, Any]:
    """Grow the embeddings by ``len(ext.tokens)`` rows and set each new row to ``scale`` times the
    mean of its pieces' base rows (input and, when untied, output embeddings)."""
    import torch

    base = ext.base_size
    old_rows = model.get_input_embeddings().weight.shape[0]
    if old_rows < base:
        raise KazhpcError(f"model: {old_rows} embedding rows, but the tokenizer has {base} tokens")
    model.resize_token_embeddings(base + len(ext.tokens), mean_resizing=False)
    inp = model.get_input_embeddings().weight
    out_layer = model.get_output_embeddings()
    tied = out_layer is None or out_layer.weight.data_ptr() == inp.data_ptr()
    matrices = [inp] if tied else [inp, out_layer.weight]
    with torch.no_grad():
        for weight in matrices:
            for i, pieces in enumerate(ext.pieces):
                weight[base + i] = (scale * weight[pieces].float().mean(0)).to(weight.dtype)
    model.config.vocab_size = base + len(ext.tokens)
    rule = "mean of pieces" if scale == 1.0 else f"{scale:g} x the mean of pieces"
    return {"rows": base + len(ext.tokens), "new_rows": len(ext.tokens), "tied": tied, "rule": rule, "scale": scale}


def bits_per_char(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int, batch_size: int = 8) -> dict[str, float]:
    """Bits per character (and the per-token figures) of ``texts``: comparable across tokenizers."""
    from kazhpc.evaluation.perplexity import score_texts

    result = score_texts(model, tokenizer, list(texts), max_length=max_length, batch_size=batch_size)
    return {
        "bits_per_char": result.bits_per_char,
        "loss_per_token": result.loss,
        "tokens": result.tokens,
        "chars": result.chars,
        "truncated": result.truncated,
    }


def adapt(
    model_dir: Path,
    tokenizer: Any,
    texts: list[str],
    new_ids: list[int],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    max_length: int,
    lora: bool,
    dtype: str,
    seed: int,
    work_dir: Path,
) -> tuple[Any, dict[str, Any]]:
    """A short causal-LM run on Kazakh text with the new rows (and LoRA) trainable.

    Plain (unquantised) weights: the bitsandbytes CPU pitfall concerns 4-bit models only, and the
    model is loaded fresh from ``model_dir`` (the saved extension, as the training job will see it).
    Returns the trained peft model (for scoring) and the loss history.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig, TrainableTokensConfig, get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    if lora:
        config: Any = LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM",
            trainable_token_indices={"embed_tokens": new_ids} if new_ids else None,
        )  # fmt: skip
    else:
        config = TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=new_ids)
    model = get_peft_model(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    encoded = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=True)
    data = Dataset.from_dict({"input_ids": encoded["input_ids"]})
    args = TrainingArguments(
        output_dir=str(work_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        # Decays to zero: at a constant rate the later steps of a short run only add noise
        # (measured: 32 constant-rate steps ended worse than 16).
        lr_scheduler_type="linear",
        warmup_steps=0.1,  # transformers 5: a float in [0, 1) is a ratio of all steps
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=data,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )  # fmt: skip
    from kazhpc.train.progress import use_console_progress

    result = use_console_progress(trainer, "extension: adaptation steps").train()
    history = [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h]
    return model, {
        "steps": int(result.global_step),
        "train_loss": float(result.training_loss),
        "trainable_parameters": int(trainable),
        "total_parameters": int(total),
        "trainable": ("LoRA r=8 all-linear + " if lora else "") + f"{len(new_ids)} new embedding rows",
        "history": history,
    }


def expose_tied_head_bias(model: Any) -> None:
    """Let trl's fused LM head see through peft's wrapper of a tied ``lm_head``.

    With ``trainable_token_indices`` on a tied model (Gemma-3), peft wraps ``lm_head`` in a
    ``TrainableTokensWrapper`` whose ``.weight`` is the merged weight (base rows + trained new
    rows, differentiable), but which has no ``.bias``; trl's SFTTrainer (1.16) computes the loss
    from ``lm_head.weight`` and ``lm_head.bias`` directly and fails. The wrapped layer's bias
    (None for Gemma) is passed through; nothing else changes.
    """
    from peft.utils.other import TrainableTokensWrapper

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if isinstance(head, TrainableTokensWrapper) and "bias" not in head.__dict__:
        object.__setattr__(head, "bias", head.original_module.bias)

