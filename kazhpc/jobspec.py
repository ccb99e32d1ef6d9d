"""What a running job gets (the job types themselves are listed in kazhpc.registry).

A :class:`JobContext` is what one running job receives: its config, its folder in the run
directory, its tracking run, and the inputs its output is made from. Jobs talk to each other only
through the run directory's manifests (:func:`read_manifest`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError, read_json_file

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.tracking import JobRun


@dataclass
class JobContext:
    """What a running job gets: its config, where to write, and where to log."""

    cfg: PipelineConfig
    run_dir: Path
    job_dir: Path
    tracking: JobRun
    #: What this job's output is made from (kazhpc.fingerprint.job_inputs): parts done with
    #: other inputs are rerun, not reused.
    inputs: dict[str, Any] = field(default_factory=dict)

    def manifest_of(self, job: str) -> dict[str, Any]:
        """Another job's manifest (the only way jobs pass results to each other)."""
        return read_manifest(self.run_dir, job)


def read_manifest(run_dir: Path, job: str) -> dict[str, Any]:
    path = run_dir / job / "manifest.json"
    if not path.is_file():
        raise KazhpcError(f"{path}: job '{job}' has not completed in this run directory")
    return read_json_file(path, f"the {job} job's manifest")
