"""The corpus job's datatrove stages, run with one executor each, and what they counted.

1. **filter** (``tasks`` tasks): sources → clean → language → Gopher quality → Gopher repetition →
   decontamination → MinHash signatures; the surviving documents written per task;
2. **buckets** (``minhash.buckets`` tasks): documents sharing a bucket's hashes, per bucket;
3. **clusters** (one task): duplicate pairs joined into clusters; all but one of each removed;
4. **blocks** (``tasks`` tasks): the surviving documents less the removed ones, the held-out
   split, the kept ledger, and tokenization (``<bos> text <eos>``, unshuffled, per task).

Each stage's tasks keep only their own share in memory (signatures are files; a bucket task reads
one bucket; the cluster task holds the duplicate pairs, not the corpus). Every dropped document
goes to ``rejects/<step>/`` with its reason. Because task ``r`` reads the ``r``-th contiguous range
of the inputs (kazhpc.data.corpus.sources) and the blocks are read in task order, the kept
documents and the token stream are the same whatever ``tasks`` is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from datatrove.executor import LocalPipelineExecutor

from kazhpc.config.corpus import TextCorpusConfig
from kazhpc.errors import KazhpcError

log = logging.getLogger(__name__)

STAGES = ("filter", "buckets", "clusters", "blocks")


@dataclass(frozen=True)
class CorpusLayout:
    """Where a corpus job writes, under its folder."""

    root: Path

    def __getattr__(self, name: str) -> Path:  # filtered, signatures, buckets, remove, tokens, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return self.root / name

    def rejects_of(self, step: str) -> Path:
        return self.root / "rejects" / step

    def logs_of(self, stage: str) -> Path:
        return self.root / "logs" / stage


def _writer(folder: Path) -> Any:
    from datatrove.pipeline.writers import JsonlWriter

    return JsonlWriter(str(folder), output_filename="${rank}.jsonl.gz")


def _minhash_config(cfg: TextCorpusConfig) -> Any:
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    return MinhashConfig(n_grams=cfg.minhash.ngram, num_buckets=cfg.minhash.buckets,
                         hashes_per_bucket=cfg.minhash.hashes_per_bucket)


def _quality_steps(cfg: TextCorpusConfig, out: CorpusLayout) -> list[Any]:
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    from kazhpc.data.corpus.steps import KazakhWords

    q = cfg.quality
    if not q.enabled:
        return []
    return [
        GopherQualityFilter(
            min_doc_words=q.min_doc_words, max_doc_words=q.max_doc_words,
            min_avg_word_length=q.min_avg_word_length, max_avg_word_length=q.max_avg_word_length,
            max_symbol_word_ratio=q.max_symbol_word_ratio, max_bullet_lines_ratio=None,
            max_ellipsis_lines_ratio=None, max_non_alpha_words_ratio=q.max_non_alpha_words_ratio,
            min_stop_words=q.min_stop_words, stop_words=q.stop_words,
            exclusion_writer=_writer(out.rejects_of("quality")), language=KazakhWords(),
        ),
        GopherRepetitionFilter(
            dup_line_frac=q.dup_line_frac, dup_para_frac=q.dup_para_frac, dup_line_char_frac=None,
            dup_para_char_frac=None,
            top_n_grams=((2, q.top_ngram_frac),) if q.top_ngram_frac is not None else (),
            dup_n_grams=((5, q.dup_ngram_frac),) if q.dup_ngram_frac is not None else (),
            exclusion_writer=_writer(out.rejects_of("repetition")), language=KazakhWords(),
        ),
    ]  # fmt: skip


def pipelines(cfg: TextCorpusConfig, decontamination: Any, tokenizer_dir: str, bos: tuple[str, int],
              eos: tuple[str, int], out: CorpusLayout) -> dict[str, tuple[list[Any], int]]:
    """Each stage's datatrove pipeline and its number of tasks. ``decontamination``: the
    DecontaminationConfig with every evaluation file; ``tokenizer_dir``: the target tokenizer."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.tokens import DocumentTokenizer
    from tokenizers.processors import TemplateProcessing

    from kazhpc.data.corpus.sources import CorpusSources, RankFileReader
    from kazhpc.data.corpus.steps import (
        CleanText,
        DecontaminationFilter,
        HeldoutSplit,
        KazakhWords,
        KeptLedger,
        LanguageFilter,
    )

    minhash = _minhash_config(cfg)
    dedup = cfg.minhash.enabled
    first = [
        CorpusSources(cfg.sources, rejects=_writer(out.rejects_of("read"))),
        CleanText(tokenizer_dir, cfg.special_tokens, cfg.min_chars, rejects=_writer(out.rejects_of("clean"))),
        LanguageFilter(cfg.language, cfg.languages, cfg.min_confidence, exclusion_writer=_writer(out.rejects_of("language"))),
        *_quality_steps(cfg, out),
    ]
    if decontamination.files:
        first.append(DecontaminationFilter(decontamination, exclusion_writer=_writer(out.rejects_of("contaminated"))))
    first.append(_writer(out.filtered))  # a writer passes documents on; the signature step ends the pipeline
    if dedup:
        first.append(MinhashDedupSignature(output_folder=str(out.signatures), config=minhash, language=KazakhWords()))

    tokenize = DocumentTokenizer(output_folder=str(out.tokens), tokenizer_name_or_path=str(Path(tokenizer_dir) / "tokenizer.json"),
                                 shuffle_documents=False, batch_size=1000)
    tokenize.post_processor = TemplateProcessing(single=f"{bos[0]} $A {eos[0]}", special_tokens=[bos, eos])
    last = [
        RankFileReader(str(out.filtered)),
        *([MinhashDedupFilter(input_folder=str(out.remove), exclusion_writer=_writer(out.rejects_of("near_duplicate")))] if dedup else []),
        HeldoutSplit(cfg.heldout_fraction, _writer(out.heldout)),
        KeptLedger(_writer(out.kept)),
        tokenize,
    ]
    steps = {"filter": first, "blocks": last}
    if dedup:
        steps["buckets"] = [MinhashDedupBuckets(input_folder=str(out.signatures), output_folder=str(out.buckets), config=minhash)]
        steps["clusters"] = [MinhashDedupCluster(input_folder=str(out.buckets), output_folder=str(out.remove), config=minhash)]
    return {name: (steps[name], tasks) for name, tasks in cfg.stage_tasks().items()}


class KazhpcLocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor, defined here so that its worker processes import this package
    (and with it kazhpc's quiet task logs) also for stages made only of datatrove's own steps."""


def run_stages(stages: dict[str, tuple[list[Any], int]], cfg: TextCorpusConfig, out: CorpusLayout,
               on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the stages in order (local executor; completed tasks are skipped: a job that stopped, or
    whose tasks ran as SLURM array tasks, goes on where it was); return each stage's stats, summed
    over its tasks."""
    stats: dict[str, Any] = {}
    for name, (pipeline, tasks) in stages.items():
        if on_stage:
            on_stage(name)
        workers = min(cfg.workers, tasks)
        KazhpcLocalExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(out.logs_of(name))).run()
        stats[name] = stage_stats(out, name, tasks)
    return stats


def run_task(stages: dict[str, tuple[list[Any], int]], name: str, rank: int, out: CorpusLayout) -> None:
    """Task ``rank`` of stage ``name`` alone, in this process: what one SLURM array task runs. The
    stages before it must be complete (their arrays ran first); a completed task is not redone."""
    if name not in stages:
        raise KazhpcError(f"corpus: no stage '{name}' in this config; its stages: {', '.join(stages)}")
    pipeline, tasks = stages[name]
    if not 0 <= rank < tasks:
        raise KazhpcError(f"corpus stage {name}: task {rank} does not exist; it has {tasks} tasks (0..{tasks - 1})")
    for before in list(stages)[: list(stages).index(name)]:
        left = missing_tasks(out, before, stages[before][1])
        if left:
            raise KazhpcError(f"corpus stage {name}: stage {before} has {len(left)} of {stages[before][1]} tasks not "
                              f"completed (first: {left[0]}; {out.logs_of(before) / 'completions'}); run them first")
    KazhpcLocalExecutor(pipeline, tasks=tasks, workers=1, local_tasks=1, local_rank_offset=rank,
                        logging_dir=str(out.logs_of(name))).run()


def missing_tasks(out: CorpusLayout, name: str, tasks: int) -> list[int]:
    """The tasks of stage ``name`` without datatrove's completion marker."""
    done = out.logs_of(name) / "completions"
    return [rank for rank in range(tasks) if not (done / f"{rank:05d}").is_file()]


def stage_stats(out: CorpusLayout, name: str, tasks: int) -> list[dict[str, Any]]:
    """A stage's datatrove stats summed over all its tasks, from each task's own file (the merged
    stats.json datatrove writes covers only the tasks its last run ran)."""
    from datatrove.utils.stats import PipelineStats

    left = missing_tasks(out, name, tasks)
    if left:
        raise KazhpcError(f"corpus stage {name}: {len(left)} of {tasks} tasks not completed (first: {left[0]})")
    total = PipelineStats()
    for rank in range(tasks):
        path = out.logs_of(name) / "stats" / f"{rank:05d}.json"
        total = total + PipelineStats.from_json(json.loads(path.read_text(encoding="utf-8")))
    return json.loads(total.to_json())
