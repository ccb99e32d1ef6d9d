"""The corpus job's manifest and table, from datatrove's per-stage stats and the files written.

Every document read ends in exactly one place: a reject folder (by reason), the held-out split, or
the blocks. The manifest checks that (``unaccounted`` must be 0) and holds the hashes of every
input and output file, so that a CPT run can say which text it was trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError
from kazhpc.fingerprint import file_digest

if TYPE_CHECKING:
    from kazhpc.config.corpus import TextCorpusConfig
    from kazhpc.data.corpus.flow import CorpusLayout

log = logging.getLogger(__name__)


def _total(value: Any) -> float:
    return value.get("total", 0) if isinstance(value, dict) else value


def _step_stats(stats: dict[str, Any], stage: str, label: str) -> dict[str, float]:
    for step in stats.get(stage, []):
        if label in step["name"]:
            return {k: _total(v) for k, v in step["stats"].items()}
    return {}


def _dropped(stats: dict[str, Any]) -> dict[str, int]:
    """Dropped documents by reason, over every step of every stage."""
    reasons: dict[str, int] = {}
    for stage in stats.values():
        for step in stage:
            counts = {k: _total(v) for k, v in step["stats"].items()}
            if "MinHash stage 4" in step["name"] and counts.get("dropped"):
                reasons["near_duplicate"] = int(counts["dropped"])
                continue
            for key, value in counts.items():
                if key.startswith("dropped_"):
                    reasons[key.removeprefix("dropped_")] = reasons.get(key.removeprefix("dropped_"), 0) + int(value)
    return dict(sorted(reasons.items()))


def _files(folder: Path, pattern: str = "*") -> list[dict[str, Any]]:
    return [{"path": str(p), "bytes": p.stat().st_size, "sha256": file_digest(p)}
            for p in sorted(folder.glob(pattern)) if p.is_file()]


def corpus_manifest(cfg: TextCorpusConfig, out: CorpusLayout, stats: dict[str, Any], tokenizer_dir: str,
                    vocab: int) -> dict[str, Any]:
    """``vocab``: the tokenizer's size, added tokens included (datatrove stores ids in 4 bytes above 65,536)."""
    from kazhpc.data.corpus.blocks import PackedBlocks, token_files
    from kazhpc.data.corpus.sources import source_files

    read = _step_stats(stats, "filter", "kazhpc sources")
    dropped = _dropped(stats)
    heldout = int(_step_stats(stats, "blocks", "held-out split").get("heldout", 0))
    ledger = _step_stats(stats, "blocks", "kept ledger")
    kept = int(ledger.get("kept", 0))
    documents = int(read.get("documents", 0) + read.get("dropped", 0))
    tokens = int(_step_stats(stats, "blocks", "TOKENIZER").get("tokens", 0))
    if kept == 0:
        raise KazhpcError(f"corpus: no document is left for the blocks ({documents} read; dropped by reason: "
                          + (", ".join(f"{k} {v}" for k, v in dropped.items()) or "none") + f"; held out {heldout}); "
                          f"see {out.root / 'rejects'}")
    token_bytes = 4 if vocab > 65536 else 2
    blocks = PackedBlocks(token_files(out.tokens), cfg.blocks.length, token_bytes)
    if len(blocks) == 0:
        raise KazhpcError(f"corpus: {blocks.tokens} tokens from {kept} documents, fewer than one block of "
                          f"{cfg.blocks.length} (corpus.blocks.length)")
    chars = int(ledger.get("chars", 0))
    unaccounted = documents - sum(dropped.values()) - heldout - kept
    if unaccounted:  # a step dropped documents without a reason: a bug to find, not to hide
        log.warning("corpus: %d of %d documents are neither kept, held out nor dropped with a reason", unaccounted, documents)
    return {
        "source_files": [{"source": s.name, **f} for s in cfg.sources
                   for f in _files_of(source_files(s))],
        "counts": {
            "documents_read": documents,
            "documents_dropped": sum(dropped.values()),
            "documents_heldout": heldout,
            "documents_kept": kept,
            "unaccounted": unaccounted,
            "chars_kept": chars,
            "bytes_kept": int(ledger.get("bytes", 0)),
            "tokens": tokens,
            "tokens_per_char": tokens / chars if chars else 0.0,
            "blocks": len(blocks),
            "block_tokens": len(blocks) * cfg.blocks.length,
            "tokens_left_over": blocks.tokens - len(blocks) * cfg.blocks.length,
            "exact_duplicate_pairs": int(_step_stats(stats, "buckets", "MinHash stage 2").get("total_matches", 0)),
        },
        "dropped_by_reason": dropped,
        "blocks": {
            "length": cfg.blocks.length,
            "token_bytes": token_bytes,
            "files": [str(f) for f in blocks.files],
            "sha256": blocks.digest(),
            "tokenizer": tokenizer_dir,
            "vocab_size": vocab,
        },
        "outputs": {"tokens": _files(out.tokens, "*.ds"), "heldout": _files(out.heldout), "kept": _files(out.kept)},
        "heldout_dir": str(out.heldout),
        "rejects_dir": str(out.root / "rejects"),
        "tasks": cfg.tasks,
    }


def _files_of(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Each input file's size and sha256: read here for a local file; from the hub's record for a
    hub file (its LFS sha256, else its git blob id), which the commit in its URL pins."""
    records = []
    for folder, name in pairs:
        if "://" not in folder:
            path = Path(folder) / name
            records.append({"path": str(path), "bytes": path.stat().st_size, "sha256": file_digest(path)})
            continue
        from datatrove.io import get_datafolder

        info = get_datafolder(folder).info(name)
        lfs = info.get("lfs") or {}
        records.append({"path": f"{folder}/{name}", "bytes": info.get("size"),
                        **({"sha256": lfs["sha256"]} if "sha256" in lfs else {"git_blob": info.get("blob_id")})})
    return records


def corpus_table(manifest: dict[str, Any]) -> str:
    """What `kazhpc corpus` prints: where the documents went, and what the blocks hold."""
    c = manifest["counts"]
    rows = [
        "| documents | count |", "|---|---|",
        f"| read | {c['documents_read']:,} |",
        *[f"| dropped: {reason.replace('_', ' ')} | {n:,} |" for reason, n in manifest["dropped_by_reason"].items()],
        f"| held out (bits/char) | {c['documents_heldout']:,} |",
        f"| kept for the blocks | {c['documents_kept']:,} |",
    ]
    b = manifest["blocks"]
    return "\n".join([
        *rows, "",
        f"{c['chars_kept']:,} characters → {c['tokens']:,} tokens ({c['tokens_per_char']:.3f} per character) → "
        f"{c['blocks']:,} blocks of {b['length']} tokens ({c['tokens_left_over']:,} tokens left over).", "",
    ])
