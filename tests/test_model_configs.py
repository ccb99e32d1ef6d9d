"""Per-size model configs (configs/models/): their train defaults, the precedence rules, the real
pipelines for 4B/12B/27B, and loading the text model out of a multimodal Gemma-3 checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, write_yaml
from kazhpc.config import load_config
from kazhpc.errors import ConfigError

SMOKE = CONFIGS / "pipelines" / "smoke.yaml"


@pytest.mark.parametrize("size", ["4b", "12b", "27b"])
def test_real_pipelines_validate_offline(size: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from kazhpc.runner import preflight

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config(CONFIGS / "pipelines" / f"kazakh-sft-{size}.yaml")
    assert cfg.model.name == f"gemma3-{size}"
    assert [s.hub for s in cfg.preprocess.sources][:2] == ["akoksal/muri-it-language-split", "AmanMussa/kazakh-instruction-v2"]
    t = cfg.train
    assert t.per_device_batch_size * t.gradient_accumulation_steps * t.distributed.world_size == 24  # the reference's
    preflight(cfg)  # raises on anything impossible; warnings are allowed (hub downloads)


def test_size_layouts() -> None:
    t12 = load_config(CONFIGS / "pipelines" / "kazakh-sft-12b.yaml").train
    assert (t12.distributed.nodes, t12.distributed.gpus_per_node, t12.distributed.deepspeed) == (1, 4, "zero2")
    t27 = load_config(CONFIGS / "pipelines" / "kazakh-sft-27b.yaml").train
    assert t27.distributed.nodes > 1 and t27.distributed.deepspeed == "zero3"
    assert t27.quantization is not None and t27.quantization.quant_storage == "bfloat16"
    t4 = load_config(CONFIGS / "pipelines" / "kazakh-sft-4b.yaml").train
    assert (t4.per_device_batch_size, t4.gradient_accumulation_steps, t4.gradient_checkpointing) == (4, 6, True)
    assert t4.distributed.world_size == 1 and t4.distributed.deepspeed is None


def test_pipeline_keys_win_over_the_model_files_defaults(tmp_path: Path) -> None:
    pipeline = write_yaml(
        tmp_path / "p.yaml",
        f"""
        name: p
        jobs: [prepare-model]
        model: {CONFIGS / 'models' / 'gemma3-4b.yaml'}
        train:
          per_device_batch_size: 2
          distributed: {{gpu_memory_gb: 80}}
        """,
    )
    t = load_config(pipeline).train
    assert t.per_device_batch_size == 2  # the pipeline's key
    assert t.gradient_accumulation_steps == 6  # the model file's default
    assert t.distributed.gpu_memory_gb == 80 and t.distributed.gpus_per_node == 1  # merged per key
    assert load_config(pipeline, ["train.gradient_accumulation_steps=12"]).train.gradient_accumulation_steps == 12


def test_model_override_brings_its_layout_and_drops_the_old_one() -> None:
    # smoke.yaml's own train keys stay; the 27B layout replaces the 270M one entirely.
    cfg = load_config(SMOKE, ["model=gemma3-27b"])
    t = cfg.train
    assert cfg.model.source == "google/gemma-3-27b-pt"
    assert (t.per_device_batch_size, t.gradient_accumulation_steps) == (1, 3)
    assert (t.distributed.nodes, t.distributed.deepspeed) == (2, "zero3")
    assert t.quantization.quant_storage == "bfloat16"
    assert t.max_steps == 8 and t.learning_rate == 1e-3  # smoke.yaml's own keys
    # 27B → 4B: the 4B file sets no quant_storage; the 27B one must not linger.
    back = load_config(SMOKE, ["model=gemma3-27b", "model=gemma3-4b"]).train
    assert back.quantization.quant_storage is None and back.distributed.deepspeed is None
    # An explicit train override wins whatever its position.
    for order in (["train.per_device_batch_size=3", "model=gemma3-27b"], ["model=gemma3-27b", "train.per_device_batch_size=3"]):
        assert load_config(SMOKE, order).train.per_device_batch_size == 3


def test_a_wrong_key_in_a_model_files_train_block_names_the_file(tmp_path: Path) -> None:
    model = write_yaml(
        tmp_path / "m.yaml",
        """
        name: m
        source: google/gemma-3-4b-pt
        train:
          per_device_batch: 4
        """,
    )
    with pytest.raises(ConfigError, match=rf"{model}:4: train.per_device_batch: unknown key \(did you mean 'per_device_batch_size'\?\)"):
        load_config(SMOKE, [f"model={model}"])
    write_yaml(model, "name: m\nsource: google/gemma-3-4b-pt\ntrain: 4\n")
    with pytest.raises(ConfigError, match="model.train: expected a mapping"):
        load_config(SMOKE, [f"model={model}"])


# -- multimodal checkpoints --------------------------------------------------------------------


def _tiny_multimodal(folder: Path, hub_layout: bool) -> Path:
    """A random Gemma-3 multimodal checkpoint, saved like transformers 5 or like the hub's files."""
    from safetensors.torch import load_file, save_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    config = Gemma3Config(
        text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=32, sliding_window=16, max_position_embeddings=256),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
        mm_tokens_per_image=4,
    )
    Gemma3ForConditionalGeneration(config).save_pretrained(folder)
    if hub_layout:  # google/gemma-3-*-pt store 'language_model.model.layers...'
        weights = load_file(folder / "model.safetensors")
        renamed = {k.replace("model.language_model.", "language_model.model.").replace("model.vision_tower.", "vision_tower.")
                   .replace("model.multi_modal_projector.", "multi_modal_projector."): v for k, v in weights.items()}
        assert any(k.startswith("language_model.model.layers.") for k in renamed)
        save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("hub_layout", [False, True])
def test_multimodal_checkpoint_loads_as_its_text_model(tmp_path: Path, hub_layout: bool) -> None:
    from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    from kazhpc.config import ModelConfig
    from kazhpc.models import load_model

    folder = _tiny_multimodal(tmp_path / "mm", hub_layout)
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["Gemma3ForConditionalGeneration"]
    cfg = ModelConfig(name="tiny-mm", source=str(folder), dtype="float32")
    text = load_model(cfg, tmp_path)
    assert type(text) is Gemma3ForCausalLM
    assert text.config._attn_implementation == "eager"
    assert not any("vision" in n for n, _ in text.named_parameters())

    full = Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([[2, 17, 42, 99, 7, 300]])
    with torch.no_grad():
        assert torch.allclose(text(input_ids=ids).logits, full(input_ids=ids).logits, atol=1e-5)  # same weights, all loaded
    text.train()  # a trainer's forward: labels, no token_type_ids
    loss = text(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and text.model.layers[0].mlp.up_proj.weight.grad is not None
