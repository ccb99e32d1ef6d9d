"""The preprocess job: Kazakh instruction sources → cleaned, deduplicated, formatted Parquet shards.

The job adapter: the work is in the library (kazhpc.data.cleaning, kazhpc.data.preprocess_part,
kazhpc.data.preprocess_merge); here are its preflight, the glue from the pipeline config to the
config sections the library takes, and ``run``. Two stages, so that the work spreads over SLURM
array tasks and the result does not depend on it:

* **part i/n** (:func:`run_part`, an array task's ``--shard i/n``): the rows ≡ i (mod n) of every
  source, cleaned and formatted into candidates and rejects;
* **merge** (:func:`merge_parts`): dedup across all parts, caps, the split, the Parquet files,
  ``rejects.jsonl`` and the manifest.

``run`` does the parts that are not done with the current inputs, then the merge (kazhpc.parts).
Every dropped row is one line of ``rejects.jsonl`` (source, file:line, reason, detail, the row) and
is counted by reason in the manifest. Nothing is lost silently.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext

log = logging.getLogger(__name__)


def decontamination_files(cfg: PipelineConfig) -> list[str]:
    """The evaluation items training rows are checked against: ``decontamination.files``, plus (by
    default) every local file the pipeline's own evaluate stages read. Tasks whose data comes from
    the hub are not covered here; list their local copies in ``decontamination.files``."""
    return list(_decontamination_keys(cfg))


def _decontamination_keys(cfg: PipelineConfig) -> dict[str, str]:
    return cfg.decontamination_files(cfg.preprocess.cleaning.decontamination, "preprocess.cleaning.decontamination.files")


def extra_inputs(cfg: PipelineConfig) -> list[str]:
    """Inputs outside the ``preprocess`` section: the evaluation files rows are decontaminated against."""
    return decontamination_files(cfg)


def run_part(cfg: PipelineConfig, out_dir: Path, index: int, count: int, upstream: Mapping[str, Path] | None = None) -> Path:
    """Process part ``index`` of ``count`` into ``out_dir``'s parts; return its folder (a
    preprocess stage reads no earlier stage: ``upstream`` is empty)."""
    from kazhpc.data.preprocess_part import run_part as process_part

    return process_part(cfg.preprocess, cfg.model, cfg.cache_root, decontamination_files(cfg), out_dir, index, count)


def merge_parts(cfg: PipelineConfig, out_dir: Path, count: int) -> dict[str, Any]:
    """Merge all parts into the final outputs; return the manifest."""
    from kazhpc.data.preprocess_merge import merge_parts as merge

    return merge(cfg.preprocess, cfg.seed, decontamination_files(cfg), out_dir, count)


def preflight(cfg: PipelineConfig) -> list[str]:
    from kazhpc.data.readers import preview_source
    from kazhpc.models import parse_source

    parse_source(cfg.model.source)
    warnings = []
    for source in cfg.preprocess.sources:
        if source.path is not None and not Path(source.path).exists():
            raise KazhpcError(f"preprocess.sources[{source.name}].path: {source.path}: file not found")
        if source.path is not None:
            # The header and first rows, read as the job reads them: an empty file or a missing
            # column fails now, not after the queue; rows the job would reject are a warning.
            warnings += preview_source(source)
        if source.hub is not None and os.environ.get("HF_HUB_OFFLINE") != "1" and not Path(source.hub).exists():
            warnings.append(f"source '{source.name}': '{source.hub}' will be fetched from the hub unless cached")
    for path, key in _decontamination_keys(cfg).items():
        if not Path(path).is_file():
            raise KazhpcError(f"{key}: {path}: file not found")
    return warnings


def source_datasets(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The sources a preprocess stage read, as MLflow dataset records (context ``source``)."""
    from kazhpc.tracking.lineage import file_dataset, hub_dataset

    records = []
    for entry in manifest["sources"]:
        rows = manifest["per_source"].get(entry["source"], {}).get("rows_read")
        if "path" in entry:
            records.append(file_dataset(Path(entry["path"]), "source", name=entry["source"], rows=rows, digest=entry["sha256"]))
        else:
            records.append(hub_dataset(entry["hub"], "source", split=entry["split"], config=entry["config"],
                                       name=entry["source"], rows=rows))
    return records


def split_datasets(folder: Path, manifest: Mapping[str, Any], contexts: Mapping[str, str]) -> list[dict[str, Any]]:
    """A preprocess stage's splits as MLflow dataset records, one per split (its Parquet shards
    together): named ``<stage>/<split>``, so the stage that writes a split and the one that reads
    it log the same data set. ``contexts``: split → context."""
    import hashlib

    from kazhpc.tracking.lineage import file_dataset, parquet_columns

    records = []
    for split, context in contexts.items():
        shards = [o for o in manifest["outputs"] if o["path"].split("-", 1)[0] == split]
        rows = manifest["counts"][f"{split}_rows"]
        if not shards or not rows:
            continue
        digest = hashlib.sha256("".join(o["sha256"] for o in shards).encode()).hexdigest()
        records.append(file_dataset(folder / f"{split}-*.parquet", context, name=f"{folder.name}/{split}", rows=rows,
                                    columns=parquet_columns(folder / shards[0]["path"]), digest=digest))
    return records


def run(ctx: JobContext) -> dict[str, Any]:
    from kazhpc.data.preprocess_merge import length_histogram
    from kazhpc.parts import run_parts_then_merge

    cfg = ctx.cfg
    count = cfg.preprocess.shards
    manifest = run_parts_then_merge(ctx.job_dir.name, ctx.job_dir, count, lambda i: run_part(cfg, ctx.job_dir, i, count),
                                    lambda: merge_parts(cfg, ctx.job_dir, count), ctx.inputs)
    counts = manifest["counts"]
    metrics = {k: v for k, v in counts.items() if isinstance(v, (int, float))}
    metrics.update({f"dropped_{k}": v for k, v in counts["dropped_by_reason"].items()})
    for split, lengths in manifest["tokens"].items():
        if lengths.get("count"):
            metrics.update({f"{split}_tokens_mean": lengths["mean"], f"{split}_tokens_p95": lengths["p95"]})
    metrics["mixed_kk_ru_share"] = manifest["languages"]["mixed_kk_ru_share"]
    ctx.tracking.log_metrics(metrics)
    for record in source_datasets(manifest) + split_datasets(ctx.job_dir, manifest, {"train": "output", "validation": "output"}):
        ctx.tracking.log_dataset(record)
    ctx.tracking.log_artifact(ctx.job_dir / "rejects.jsonl")
    histogram = length_histogram(ctx.job_dir)
    if histogram is not None:
        ctx.tracking.log_artifact(histogram)
    for warning in manifest["warnings"]:
        log.warning("preprocess: %s", warning)
    return manifest
