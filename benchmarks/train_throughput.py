"""Training throughput and memory: tokens/s and peak memory of Gemma-3, QLoRA vs LoRA, packing vs
padding, gradient checkpointing on vs off; on a GPU also the memory planner's prediction beside the
measured peak.

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

On a GPU (peak = torch.cuda.max_memory_allocated, the quantity the planner estimates):

    python benchmarks/random_gemma3.py gemma3-4b /tmp/g4b        # the hub's shapes, random weights
    python benchmarks/train_throughput.py --suite memory --model gemma3-4b --source /tmp/g4b

runs the model file's configuration (configs/models/) on rows that fill max_length, at the
reference's batch and around it, and prints measured peak vs `kazhpc plan`'s estimate.
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

from preprocess_throughput import KAZNERD, sentences  # the sibling benchmark's KazNERD reader

from kazhpc.config import default_cache_root

REPO = Path(__file__).resolve().parent.parent
WARMUP_STEPS = 2

VARIANTS: dict[str, list[str]] = {
    "QLoRA, padding (baseline)": [],
    "QLoRA, packing (4 rows flattened into one)": ["train.packing=true"],
    "QLoRA, packing, batch 1 x 4*max_length": ["train.packing=true", "train.per_device_batch_size=1", "MAXLEN4"],
    "QLoRA, padding, gradient checkpointing": ["train.gradient_checkpointing=true"],
    "LoRA fp32 (no 4-bit), padding": ["train.quantization=null", "model.dtype=float32"],
}
#: On a GPU only (one rank, NCCL): QLoRA under ZeRO-3, the 27B layout, checked for a non-empty adapter.
ZERO3 = "QLoRA, padding, ZeRO-3 (1 rank, quant storage bf16)"
GPU_VARIANTS = {ZERO3: ["train.distributed.deepspeed=zero3", "train.quantization.quant_storage=bfloat16"]}


#: --suite memory: (label, overrides) on the model file's own train: block; rows fill max_length.
MEMORY_POINTS: dict[str, list[str]] = {
    "batch 4, checkpointing": ["train.per_device_batch_size=4", "train.gradient_checkpointing=true"],
    "batch 8, checkpointing": ["train.per_device_batch_size=8", "train.gradient_checkpointing=true"],
    "batch 2, no checkpointing": ["train.per_device_batch_size=2", "train.gradient_checkpointing=false"],
    "batch 4, no checkpointing": ["train.per_device_batch_size=4", "train.gradient_checkpointing=false"],
}


def conversations(rows: int, text: Path = KAZNERD, answer_sentences: int = 0) -> list[list[dict[str, str]]]:
    """Varied answers of 1-4 sentences, or of ``answer_sentences`` (long enough to fill max_length)."""
    if text.is_file():
        sents = sentences(text)
    else:  # the fixtures: fewer distinct rows, same shape
        sents = [json.loads(line)["output"] for line in (REPO / "tests" / "fixtures" / "data" / "muri_kk.jsonl").read_text().splitlines()]
    if len(sents) < 7 + answer_sentences:
        raise SystemExit(f"{text}: {len(sents)} sentences, too few for answers of {answer_sentences}")
    chats = []
    for i in range(rows):
        k = (i * 7) % (len(sents) - 6 - answer_sentences)
        answer = " ".join(sents[k + 1 : k + 1 + (answer_sentences or 1 + i % 4)])
        chats.append([{"role": "user", "content": sents[k]}, {"role": "assistant", "content": answer}])
    return chats


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """One variant in this process; returns tokens/s and peak memory (and, for --suite memory, the plan)."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTTrainer

    from kazhpc.config import load_config
    from kazhpc.models import load_tokenizer
    from kazhpc.train.distributed import check_adapter
    from kazhpc.train.planner import estimate
    from kazhpc.train.qlora import load_for_training, lora_config, sft_config

    torch.manual_seed(0)
    out = Path(tempfile.mkdtemp(prefix="kazhpc-bench-"))
    memory = args.suite == "memory"
    overrides = (MEMORY_POINTS if memory else {**VARIANTS, **GPU_VARIANTS})[name]
    # One GPU and the baseline's settings, whatever layout the model file has (accumulation changes
    # neither the peak nor tokens/s); each variant's own overrides come last and win.
    baseline = ["train.distributed.nodes=1", "train.distributed.gpus_per_node=1", "train.distributed.deepspeed=null",
                "train.gradient_accumulation_steps=1", "train.gradient_checkpointing=false", "train.packing=false"]
    overrides = [*baseline, *overrides]
    model = [f"model={args.model}"] if args.model else []
    source = [f"model.source={args.source}"] if args.source else []
    cfg = load_config(
        REPO / "configs" / "pipelines" / "smoke.yaml",
        [*model, *source, f"cache_dir={args.cache}", f"runs_root={out}", f"train.max_steps={args.steps}", "train.save_steps=100000",
         f"train.max_length={args.max_length}", "train.per_device_batch_size=4", "train.distributed.gpu_memory_gb=1000",
         *[f"train.max_length={4 * args.max_length}" if o == "MAXLEN4" else o for o in overrides]],
    )
    tokenizer = load_tokenizer(cfg.model, cfg.cache_root)
    times: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "num_tokens" in logs:
                times.append((time.perf_counter(), float(logs["num_tokens"])))

    sft_args = sft_config(cfg, out / "ckpt")  # first: under ZeRO-3 it makes from_pretrained shard the model
    trainer = SFTTrainer(
        model=load_for_training(cfg),
        args=sft_args,
        train_dataset=Dataset.from_dict({"messages": conversations(args.rows, args.text, 80 if memory else 0)}),
        processing_class=tokenizer,
        peft_config=lora_config(cfg),
        callbacks=[Clock()],
    )
    trainer.train()
    (t0, n0), (t1, n1) = times[WARMUP_STEPS - 1], times[-1]
    result = {
        "variant": name,
        "tokens_per_s": (n1 - n0) / (t1 - t0),
        "s_per_step": (t1 - t0) / (len(times) - WARMUP_STEPS),
        "tokens_per_step": (n1 - n0) / (len(times) - WARMUP_STEPS),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if torch.cuda.is_available():
        result["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        result["gpu"] = torch.cuda.get_device_name()
    else:  # a CPU run of --suite memory only checks the code path: RSS is no GPU peak
        result["peak_gpu_gb"] = result["peak_reserved_gb"] = result["peak_rss_gb"]
    if cfg.train.distributed.deepspeed:  # the known ZeRO-3 failure: an adapter saved empty
        trainer.save_model(str(out / "adapter"))
        result["adapter"] = check_adapter(out / "adapter")
    if memory:
        result["plan"] = estimate(cfg).as_dict()
    return result


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _subprocess_env(name: str) -> dict[str, str]:
    env = dict(os.environ)
    if name in GPU_VARIANTS:  # one rank, no launcher: DeepSpeed reads its rendezvous from the environment
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    return env


def print_throughput(results: list[dict], args: argparse.Namespace, started: float) -> None:
    base = results[0]
    load = os.getloadavg()
    gpu = base.get("gpu")
    where = gpu or f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} at the end"
    model = args.model or "gemma3-270m"
    weights = "random weights of its shapes (benchmarks/random_gemma3.py)" if args.source else "bundled"
    print(f"{model} ({weights}); smoke config (batch 4, max_length {args.max_length}, LoRA r=8 all-linear, one device), {args.steps} steps "
          f"({WARMUP_STEPS} warm-up), {args.rows} KazNERD conversations; {where}; {time.time() - started:.0f} s in all.\n")
    key, label = ("peak_gpu_gb", "peak GPU GB (max allocated)") if gpu else ("peak_rss_gb", "peak RSS GB")
    print(f"| variant | real tokens/s | vs baseline | s/step | tokens/step | {label} | vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['variant']} | failed: {r['error']} | | | | | |")
            continue
        print(f"| {r['variant']} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['s_per_step']:.2f} | "
              f"{r['tokens_per_step']:.0f} | {r[key]:.2f} | {r[key] / base[key]:.2f}x |")
    for r in results:
        if "adapter" in r:
            print(f"\n{r['variant']}: the adapter saved after training passes the job's check: {r['adapter']}.")


def print_memory(results: list[dict], args: argparse.Namespace, started: float) -> None:
    ok = [r for r in results if "error" not in r]
    gpu = ok[0].get("gpu", "CPU (peak RSS, not comparable)") if ok else "?"
    print(f"{args.model} ({'random weights of its shapes' if args.source else 'real weights'}), its model file's QLoRA setup "
          f"(NF4, double quant, bf16 compute, eager attention), max_length {args.max_length}, rows filling it; {gpu}; "
          f"{args.steps} steps; {time.time() - started:.0f} s in all.\n")
    print("| setup | planner: weights + LoRA states + activations + loss + overhead | planner total GB | measured peak GB "
          "(max allocated) | measured / planner | reserved GB | tokens/step | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['variant']} | | | failed: {r['error']} | | | | |")
            continue
        p = r["plan"]
        parts = " + ".join(f"{p[k]:.1f}" for k in ("weights_gb", "trainable_states_gb", "activations_gb", "loss_gb", "overhead_gb"))
        print(f"| {r['variant']} | {parts} | {p['total_gb']:.1f} | {r['peak_gpu_gb']:.1f} | {r['peak_gpu_gb'] / p['total_gb']:.2f} | "
              f"{r['peak_reserved_gb']:.1f} | {r['tokens_per_step']:.0f} | {r['tokens_per_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("throughput", "memory"), default="throughput")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--model", help="a configs/models/ name (default: the smoke pipeline's, gemma3-270m)")
    parser.add_argument("--source", help="a checkpoint directory for that model (e.g. from benchmarks/random_gemma3.py)")
    parser.add_argument("--text", type=Path, default=KAZNERD, help="KazNERD IOB2 file the conversations come from")
    parser.add_argument("--only", help="comma-separated indices of the variants to run (default: all)")
    parser.add_argument("--cache", default=str(default_cache_root()))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args)))
        return

    started = time.time()
    names = list(MEMORY_POINTS if args.suite == "memory" else VARIANTS)
    if args.suite == "throughput" and _cuda():
        names += list(GPU_VARIANTS)
    if args.only:
        names = [names[int(i)] for i in args.only.split(",")]
    passed = sys.argv[1:]
    results = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, *passed, "--variant", name], capture_output=True, text=True,
                              cwd=REPO, env=_subprocess_env(name))
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            error = "out of memory" if "OutOfMemoryError" in proc.stderr else f"exit {proc.returncode}"
            print(f"{name}: failed ({error})\n{proc.stderr[-3000:]}", file=sys.stderr)
            if not results and args.suite == "throughput":
                sys.exit("the baseline failed: no ratios to report")
            results.append({"variant": name, "error": error})
            continue
        results.append(json.loads(line[-1][len("RESULT "):]))
        print(f"done: {name}", file=sys.stderr)
    (print_memory if args.suite == "memory" else print_throughput)(results, args, started)


if __name__ == "__main__":
    main()
