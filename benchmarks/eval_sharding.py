"""Evaluation wall time: 1 shard vs 2 shards as a SLURM array, and kazhpc vs the lm_eval CLI.

Same task, same model (the bundled Gemma-3-270M, bf16 on the CPU), same documents in every set-up:
the leaderboard-protocol task ``kk_dastur_mc`` on the fixture rows repeated (and numbered) to ``--docs`` items.

* **kazhpc, 1 shard vs 2 shards**: ``kazhpc init`` a run, submit the shards as one array
  (``sbatch --array``: each array task runs ``kazhpc evaluate --run-dir R --shard i/n`` with 1 CPU),
  wait, then ``kazhpc evaluate --run-dir R`` merges. Wall time from submission to merged results.
* **overhead**: ``kazhpc evaluate CONFIG`` (1 shard, in-process) against ``lm_eval`` on the same
  task YAML (``--include_path``, the same local rows) with the same batch size and 1 thread.

    source ~/.cache/kazhpc/slurm/env.sh   # the local SLURM (bash slurm/local-cluster.sh start)
    .venv/bin/python benchmarks/eval_sharding.py [--docs 96]

Prints a Markdown table for docs/benchmarks.md; all set-ups run in one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FIXTURE = REPO / "tests" / "fixtures" / "eval" / "dastur_mc.jsonl"
TASK_YAML = REPO / "kazhpc" / "evaluation" / "tasks" / "kk_dastur_mc.yaml"


def rows(docs: int, out: Path) -> Path:
    """The fixture's rows repeated to ``docs``, each question numbered: lm-eval scores identical
    contexts once, so plain repeats would measure start-up only, whatever ``docs`` is."""
    lines = [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]
    numbered = [{**lines[i % len(lines)], "Question": f"{i + 1}. {lines[i % len(lines)]['Question']}"} for i in range(docs)]
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in numbered), encoding="utf-8")
    return out


def config(tmp: Path, data: Path, shards: int) -> Path:
    path = tmp / f"bench-{shards}.yaml"
    path.write_text(textwrap.dedent(f"""
        name: bench
        jobs: [evaluate]
        model: gemma3-270m
        runs_root: {tmp / 'runs'}
        tracking: {{enabled: false}}
        evaluate:
          tasks: [kk_dastur_mc]
          data_overrides: {{kk_dastur_mc: {data}}}
          models: [{{label: base}}]
          batch_size: 4
          perplexity_texts: null
          shards: {shards}
        """), encoding="utf-8")
    return path


def env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run(cmd: list[str], threads: int) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=REPO, env=env(threads), capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def wait_for(job_id: str, poll_s: float = 0.5) -> None:
    """Until the (array) job leaves the queue. Not `sbatch --wait`: its polling interval grows to
    tens of seconds, which measured 30 s of waiting after both array tasks had finished."""
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip():
        time.sleep(poll_s)


def slurm_shards(tmp: Path, data: Path, shards: int) -> tuple[float, float]:
    """Submission to merged results.json, the shards as one SLURM array (1 CPU each)."""
    cfg = config(tmp, data, shards)
    run_dir = subprocess.run([str(BIN / "kazhpc"), "init", str(cfg)], cwd=REPO, env=env(1),
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    started = time.perf_counter()
    wrap = f"cd {REPO} && {BIN / 'kazhpc'} evaluate --run-dir {run_dir} --shard $SLURM_ARRAY_TASK_ID/{shards}"
    job = subprocess.run(
        ["sbatch", "--parsable", f"--array=0-{shards - 1}", "--cpus-per-task=1", "--mem=6G",
         f"--output={tmp}/slurm-%A_%a.out", "--export=ALL,OMP_NUM_THREADS=1,MKL_NUM_THREADS=1", "--wrap", wrap],
        cwd=REPO, env=env(1), capture_output=True, text=True,
    )
    if job.returncode != 0:
        raise SystemExit(f"sbatch failed: {job.stderr}")
    wait_for(job.stdout.strip().split(";")[0])
    run([str(BIN / "kazhpc"), "evaluate", "--run-dir", run_dir], threads=1)
    seconds = time.perf_counter() - started
    results = json.loads((Path(run_dir) / "evaluate" / "results.json").read_text())
    return seconds, results["models"]["base"]["tasks"]["kk_dastur_mc"]["score"]


def lm_eval_cli(tmp: Path, data: Path) -> float:
    include = tmp / "lm_eval_tasks"
    include.mkdir(exist_ok=True)
    (include / "kk_dastur_mc_local.yaml").write_text(textwrap.dedent(f"""
        include: {TASK_YAML}
        task: kk_dastur_mc_local
        dataset_path: json
        dataset_kwargs: {{data_files: {{test: {data}}}}}
        """), encoding="utf-8")
    from kazhpc.config import default_cache_root
    from kazhpc.models import bundled_checkpoint_dir

    model_dir = bundled_checkpoint_dir("gemma3-270m", default_cache_root())
    return run([str(BIN / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={model_dir},dtype=bfloat16,attn_implementation=eager",
                "--tasks", "kk_dastur_mc_local", "--include_path", str(include), "--device", "cpu",
                "--batch_size", "4", "--output_path", str(tmp / "lm_eval_out")], threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kazhpc-eval-bench-") as name:
        tmp = Path(name)
        data = rows(args.docs, tmp / "dastur.jsonl")
        one, score1 = slurm_shards(tmp, data, 1)
        two, score2 = slurm_shards(tmp, data, 2)
        assert score1 == score2, (score1, score2)
        cli = lm_eval_cli(tmp, data)
        ours = run([str(BIN / "kazhpc"), "evaluate", str(config(tmp, data, 1))], threads=1)
    print(f"{args.docs} documents of kk_dastur_mc (4 options), Gemma-3-270M bf16, CPU "
          f"({os.cpu_count()} cores, {platform.processor() or platform.machine()}), batch 4\n")
    print("| set-up | wall s | ratio |")
    print("|---|---:|---:|")
    print(f"| kazhpc, 1 shard (SLURM array of 1, 1 CPU) | {one:.1f} | 1.00 |")
    print(f"| kazhpc, 2 shards (SLURM array of 2, 1 CPU each) + merge | {two:.1f} | {one / two:.2f}x faster |")
    print(f"| lm_eval CLI, same task and rows, 1 thread | {cli:.1f} | 1.00 |")
    print(f"| kazhpc evaluate, 1 shard in-process, 1 thread | {ours:.1f} | {ours / cli - 1:+.1%} overhead |")


if __name__ == "__main__":
    main()
