"""The preprocess job: Kazakh instruction sources → cleaned, deduplicated, formatted Parquet shards.

Two stages, so that the work spreads over SLURM array tasks and the result does not depend on it:

* **part i/n** (``run_part``): every row whose position in its source is ≡ i (mod n) is read,
  adapted to the canonical record, cleaned (text spelling a special token rejected or neutralised),
  language-checked, decontaminated, formatted with the target model's chat template (exactly one
  <bos>, no control token but the template's, a non-empty assistant mask, at most ``max_tokens``),
  and written as a candidate (with its dedup key and MinHash signature) or a reject.
* **merge** (``merge_parts``): candidates of all parts in canonical order, exact and near-duplicate
  removal across all of them, row caps, the hash-based train/validation split and source weights,
  then the Parquet files, ``rejects.jsonl`` and ``manifest.json``.

Every dropped row is one line of ``rejects.jsonl`` (source, file:line, reason, detail, the row) and
is counted by reason in the manifest. Nothing is lost silently.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from kazhpc.data.records import Record, Reject
from kazhpc.errors import FormattingError, KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext

log = logging.getLogger(__name__)

PARTS = "parts"
#: Reasons a row can be dropped at merge time (the part stage adds its own).
MERGE_REASONS = ("duplicate", "near_duplicate", "over_cap")


def part_dir(out_dir: Path, index: int, count: int) -> Path:
    return out_dir / PARTS / f"{index:05d}-of-{count:05d}"


def _write_jsonl(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for line in lines:
            out.write(line + "\n")
    os.replace(tmp, path)


def _reject_line(source: str, origin: str, order: tuple[int, int, int], reason: str, detail: str, row: Any) -> str:
    return json.dumps(
        {"source": source, "origin": origin, "order": list(order), "reason": reason, "detail": detail, "row": row},
        ensure_ascii=False,
        sort_keys=True,
        default=str,
    )


# --------------------------------------------------------------------------------------------
# Stage 1: one part.


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str, revision: str | None, chat_template: str, cache_root: Path):
    """One tokenizer load per process (a 262k vocabulary takes seconds), per model."""
    from kazhpc.config import ModelConfig
    from kazhpc.models import load_tokenizer

    cfg = ModelConfig(name="tokenizer", source=source, revision=revision, chat_template=chat_template)
    return load_tokenizer(cfg, cache_root)


class _RecordCleaner:
    """The per-record steps, in order; each one switchable and counted."""

    def __init__(self, cfg: PipelineConfig):
        from kazhpc.data.dedup import NearDuplicateIndex
        from kazhpc.data.decontam import Decontaminator
        from kazhpc.data.langid import LanguageIdentifier
        from kazhpc.models import special_texts

        self.cfg = cfg.preprocess
        self.cleaning = cfg.preprocess.cleaning
        model = cfg.model
        self.tokenizer = _tokenizer(model.source, model.revision, model.chat_template, cfg.cache_root)
        self.special = special_texts(self.tokenizer)
        self.ident = LanguageIdentifier(max_chars=200) if self.cleaning.language_id.enabled else None
        files = decontamination_files(cfg)
        decontam = self.cleaning.decontamination.model_copy(update={"files": files})
        self.decontam = Decontaminator(decontam) if files else None
        self.near = NearDuplicateIndex(self.cleaning.dedup)
        self.fixes: Counter[str] = Counter()  # characters or texts changed, by step
        self.rows_fixed: Counter[str] = Counter()  # records changed, by step

    def _normalise(self, record: Record) -> None:
        from kazhpc.data.text import fix_lookalikes, nfc, normalize_whitespace

        steps = [
            ("nfc", nfc, self.cleaning.nfc),
            ("lookalikes", fix_lookalikes, self.cleaning.lookalikes),
            ("whitespace", normalize_whitespace, self.cleaning.whitespace),
        ]
        for name, step, enabled in steps:
            if not enabled:
                continue
            changed = 0
            for message in record.messages:
                message["content"], n = step(message["content"])
                changed += n
            if changed:
                self.fixes[name] += changed
                self.rows_fixed[name] += 1

    def _special_text(self, record: Record) -> None:
        """Text that spells a special token (``<end_of_turn>`` in an answer would end the turn and
        forge the next one, in the loss) never reaches the chat template as such: the record is
        rejected, or (``special_tokens: neutralise``) the text is defused and counted as a fix."""
        changed = 0
        for message in record.messages:
            found = self.special.find(message["content"])
            if found is None:
                continue
            if self.cleaning.special_tokens == "reject":
                raise Reject("special_token_text", f"{message['role']} turn contains {found!r} as text")
            message["content"], n = self.special.neutralise(message["content"])
            changed += n
        if changed:
            self.fixes["special_tokens"] += changed
            self.rows_fixed["special_tokens"] += 1

    def check(self, record: Record, min_answer_words: int) -> str:
        """Clean and check one record (everything but formatting); return its dedup-normalised
        text, or raise Reject."""
        from kazhpc.data.langid import check_record
        from kazhpc.data.text import normalize_for_hash, word_count

        if self.cfg.system_prompt and record.messages[0]["role"] != "system":
            record.messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        self._normalise(record)
        self._special_text(record)  # after every step that changes text
        for message in record.messages:
            if not message["content"].strip():
                raise Reject("empty_text", f"empty {message['role']} turn after cleaning")
        if min_answer_words:
            shortest = min(word_count(a) for a in record.answers())
            if shortest < min_answer_words:
                raise Reject("short_answer", f"{shortest} words < {min_answer_words}")
        if self.ident is not None:
            check_record(record, self.ident, self.cleaning.language_id)
        normalized = normalize_for_hash(record.text())  # once, for decontamination and both dedups
        if self.decontam is not None:
            self.decontam.check(record, normalized=normalized)
        return normalized

    def format(self, batch: list[tuple[Record, str]]) -> list[dict[str, Any] | Reject]:
        """Format checked records with the chat template, in one tokenizer call; per record a
        candidate (ids counted, dedup key, MinHash signature) or the Reject."""
        from kazhpc.data.dedup import exact_key_of
        from kazhpc.models import check_single_bos, format_chats, template_special_ids

        out: list[dict[str, Any] | Reject] = []
        for (record, normalized), formatted in zip(batch, format_chats(self.tokenizer, [r.messages for r, _ in batch])):
            if isinstance(formatted, Exception):
                out.append(Reject("template_error", f"{type(formatted).__name__}: {formatted}"))
                continue
            try:
                check_single_bos(formatted["input_ids"], self.tokenizer, where=record.origin)
            except FormattingError as exc:
                out.append(Reject("bad_bos", str(exc)))
                continue
            try:  # a guard: check() let no special-token text through, so the template's markers are all
                roles = [m["role"] for m in record.messages]
                self.special.check_ids(formatted["input_ids"], template_special_ids(self.tokenizer, roles), record.origin)
            except FormattingError as exc:
                out.append(Reject("special_token_ids", str(exc)))
                continue
            answer_tokens = sum(formatted["assistant_masks"])
            num_tokens = len(formatted["input_ids"])
            if answer_tokens == 0:
                out.append(Reject("empty_assistant_mask", "no token of the answer carries loss"))
            elif self.cleaning.max_tokens and num_tokens > self.cleaning.max_tokens:
                out.append(Reject("too_long", f"{num_tokens} tokens > {self.cleaning.max_tokens}"))
            else:
                out.append(
                    {
                        "record": record.to_dict(),
                        "num_tokens": num_tokens,
                        "answer_tokens": answer_tokens,
                        "exact_key": exact_key_of(normalized),
                        "signature": self.near.signature(normalized, normalized=True),
                    }
                )
        return out


#: Records formatted per tokenizer call.
FORMAT_BATCH = 128


def decontamination_files(cfg: PipelineConfig) -> list[str]:
    """The evaluation items training rows are checked against: ``decontamination.files``, plus (by
    default) every local file the pipeline's own evaluate job reads. Tasks whose data comes from
    the hub are not covered here; list their local copies in ``decontamination.files``."""
    files = list(cfg.preprocess.cleaning.decontamination.files)
    if cfg.preprocess.cleaning.decontamination.evaluation_files and "evaluate" in cfg.jobs:
        files += [f for f in cfg.evaluate.local_files() if f not in files]
    return files


def run_part(cfg: PipelineConfig, out_dir: Path, index: int, count: int) -> Path:
    """Process part ``index`` of ``count``; write candidates, rejects and stats; return its folder."""
    from kazhpc.data.adapters import adapt
    from kazhpc.data.readers import BadRow, iter_rows

    if count != cfg.preprocess.shards:
        raise KazhpcError(
            f"part {index}/{count}: the run's config says preprocess.shards={cfg.preprocess.shards}; "
            f"the merge would ignore these parts (create the run with preprocess.shards={count})"
        )
    folder = part_dir(out_dir, index, count)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    cleaner = _RecordCleaner(cfg)
    setup_s = time.perf_counter() - started
    candidates: list[str] = []
    rejects: list[str] = []
    read: Counter[str] = Counter()
    pending: list[tuple[Record, str]] = []

    def reject_record(record: Record, rej: Reject) -> None:
        rejects.append(_reject_line(record.source, record.origin, record.order, rej.reason, rej.detail, record.messages))

    def flush() -> None:
        for (record, _), result in zip(pending, cleaner.format(pending)):
            if isinstance(result, Reject):
                reject_record(record, result)
            else:
                candidates.append(json.dumps(result, ensure_ascii=False, sort_keys=True))
        pending.clear()

    for source_index, source in enumerate(cfg.preprocess.sources):
        min_words = source.answer_word_minimum(cfg.preprocess.cleaning.min_answer_words)
        for item in iter_rows(source):  # checks the required columns before the first row
            if item.index % count != index:
                continue
            read[source.name] += 1
            order = (source_index, item.index, 0)
            if isinstance(item, BadRow):
                rejects.append(_reject_line(source.name, item.origin, order, item.reason, item.detail, item.raw))
                continue
            try:
                records = adapt(source, source_index, item)
            except Reject as rej:
                row = {k: v for k, v in item.data.items() if not k.startswith("_")}  # not the label tables
                rejects.append(_reject_line(source.name, item.origin, order, rej.reason, rej.detail, row))
                continue
            for record in records:
                try:
                    pending.append((record, cleaner.check(record, min_words)))
                except Reject as rej:
                    reject_record(record, rej)
            if len(pending) >= FORMAT_BATCH:
                flush()
        flush()
    _write_jsonl(folder / "candidates.jsonl", candidates)
    _write_jsonl(folder / "rejects.jsonl", rejects)
    stats = {
        "read": dict(read),
        "fixes": dict(cleaner.fixes),
        "rows_fixed": dict(cleaner.rows_fixed),
        # Timings stay here, out of the manifest, which must not depend on the machine or n.
        "seconds": {"setup": round(setup_s, 3), "rows": round(time.perf_counter() - started - setup_s, 3)},
    }
    (folder / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))  # written last: part done
    log.info("preprocess part %d/%d: %d candidates, %d rejects", index, count, len(candidates), len(rejects))
    return folder


# --------------------------------------------------------------------------------------------
# Stage 2: merge.


def row_key(record: dict[str, Any]) -> str:
    """The input row a record came from (several records may come from one row)."""
    return f"{record['source']}/{record['order'][1]}"


def _unit(key: str, salt: str) -> float:
    """A deterministic number in [0, 1) for a key: splits, caps and weights without an RNG."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _read_parts(out_dir: Path, count: int) -> tuple[list[dict], list[dict], list[dict]]:
    missing = [i for i in range(count) if not (part_dir(out_dir, i, count) / "stats.json").is_file()]
    if missing:
        raise KazhpcError(
            f"{out_dir / PARTS}: part(s) {', '.join(f'{i}/{count}' for i in missing)} missing or unfinished; "
            f"rerun them with --shard i/{count}"
        )
    candidates, rejects, stats = [], [], []
    for i in range(count):
        folder = part_dir(out_dir, i, count)
        candidates += [json.loads(line) for line in (folder / "candidates.jsonl").read_text("utf-8").splitlines()]
        rejects += [json.loads(line) for line in (folder / "rejects.jsonl").read_text("utf-8").splitlines()]
        stats.append(json.loads((folder / "stats.json").read_text()))
    return candidates, rejects, stats


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def merge_parts(cfg: PipelineConfig, out_dir: Path, count: int) -> dict[str, Any]:
    """Merge all parts into the final outputs; return the manifest."""
    from kazhpc.data.dedup import ExactDeduplicator, NearDuplicateIndex

    pre = cfg.preprocess
    candidates, rejects, stats = _read_parts(out_dir, count)
    candidates.sort(key=lambda c: c["record"]["order"])
    dedup = pre.cleaning.dedup
    exact = ExactDeduplicator()
    near = NearDuplicateIndex(dedup)
    kept: list[dict] = []

    def drop(candidate: dict, reason: str, detail: str) -> None:
        rec = candidate["record"]
        rejects.append(json.loads(_reject_line(rec["source"], rec["origin"], tuple(rec["order"]), reason, detail, rec["messages"])))

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
        if _unit(row_key(rec), f"split:{cfg.seed}") < pre.validation_fraction:  # a row's records stay together
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
    _write_jsonl(out_dir / "rejects.jsonl", (json.dumps(r, ensure_ascii=False, sort_keys=True) for r in rejects))
    return _manifest(cfg, out_dir, kept, splits, rejects, stats, outputs)


