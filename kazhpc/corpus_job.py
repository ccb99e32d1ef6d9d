"""The corpus job: raw Kazakh text → packed token blocks for continued pretraining (datatrove).

The job adapter: the work is in kazhpc.data.corpus. Here are the checks before anything runs, the
glue from a stage to the library (which tokenizer: an earlier extend-vocab stage's, else the
model's; which evaluation files to decontaminate against), and the manifest: every input with its
hash, documents in and out of every step by reason, characters, bytes, tokens, blocks and the
digest of the token stream (the same for any number of tasks).

Outputs in the stage folder's ``work/<fingerprint>/`` (:func:`work_dir`): ``tokens/*.ds`` (the
blocks' token stream, per task), ``heldout/`` (documents kept out of training, for held-out
bits/char), ``kept/`` (id, source and characters of every trained-on document), ``rejects/<step>/``
(every dropped document with its reason); the manifest names them. ``corpus.md`` (the counts) is
in the stage folder itself.

With ``corpus.tasks`` > 1, a SLURM submission runs each datatrove stage as an array of tasks
(:func:`phase_tasks`, :func:`run_phase`), and the stage's own job then writes the manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError
from kazhpc.fingerprint import fingerprint

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext

log = logging.getLogger(__name__)


#: Documents of each source read by preflight to refuse an empty or non-Kazakh corpus early.
PREVIEW_DOCUMENTS = 20


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

            # The local hub cache only: a login node with no internet would wait out five retries.
            config = AutoConfig.from_pretrained(source.ref, revision=cfg.model.revision, local_files_only=True).to_dict()
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


def phase_tasks(cfg: PipelineConfig) -> dict[str, int]:
    """The datatrove stages, in order, with their tasks: a SLURM submission runs each as an array
    when ``corpus.tasks`` > 1 (kazhpc.launch.steps); else the stage is one job."""
    return cfg.corpus.stage_tasks()


def work_dir(job_dir: Path, inputs: dict[str, Any]) -> Path:
    """datatrove's outputs for these inputs: ``<stage>/work/<fingerprint>``.

    datatrove skips the tasks it completed (a job that stopped goes on; the stage's last step finds
    its array tasks done), but only from the same inputs. Other inputs get a folder of their own,
    so array tasks that start at once never race to clear a stale one; the stage's last step
    removes the others (:func:`run`)."""
    return job_dir / "work" / fingerprint(inputs)[:16]


def _target_tokenizer(ctx: JobContext, work: Path) -> Path:
    """The tokenizer the blocks are made with, saved once under ``work`` (datatrove reads
    tokenizer.json): an earlier extend-vocab stage's when the stage reads one, else the model's.
    Saved to a temporary folder and renamed, so array tasks starting together never read half a save."""
    from kazhpc.models import load_tokenizer
    from kazhpc.train.stage_inputs import extended_model_for_training

    folder = work / "tokenizer"
    if (folder / "tokenizer.json").is_file():
        return folder
    cfg, _ = extended_model_for_training(ctx)
    temporary = work / f"tokenizer.{os.getpid()}.{socket.gethostname()}"
    load_tokenizer(cfg.model, cfg.cache_root).save_pretrained(str(temporary))
    if not (temporary / "tokenizer.json").is_file():
        shutil.rmtree(temporary)
        raise KazhpcError(f"model source '{cfg.model.source}': no fast tokenizer (tokenizer.json) to make blocks with")
    try:
        temporary.rename(folder)
    except OSError:  # another task saved it first: the same tokenizer (same inputs, same folder)
        shutil.rmtree(temporary)
    return folder


def _decontamination(cfg: PipelineConfig) -> Any:
    from kazhpc.config import DecontaminationConfig

    return DecontaminationConfig(files=decontamination_files(cfg), ngram=cfg.corpus.decontamination.ngram,
                                 evaluation_files=False)


def run_phase(cfg: PipelineConfig, job_dir: Path, phase: str, index: int, upstream: dict[str, Path],
              inputs: dict[str, Any]) -> None:
    """Task ``index`` of datatrove stage ``phase``: one SLURM array task (kazhpc.launch.steps)."""
    from kazhpc.data.corpus.build import run_corpus_task
    from kazhpc.jobspec import JobContext

    # No tracking run: the stage's last step (run) logs the corpus once.
    ctx = JobContext(cfg, job_dir.parent, job_dir, None, inputs, upstream)  # type: ignore[arg-type]
    work = work_dir(job_dir, inputs)
    work.mkdir(parents=True, exist_ok=True)
    run_corpus_task(cfg.corpus, _decontamination(cfg), work, _target_tokenizer(ctx, work), phase, index)


def corpus_datasets(folder: Path, manifest: dict[str, Any], blocks_context: str, heldout_context: str,
                    sources: bool = False) -> list[dict[str, Any]]:
    """A corpus stage's blocks and held-out documents (and its source files) as MLflow dataset
    records, named ``<stage>/blocks`` and ``<stage>/heldout`` in the stage that writes them and in
    the train stage that reads them."""
    import hashlib

    from kazhpc.tracking.lineage import file_dataset

    blocks = manifest["blocks"]
    heldout = manifest["outputs"]["heldout"]
    records = [
        file_dataset(Path(blocks["files"][0]).parent, blocks_context, name=f"{folder.name}/blocks", digest=blocks["sha256"],
                     rows=manifest["counts"]["blocks"], columns={"input_ids": "long"}),
    ]
    if heldout:
        digest = hashlib.sha256("".join(f.get("sha256", "") for f in heldout).encode()).hexdigest()
        records.append(file_dataset(Path(manifest["heldout_dir"]), heldout_context, name=f"{folder.name}/heldout",
                                    digest=digest, rows=manifest["counts"]["documents_heldout"], columns={"text": "string"}))
    for entry in manifest["source_files"] if sources else []:
        digest = entry.get("sha256") or entry.get("git_blob") or "unknown"
        name = f"{entry['source']}/{Path(entry['path']).name}"
        if "://" in entry["path"]:
            from kazhpc.tracking.lineage import http_dataset

            records.append(http_dataset(entry["path"], "source", name=name, digest=digest))
        else:
            records.append(file_dataset(Path(entry["path"]), "source", name=name, digest=digest))
    return records


def run(ctx: JobContext) -> dict[str, Any]:
    """The whole corpus, or (after a submission's arrays) what is left of it; then the manifest."""
    from kazhpc.data.corpus.build import build_corpus

    work = work_dir(ctx.job_dir, ctx.inputs)
    work.mkdir(parents=True, exist_ok=True)
    manifest = build_corpus(ctx.cfg.corpus, _decontamination(ctx.cfg), work, _target_tokenizer(ctx, work))
    for other in (ctx.job_dir / "work").iterdir():
        if other != work:
            log.info("corpus: removing %s (made from other inputs)", other)
            shutil.rmtree(other, ignore_errors=True)
    shutil.copyfile(work / "corpus.md", ctx.job_dir / "corpus.md")
    ctx.tracking.log_metrics({k: v for k, v in manifest["counts"].items() if isinstance(v, (int, float))})
    ctx.tracking.log_metrics({f"dropped_{k}": v for k, v in manifest["dropped_by_reason"].items()})
    ctx.tracking.log_artifact(ctx.job_dir / "corpus.md")
    for record in corpus_datasets(ctx.job_dir, manifest, "output", "output", sources=True):
        ctx.tracking.log_dataset(record)
    return manifest
