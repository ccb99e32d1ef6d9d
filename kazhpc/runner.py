"""The pipeline runner: run directories, running stages in order, and reusing what is unchanged.

A run directory (``<runs_root>/<name>-<time>-<hash>/``) holds ``config.yaml`` (the resolved config),
``run.json`` (each stage's state, under ``jobs``) and one folder per stage with its outputs and
``manifest.json``. Stages talk only through those files, so any stage can be rerun alone, here
(``kazhpc run --only STAGE``) or as a SLURM step (``python jobs/<job>.py --run-dir ... [--stage S]``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

from kazhpc.config import PipelineConfig, dump_yaml, flatten, load_config
from kazhpc.errors import Interrupted, KazhpcError, Preempted, read_json_file
from kazhpc.fingerprint import changes, fingerprint, job_inputs
from kazhpc.jobspec import JobContext, read_manifest
from kazhpc.parts import record_inputs
from kazhpc.registry import job_type
from kazhpc.summary import headline
from kazhpc.tracking import SystemMetrics, Tracker, global_rank, node_id, run_tags

log = logging.getLogger("kazhpc")


def upstream_dirs(cfg: PipelineConfig, run_dir: Path, stage: str) -> dict[str, Path]:
    """Job type → the folder of the earlier stage that ``stage`` reads."""
    return {kind: run_dir / name for kind, name in cfg.upstream(stage).items()}


def inputs_of(cfg: PipelineConfig, run_dir: Path, stage: str) -> dict[str, Any]:
    """What ``stage`` of this run is made from now: its section, its files, its upstream stages."""
    job = job_type(cfg.stage(stage).job)
    view = cfg.for_stage(stage)
    upstream = {}
    for kind, folder in upstream_dirs(cfg, run_dir, stage).items():
        manifest = folder / "manifest.json"
        # Keyed by job type while the stage is named as it (the one-stage-per-type form, whose
        # manifests from before named stages existed say the same).
        key = kind if folder.name == kind else f"{kind}:{folder.name}"
        upstream[key] = read_json_file(manifest, f"the {folder.name} stage's manifest").get("fingerprint", "?") if manifest.is_file() else "not run"
    extra_inputs = getattr(job.adapter(), "extra_inputs", None)
    extra = extra_inputs(view) if extra_inputs else []
    return job_inputs(view.resolved_dict(), job.section, extra, upstream)


def up_to_date(cfg: PipelineConfig, run_dir: Path, stage: str) -> tuple[bool, list[str]]:
    """(True, []) when ``stage`` COMPLETED in this run from exactly today's inputs; else
    (False, what changed)."""
    if read_state(run_dir).get("jobs", {}).get(stage, {}).get("status") != "COMPLETED":
        return False, ["not completed"]
    if not (run_dir / stage / "manifest.json").is_file():
        return False, ["no manifest"]
    said = changes(read_manifest(run_dir / stage).get("inputs"), inputs_of(cfg, run_dir, stage))
    return not said, said


def preflight(cfg: PipelineConfig, stages: list[str] | None = None) -> list[str]:
    """Every check that needs no GPU, for every stage (or those named); returns the warnings."""
    warnings: list[str] = []
    for name in stages or cfg.stage_names:
        adapter = job_type(cfg.stage(name).job).adapter()
        warnings += [f"{name}: {w}" for w in adapter.preflight(cfg.for_stage(name))]
    return warnings


# --------------------------------------------------------------------------------------------
# Run directories.


def new_run_dir(cfg: PipelineConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = cfg.runs_root / f"{cfg.name}-{stamp}-{secrets.token_hex(3)}"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    _update_state(path, lambda s: s.update(name=cfg.name, config_hash=cfg.config_hash(), created=time.time()))
    return path


def open_run_dir(path: Path) -> PipelineConfig:
    """The resolved config a run directory was created with."""
    config = path / "config.yaml"
    if not config.is_file():
        raise KazhpcError(f"{path}: not a kazhpc run directory (no config.yaml)")
    return load_config(config)


def append_stage(run_dir: Path, job: str, overrides: list[str]) -> tuple[PipelineConfig, str]:
    """``kazhpc export RUN``: a finished run gains a stage of ``job`` (reading the run's latest
    stages), its ``overrides`` (``<section>.key=value`` only: the earlier stages keep the run's
    config) as the stage's ``with:``; config.yaml and the run's config hash are updated. A stage of
    that type it has already, with no overrides, is run again instead."""
    import yaml

    cfg = open_run_dir(run_dir)
    section = job.replace("-", "_")
    if cfg.stages_of(job) and not overrides:
        return cfg, cfg.stages_of(job)[-1].name
    for override in overrides:
        key, sep, _ = override.partition("=")
        if not sep or not key.startswith(f"{section}.") or key == f"{section}.":
            raise KazhpcError(f"{override}: with a run directory, give {section}.KEY=VALUE only (the earlier stages keep the run's config)")
    data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    taken = set(cfg.stage_names)
    name = next(n for n in (job, *(f"{job}-{i}" for i in range(2, 100))) if n not in taken)
    data["stages"].append({"name": name, "job": job, "with": {}})
    candidate = run_dir / "config.next.yaml"
    candidate.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    try:  # the overrides as the new stage's with: keys, parsed and checked by the config loader
        cfg = load_config(candidate, [f"stages.{name}.with.{o.removeprefix(section + '.')}" for o in overrides])
    finally:
        candidate.unlink()
    (run_dir / "config.yaml").write_text(dump_yaml(cfg), encoding="utf-8")
    _update_state(run_dir, lambda s: s.update(config_hash=cfg.config_hash()))
    log.info("%s: added stage %s (%s) to the run's config.yaml", run_dir, name, job)
    return cfg, name


def read_state(run_dir: Path) -> dict[str, Any]:
    state = run_dir / "run.json"
    return read_json_file(state, "the run's state file") if state.is_file() else {}


def _update_state(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Read-modify-write run.json under a lock (array tasks may finish at the same moment)."""
    state_file = run_dir / "run.json"
    with FileLock(str(state_file) + ".lock", timeout=60):
        state = read_state(run_dir)
        state.setdefault("jobs", {})
        change(state)
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, state_file)


