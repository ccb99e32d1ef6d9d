"""The memory planner: its parts checked against the libraries that do the work (transformers'
parameter counts, bitsandbytes' packed sizes, peft's LoRA modules, DeepSpeed's ZeRO estimators),
and its use in `kazhpc plan` and `kazhpc validate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, REPO
from kazhpc.config import load_config
from kazhpc.train.planner import (
    GEMMA3,
    Architecture,
    architecture_from_config,
    estimate,
    fit_warning,
    lora_params,
    plan,
    quantized_bytes_per_weight,
    trainable_states_bytes,
)

KAZHPC = str(Path(sys.executable).parent / "kazhpc")
TINY = Architecture(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=96, vocab_size=300)


def _text_config(arch: Architecture):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads, head_dim=arch.head_dim, intermediate_size=arch.intermediate_size,
        vocab_size=arch.vocab_size,
    )


@pytest.mark.parametrize("name", list(GEMMA3))
def test_parameter_counts_match_transformers(name: str) -> None:
    """The built-in table, built as a real Gemma3ForCausalLM (on the meta device: no memory)."""
    from transformers import Gemma3ForCausalLM

    arch = GEMMA3[name]
    with torch.device("meta"):
        model = Gemma3ForCausalLM(_text_config(arch))
    assert arch.total_params == sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    assert linear == arch.num_layers * arch.linear_params_per_layer


def test_architecture_from_a_multimodal_config_json() -> None:
    config = {"model_type": "gemma3", "text_config": {**_text_config(GEMMA3["gemma3-4b"]).to_dict()}, "vision_config": {}}
    assert architecture_from_config(json.loads(json.dumps(config))) == GEMMA3["gemma3-4b"]


@pytest.mark.parametrize("double_quant", [False, True])
def test_4bit_bytes_per_weight_match_bitsandbytes(double_quant: bool) -> None:
    import bitsandbytes.functional as F

    weight = torch.randn(256, 1024, dtype=torch.bfloat16)
    packed, state = F.quantize_4bit(weight, blocksize=64, compress_statistics=double_quant, quant_type="nf4")
    size = packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
    if state.nested:
        size += state.state2.absmax.numel() * state.state2.absmax.element_size()
    assert size / weight.numel() == pytest.approx(quantized_bytes_per_weight(double_quant), rel=1e-3)


def test_lora_states_agree_with_deepspeeds_estimators() -> None:
    """LoRA parameter counts from a real peft model; ZeRO-2/3 states equal DeepSpeed's own numbers."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM

    peft_model = get_peft_model(Gemma3ForCausalLM(_text_config(TINY)), LoraConfig(r=8, target_modules="all-linear"))
    lora_modules = torch.nn.ModuleList(m for n, m in peft_model.named_modules() if isinstance(m, torch.nn.Linear) and ".lora_" in n)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    ds_total, ds_largest = model_to_params(lora_modules)  # what estimate_zero3_..._all_live counts
    assert (trainable, ds_largest) == lora_params(TINY, 8, "all-linear") and ds_total == trainable

    # The same check at real scale (27B, r=16), with DeepSpeed's estimators for each layout.
    params, largest = lora_params(GEMMA3["gemma3-27b"], 16, "all-linear")
    for nodes, per_node in ((1, 1), (1, 4), (2, 4), (4, 8)):
        world = nodes * per_node
        for offload in (False, True):
            _, gpu = estimate_zero2_model_states_mem_needs(params, per_node, nodes, cpu_offload=offload)
            assert trainable_states_bytes(params, largest, 2, world, offload, False) == gpu
            for offload_param in ((False, True) if offload else (False,)):
                _, gpu3, _ = estimate_zero3_model_states_mem_needs(params, largest, per_node, nodes, cpu_offload=offload, cpu_offload_params=offload_param)
                assert trainable_states_bytes(params, largest, 3, world, offload, offload_param) == gpu3


def test_the_estimate_moves_the_right_way() -> None:
    cfg = load_config(CONFIGS / "pipelines" / "kazakh-sft-4b.yaml")
    base = estimate(cfg)
    assert base.total_gb == pytest.approx(base.weights_gb + base.trainable_states_gb + base.activations_gb + base.loss_gb + base.overhead_gb)
    bigger = estimate(cfg, per_device_batch_size=8)
    assert bigger.activations_gb == pytest.approx(2 * base.activations_gb) and bigger.weights_gb == base.weights_gb
    no_ckpt = estimate(load_config(CONFIGS / "pipelines" / "kazakh-sft-4b.yaml", ["train.gradient_checkpointing=false"]))
    assert no_ckpt.activations_gb > 5 * base.activations_gb
    lora16 = estimate(load_config(CONFIGS / "pipelines" / "kazakh-sft-4b.yaml", ["train.quantization=null"]))
    assert lora16.weights_gb > 2.5 * base.weights_gb  # bf16 weights vs 4 bit
    # ZeRO-3 shards the frozen 4-bit weights too; more GPUs, less per GPU.
    z3 = load_config(CONFIGS / "pipelines" / "kazakh-sft-27b.yaml")
    wider = load_config(CONFIGS / "pipelines" / "kazakh-sft-27b.yaml", ["train.distributed.nodes=4"])
    assert estimate(wider).weights_gb < estimate(z3).weights_gb


