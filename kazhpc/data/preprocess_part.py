"""One part of the preprocess job: rows ≡ index (mod count) of every source → candidates and rejects.

Every row whose position in its source is ≡ ``index`` (mod ``count``) is read, adapted to the
canonical record (kazhpc.data.adapters), cleaned and formatted (kazhpc.data.cleaning), and written
as a candidate (with its dedup key and MinHash signature, for the merge: kazhpc.data.preprocess_merge)
or a reject. The part's folder follows kazhpc.partfiles: ``candidates.jsonl``, ``rejects.jsonl``,
``stats.json`` (rows read, fixes, timings), then the done marker.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from kazhpc.console import progress
from kazhpc.data.cleaning import FORMAT_BATCH, RecordCleaner, reject_row
from kazhpc.data.records import Record, Reject
from kazhpc.partfiles import check_part_count, finish_part, jsonl_writer, start_part

if TYPE_CHECKING:
    from kazhpc.config import ModelConfig, PreprocessConfig

log = logging.getLogger(__name__)


def run_part(
    pre: PreprocessConfig,
    model: ModelConfig,
    cache_root: Path,
    decontamination_files: list[str],
    out_dir: Path,
    index: int,
    count: int,
) -> Path:
    """Process part ``index`` of ``count``; write candidates, rejects and stats; return its folder."""
    from kazhpc.data.adapters import adapt
    from kazhpc.data.readers import BadRow, iter_rows

    check_part_count("preprocess", index, count, pre.shards)
    folder = start_part(out_dir, index, count)
    started = time.perf_counter()
    cleaner = RecordCleaner(pre, model, cache_root, decontamination_files)
    setup_s = time.perf_counter() - started
    read: Counter[str] = Counter()
    pending: list[tuple[Record, str]] = []
    with jsonl_writer(folder / "candidates.jsonl") as candidates, \
            jsonl_writer(folder / "rejects.jsonl", default=str) as rejects:  # fmt: skip

        def reject_record(record: Record, rej: Reject) -> None:
            rejects.write(reject_row(record.source, record.origin, record.order, rej.reason, rej.detail, record.messages))

        def flush() -> None:
            for (record, _), result in zip(pending, cleaner.format(pending)):
                if isinstance(result, Reject):
                    reject_record(record, result)
                else:
                    candidates.write(result)
            pending.clear()

        for source_index, source in enumerate(pre.sources):
            min_words = source.answer_word_minimum(pre.cleaning.min_answer_words)
            rows = progress(iter_rows(source), None, f"preprocess part {index}/{count}: {source.name} rows")
            for item in rows:  # iter_rows checks the required columns before the first row
                if item.index % count != index:
                    continue
                read[source.name] += 1
                order = (source_index, item.index, 0)
                if isinstance(item, BadRow):
                    rejects.write(reject_row(source.name, item.origin, order, item.reason, item.detail, item.raw))
                    continue
                try:
                    records = adapt(source, source_index, item)
                except Reject as rej:
                    row = {k: v for k, v in item.data.items() if not k.startswith("_")}  # not the label tables
                    rejects.write(reject_row(source.name, item.origin, order, rej.reason, rej.detail, row))
                    continue
                for record in records:
                    try:
                        pending.append((record, cleaner.check(record, min_words)))
                    except Reject as rej:
                        reject_record(record, rej)
                if len(pending) >= FORMAT_BATCH:
                    flush()
            flush()
    stats = {
        "read": dict(read),
        "fixes": dict(cleaner.fixes),
        "rows_fixed": dict(cleaner.rows_fixed),
        # Timings stay here, out of the manifest, which must not depend on the machine or n.
        "seconds": {"setup": round(setup_s, 3), "rows": round(time.perf_counter() - started - setup_s, 3)},
    }
    (folder / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True))
    finish_part(folder, {"index": index, "count": count, "candidates": candidates.count, "rejects": rejects.count})
    log.info("preprocess part %d/%d: %d candidates, %d rejects", index, count, candidates.count, rejects.count)
    return folder
