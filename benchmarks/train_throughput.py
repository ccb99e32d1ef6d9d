"""Training throughput on CPU: tokens/s and peak memory of the real Gemma-3-270M, QLoRA vs LoRA,
packing vs padding, gradient checkpointing on vs off.

Input: Kazakh conversations built from real news text (KazNERD, ../shared/data/kaznerd, CC BY 4.0):
the user turn is one sentence, the answer the next one to four (varied lengths, so padding costs
something); without KazNERD, the repository's small fixtures. Each variant is the train job's own
setup (kazhpc.train.qlora: sft_config, lora_config, load_for_training from configs/pipelines/smoke.yaml
plus overrides), run for a few optimizer steps in a fresh process (so that peak RSS is its own).

    .venv/bin/python benchmarks/train_throughput.py [--steps 6] [--rows 256] [--max-length 256]

Prints a Markdown table for docs/benchmarks.md: every figure is also a ratio against the baseline
(QLoRA, padded batches, no gradient checkpointing) measured in the same invocation. The first two
steps are warm-up and not timed. "tokens" are real tokens (padding excluded), so packing's gain is
real work per second, not padding per second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KAZNERD = REPO.parent / "shared" / "data" / "kaznerd" / "IOB2_valid.txt"
WARMUP_STEPS = 2

VARIANTS: dict[str, list[str]] = {
    "QLoRA, padding (baseline)": [],
    "QLoRA, packing (4 rows flattened into one)": ["train.packing=true"],
    "QLoRA, packing, batch 1 x 4*max_length": ["train.packing=true", "train.per_device_batch_size=1", "MAXLEN4"],
    "QLoRA, padding, gradient checkpointing": ["train.gradient_checkpointing=true"],
    "LoRA fp32 (no 4-bit), padding": ["train.quantization=null", "model.dtype=float32"],
}


def conversations(rows: int) -> list[list[dict[str, str]]]:
    if KAZNERD.is_file():
        sents, words = [], []
        for line in KAZNERD.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                if words:
                    sents.append(" ".join(words).replace(" ,", ",").replace(" .", "."))
                words = []
            else:
                words.append(line.split()[0])
    else:  # the fixtures: fewer distinct rows, same shape
        sents = [json.loads(line)["output"] for line in (REPO / "tests" / "fixtures" / "data" / "muri_kk.jsonl").read_text().splitlines()]
    chats = []
    for i in range(rows):
        k = (i * 7) % (len(sents) - 6)
        answer = " ".join(sents[k + 1 : k + 2 + i % 4])
        chats.append([{"role": "user", "content": sents[k]}, {"role": "assistant", "content": answer}])
    return chats


def run_variant(name: str, steps: int, rows: int, cache: str, max_length: int) -> dict:
    """One variant in this process; returns tokens/s and peak memory."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from kazhpc.config import load_config
    from kazhpc.models import load_tokenizer
    from kazhpc.train.qlora import load_for_training, lora_config, sft_config

    torch.manual_seed(0)
    out = Path(tempfile.mkdtemp(prefix="kazhpc-bench-"))
    cfg = load_config(
        REPO / "configs" / "pipelines" / "smoke.yaml",
        [f"cache_dir={cache}", f"runs_root={out}", f"train.max_steps={steps}", "train.save_steps=100000",
         f"train.max_length={max_length}", "train.per_device_batch_size=4",
         *[f"train.max_length={4 * max_length}" if o == "MAXLEN4" else o for o in VARIANTS[name]]],
    )
    tokenizer = load_tokenizer(cfg.model, cfg.cache_root)
    times: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                times.append((time.perf_counter(), float(logs["num_tokens"])))

    trainer = SFTTrainer(
        model=load_for_training(cfg),
        args=sft_config(cfg, out / "ckpt"),
        train_dataset=Dataset.from_dict({"messages": conversations(rows)}),
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        callbacks=[Clock()],
    )
    trainer.train()
    (t0, n0), (t1, n1) = times[WARMUP_STEPS - 1], times[-1]
    return {
        "variant": name,
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "s_per_step": (t1 - t0) / (len(times) - WARMUP_STEPS),
        "tokens_per_step": (n1 - n0) / (len(times) - WARMUP_STEPS),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--cache", default=os.environ.get("KAZHPC_CACHE", str(Path.home() / ".cache" / "kazhpc")))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args.steps, args.rows, args.cache, args.max_length)))
        return

    started = time.time()
    results = []
    for name in VARIANTS:
        proc = subprocess.run(
            [sys.executable, __file__, "--variant", name, "--steps", str(args.steps), "--rows", str(args.rows),
             "--cache", args.cache, "--max-length", str(args.max_length)],
            capture_output=True, text=True, cwd=REPO,
        )
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            sys.exit(f"{name}: failed\n{proc.stderr[-3000:]}")
        results.append(json.loads(line[-1][len("RESULT "):]))
        print(f"done: {name}", file=sys.stderr)
    base = results[0]
    load = os.getloadavg()
    print(f"Gemma-3-270M (bundled), smoke config (batch 4, max_length {args.max_length}, LoRA r=8 all-linear), {args.steps} steps "
          f"({WARMUP_STEPS} warm-up), {args.rows} KazNERD conversations; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load[0]:.1f} at the end; {time.time() - started:.0f} s in all.\n")
    print("| variant | real tokens/s | vs baseline | s/step | tokens/step | peak RSS GB | vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['s_per_step']:.2f} | "
              f"{r['tokens_per_step']:.0f} | {r['peak_rss_gb']:.2f} | {r['peak_rss_gb'] / base['peak_rss_gb']:.2f}x |")


if __name__ == "__main__":
    main()