def test_largest_batch_is_the_boundary() -> None:
    """Reference: Gemma-3-4B QLoRA on one A100-40GB ran batch 4 (x6 accumulation) with gradient
    checkpointing. Its batch 12 failed on a materialised fp32 logits tensor (24 GiB at 12 x 2048
    tokens) that trl's fused LM head never builds; without checkpointing, batch 12 is far over."""
    cfg = load_config(CONFIGS / "pipelines" / "kazakh-sft-4b.yaml")
    p = plan(cfg)
    assert p.fits and p.max_batch_that_fits >= 4
    assert estimate(cfg, p.max_batch_that_fits).fits and not estimate(cfg, p.max_batch_that_fits + 1).fits
    assert estimate(cfg, 12).loss_gb < 2 < 12 * 2048 * GEMMA3["gemma3-4b"].vocab_size * 4 / 2**30
    no_ckpt = load_config(CONFIGS / "pipelines" / "kazakh-sft-4b.yaml", ["train.gradient_checkpointing=false"])
    assert not estimate(no_ckpt, 12).fits and not estimate(no_ckpt, 4).fits and plan(no_ckpt).max_batch_that_fits == 1
    tiny_gpu = load_config(CONFIGS / "pipelines" / "kazakh-sft-4b.yaml", ["train.distributed.gpu_memory_gb=2"])
    assert plan(tiny_gpu).max_batch_that_fits == 0
    assert "no batch fits" in fit_warning(tiny_gpu)
    assert fit_warning(cfg) is None


def test_validate_warns_before_submission_when_it_will_not_fit() -> None:
    result = subprocess.run(
        [KAZHPC, "validate", "configs/pipelines/kazakh-sft-4b.yaml", "train.per_device_batch_size=12", "train.gradient_checkpointing=false"],
        capture_output=True, text=True, cwd=REPO, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "400"},
    )
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if "memory plan" in line]
    assert len(warning) == 1 and "per_device_batch_size 12" in warning[0] and "exceeds" in warning[0]
    assert "per_device_batch_size 1 would" in warning[0]


def test_plan_command_prints_the_three_sizes() -> None:
    result = subprocess.run(
        [KAZHPC, "plan", "configs/pipelines/smoke.yaml", "--json"], capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    plans = json.loads(result.stdout)
    assert [p["model"] for p in plans] == ["gemma3-270m", "gemma3-4b", "gemma3-12b", "gemma3-27b"]
    by_model = {p["model"]: p for p in plans}
    assert by_model["gemma3-12b"]["zero_stage"] == 2 and by_model["gemma3-27b"]["zero_stage"] == 3
    assert by_model["gemma3-27b"]["nodes"] * by_model["gemma3-27b"]["gpus_per_node"] == 8
    assert all(p["fits"] for p in plans)
    table = subprocess.run([KAZHPC, "plan", "configs/pipelines/kazakh-sft-27b.yaml"], capture_output=True, text=True,
                           cwd=REPO, timeout=300, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert table.returncode == 0, table.stderr
    for name in ("gemma3-4b", "gemma3-12b", "gemma3-27b", "total GB", "max batch"):
        assert name in table.stdout


def test_padding_free_packing_with_eager_attention_spans_the_whole_batch() -> None:
    from kazhpc.train.planner import packing_warning

    path = CONFIGS / "pipelines" / "kazakh-sft-4b.yaml"
    padded, packed = estimate(load_config(path)), estimate(load_config(path, ["train.packing=true"]))
    assert packed.activations_gb > padded.activations_gb  # (4 x 2048)-token attention rows instead of 2048
    flash = estimate(load_config(path, ["train.packing=true", "model.attn_implementation=flash_attention_2"]))
    assert flash.activations_gb == pytest.approx(padded.activations_gb)
    assert "flattens each batch into one row of up to 8192 tokens" in packing_warning(load_config(path, ["train.packing=true"]))
    assert packing_warning(load_config(path, ["train.packing=true", "train.per_device_batch_size=1"])) is None
    assert packing_warning(load_config(path)) is None


PEAKS = json.loads((REPO / "tests" / "fixtures" / "planner" / "h200_peaks.json").read_text())


@pytest.mark.parametrize("peak", PEAKS["peaks"], ids=lambda p: f"{p['model']}-b{p['per_device_batch_size']}x{p['max_length']}"
                         f"{'-ckpt' if p['gradient_checkpointing'] else ''}{'-packed' if p['packing'] else ''}")
def test_estimate_is_above_the_measured_gpu_peak_and_close_to_it(peak: dict) -> None:
    """Peaks measured on an H200 (benchmarks/train_throughput.py --suite memory): the plan must not
    promise a fit the GPU then refuses, nor waste more than 30 % of it."""
    cfg = load_config(CONFIGS / "pipelines" / "smoke.yaml", [
        f"model={peak['model']}", "train.distributed.gpus_per_node=1", "train.distributed.deepspeed=null",
        f"train.per_device_batch_size={peak['per_device_batch_size']}", f"train.max_length={peak['max_length']}",
        f"train.gradient_checkpointing={str(peak['gradient_checkpointing']).lower()}", f"train.packing={str(peak['packing']).lower()}",
    ])
    predicted = estimate(cfg).total_gb
    assert peak["max_allocated_gb"] <= predicted <= 1.3 * peak["max_allocated_gb"], (predicted, peak)
