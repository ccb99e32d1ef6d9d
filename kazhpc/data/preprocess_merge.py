"""The preprocess job's merge: all parts' candidates → deduplicated, capped, split Parquet files.

Candidates of all parts (kazhpc.data.preprocess_part) in canonical order, exact and near-duplicate
removal across all of them, row caps, the hash-based train/validation split and source weights,
then the Parquet files, ``rejects.jsonl`` (every dropped row, of the parts and of the merge) and
the manifest (inputs with their sha256, counts by source and by reason, token lengths, outputs).
Nothing here depends on the number of parts: one part or many give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.data.cleaning import reject_row
from kazhpc.fingerprint import file_digest
from kazhpc.partfiles import check_parts_done, part_dir, read_jsonl, write_jsonl

if TYPE_CHECKING:
    from kazhpc.config import PreprocessConfig

#: Reasons a row can be dropped at merge time (the part stage adds its own).
MERGE_REASONS = ("duplicate", "near_duplicate", "over_cap")


def row_key(record: dict[str, Any]) -> str:
    """The input row a record came from (several records may come from one row)."""
    return f"{record['source']}/{record['order'][1]}"


def _unit(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) for a key: splits, caps and weights without an RNG."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _read_parts(out_dir: Path, count: int) -> tuple[list[dict], list[dict], list[dict]]:
    check_parts_done("preprocess", out_dir, count)
    candidates, rejects, stats = [], [], []
    for i in range(count):
        folder = part_dir(out_dir, i, count)
        candidates += read_jsonl(folder / "candidates.jsonl")
        rejects += read_jsonl(folder / "rejects.jsonl")
        stats.append(json.loads((folder / "stats.json").read_text()))
    return candidates, rejects, stats


def _length_stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, math.ceil(p * len(ordered)) - 1)]

    return {
        "count": len(ordered),
        "min": ordered[0],
        "mean": round(sum(ordered) / len(ordered), 2),
        "p50": pct(0.5),
        "p95": pct(0.95),
        "max": ordered[-1],
        "total": sum(ordered),
    }


def _write_parquet(rows: list[dict], folder: Path, split: str, rows_per_file: int) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("id", pa.string()),
            ("source", pa.string()),
            ("origin", pa.string()),
            ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
            ("answer_language", pa.string()),
            ("languages", pa.list_(pa.string())),
            ("num_tokens", pa.int32()),
            ("answer_tokens", pa.int32()),
        ]
    )
    files = max(1, math.ceil(len(rows) / rows_per_file))
    paths = []
    for n in range(files):
        chunk = rows[n * rows_per_file : (n + 1) * rows_per_file]
        table = pa.Table.from_pylist(chunk, schema=schema)
        path = folder / f"{split}-{n:05d}-of-{files:05d}.parquet"
        pq.write_table(table, path, compression="zstd", write_statistics=False)
        paths.append(path)
    return paths


def merge_parts(
    pre: PreprocessConfig, seed: int, decontamination_files: list[str], out_dir: Path, count: int
) -> dict[str, Any]:
    """Merge all parts into the final outputs; return the manifest. ``seed`` places rows in the
    train/validation split; ``decontamination_files`` is recorded in the manifest."""
    from kazhpc.data.dedup import ExactDeduplicator, NearDuplicateIndex

    candidates, rejects, stats = _read_parts(out_dir, count)
    candidates.sort(key=lambda c: c["record"]["order"])
    dedup = pre.cleaning.dedup
    exact = ExactDeduplicator()
    near = NearDuplicateIndex(dedup)
    kept: list[dict] = []

    def drop(candidate: dict, reason: str, detail: str) -> None:
        rec = candidate["record"]
        rejects.append(reject_row(rec["source"], rec["origin"], tuple(rec["order"]), reason, detail, rec["messages"]))

    # Records made from one input row (KazParC's translation directions) hold the same sentences:
    # they are never near duplicates of each other, so only a row's first record is compared,
    # and its siblings share the decision.
    row_match: dict[str, str | None] = {}
    for cand in candidates:
        rec_id = cand["record"]["id"]
        if dedup.exact:
            first = exact.seen(cand["exact_key"], rec_id)
            if first is not None:
                drop(cand, "duplicate", f"same text as {first}")
                continue
        if dedup.near:
            row = row_key(cand["record"])
            if row not in row_match:
                row_match[row] = near.add_or_match(rec_id, cand["signature"])
            if row_match[row] is not None:
                drop(cand, "near_duplicate", f"near duplicate of {row_match[row]}")
                continue
        kept.append(cand)

    # Row caps: a deterministic hash-ordered sample per source, not simply the first rows.
    by_source: dict[str, list[dict]] = defaultdict(list)
    for cand in kept:
        by_source[cand["record"]["source"]].append(cand)
    capped: set[str] = set()
    for source in pre.sources:
        rows = by_source.get(source.name, [])
        if source.max_rows is not None and len(rows) > source.max_rows:
            ranked = sorted(rows, key=lambda c: _unit(c["record"]["id"], "cap"))
            for cand in ranked[source.max_rows :]:
                capped.add(cand["record"]["id"])
                drop(cand, "over_cap", f"source {source.name} keeps {source.max_rows} rows")
    kept = [c for c in kept if c["record"]["id"] not in capped]

    weights = {s.name: s.weight for s in pre.sources}
    splits: dict[str, list[dict]] = {"train": [], "validation": []}
    for cand in kept:
        rec = cand["record"]
        row = {
            "id": rec["id"],
            "source": rec["source"],
            "origin": rec["origin"],
            "messages": rec["messages"],
            "answer_language": rec["answer_language"],
            "languages": rec["languages"],
            "num_tokens": cand["num_tokens"],
            "answer_tokens": cand["answer_tokens"],
        }
        if _unit(row_key(rec), f"split:{seed}") < pre.validation_fraction:  # a row's records stay together
            splits["validation"].append(row)
            continue
        weight = weights[rec["source"]]
        copies = int(weight) + (1 if _unit(rec["id"], "weight") < weight - int(weight) else 0)
        splits["train"].extend([row] * copies)

    for old in out_dir.glob("*.parquet"):
        old.unlink()
    outputs = []
    for split, rows in splits.items():
        if rows or split == "train":
            outputs += _write_parquet(rows, out_dir, split, pre.rows_per_file)
    rejects.sort(key=lambda r: (r["order"], r["reason"]))
    write_jsonl(out_dir / "rejects.jsonl", rejects)
    return _manifest(pre, decontamination_files, out_dir, kept, splits, rejects, stats, outputs)


def _manifest(
    pre: PreprocessConfig,
    decontamination_files: list[str],
    out_dir: Path,
    kept: list[dict],
    splits: dict[str, list[dict]],
    rejects: list[dict],
    stats: list[dict],
    outputs: list[Path],
) -> dict[str, Any]:
    read: Counter[str] = Counter()
    fixes: Counter[str] = Counter()
    rows_fixed: Counter[str] = Counter()
    for part in stats:
        read.update(part["read"])
        fixes.update(part["fixes"])
        rows_fixed.update(part["rows_fixed"])
    per_source: dict[str, dict[str, Any]] = {}
    warnings = []
    for source in pre.sources:
        dropped = Counter(r["reason"] for r in rejects if r["source"] == source.name)
        kept_rows = sum(1 for c in kept if c["record"]["source"] == source.name)
        per_source[source.name] = {
            "kind": source.kind,
            "rows_read": read.get(source.name, 0),
            "records_kept": kept_rows,
            "train_rows": sum(1 for r in splits["train"] if r["source"] == source.name),
            "validation_rows": sum(1 for r in splits["validation"] if r["source"] == source.name),
            "dropped": dict(sorted(dropped.items())),
        }
        if kept_rows == 0:
            warnings.append(f"source '{source.name}' yields no rows after cleaning")
    inputs = []
    for source in pre.sources:
        entry: dict[str, Any] = {"source": source.name, "kind": source.kind}
        if source.path is not None:
            entry.update(path=str(Path(source.path).absolute()), sha256=file_digest(Path(source.path)))
        else:
            entry.update(hub=source.hub, config=source.hub_config, split=source.split)
        inputs.append(entry)
    langs = Counter(c["record"]["meta"].get("lang", "und") for c in kept)
    mixed = sum(1 for c in kept if c["record"]["meta"].get("mixed_kk_ru"))
    manifest = {
        "sources": inputs,  # not "inputs": the runner's fingerprint inputs take that key in manifest.json
        "counts": {
            "rows_read": sum(read.values()),
            "records_kept": len(kept),
            "train_rows": len(splits["train"]),
            "validation_rows": len(splits["validation"]),
            "rejected": len(rejects),
            "dropped_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        },
        "per_source": per_source,
        "decontaminated_against": list(decontamination_files),
        "cleaning": {"fixes": dict(sorted(fixes.items())), "rows_fixed": dict(sorted(rows_fixed.items()))},
        "languages": {
            "answer_language_detected": dict(sorted(langs.items())),
            "mixed_kk_ru_share": round(mixed / len(kept), 4) if kept else 0.0,
        },
        "tokens": {split: _length_stats([r["num_tokens"] for r in rows]) for split, rows in splits.items()},
        "outputs": [{"path": p.name, "sha256": file_digest(p)} for p in outputs],
        "rejects": {"path": "rejects.jsonl", "sha256": file_digest(out_dir / "rejects.jsonl")},
        "warnings": warnings,
    }
    return manifest


def length_histogram(out_dir: Path) -> Path | None:
    """A PNG of formatted lengths in tokens, per split (for the MLflow run page)."""
    import pyarrow.parquet as pq

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib comes with lm-eval
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for path_glob in ("train-*.parquet", "validation-*.parquet"):
        lengths = [n for p in sorted(out_dir.glob(path_glob)) for n in pq.read_table(p, columns=["num_tokens"]).column(0).to_pylist()]
        if lengths:
            ax.hist(lengths, bins=40, alpha=0.6, label=path_glob.split("-")[0])
    ax.set_xlabel("tokens per formatted conversation")
    ax.set_ylabel("rows")
    ax.legend()
    path = out_dir / "token-lengths.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
