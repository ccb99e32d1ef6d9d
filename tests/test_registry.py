"""The registry of job types is the one list: the config schema, the jobs/ entry points, the CLI,
the cluster profiles and the step plan agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import CONFIGS, REPO, write_yaml
from kazhpc.registry import JOB_TYPES, job_type


def test_config_knows_exactly_the_registered_jobs_with_a_section_each() -> None:
    from kazhpc.config import JOB_NAMES, PipelineConfig

    assert tuple(j.name for j in JOB_TYPES) == JOB_NAMES
    for job in JOB_TYPES:
        assert job.section in PipelineConfig.model_fields, job.name


def test_every_job_has_one_entry_point_and_every_entry_point_a_job() -> None:
    calls = {}
    for script in sorted((REPO / "jobs").glob("*.py")):
        found = re.findall(r"""job_entry\(\s*["']([^"']+)["']""", script.read_text(encoding="utf-8"))
        assert len(found) == 1, f"{script} calls job_entry {len(found)} times"
        calls[f"jobs/{script.name}"] = found[0]
    assert calls == {job.script: job.name for job in JOB_TYPES}


def test_every_job_has_its_command() -> None:
    from typer.main import get_command

    from kazhpc.cli import app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    for job in JOB_TYPES:
        assert job.name in commands, job.name
        options = {o for p in commands[job.name].params for o in getattr(p, "opts", [])}
        assert "--run-dir" in options and ("--shard" in options) == job.splits, (job.name, options)


def test_adapters_define_what_their_entry_promises() -> None:
    for job in JOB_TYPES:
        adapter = job.adapter()
        assert callable(adapter.preflight) and callable(adapter.run), job.name
        assert callable(getattr(adapter, "run_part", None)) == job.splits, job.name
        assert all(needed in {j.name for j in JOB_TYPES} for needed in job.needs), job.name


def test_cluster_profiles_take_each_job_and_refuse_others(tmp_path: Path) -> None:
    from kazhpc.errors import ConfigError
    from kazhpc.launch.cluster import load_cluster

    jobs = "\n".join(f"  {j.name}: {{time: '00:10:00', cpus: 1, mem_gb: 1}}" for j in JOB_TYPES)
    base = (CONFIGS / "clusters" / "local.yaml").read_text(encoding="utf-8").split("\njobs:")[0]
    profile = load_cluster(write_yaml(tmp_path / "all.yaml", f"{base}\njobs:\n{jobs}\n"))
    assert all(profile.resources(j.name).cpus == 1 for j in JOB_TYPES)
    with pytest.raises(ConfigError, match="unknown job 'trian'"):
        load_cluster(write_yaml(tmp_path / "bad.yaml", f"{base}\njobs:\n{jobs}\n  trian: {{time: '00:10:00'}}\n"))


def test_the_step_plan_reads_splitting_distribution_and_preemption_from_the_registry() -> None:
    from kazhpc.config import load_config
    from kazhpc.launch.cluster import load_cluster
    from kazhpc.launch.steps import slurm_steps

    cfg = load_config(CONFIGS / "pipelines" / "smoke.yaml", ["preprocess.shards=2", "evaluate.shards=2"])
    steps = slurm_steps(cfg, load_cluster(CONFIGS / "clusters" / "local.yaml"))
    arrays = {s.job for s in steps if s.array}
    assert arrays == {j.name for j in JOB_TYPES if j.splits and j.name in cfg.stage_names}
    preempting = {s.job for s in steps if s.preemption_signal}
    assert preempting == {j.name for j in JOB_TYPES if j.preemptible and j.name in cfg.stage_names}
    for step in steps:
        assert any(job_type(step.job).script in line for line in step.command), step.name


def test_an_unknown_job_name_suggests_the_closest() -> None:
    from kazhpc.errors import KazhpcError

    with pytest.raises(KazhpcError, match=r"unknown job 'evalute' \(did you mean 'evaluate'\?\)"):
        job_type("evalute")
