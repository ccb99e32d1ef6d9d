"""Preprocessing throughput: rows/s with every step on, one process vs two parallel parts.

Input: instruction-sized rows built from real Kazakh news text (KazNERD, ../shared/data/kaznerd,
CC BY 4.0): the prompt is one sentence, the answer the next three to five. Everything is on:
NFC, look-alikes, whitespace, minimum length, lang-ID (lingua), Gemma-3 chat template +
tokenization + BOS/mask checks, exact + MinHash dedup.

    .venv/bin/python benchmarks/preprocess_throughput.py [--rows 4000]

Prints a Markdown table (for docs/benchmarks.md). Both set-ups run in the same invocation, so the
ratio compares like with like; the tokenizer load (~6 s, once per process) is reported apart.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KAZNERD = REPO.parent / "shared" / "data" / "kaznerd" / "IOB2_valid.txt"


def sentences(path: Path) -> list[str]:
    out, words = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if words:
                out.append(" ".join(words).replace(" ,", ",").replace(" .", "."))
            words = []
        else:
            words.append(line.split()[0])
    return out


def build_rows(n: int, path: Path) -> Path:
    sents = sentences(KAZNERD)
    with path.open("w", encoding="utf-8") as out:
        for i in range(n):
            k = (i * 7) % (len(sents) - 6)
            answer = " ".join(sents[k + 1 : k + 2 + (i % 3) + 2])
            out.write(json.dumps({"input": sents[k], "output": answer}, ensure_ascii=False) + "\n")
    return path


def config(data: Path, runs: Path, shards: int):
    from kazhpc.config import load_config

    return load_config(
        REPO / "configs" / "pipelines" / "smoke.yaml",
        [
            f"runs_root={runs}",
            "jobs=[preprocess]",
            f"preprocess.sources=[{{name: news, kind: muri-it, path: {data}}}]",
            f"preprocess.shards={shards}",
            "preprocess.cleaning.decontamination.files=[]",
        ],
    )


def _part(args: tuple) -> dict:
    from kazhpc.partfiles import part_dir
    from kazhpc.preprocess import run_part

    cfg, out_dir, index, count = args
    run_part(cfg, out_dir, index, count)
    return json.loads((part_dir(out_dir, index, count) / "stats.json").read_text())["seconds"]


def measure(data: Path, rows: int, shards: int, work: Path) -> dict[str, float]:
    """Both set-ups run their parts in fresh spawned processes (imports and tokenizer load included)."""
    from kazhpc.preprocess import merge_parts

    cfg = config(data, work / f"runs-{shards}", shards)
    out_dir = work / f"out-{shards}"
    out_dir.mkdir(parents=True)
    started = time.time()
    with multiprocessing.get_context("spawn").Pool(shards) as pool:
        seconds = pool.map(_part, [(cfg, out_dir, i, shards) for i in range(shards)])
    parts_s = time.time() - started
    started = time.time()
    manifest = merge_parts(cfg, out_dir, shards)
    merge_s = time.time() - started
    rows_s = max(s["rows"] for s in seconds)  # the parts run side by side: the slowest one counts
    return {
        "shards": shards,
        "rows": rows,
        "kept": manifest["counts"]["records_kept"],
        "setup_s": max(s["setup"] for s in seconds),
        "rows_s": rows_s,
        "parts_s": parts_s,
        "merge_s": merge_s,
        "rows_per_s_end_to_end": rows / (parts_s + merge_s),
        "rows_per_s_processing": rows / rows_s,
        "rows_per_s_per_core": rows / rows_s / shards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    if not KAZNERD.is_file():
        sys.exit(f"{KAZNERD}: the KazNERD text is needed (../shared/data/kaznerd)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = build_rows(args.rows, work / "rows.jsonl")
        results = [measure(data, args.rows, n, work) for n in (1, 2)]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| set-up | rows | kept | start-up per process (s) | row processing (s) | merge (s) | wall, parts + merge (s) | rows/s processing | rows/s per core | rows/s end to end |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['shards']} part(s) | {r['rows']} | {r['kept']} | {r['setup_s']:.1f} | {r['rows_s']:.1f} | {r['merge_s']:.1f} | "
            f"{r['parts_s'] + r['merge_s']:.1f} | {r['rows_per_s_processing']:.0f} | {r['rows_per_s_per_core']:.0f} | "
            f"{r['rows_per_s_end_to_end']:.0f} |"
        )
    one, two = results
    print(f"row processing, 2 parts vs 1: {one['rows_s']:.1f} s / {two['rows_s']:.1f} s = {one['rows_s'] / two['rows_s']:.2f}x")
    print(f"end to end, 2 parts vs 1: {one['parts_s'] + one['merge_s']:.1f} s / {two['parts_s'] + two['merge_s']:.1f} s = "
          f"{(one['parts_s'] + one['merge_s']) / (two['parts_s'] + two['merge_s']):.2f}x")

if __name__ == "__main__":
    main()
