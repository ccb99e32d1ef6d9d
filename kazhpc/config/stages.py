"""A pipeline's stages: each a name, a job type and its own config section.

The same job type may run several times (``train-cpt`` then ``train-sft``; an ``evaluate`` after
each). A stage's section is the top-level section of its job type with the stage's ``with:`` keys
merged over it, validated by the same schema, so the shared settings are written once. A stage
reads the outputs of earlier stages: for each job type its job needs (kazhpc.registry), the stage
named in ``uses:``, else the latest earlier stage of that type.

The older form ``jobs: [prepare-model, preprocess, train]`` still loads: one stage per job type,
named as the type.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, field_validator

from kazhpc.config.messages import suggest
from kazhpc.config.paths import NAME_PATTERN, Strict, repeated
from kazhpc.registry import JOB_TYPES

JOB_NAMES: tuple[str, ...] = tuple(job.name for job in JOB_TYPES)
#: Folders of a run directory that are not stages.
RESERVED_NAMES = ("tracking", "slurm", "logs")


def known_job(job: str) -> str:
    """``job`` if the registry has it, else ValueError naming the closest."""
    if job not in JOB_NAMES:
        raise ValueError(f"unknown job '{job}'{suggest(job, JOB_NAMES)}; known: {', '.join(JOB_NAMES)}")
    return job


class StageConfig(Strict):
    """One stage: its name (its folder, MLflow child run and SLURM job), its job type, the earlier
    stages it reads, and the keys of its section that differ from the top-level one."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    job: str = Field(description="its job type (kazhpc.registry)")
    uses: list[str] = Field(default_factory=list, description="earlier stages it reads (default: the latest of each type it needs)")
    settings: dict[str, Any] = Field(default_factory=dict, alias="with", description="its section's keys over the top-level section")

    @field_validator("job")
    @classmethod
    def _known_job(cls, job: str) -> str:
        return known_job(job)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_NAMES:
            raise ValueError(f"stage name '{name}' is a folder of every run directory; choose another")
        return name


def stages_from_jobs(data: Any) -> Any:
    """The older ``jobs: [...]`` form as stages (one per job type, named as it), before validation."""
    if not isinstance(data, dict) or "jobs" not in data:
        return data
    if "stages" in data:
        raise ValueError("give either stages: (named stages) or jobs: (one stage per job type), not both")
    data = dict(data)
    jobs = data.pop("jobs")
    if not isinstance(jobs, list) or not jobs or not all(isinstance(j, str) for j in jobs):
        raise ValueError("jobs: expected a list of job names, e.g. [preprocess, train]")
    for job in jobs:
        try:
            known_job(job)
        except ValueError as exc:
            raise ValueError(f"jobs: {exc}") from None
    twice = repeated(jobs)
    if twice:
        raise ValueError(
            f"jobs: job listed twice: {', '.join(twice)}; to run a job type more than once, list named "
            f"stages instead, e.g. stages: [{{name: {twice[0]}-1, job: {twice[0]}}}, {{name: {twice[0]}-2, job: {twice[0]}}}]"
        )
    data["stages"] = [{"name": job, "job": job} for job in jobs]
    return data


def resolved_keys(given: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``given`` with their values from ``resolved`` (the validated section): a stage's
    ``with:`` as the resolved config stores it, its paths absolute like every other path, so a SLURM
    step that reloads config.yaml elsewhere opens the very files that were checked."""
    out: dict[str, Any] = {}
    for key, value in given.items():
        done = resolved.get(key, value)
        out[key] = resolved_keys(value, done) if isinstance(value, dict) and isinstance(done, dict) else done
    return out


def upstream_stages(stages: list[StageConfig], index: int) -> dict[str, str]:
    """For stage ``index``: job type → the earlier stage whose outputs it reads (its ``uses:``,
    else the latest earlier stage of each type its job needs)."""
    from kazhpc.registry import job_type

    stage = stages[index]
    earlier = {s.name: s for s in stages[:index]}
    chosen: dict[str, str] = {}
    for name in stage.uses:
        if name not in earlier:
            later = any(s.name == name for s in stages[index:])
            why = "comes after it" if later else f"is not a stage{suggest(name, list(earlier))}"
            raise ValueError(f"stages.{stage.name}.uses: '{name}' {why}; a stage reads only earlier stages")
        kind = earlier[name].job
        if kind not in job_type(stage.job).needs:
            raise ValueError(
                f"stages.{stage.name}.uses: '{name}' is {'an' if kind[0] in 'aeiou' else 'a'} {kind} stage, which "
                f"{'an' if stage.job[0] in 'aeiou' else 'a'} {stage.job} stage does not read "
                f"(it reads {', '.join(job_type(stage.job).needs) or 'no earlier stage'})"
            )
        if kind in chosen:
            raise ValueError(f"stages.{stage.name}.uses: two {kind} stages ({chosen[kind]}, {name}); name one")
        chosen[kind] = name
    for kind in job_type(stage.job).needs:
        if kind not in chosen:
            latest = [s.name for s in stages[:index] if s.job == kind]
            if latest:
                chosen[kind] = latest[-1]
    return chosen
