"""Batched greedy generation in the evaluate job: batch 1 against batch B on each generating kind.

Same model (the bundled Gemma-3-270M), same documents, same tokens at most, in one invocation:
each generating kind (``ifeval``, ``open``, ``tool``, ``translation``) is evaluated by the evaluate
job's own shard code (``run_part``) at ``evaluate.batch_size`` 1 and B. lm-eval's HFLM batches
generation with left padding and the KV cache. The per-document answers are compared: in float32
on the CPU decoding is deterministic, so batching should change the speed only, and the table
says whether every answer was identical. Time per 100 items excludes the model load (timed once
apart) and counts one model.

    .venv/bin/python benchmarks/generation_batching.py [--limit 24] [--batch 8] [--max-gen-toks 32]

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests" / "fixtures" / "eval"
KINDS = {
    "ifeval": "{name: t, kind: ifeval, max_gen_toks: N}",
    "tool": "{name: t, kind: tool, max_gen_toks: N}",
    "open": f"{{name: t, kind: open, path: {FIX / 'open_kk.jsonl'}, max_gen_toks: N}}",
    "translation": f"{{name: t, kind: translation, path: {FIX / 'kk_en.jsonl'}, max_gen_toks: N}}",
}


def config(tmp: Path, kind: str, batch: int, limit: int, tokens: int, dtype: str) -> object:
    from kazhpc.config import load_config

    path = tmp / f"{kind}-{batch}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: bench
        jobs: [evaluate]
        model: gemma3-270m
        runs_root: {tmp / 'runs'}
        tracking: {{enabled: false}}
        evaluate:
          tasks: [{KINDS[kind].replace('N', str(tokens))}]
          models: [{{label: base}}]
          batch_size: {batch}
          limit: {limit}
          perplexity_texts: null
        """))
    return load_config(path, [f"model.dtype={dtype}"])


def run(cfg: object, job_dir: Path) -> tuple[float, list[str]]:
    from kazhpc.evaluation.job import run_part

    started = time.perf_counter()
    run_part(cfg, job_dir, 0, 1)
    seconds = time.perf_counter() - started
    rows = [json.loads(line) for line in (job_dir / "parts" / "00000-of-00001" / "samples" / "base" / "t.jsonl").read_text().splitlines()]
    return seconds, [r["prediction"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=24, help="documents per kind (the fixtures have fewer for open)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-gen-toks", type=int, default=32)
    parser.add_argument("--dtype", default="float32", help="float32: deterministic on the CPU")
    args = parser.parse_args()
    import torch

    from kazhpc.evaluation.job import models_under_test
    from kazhpc.evaluation.models import load_for_eval

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        probe = config(tmp, "ifeval", 1, 1, 1, args.dtype)
        load_for_eval(models_under_test(probe, None)[0], probe.cache_root)  # warm caches, then time a load
        started = time.perf_counter()
        load_for_eval(models_under_test(probe, None)[0], probe.cache_root)
        load = time.perf_counter() - started
        for kind in KINDS:
            one, answers_one = run(config(tmp, kind, 1, args.limit, args.max_gen_toks, args.dtype), tmp / f"{kind}-1")
            many, answers_many = run(config(tmp, kind, args.batch, args.limit, args.max_gen_toks, args.dtype), tmp / f"{kind}-b")
            n = len(answers_one)
            same = sum(a == b for a, b in zip(answers_one, answers_many))
            per100 = [100 * max(t - load, 0.0) / n for t in (one, many)]
            rows.append(f"| {kind} | {n} | {per100[0]:.1f} | {per100[1]:.1f} | {per100[0] / per100[1]:.2f}× | {same}/{n} |")
    print(f"Gemma-3-270M {args.dtype}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}; at most {args.max_gen_toks} new tokens; model load {load:.1f} s (not counted)\n")
    print(f"| kind | items | s / 100 items, batch 1 | s / 100 items, batch {args.batch} | speed-up | identical answers |")
    print("|---|--:|--:|--:|--:|--:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
