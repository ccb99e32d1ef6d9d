"""The corpus job: raw Kazakh text → packed token blocks for continued pretraining (datatrove).

The job adapter: the work is in kazhpc.data.corpus. Here are the checks before anything runs, the
glue from a stage to the library (which tokenizer: an earlier extend-vocab stage's, else the
model's; which evaluation files to decontaminate against), and the manifest: every input with its
hash, documents in and out of every step by reason, characters, bytes, tokens, blocks and the
digest of the token stream (the same for any number of tasks).

Outputs in the stage folder: ``tokens/*.ds`` (the blocks' token stream, per task), ``heldout/``
(documents kept out of training, for held-out bits/char), ``kept/`` (id, source and characters of
every trained-on document), ``rejects/<step>/`` (every dropped document with its reason) and
``corpus.md`` (the counts).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext


#: Documents of each source read by preflight to refuse an empty or non-Kazakh corpus early.
PREVIEW_DOCUMENTS = 20
#: datatrove's outputs under the stage folder (removed when the stage's inputs change).
WORK_FOLDERS = ("filtered", "signatures", "buckets", "remove", "tokens", "heldout", "kept", "rejects", "logs", "tokenizer")


def decontamination_files(cfg: PipelineConfig) -> list[str]:
    """``corpus.decontamination.files``, plus (by default) every local file the evaluate stages read."""
    return list(_decontamination_keys(cfg))


def _decontamination_keys(cfg: PipelineConfig) -> dict[str, str]:
    return cfg.decontamination_files(cfg.corpus.decontamination, "corpus.decontamination.files")


def extra_inputs(cfg: PipelineConfig) -> list[str]:
    return decontamination_files(cfg)


def model_context(cfg: PipelineConfig) -> int | None:
    """The model's context length from its config.json, without loading it (None if not at hand)."""
    from kazhpc.models import bundled_checkpoint_dir, parse_source

    source = parse_source(cfg.model.source)
    if source.kind == "hub":
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(source.ref, revision=cfg.model.revision).to_dict()
        except (OSError, ValueError):
            return None
    else:
        folder = Path(source.ref) if source.kind == "local" else bundled_checkpoint_dir(source.ref, cfg.cache_root)
        if not (folder / "config.json").is_file():
            return None
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    return config.get("max_position_embeddings")


def preflight(cfg: PipelineConfig) -> list[str]:
    """Everything that can be refused before a model or a corpus is read in full: sources that are
    missing or empty, a text field that is not there, a corpus that is not Kazakh, blocks longer
    than the model's context, missing decontamination files."""
    from kazhpc.data.corpus.preview import preview_source

    section = cfg.corpus
    warnings = []
    for source in section.sources:
        warnings += preview_source(source, section, PREVIEW_DOCUMENTS)
    context = model_context(cfg)
    if context is not None and section.blocks.length > context:
        raise KazhpcError(f"corpus.blocks.length: {section.blocks.length} tokens is above the model's context "
                          f"({context} tokens, {cfg.model.source})")
    for path, key in _decontamination_keys(cfg).items():
        if not Path(path).is_file():
            raise KazhpcError(f"{key}: {path}: file not found")
    if context is None:
        warnings.append(f"corpus.blocks.length not checked: {cfg.model.source} is not materialized yet")
    return warnings


def _target_tokenizer(ctx: JobContext, folder: Path) -> Path:
    """The tokenizer the blocks are made with, saved to ``folder`` (datatrove reads tokenizer.json):
    an earlier extend-vocab stage's when the stage reads one, else the model's."""
    from kazhpc.models import load_tokenizer
    from kazhpc.train.stage_inputs import extended_model_for_training

    cfg, _ = extended_model_for_training(ctx)
    tokenizer = load_tokenizer(cfg.model, cfg.cache_root)
    tokenizer.save_pretrained(str(folder))
    if not (folder / "tokenizer.json").is_file():
        raise KazhpcError(f"model source '{cfg.model.source}': no fast tokenizer (tokenizer.json) to make blocks with")
    return folder


def _fresh_work(job_dir: Path, inputs: dict[str, Any]) -> None:
    """datatrove skips the tasks it completed (a stopped job goes on), but only from the same inputs:
    with other inputs, its outputs are removed first."""
    marker = job_dir / "corpus-inputs.json"
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == inputs:
        return
    for name in WORK_FOLDERS:
        shutil.rmtree(job_dir / name, ignore_errors=True)
    job_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(inputs, sort_keys=True), encoding="utf-8")


def run(ctx: JobContext) -> dict[str, Any]:
    from kazhpc.config import DecontaminationConfig
    from kazhpc.data.corpus.build import build_corpus

    cfg, section = ctx.cfg, ctx.cfg.corpus
    _fresh_work(ctx.job_dir, ctx.inputs)
    tokenizer_dir = _target_tokenizer(ctx, ctx.job_dir / "tokenizer")
    decontamination = DecontaminationConfig(files=decontamination_files(cfg), ngram=section.decontamination.ngram,
                                            evaluation_files=False)
    manifest = build_corpus(section, decontamination, ctx.job_dir, tokenizer_dir)
    ctx.tracking.log_metrics({k: v for k, v in manifest["counts"].items() if isinstance(v, (int, float))})
    ctx.tracking.log_metrics({f"dropped_{k}": v for k, v in manifest["dropped_by_reason"].items()})
    ctx.tracking.log_artifact(ctx.job_dir / "corpus.md")
    return manifest
