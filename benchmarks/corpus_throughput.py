"""The corpus job's throughput and MinHash memory, on synthetic corpora made of KazNERD sentences.

Documents are five sentences drawn (seeded) from KazNERD (../shared/data/kaznerd, CC BY 4.0);
every 50th document is a planted near duplicate of an earlier one (one word replaced), so the
deduplication's recall can be counted.

    .venv/bin/python benchmarks/corpus_throughput.py throughput --docs 20000      # every step, 1 and 2 tasks
    .venv/bin/python benchmarks/corpus_throughput.py memory --docs 10000,100000,1000000

``throughput`` runs the job's own four stages (kazhpc.data.corpus.build: cleaning, lingua, Gopher,
MinHash, blocks with Gemma-3's tokenizer) with 1 task and with 2 tasks on 2 workers, and reports
documents/s and MB/s per core. ``memory`` runs the MinHash stages alone (sources → signatures →
buckets → clusters → filter), each stage in its own process with one worker, and reports each
stage's peak resident memory as the corpus grows (what must stay flat), and the recall of the
planted duplicates.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KAZNERD = REPO.parent / "shared" / "data" / "kaznerd"


def make_corpus(folder: Path, docs: int, files: int = 16, seed: int = 0) -> dict[str, int]:
    from kazhpc.tokenization import CorpusSpec, read_corpus

    sentences = read_corpus(CorpusSpec(KAZNERD / "IOB2_valid.txt")).texts("kk")
    sentences += read_corpus(CorpusSpec(KAZNERD / "IOB2_test.txt")).texts("kk")
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    outs = [(folder / f"part{i:03d}.jsonl").open("w", encoding="utf-8") for i in range(files)]
    texts: list[str] = []
    planted = 0
    for i in range(docs):
        if i % 50 == 49 and texts:
            words = rng.choice(texts[-2000:]).split(" ")
            words[rng.randrange(len(words))] = "өзгертілген"
            text, kind = " ".join(words), "planted"
            planted += 1
        else:
            text, kind = " ".join(rng.sample(sentences, 5)), "doc"
            texts.append(text)
        outs[i * files // docs].write(json.dumps({"id": f"{kind}-{i}", "text": text}, ensure_ascii=False) + "\n")
    for f in outs:
        f.close()
    return {"docs": docs, "planted": planted, "bytes": sum(p.stat().st_size for p in folder.glob("*.jsonl"))}


def throughput(args: argparse.Namespace) -> None:
    from kazhpc.config import DecontaminationConfig
    from kazhpc.config.corpus import TextCorpusConfig
    from kazhpc.data.corpus.build import build_corpus
    from kazhpc.models import materialize

    corpus = args.out / f"synthetic-{args.docs}"
    info = make_corpus(corpus, args.docs)
    tokenizer = Path(materialize("bundled:gemma3-270m", Path.home() / ".cache" / "kazhpc"))
    print(f"corpus: {info['docs']:,} documents, {info['bytes'] / 1e6:.1f} MB")
    print("| tasks | workers | seconds | documents/s | MB/s | MB/s per core | kept | near duplicates removed |")
    print("|---|---|---|---|---|---|---|---|")
    for tasks in (1, 2):
        section = TextCorpusConfig(sources=[{"name": "synthetic", "path": str(corpus)}], tasks=tasks, workers=tasks,
                                   blocks={"length": 1024}, heldout_fraction=0.0)
        folder = args.out / f"throughput-{args.docs}-t{tasks}"
        started = time.time()
        manifest = build_corpus(section, DecontaminationConfig(), folder, tokenizer)
        seconds = time.time() - started
        mbs = info["bytes"] / 1e6 / seconds
        print(f"| {tasks} | {tasks} | {seconds:.1f} | {info['docs'] / seconds:,.0f} | {mbs:.2f} | {mbs / tasks:.2f} | "
              f"{manifest['counts']['documents_kept']:,} | {manifest['dropped_by_reason'].get('near_duplicate', 0):,} |")


def minhash_stage(stage: str, corpus: Path, work: Path) -> None:
    """One MinHash stage, in this process (one worker): what ``memory`` measures."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.writers import JsonlWriter

    from kazhpc.config.corpus import TextSourceConfig
    from kazhpc.data.corpus.sources import CorpusSources
    from kazhpc.data.corpus.steps import KazakhWords

    config = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    source = [TextSourceConfig(name="synthetic", path=str(corpus))]
    pipelines = {
        "signatures": ([CorpusSources(source), MinhashDedupSignature(str(work / "sigs"), config=config, language=KazakhWords())], 1),
        "buckets": ([MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)], config.num_buckets),
        "clusters": ([MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)], 1),
        "filter": ([CorpusSources(source), MinhashDedupFilter(str(work / "remove"),
                                                              exclusion_writer=JsonlWriter(str(work / "removed")))], 1),
    }
    steps, tasks = pipelines[stage]
    LocalPipelineExecutor(steps, tasks=tasks, workers=1, logging_dir=str(work / "logs" / stage)).run()


def memory(args: argparse.Namespace) -> None:
    import gzip

    print("| documents | MB | signatures MB | buckets MB | clusters MB | filter MB | planted | removed planted | recall | other removed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for docs in [int(d) for d in args.docs.split(",")]:
        corpus = args.out / f"synthetic-{docs}"
        info = make_corpus(corpus, docs)
        work = args.out / f"memory-{docs}"
        peaks = []
        for stage in ("signatures", "buckets", "clusters", "filter"):
            child = subprocess.run([sys.executable, __file__, "_stage", stage, str(corpus), str(work)], cwd=REPO,
                                   capture_output=True, text=True)
            if child.returncode:
                print(child.stderr[-3000:], file=sys.stderr)
                raise SystemExit(child.returncode)
            peaks.append(float(child.stdout.strip().splitlines()[-1]))  # the stage's own peak, MB
        rows = {p.name: [json.loads(line)["id"] for line in p.open(encoding="utf-8")] for p in corpus.glob("*.jsonl")}
        removed = set()
        for path in (work / "removed").glob("*.jsonl.gz"):
            with gzip.open(path, "rt", encoding="utf-8") as f:
                for line in f:
                    _, name, position = json.loads(line)["id"].rsplit("/", 2)  # source/file/position
                    removed.add(rows[name][int(position)])
        planted = {i for ids in rows.values() for i in ids if i.startswith("planted-")}
        caught = len(planted & removed)
        print(f"| {docs:,} | {info['bytes'] / 1e6:.0f} | " + " | ".join(f"{p:.0f}" for p in peaks)
              + f" | {len(planted):,} | {caught:,} | {caught / max(len(planted), 1):.3f} | {len(removed - planted):,} |")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_stage":
        minhash_stage(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report the
        # parent's peak at fork time (the benchmark builds the corpus in memory).
        status = Path("/proc/self/status").read_text()
        print(int(status.split("VmHWM:")[1].split()[0]) / 1024)  # kB → MB
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["throughput", "memory"])
    parser.add_argument("--docs", default="20000")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-corpus")
    args = parser.parse_args()
    if not (KAZNERD / "IOB2_valid.txt").is_file():
        print(f"KazNERD not found in {KAZNERD}", file=sys.stderr)
        return 2
    if args.mode == "throughput":
        args.docs = int(args.docs)
        throughput(args)
    else:
        memory(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
