"""Run the missing parts of a job that splits, then merge: a done part is reused only while its
inputs are unchanged.

The part files (folders, the done marker written last, JSONL, the merge's error for a missing
part) are kazhpc.partfiles. Here, beside each part's marker, ``inputs.json`` records what the part
was made from (``kazhpc.fingerprint.job_inputs``). Before a merge, every part that is missing, or
was made from other inputs, is (re)run in the merging process, so a merge never mixes parts of an
old and a new input file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, TypeVar

from kazhpc.fingerprint import changes
from kazhpc.partfiles import DONE, part_dir

log = logging.getLogger(__name__)

INPUTS = "inputs.json"
T = TypeVar("T")


def record_inputs(folder: Path, inputs: dict[str, Any]) -> None:
    (folder / INPUTS).write_text(json.dumps(inputs, indent=1, sort_keys=True), encoding="utf-8")


def recorded_inputs(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / INPUTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_missing_parts(
    job: str, job_dir: Path, count: int, run_part: Callable[[int], Any], inputs: dict[str, Any]
) -> None:
    """Run every part of ``job`` that is not done with these ``inputs``; reuse the others."""
    for index in range(count):
        folder = part_dir(job_dir, index, count)
        if (folder / DONE).is_file():
            said = changes(recorded_inputs(folder), inputs)
            if not said:
                log.info("%s part %d/%d already done with these inputs: reused", job, index, count)
                continue
            log.warning("%s part %d/%d: made from other inputs, rerun: %s", job, index, count, "; ".join(said))
            (folder / DONE).unlink()
        run_part(index)
        record_inputs(folder, inputs)


def run_parts_then_merge(
    job: str,
    job_dir: Path,
    count: int,
    run_part: Callable[[int], Any],
    merge: Callable[[], T],
    inputs: dict[str, Any],
) -> T:
    """What a splitting job's ``run`` does: its missing or stale parts here, then its merge (which
    starts with kazhpc.partfiles.check_parts_done)."""
    run_missing_parts(job, job_dir, count, run_part, inputs)
    return merge()