def set_job_state(run_dir: Path, job: str, **fields: Any) -> None:
    _update_state(run_dir, lambda s: s["jobs"].setdefault(job, {}).update(fields))


# --------------------------------------------------------------------------------------------
# Running.


def run_pipeline(
    cfg: PipelineConfig, run_dir: Path | None = None, only: list[str] | None = None, force: bool = False,
    tags: dict[str, str] | None = None, on_run_dir: Callable[[Path], None] | None = None,
) -> Path:
    """Run the configured stages (or ``only`` those) in order in this process; return the run dir.
    ``tags``: more tags for its MLflow run (a sweep's); ``on_run_dir`` is told the run directory
    before the first stage starts.

    Joining a run directory resumes it: a stage that completed from exactly today's inputs is
    reused, one whose inputs changed since (a source file edited, an upstream stage redone) runs
    again. Stages named in ``only`` always run (their unchanged parts are still reused);
    ``force`` redoes the selected stages from scratch, parts included."""
    selected = only or cfg.stage_names
    unknown = [j for j in selected if j not in cfg.stage_names]
    if unknown:
        raise KazhpcError(f"--only {', '.join(unknown)}: not among this config's stages ({', '.join(cfg.stage_names)})")
    selected = [s for s in cfg.stage_names if s in selected]  # in pipeline order
    for warning in preflight(cfg):
        log.warning(warning)
    if run_dir is not None:
        # Both sides hashed by this code: a stored hash from an older kazhpc (a field added since,
        # with its default) must not make a run's own jobs refuse its own config.yaml.
        own = open_run_dir(run_dir).config_hash()
        if own != cfg.config_hash():
            raise KazhpcError(
                f"{run_dir}: created with another config (hash {own}, this one {cfg.config_hash()}); "
                "join it with --run-dir alone, or start a new run"
            )
    if run_dir is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise KazhpcError("a job launched as several processes needs --run-dir: its ranks must share one run directory")
    run_dir = run_dir or new_run_dir(cfg)
    tracker = Tracker(cfg.tracking, cfg.runs_root, run_dir)
    tags = {**run_tags(cfg.config_hash()), **(tags or {})}
    tracker.start_pipeline(cfg.name, flatten(cfg.resolved_dict()), tags, run_dir / "config.yaml")
    tags.pop("mlflow.parentRunId", None)  # the stages' parent is this run, not the sweep's
    if on_run_dir is not None:
        on_run_dir(run_dir)
    status = "FINISHED"
    joined = read_state(run_dir).get("jobs", {})
    try:
        for name in selected:
            if force:
                shutil.rmtree(run_dir / name / "parts", ignore_errors=True)
            elif joined.get(name, {}).get("status") == "COMPLETED" and not only:
                current, said = up_to_date(cfg, run_dir, name)
                if current:
                    log.info("job %s: completed earlier from the same inputs: reused", name)
                    continue
                log.warning("job %s: completed earlier, but %s: running it again", name, "; ".join(said))
            run_job(cfg, run_dir, tracker, name, tags)
    except KeyboardInterrupt:
        status = "KILLED"
        stopped = [n for n, s in read_state(run_dir).get("jobs", {}).items() if s.get("status") == "INTERRUPTED"]
        what = f"job {stopped[-1]} of {run_dir}" if stopped else str(run_dir)
        again = "".join(f" --only {n}" for n in only or [])
        raise Interrupted(f"interrupted: {what}; resume with: kazhpc run --run-dir {run_dir}{again}") from None
    except BaseException:
        status = "FAILED"
        raise
    finally:
        jobs = read_state(run_dir).get("jobs", {})
        if status != "FINISHED" or all(jobs.get(j, {}).get("status") == "COMPLETED" for j in cfg.stage_names):
            tracker.finish_pipeline(status)
    return run_dir


