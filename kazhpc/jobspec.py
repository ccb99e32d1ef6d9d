"""What a running job gets (the job types themselves are listed in kazhpc.registry).

A :class:`JobContext` is what one running stage receives: its config (as the stage sees it: its
job type's section is the stage's own), its folder in the run directory, the folders of the earlier
stages it reads, its tracking run, and the inputs its output is made from. Stages talk to each other
only through those folders and their manifests (:func:`read_manifest`).
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
    """What a running stage gets: its config, where to write, what it reads, and where to log."""

    cfg: PipelineConfig
    run_dir: Path
    job_dir: Path
    tracking: JobRun
    #: What this stage's output is made from (kazhpc.fingerprint.job_inputs): parts done with
    #: other inputs are rerun, not reused.
    inputs: dict[str, Any] = field(default_factory=dict)
    #: Job type → the folder of the earlier stage this one reads (PipelineConfig.upstream).
    upstream: dict[str, Path] = field(default_factory=dict)

    def manifest_of(self, job: str) -> dict[str, Any]:
        """The manifest of the earlier stage of job type ``job`` this stage reads (the only way
        stages pass results to each other)."""
        if job not in self.upstream:
            raise KazhpcError(f"{self.job_dir.name}: no {job} stage before it in this pipeline")
        return read_manifest(self.upstream[job])

    def upstream_dir(self, job: str) -> Path | None:
        """The folder of the earlier stage of job type ``job`` this stage reads, if any."""
        return self.upstream.get(job)


def read_manifest(stage_dir: Path) -> dict[str, Any]:
    path = stage_dir / "manifest.json"
    if not path.is_file():
        raise KazhpcError(f"{path}: stage '{stage_dir.name}' has not completed in this run directory")
    return read_json_file(path, f"the {stage_dir.name} stage's manifest")
