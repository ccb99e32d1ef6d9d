"""QLoRA training: answer-only loss masks on the real Gemma-3 template, the bitsandbytes CPU guard,
and the smoke pipeline's adapter (reloads, lowers the answer loss)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, KAZAKH_CHATS
from kazhpc.config import load_config
from kazhpc.errors import ConfigError, KazhpcError
from kazhpc.train.guard import ensure_trainable, ran_no_grad_forward

pytestmark = pytest.mark.slow

CHATS = KAZAKH_CHATS


def smoke(tmp: Path, model_cache: Path, *overrides: str):
    return load_config(CONFIGS / "pipelines" / "smoke.yaml", [f"runs_root={tmp}", f"cache_dir={model_cache}", *overrides])


def test_train_needs_preprocess_first() -> None:
    with pytest.raises(ConfigError, match="train reads the preprocess job's output"):
        load_config(CONFIGS / "pipelines" / "smoke.yaml", ["jobs=[prepare-model, train]"])
    with pytest.raises(ConfigError, match="preprocess must come before train"):
        load_config(CONFIGS / "pipelines" / "smoke.yaml", ["jobs=[train, preprocess]"])


def test_only_answer_tokens_carry_loss(tmp_path: Path, model_cache: Path, gemma_tokenizer) -> None:
    """trl's SFTTrainer with our template: labels are -100 on every prompt token, and equal to the
    input on exactly the assistant turns plus their <end_of_turn> (the reference project lost them)."""
    from datasets import Dataset
    from trl import SFTTrainer

    from kazhpc.train.qlora import load_for_training, lora_config, sft_config

    cfg = smoke(tmp_path, model_cache)
    trainer = SFTTrainer(
        model=load_for_training(cfg),
        args=sft_config(cfg, tmp_path / "ckpt"),
        train_dataset=Dataset.from_dict({"messages": CHATS}),
        processing_class=gemma_tokenizer,
        peft_config=lora_config(cfg),
    )
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))
    for row in range(2):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        real = batch["attention_mask"][row].bool()
        learned = gemma_tokenizer.decode(ids[(labels != -100) & real])
        answers = [m["content"] + "<end_of_turn>" for m in CHATS[row] if m["role"] == "assistant"]
        assert learned == "".join(answers)
        assert (labels[labels != -100] == ids[labels != -100]).all()
        assert int((ids[real] == gemma_tokenizer.bos_token_id).sum()) == 1


def test_guard_refuses_a_model_that_ran_a_no_grad_forward(tmp_path: Path, model_cache: Path) -> None:
    from kazhpc.train.qlora import load_for_training

    cfg = smoke(tmp_path, model_cache)
    model = load_for_training(cfg)
    ensure_trainable(model)  # fresh: fine
    model(input_ids=torch.tensor([[2, 105, 2364]]))  # eval mode but with gradients: still fine
    assert not ran_no_grad_forward(model)
    with torch.no_grad():
        model(input_ids=torch.tensor([[2, 105, 2364]]))
    with pytest.raises(KazhpcError, match="already ran a forward pass without gradients"):
        ensure_trainable(model)


def _lora_grads(model, batch: dict) -> torch.Tensor:
    model.train()
    model.zero_grad()
    model(**batch).loss.backward()
    return torch.cat([p.grad.flatten().float() for n, p in model.named_parameters() if "lora_B" in n])


@pytest.mark.skipif(
    "avx512_bf16" not in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else True,
    reason="the bitsandbytes repacking pitfall only happens on CPUs with avx512_bf16",
)
def test_the_pitfall_the_guard_prevents_is_real(tmp_path: Path, model_cache: Path, gemma_tokenizer) -> None:
    """Why the guard exists: on this CPU one no-grad eval forward changes the LoRA gradients."""
    from peft import get_peft_model

    from kazhpc.train.qlora import load_for_training, lora_config

    cfg = smoke(tmp_path, model_cache)
    ids = gemma_tokenizer.apply_chat_template(CHATS[0], tokenize=True, return_dict=True)["input_ids"]
    batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([ids])}
    grads = []
    for poisoned in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(load_for_training(cfg), lora_config(cfg))
        # LoRA B starts at zero; give it values so that the gradients of A and B both depend on the base.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
        if poisoned:
            model.eval()
            with torch.no_grad():
                model(input_ids=batch["input_ids"])
        grads.append(_lora_grads(model, batch))
    relative = (grads[0] - grads[1]).norm() / grads[0].norm()
    assert relative > 0.2, f"gradients differ by only {relative:.3f}: has bitsandbytes fixed the repacking?"


def test_smoke_pipeline_adapter_reloads_and_lowers_the_answer_loss(smoke_run: dict, model_cache: Path, gemma_tokenizer) -> None:
    from mlflow import MlflowClient
    from peft import PeftModel

    from kazhpc.models import load_model
    from kazhpc.train.qlora import answer_loss

    run_dir, tmp_path = smoke_run["run_dir"], smoke_run["runs_root"]
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert manifest["steps"] == 8 and manifest["files"]["adapter_model.safetensors"] > 0
    assert manifest["loss_check"]["adapter"] < manifest["loss_check"]["base"]

    # Reload here, independently of the job, and score rows the adapter was trained on.
    import pyarrow.parquet as pq

    rows = pq.read_table(next((run_dir / "preprocess").glob("train-*.parquet"))).column("messages").to_pylist()[:8]
    cfg = smoke(tmp_path, model_cache)
    base = load_model(cfg.model, model_cache, dtype=torch.float32)
    before = answer_loss(base, gemma_tokenizer, rows, 512)
    after = answer_loss(PeftModel.from_pretrained(base, str(run_dir / "train" / "adapter")), gemma_tokenizer, rows, 512)
    assert after < before

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kazhpc-smoke")
    (train,) = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == "train"]
    assert len(client.get_metric_history(train.info.run_id, "loss")) == 8
    for key in ("grad_norm", "learning_rate", "tokens_per_s", "peak_memory_gb"):
        assert key in train.data.metrics
    assert "adapter/adapter_model.safetensors" in {a.path for a in client.list_artifacts(train.info.run_id, "adapter")}


def test_answer_loss_on_kept_positions_equals_the_full_logits_loss(gemma_model, gemma_tokenizer) -> None:
    """The post-training check computes logits only where an answer token is predicted; it must
    equal the loss over every position with the prompt masked (bf16 rounding aside)."""
    from kazhpc.models import format_chats
    from kazhpc.train.qlora import answer_loss

    total, count = 0.0, 0
    with torch.no_grad():
        for formatted in format_chats(gemma_tokenizer, CHATS):
            ids = torch.tensor([formatted["input_ids"]])
            labels = ids.masked_fill(torch.tensor([formatted["assistant_masks"]]) == 0, -100)[:, 1:]
            logits = gemma_model(input_ids=ids).logits[:, :-1].float()
            total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="sum", ignore_index=-100).item()
            count += int((labels != -100).sum())
    assert answer_loss(gemma_model, gemma_tokenizer, CHATS, 512) == pytest.approx(total / count, abs=2e-3)


def test_tool_rows_carry_loss_on_the_calls_and_the_answer_only(tmp_path: Path, model_cache: Path, gemma_tokenizer) -> None:
    """A function-calling conversation in kazhpc's tool format (schemas in the system turn, calls as
    JSON in model turns, the tool's result as a user turn): only the model's turns are learnt."""
    from datasets import Dataset
    from trl import SFTTrainer

    from kazhpc.data.tools import chat_messages, xlam_messages
    from kazhpc.train.qlora import load_for_training, lora_config, sft_config

    tool = {"name": "ауа_райы", "description": "Қаладағы ауа райы", "parameters": {"қала": {"type": "string"}}}
    chats = [
        xlam_messages({"query": "Атырауда ауа райы қандай?", "tools": json.dumps([tool], ensure_ascii=False),
                       "answers": json.dumps([{"name": "ауа_райы", "arguments": {"қала": "Атырау"}}], ensure_ascii=False)}),
        chat_messages({"tools": [{"type": "function", "function": tool}], "messages": [
            {"role": "user", "content": "Ақтауда қазір жылы ма?"},
            {"role": "assistant", "tool_calls": [{"function": {"name": "ауа_райы", "arguments": '{"қала": "Ақтау"}'}}]},
            {"role": "tool", "name": "ауа_райы", "content": '{"температура": 18}'},
            {"role": "assistant", "content": "Иә, Ақтауда қазір он сегіз градус жылы."}]}),
    ]  # fmt: skip
    cfg = smoke(tmp_path, model_cache)
    trainer = SFTTrainer(model=load_for_training(cfg), args=sft_config(cfg, tmp_path / "ckpt"),
                         train_dataset=Dataset.from_dict({"messages": chats}), processing_class=gemma_tokenizer,
                         peft_config=lora_config(cfg))  # fmt: skip
    batch = next(iter(trainer.get_eval_dataloader(trainer.train_dataset)))
    for row, chat in enumerate(chats):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        real = batch["attention_mask"][row].bool()
        learned = gemma_tokenizer.decode(ids[(labels != -100) & real])
        assert learned == "".join(m["content"] + "<end_of_turn>" for m in chat if m["role"] == "assistant")
        assert "Құрал нәтижесі" not in learned and '"description"' not in learned
