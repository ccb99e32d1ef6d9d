"""The tokenizers job: the tokenizer-tax report of the configured tokenizers, logged to MLflow."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext

REPORT_FILES = ("tokenizers.md", "tokenizers.csv", "tokenizers.json", "fertility.png")


def preflight(cfg: PipelineConfig) -> list[str]:
    from kazhpc.tokenization.offline import check_spec

    corpus = cfg.tokenizers.corpus
    if corpus is not None and not Path(corpus.path).is_file():
        raise KazhpcError(f"tokenizers.corpus.path: {corpus.path}: file not found")
    for spec in cfg.tokenizers.tokenizers:
        try:
            check_spec(spec)
        except KazhpcError as exc:
            raise KazhpcError(f"tokenizers.tokenizers: {exc}") from None
    return []


def run(ctx: JobContext) -> dict[str, Any]:
    from kazhpc.tokenization import CorpusSpec, flat_metrics, tokenizer_report
    from kazhpc.tracking.lineage import file_dataset

    section = ctx.cfg.tokenizers
    c = section.corpus
    assert c is not None  # the config refuses the job without a corpus
    results = tokenizer_report(
        section.tokenizers,
        CorpusSpec(Path(c.path), c.format, c.field, c.name, c.language, c.max_texts),
        ctx.job_dir,
        ctx.cfg.cache_root,
        section.languages,
        add_special_tokens=section.add_special_tokens,
        check_language=section.check_language,
        min_kk_share=section.min_kk_share,
    )
    ctx.tracking.log_metrics(flat_metrics(results))
    ctx.tracking.log_dataset(file_dataset(Path(c.path), "evaluation", name=c.name or Path(c.path).name))
    for name in REPORT_FILES:
        ctx.tracking.log_artifact(ctx.job_dir / name)
    return {"report": {name: str(ctx.job_dir / name) for name in REPORT_FILES}, "results": results}
