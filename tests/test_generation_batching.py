"""Batched greedy generation (left padding, KV cache: lm-eval's HFLM) gives the answers batch 1
gives, on every generating kind, where decoding is deterministic (float32 on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, write_yaml

pytestmark = pytest.mark.slow
FIX = REPO / "tests" / "fixtures" / "eval"


def answers(tmp: Path, model_cache: Path, batch: int) -> dict[str, list[str]]:
    from kazhpc.config import load_config
    from kazhpc.evaluation.job import run_part

    path = write_yaml(tmp / f"b{batch}.yaml", f"""
        name: batching
        jobs: [evaluate]
        model: gemma3-270m
        runs_root: {tmp / 'runs'}
        cache_dir: {model_cache}
        tracking: {{enabled: false}}
        evaluate:
          tasks:
            - {{name: ifx, kind: ifeval, max_gen_toks: 8}}
            - {{name: tools, kind: tool, max_gen_toks: 8}}
            - {{name: qa, kind: open, path: {FIX / 'open_kk.jsonl'}, max_gen_toks: 8}}
          models: [{{label: base}}]
          batch_size: {batch}
          limit: 4
          perplexity_texts: null
        """)
    cfg = load_config(path, ["model.dtype=float32"])
    folder = run_part(cfg, tmp / f"job-{batch}", 0, 1)
    return {t: [json.loads(line)["prediction"] for line in (folder / "samples" / "base" / f"{t}.jsonl").read_text().splitlines()]
            for t in ("ifx", "tools", "qa")}


def test_batch_four_answers_exactly_as_batch_one_in_float32(tmp_path: Path, model_cache: Path) -> None:
    one, four = answers(tmp_path, model_cache, 1), answers(tmp_path, model_cache, 4)
    assert {t: len(a) for t, a in one.items()} == {"ifx": 4, "tools": 4, "qa": 4}
    assert four == one
    assert any(a.strip() for a in one["ifx"]), "the model said nothing: the comparison would be empty"
