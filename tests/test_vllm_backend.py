"""``evaluate.backend: vllm``: a clear one-line error where vLLM is not installed (this machine),
and the arguments lm-eval's VLLM model gets (base folder, LoRA adapter), refused where vLLM's LoRA
cannot apply the adapter. Running it needs a GPU node with vllm; this is as far as the CPU goes."""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest

from conftest import write_yaml


def cfg_text(tmp: Path, extra: str = "") -> Path:
    return write_yaml(tmp / "v.yaml", f"""
        name: vllm
        jobs: [evaluate]
        model: gemma3-270m
        runs_root: {tmp / 'runs'}
        tracking: {{enabled: false}}
        evaluate:
          tasks: [{{name: kk_ifeval, kind: ifeval}}]
          backend: vllm
          {extra}
        """)


@pytest.mark.skipif(find_spec("vllm") is not None, reason="vllm is installed here")
def test_without_vllm_installed_preflight_says_so_in_one_line(tmp_path: Path) -> None:
    from kazhpc.config import load_config
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.job import preflight
    from kazhpc.evaluation.models import VLLM_MISSING

    with pytest.raises(KazhpcError) as caught:
        preflight(load_config(cfg_text(tmp_path, "perplexity_texts: null")))
    assert str(caught.value) == VLLM_MISSING and "\n" not in VLLM_MISSING


def test_vllm_scores_no_perplexity(tmp_path: Path) -> None:
    from kazhpc.config import load_config
    from kazhpc.errors import ConfigError

    with pytest.raises(ConfigError, match="backend: vllm scores no perplexity"):
        load_config(cfg_text(tmp_path))


def test_vllm_gets_the_base_folder_and_the_lora_adapter(tmp_path: Path) -> None:
    from kazhpc.config import ModelConfig
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.models import ModelUnderTest, vllm_args

    base = ModelConfig(name="m", source=str(tmp_path / "ckpt"))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    assert vllm_args(ModelUnderTest("base", "base", base), tmp_path) == {
        "pretrained": str(tmp_path / "ckpt"), "revision": None, "dtype": "bfloat16", "add_bos_token": True,
        "batch_size": "auto"}  # fmt: skip
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    args = vllm_args(ModelUnderTest("tuned", "adapter", base, adapter), tmp_path)
    assert args["lora_local_path"] == str(adapter) and args["max_lora_rank"] == 8
    with pytest.raises(KazhpcError, match=r"evaluate.models\[tuned\]: kind merged with backend: vllm"):
        vllm_args(ModelUnderTest("tuned", "merged", base, adapter), tmp_path)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "trainable_token_indices": {"embed_tokens": [5]}}))
    with pytest.raises(KazhpcError, match="trains embedding rows or whole modules"):
        vllm_args(ModelUnderTest("tuned", "adapter", base, adapter), tmp_path)
