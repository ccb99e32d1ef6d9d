"""Reuse of finished parts (SLURM array tasks), only while their inputs are unchanged.

A part is done when its marker file exists (written last by the part itself); beside it,
``inputs.json`` records what the part was made from (``kazhpc.fingerprint.job_inputs``). Before a
merge, every part that is missing, or was made from other inputs, is (re)run in the merging
process, so a merge never mixes parts of an old and a new input file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from kazhpc.fingerprint import changes

log = logging.getLogger(__name__)

INPUTS = "inputs.json"


def record_inputs(folder: Path, inputs: dict[str, Any]) -> None:
    (folder / INPUTS).write_text(json.dumps(inputs, indent=1, sort_keys=True), encoding="utf-8")


def recorded_inputs(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / INPUTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_missing_parts(
    job: str,
    count: int,
    folder_of: Callable[[int], Path],
    marker: str,
    run_part: Callable[[int], Path],
    inputs: dict[str, Any],
) -> None:
    """Run every part of ``job`` that is not done with these ``inputs``; reuse the others."""
    for index in range(count):
        folder = folder_of(index)
        if (folder / marker).is_file():
            said = changes(recorded_inputs(folder), inputs)
            if not said:
                log.info("%s part %d/%d already done with these inputs: reused", job, index, count)
                continue
            log.warning("%s part %d/%d: made from other inputs, rerun: %s", job, index, count, "; ".join(said))
            (folder / marker).unlink()
        record_inputs(run_part(index), inputs)
