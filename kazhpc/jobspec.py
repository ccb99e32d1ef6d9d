"""What a job type is, and what a running job gets.

A :class:`Job` is a job type's spec (its run, preflight and parts functions, what it reads from
earlier jobs); the registry of all of them is kazhpc.runner.registry. A :class:`JobContext` is what
one running job receives: its config, its folder in the run directory, its tracking run, and the
fingerprint of its inputs. Jobs talk to each other only through the run directory's manifests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from kazhpc.errors import KazhpcError, read_json_file

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.tracking import JobRun


@dataclass(frozen=True)
class Job:
    """A job type: ``run`` does the work and returns its manifest; ``preflight`` checks the config
    without loading models or touching a GPU, and returns warnings (errors are raised)."""

    name: str
    run: Callable[[JobContext], dict[str, Any]]
    preflight: Callable[[PipelineConfig], list[str]]
    #: For jobs that split into parts (SLURM array tasks): do part i of n into the job's folder.
    part: Callable[[PipelineConfig, Path, int, int], Path] | None = None
    #: Earlier jobs whose outputs this one reads (when they are in the pipeline): their
    #: fingerprints are part of this job's inputs, so redoing one of them redoes this one.
    needs: tuple[str, ...] = ()
    #: Input files the job reads that its own config section does not name.
    extra_inputs: Callable[[PipelineConfig], list[str]] | None = None


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
