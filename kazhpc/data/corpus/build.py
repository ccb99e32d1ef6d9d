"""One call for the whole corpus: datatrove's stages (kazhpc.data.corpus.flow), then the manifest
and table (kazhpc.data.corpus.report); and one call for one task of one stage (a SLURM array task),
after which the whole call finds that task done."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kazhpc.config.corpus import TextCorpusConfig
    from kazhpc.config.preprocess import DecontaminationConfig

log = logging.getLogger(__name__)


def build_corpus(cfg: TextCorpusConfig, decontamination: DecontaminationConfig, out_dir: Path,
                 tokenizer_dir: Path) -> dict[str, Any]:
    """Process ``cfg.sources`` into ``out_dir`` with the tokenizer saved in ``tokenizer_dir``
    (its ``tokenizer.json``; documents become ``bos text eos``); write ``corpus.md``; return the
    manifest. ``decontamination`` holds every evaluation file to check against."""
    from kazhpc.data.corpus.flow import CorpusLayout, run_stages
    from kazhpc.data.corpus.report import corpus_manifest, corpus_table

    out = CorpusLayout(Path(out_dir))
    stages, vocab = _stages(cfg, decontamination, out, tokenizer_dir)
    stats = run_stages(stages, cfg, out, on_stage=lambda name: log.info("corpus: datatrove stage %s", name))
    manifest = corpus_manifest(cfg, out, stats, str(tokenizer_dir), vocab)
    (out.root / "corpus.md").write_text(corpus_table(manifest), encoding="utf-8")
    return manifest


def run_corpus_task(cfg: TextCorpusConfig, decontamination: DecontaminationConfig, out_dir: Path, tokenizer_dir: Path,
                    stage: str, rank: int) -> None:
    """Task ``rank`` of datatrove stage ``stage`` (kazhpc.config.corpus.TextCorpusConfig.stage_tasks),
    with the same arguments as build_corpus."""
    from kazhpc.data.corpus.flow import CorpusLayout, run_task

    out = CorpusLayout(Path(out_dir))
    stages, _ = _stages(cfg, decontamination, out, tokenizer_dir)
    log.info("corpus: datatrove stage %s, task %d of %d", stage, rank, stages[stage][1] if stage in stages else 0)
    run_task(stages, stage, rank, out)


def _stages(cfg: TextCorpusConfig, decontamination: DecontaminationConfig, out: Any, tokenizer_dir: Path) -> tuple[dict[str, Any], int]:
    """The datatrove pipelines, and the tokenizer's size (added tokens included). The tokenizer is
    read with the ``tokenizers`` library (a third of the time transformers takes: every array task
    reads it) and its <bos>/<eos> from the tokenizer_config.json that save_pretrained wrote."""
    import json

    from tokenizers import Tokenizer

    from kazhpc.data.corpus.flow import pipelines
    from kazhpc.errors import KazhpcError

    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    config = json.loads((Path(tokenizer_dir) / "tokenizer_config.json").read_text(encoding="utf-8"))
    special = []
    for key in ("bos_token", "eos_token"):
        token = config.get(key)
        token = token.get("content") if isinstance(token, dict) else token
        if not isinstance(token, str) or tokenizer.token_to_id(token) is None:
            raise KazhpcError(f"{tokenizer_dir}: the tokenizer has no {key} to put around each document")
        special.append((token, tokenizer.token_to_id(token)))
    bos, eos = special
    return pipelines(cfg, decontamination, str(tokenizer_dir), bos, eos, out), tokenizer.get_vocab_size(with_added_tokens=True)
