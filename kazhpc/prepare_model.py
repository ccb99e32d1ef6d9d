"""The prepare-model job: make the model available, prove its formatting, and score it.

It runs first so that every later job (and every GPU hour) starts from a model that loads, a
chat template that puts exactly one <bos> and masks the loss onto the answers, and a baseline
perplexity on Kazakh text to compare adapters against.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from kazhpc.evaluation.perplexity import read_passages
from kazhpc.models import (
    chat_template_text,
    load_model,
    load_tokenizer,
    materialize,
    parse_source,
    verify_chat_template,
)

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext

log = logging.getLogger(__name__)
def preflight(cfg: PipelineConfig) -> list[str]:
    source = parse_source(cfg.model.source)
    chat_template_text(cfg.model.chat_template)
    read_passages(cfg.prepare_model.perplexity_texts, "prepare_model.perplexity_texts")
    warnings = []
    if source.kind == "hub" and os.environ.get("HF_HUB_OFFLINE") != "1":
        warnings.append(f"'{source}' will be fetched from the hub unless it is in HF_HOME's cache")
    return warnings


def run(ctx: JobContext) -> dict[str, Any]:
    cfg = ctx.cfg
    started = time.time()
    location = materialize(cfg.model.source, cfg.cache_root)
    materialize_s = time.time() - started
    log.info("model %s at %s (%.1f s)", cfg.model.source, location, materialize_s)

    tokenizer = load_tokenizer(cfg.model, cfg.cache_root)
    probe = verify_chat_template(tokenizer)
    log.info("chat template: one <bos>, assistant mask covers the answers (%s)", probe)

    load_started = time.time()
    model = load_model(cfg.model, cfg.cache_root)
    load_s = time.time() - load_started

    from kazhpc.evaluation.perplexity import passages_file, score_texts
    from kazhpc.tracking.lineage import file_dataset

    texts, texts_sha = read_passages(cfg.prepare_model.perplexity_texts, "prepare_model.perplexity_texts")
    score_started = time.time()
    result = score_texts(model, tokenizer, texts, cfg.prepare_model.max_length, cfg.prepare_model.batch_size)
    score_s = time.time() - score_started
    log.info(
        "Kazakh perplexity %.2f (%.3f bits/char) on %d passages, %d tokens",
        result.perplexity,
        result.bits_per_char,
        result.texts,
        result.tokens,
    )
    metrics = {f"kk_{k}": v for k, v in result.metrics().items()}
    metrics.update(materialize_s=materialize_s, load_s=load_s, score_s=score_s)
    ctx.tracking.log_metrics(metrics)
    ctx.tracking.log_dataset(file_dataset(passages_file(cfg.prepare_model.perplexity_texts), "evaluation",
                                          rows=len(texts), digest=texts_sha))
    ctx.tracking.set_tags({"kazhpc.model_location": location})
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "model": {
            "source": cfg.model.source,
            "location": location,
            "parameters": parameters,
            "vocab_size": len(tokenizer),
            "dtype": cfg.model.dtype,
        },
        "chat_template": {
            "sha256": hashlib.sha256(tokenizer.chat_template.encode()).hexdigest(),
            **probe,
        },
        "perplexity": {"texts": cfg.prepare_model.perplexity_texts, "texts_sha256": texts_sha, **result.to_dict()},
    }