def _manifest(
    cfg: PipelineConfig,
    out_dir: Path,
    kept: list[dict],
    splits: dict[str, list[dict]],
    rejects: list[dict],
    stats: list[dict],
    outputs: list[Path],
) -> dict[str, Any]:
    pre = cfg.preprocess
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
            entry.update(path=str(Path(source.path).absolute()), sha256=_sha256_file(Path(source.path)))
        else:
            entry.update(hub=source.hub, config=source.hub_config, split=source.split)
        inputs.append(entry)
    langs = Counter(c["record"]["meta"].get("lang", "und") for c in kept)
    mixed = sum(1 for c in kept if c["record"]["meta"].get("mixed_kk_ru"))
    manifest = {
        "inputs": inputs,
        "counts": {
            "rows_read": sum(read.values()),
            "records_kept": len(kept),
            "train_rows": len(splits["train"]),
            "validation_rows": len(splits["validation"]),
            "rejected": len(rejects),
            "dropped_by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        },
        "per_source": per_source,
        "decontaminated_against": decontamination_files(cfg),
        "cleaning": {"fixes": dict(sorted(fixes.items())), "rows_fixed": dict(sorted(rows_fixed.items()))},
        "languages": {
            "answer_language_detected": dict(sorted(langs.items())),
            "mixed_kk_ru_share": round(mixed / len(kept), 4) if kept else 0.0,
        },
        "tokens": {split: _length_stats([r["num_tokens"] for r in rows]) for split, rows in splits.items()},
        "outputs": [{"path": p.name, "sha256": _sha256_file(p)} for p in outputs],
        "rejects": {"path": "rejects.jsonl", "sha256": _sha256_file(out_dir / "rejects.jsonl")},
        "warnings": warnings,
    }
    return manifest


# --------------------------------------------------------------------------------------------
# The job.


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
    evaluation_keys = cfg.evaluate.local_file_keys()
    for path in decontamination_files(cfg):
        if not Path(path).is_file():
            own = path in cfg.preprocess.cleaning.decontamination.files
            key = "preprocess.cleaning.decontamination.files" if own else evaluation_keys.get(path, "evaluate")
            raise KazhpcError(f"{key}: {path}: file not found")
    return warnings


def run(ctx: JobContext) -> dict[str, Any]:
    from kazhpc.parts import run_missing_parts

    cfg = ctx.cfg
    count = cfg.preprocess.shards
    run_missing_parts("preprocess", count, lambda i: part_dir(ctx.job_dir, i, count), "stats.json",
                      lambda i: run_part(cfg, ctx.job_dir, i, count), ctx.inputs)
    manifest = merge_parts(cfg, ctx.job_dir, count)
    counts = manifest["counts"]
    metrics = {k: v for k, v in counts.items() if isinstance(v, (int, float))}
    metrics.update({f"dropped_{k}": v for k, v in counts["dropped_by_reason"].items()})
    for split, lengths in manifest["tokens"].items():
        if lengths.get("count"):
            metrics.update({f"{split}_tokens_mean": lengths["mean"], f"{split}_tokens_p95": lengths["p95"]})
    metrics["mixed_kk_ru_share"] = manifest["languages"]["mixed_kk_ru_share"]
    ctx.tracking.log_metrics(metrics)
    ctx.tracking.log_artifact(ctx.job_dir / "rejects.jsonl")
    histogram = _length_histogram(ctx.job_dir)
    if histogram is not None:
        ctx.tracking.log_artifact(histogram)
    for warning in manifest["warnings"]:
        log.warning("preprocess: %s", warning)
    return manifest


def _length_histogram(out_dir: Path) -> Path | None:
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
