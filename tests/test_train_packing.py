"""Packing (padding-free, `train.packing: true`) with answer-only loss on the real Gemma-3 template:
each packed example keeps its own labels and positions, and attends only to itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, KAZAKH_CHATS
from kazhpc.config import load_config

pytestmark = pytest.mark.slow

CHATS = [
    *KAZAKH_CHATS,
    [
        {"role": "user", "content": "Абай Құнанбайұлы кім болған?"},
        {"role": "assistant", "content": "Абай — қазақтың ақыны, ағартушысы және ойшылы."},
    ],
]


def test_packed_batch_keeps_every_examples_mask_positions_and_attention(tmp_path: Path, model_cache: Path, gemma_tokenizer) -> None:
    from datasets import Dataset
    from trl import SFTTrainer

    from kazhpc.config import ModelConfig
    from kazhpc.models import load_model
    from kazhpc.train.qlora import lora_config, sft_config

    cfg = load_config(CONFIGS / "pipelines" / "smoke.yaml", [f"runs_root={tmp_path}", f"cache_dir={model_cache}", "train.packing=true"])
    args = sft_config(cfg, tmp_path / "ckpt")
    assert args.packing and args.padding_free and args.assistant_only_loss
    # One fp32 model serves both the trainer (which only collates here) and the attention check;
    # LoRA's B starts at zero, so the wrapped model computes what the base model does.
    model = load_model(ModelConfig(name="gemma3-270m", source="bundled:gemma3-270m"), model_cache, dtype=torch.float32)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"messages": CHATS}),
        processing_class=gemma_tokenizer,
        peft_config=lora_config(cfg),
    )
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # one flat, padding-free row
    ids, labels, positions = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist()
    assert len(starts) == len(CHATS)  # every example packed, none truncated

    seen = []
    for start, end in zip(starts, starts[1:] + [len(ids)]):
        seg_ids, seg_labels = ids[start:end], labels[start:end]
        assert positions[start:end].tolist() == list(range(end - start))  # positions restart per example
        assert seg_ids[0] == gemma_tokenizer.bos_token_id and int((seg_ids == gemma_tokenizer.bos_token_id).sum()) == 1
        text = gemma_tokenizer.decode(seg_ids)
        (chat,) = [c for c in CHATS if c[0]["content"] in text or c[1]["content"] in text]
        learned = gemma_tokenizer.decode(seg_ids[seg_labels != -100])
        assert learned == "".join(m["content"] + "<end_of_turn>" for m in chat if m["role"] == "assistant")
        assert (seg_labels[seg_labels != -100] == seg_ids[seg_labels != -100]).all()
        seen.append(chat)
    assert sorted(map(str, seen)) == sorted(map(str, CHATS))

    # Per-example attention: called as SFTTrainer.compute_loss calls it (use_cache=False, no attention
    # mask), the packed row's logits equal each example's logits on its own. transformers derives
    # the block-diagonal mask from the restarting position_ids (masking_utils.find_packed_sequence_indices).
    model = trainer.model
    spans = list(zip(starts, starts[1:] + [len(ids)]))
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        alone = [model(input_ids=ids[None, start:end], use_cache=False).logits[0] for start, end in spans]
        for (start, end), own in zip(spans, alone):
            assert torch.allclose(packed[start:end], own, atol=1e-3, rtol=1e-3), f"example at {start} sees its neighbours"
        # The check has teeth: with a cache object transformers skips the packed-sequence mask and
        # later examples attend to earlier ones.
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits[0]
        start, end = spans[-1]
        assert not torch.allclose(leaky[start:end], alone[-1], atol=1e-3, rtol=1e-3)
