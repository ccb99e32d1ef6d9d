"""A submitted run's record, ``<run>/submission.json``: every attempt (the first submission and
each ``--resume``) with its steps, SLURM ids, dependencies and log paths. Written by
kazhpc.launch.submit, read by it and by kazhpc.launch.status.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kazhpc.errors import KazhpcError

SUBMISSION = "submission.json"


def submission_path(run_dir: Path) -> Path:
    return run_dir / SUBMISSION


def read_submission(run_dir: Path) -> dict[str, Any]:
    path = submission_path(run_dir)
    if not path.is_file():
        raise KazhpcError(f"{run_dir}: no {SUBMISSION} (this run was not submitted with kazhpc submit)")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise KazhpcError(f"{path}: unreadable ({str(exc).splitlines()[0]}); kazhpc submit writes this file") from None
    if not isinstance(record, dict) or not isinstance(record.get("attempts"), list) or not record.get("cluster_file"):
        raise KazhpcError(f"{path}: not a kazhpc submission record (no 'attempts' list or 'cluster_file')")
    return record


def latest_steps(submission: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each step's most recent submission (a resumed step replaces the failed one)."""
    steps: dict[str, dict[str, Any]] = {}
    for attempt in submission.get("attempts", []):
        for step in attempt["steps"]:
            steps[step["name"]] = {**step, "attempt_time": attempt["time"]}
    return steps
