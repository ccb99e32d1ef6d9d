"""One call for the whole corpus: datatrove's stages (kazhpc.data.corpus.flow), then the manifest
and table (kazhpc.data.corpus.report)."""

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
    from transformers import AutoTokenizer

    from kazhpc.data.corpus.flow import CorpusLayout, pipelines, run_stages
    from kazhpc.data.corpus.report import corpus_manifest, corpus_table

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    out = CorpusLayout(Path(out_dir))
    bos, eos = (tokenizer.bos_token, tokenizer.bos_token_id), (tokenizer.eos_token, tokenizer.eos_token_id)
    stages = pipelines(cfg, decontamination, str(tokenizer_dir), bos, eos, out)
    stats = run_stages(stages, cfg, out, on_stage=lambda name: log.info("corpus: datatrove stage %s", name))
    manifest = corpus_manifest(cfg, out, stats, str(tokenizer_dir), len(tokenizer))
    (out.root / "corpus.md").write_text(corpus_table(manifest), encoding="utf-8")
    return manifest