def log_file(path: Path) -> logging.Handler:
    """Every log record, kazhpc's and third-party's (warnings included), into ``path`` while a stage
    or one of its parts runs; the console shows kazhpc's own (kazhpc.console.ours_or_serious)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def close_log_file(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


def run_job(cfg: PipelineConfig, run_dir: Path, tracker: Tracker, name: str, tags: dict[str, str]) -> dict[str, Any]:
    """Run one stage: its folder, its child run, its log file, its manifest."""
    import transformers

    kind = cfg.stage(name).job
    spec = job_type(kind)
    job = spec.adapter()
    job_dir = run_dir / name
    job_dir.mkdir(parents=True, exist_ok=True)
    inputs = inputs_of(cfg, run_dir, name)
    view = cfg.for_stage(name)
    upstream = upstream_dirs(cfg, run_dir, name)
    tags = {**tags, "kazhpc.job": kind, "kazhpc.stage": name}
    if global_rank() != 0:
        # Other ranks of a distributed job train alongside rank 0 and exit: rank 0 alone writes
        # run.json, the manifest, the log file and the MLflow run; another node's first process
        # adds that node's system metrics to it.
        transformers.set_seed(cfg.seed)
        node = node_id() if spec.system_metrics and os.environ.get("LOCAL_RANK", "0") == "0" else None
        with SystemMetrics(tracker.attach(name), cfg.tracking.system_metrics_s, node=node) if node else contextlib.nullcontext():
            return job.run(JobContext(view, run_dir, job_dir, tracker.job(name, {}, tags), inputs, upstream))
    handler = log_file(job_dir / "job.log")
    tracking = tracker.job(name, flatten(view.resolved_dict()), tags)
    tracking.log_artifact(run_dir / "config.yaml")
    set_job_state(run_dir, name, status="RUNNING", started=time.time(), slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                   pid=os.getpid(), host=socket.gethostname())
    log.info("job %s%s: started in %s", name, "" if kind == name else f" ({kind})", job_dir)
    started = time.time()
    try:
        transformers.set_seed(cfg.seed)
        with SystemMetrics(tracking, cfg.tracking.system_metrics_s, node=node_id()) if spec.system_metrics else contextlib.nullcontext():
            manifest = job.run(JobContext(view, run_dir, job_dir, tracking, inputs, upstream))
        manifest = {"job": kind, "stage": name, "upstream": {k: p.name for k, p in upstream.items()}, "config_hash": cfg.config_hash(), "seconds": round(time.time() - started, 2),
                    **manifest, "fingerprint": fingerprint(inputs), "inputs": inputs}
        (job_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        tracking.log_artifact(job_dir / "manifest.json")
        tracking.finish("FINISHED")
        set_job_state(run_dir, name, status="COMPLETED", finished=time.time())
        said = headline(kind, manifest)
        log.info("job %s: completed in %.1f s%s", name, time.time() - started, f": {said}" if said else "")
        return manifest
    except BaseException as exc:
        preempted = isinstance(exc, Preempted)  # saved a checkpoint and asked to be requeued
        interrupted = isinstance(exc, KeyboardInterrupt)
        error = "interrupted (Ctrl-C)" if interrupted else f"{type(exc).__name__}: {exc}"
        tracking.set_tags({"kazhpc.error": error[:5000]})
        tracking.finish("KILLED" if preempted or interrupted else "FAILED")
        status = "PREEMPTED" if preempted else "INTERRUPTED" if interrupted else "FAILED"
        set_job_state(run_dir, name, status=status, finished=time.time(), error=error)
        raise
    finally:
        close_log_file(handler)
        if (job_dir / "job.log").is_file():
            tracking.log_artifact(job_dir / "job.log")


def parse_part(spec: str) -> tuple[int, int]:
    """'1/4' → (1, 4), with a clear error for anything else."""
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise KazhpcError(f"--shard {spec!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= index < count:
        raise KazhpcError(f"--shard {spec!r}: i must be in 0..n-1")
    return index, count


def task_key(stage: str, index: int, count: int, phase: str | None = None) -> str:
    """run.json's key for one part of a stage (``preprocess[0/2]``) or one task of a phase
    (``corpus:filter[0/2]``); kazhpc status reads them back (kazhpc.launch.status)."""
    return f"{stage}{f':{phase}' if phase else ''}[{index}/{count}]"


def stage_of_job(cfg: PipelineConfig, job: str, stage: str | None) -> str:
    """The stage a `kazhpc <job>` command (or jobs/<job>.py) runs: the one named, else the stage
    named as the job type, else the only stage of that type."""
    if stage is not None:
        if cfg.stage(stage).job != job:
            raise KazhpcError(f"--stage {stage}: a {cfg.stage(stage).job} stage, not a {job} stage")
        return stage
    of_type = [s.name for s in cfg.stages_of(job)]
    if job in of_type or len(of_type) == 1:
        return job if job in of_type else of_type[0]
    if not of_type:
        raise KazhpcError(f"job '{job}' is not in this config's stages ({', '.join(cfg.stage_names)})")
    raise KazhpcError(f"{len(of_type)} stages run {job} ({', '.join(of_type)}); name one with --stage")


def run_single(
    job: str,
    config: Path | None,
    overrides: list[str],
    run_dir: Path | None = None,
    shard: str | None = None,
    stage: str | None = None,
    phase: str | None = None,
) -> tuple[Path, str]:
    """Run one stage of a pipeline (all of it, or with ``shard='i/n'`` one part of it, or with
    ``phase`` as well one task of that phase); return the run directory and the stage's name.

    With ``run_dir`` the stage joins an existing run (its config.yaml and its MLflow parent run);
    parts always do, since the parts and the merge that follows must share one folder.
    """
    if run_dir is not None:
        if overrides:
            raise KazhpcError("--run-dir uses the run's own config.yaml; overrides are not allowed with it")
        cfg = open_run_dir(run_dir)
    elif config is not None:
        cfg = load_config(config, overrides)
    else:
        raise KazhpcError("give a CONFIG or --run-dir")
    name = stage_of_job(cfg, job, stage)
    spec = job_type(job)
    if phase is not None and not spec.phased:
        raise KazhpcError(f"job '{job}' has no phases; drop --phase")
    if shard is None and phase is None:
        return run_pipeline(cfg, run_dir=run_dir, only=[name]), name
    if not spec.splits and not spec.phased:
        raise KazhpcError(f"job '{job}' does not split into parts; drop --shard")
    if run_dir is None:
        raise KazhpcError(f"--{'phase' if phase else 'shard'} needs --run-dir: the tasks and the stage's last step share one run directory")
    index, count = parse_part(shard or "0/1")
    adapter = spec.adapter()
    view = cfg.for_stage(name)
    if phase is not None:
        tasks = adapter.phase_tasks(view)
        if phase not in tasks:
            raise KazhpcError(f"--phase {phase}: {name} has the phases {', '.join(tasks)}")
        if count != tasks[phase]:
            raise KazhpcError(f"--shard {shard}: {name}'s phase {phase} has {tasks[phase]} tasks, not {count}")
    for warning in preflight(cfg, [name]):
        log.warning(warning)
    job_dir = run_dir / name
    part = task_key(name, index, count, phase)
    set_job_state(run_dir, part, status="RUNNING", started=time.time(), slurm_job_id=os.environ.get("SLURM_JOB_ID"))
    inputs = inputs_of(cfg, run_dir, name)  # before the part reads them
    upstream = upstream_dirs(cfg, run_dir, name)
    handler = log_file(job_dir / "logs" / f"{part.replace('/', '-of-')}.log")  # corpus:filter[0-of-3].log
    try:
        if phase is not None:
            adapter.run_phase(view, job_dir, phase, index, upstream, inputs)
        else:
            record_inputs(adapter.run_part(view, job_dir, index, count, upstream), inputs)
    except BaseException as exc:
        set_job_state(run_dir, part, status="FAILED", finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        close_log_file(handler)
    set_job_state(run_dir, part, status="COMPLETED", finished=time.time())
    return run_dir, name


def job_entry(job: str, argv: list[str] | None = None) -> int:
    """What ``jobs/<job>.py`` runs: one stage of a pipeline, e.g. as a SLURM step.

    ``python jobs/<job>.py CONFIG [key=value ...]``, or ``--run-dir DIR`` to join an existing run,
    plus ``--stage NAME`` where several stages run this job type, and ``--shard i/n`` for one part
    of a job that splits (an array task), or with ``--phase NAME`` one task of one phase.
    """
    import argparse

    from kazhpc.console import report_errors, setup_logging

    parser = argparse.ArgumentParser(prog=f"jobs/{Path(sys.argv[0]).name}", description=job_entry.__doc__)
    parser.add_argument("config", nargs="?", type=Path, help="pipeline config (omit with --run-dir)")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    parser.add_argument("--run-dir", type=Path, help="join this run directory")
    parser.add_argument("--stage", help="the stage to run (default: the one of this job type)")
    parser.add_argument("--shard", help="i/n: do part i of n (with --run-dir)")
    parser.add_argument("--phase", help="with --shard i/n: task i of this phase's n (a job with phases: corpus)")
    args = parser.parse_args(argv)
    setup_logging()
    with report_errors():
        run_single(job, args.config, args.overrides, args.run_dir, args.shard, args.stage, args.phase)
    return 0
