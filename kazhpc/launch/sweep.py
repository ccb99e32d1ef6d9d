"""``kazhpc sweep ... --cluster PROFILE``: every variant of a sweep submitted as ``kazhpc submit``
would, as one SLURM array per step when the variants share their step plan.

Variants that differ in what their stages compute (a learning rate, a tokenizer, K) have the same
steps: names, resources and commands (which read ``$RUN_DIR``). Each such step is then one array
with a task per variant, task *i* running variant *i*'s run directory, and each array waits for
the one before task by task (``aftercorr``: variant 2's SFT starts once variant 2's CPT is done,
whatever variant 1 is doing). A step that is an array itself (parts, corpus phases) cannot nest:
it is one array per variant, after that variant's task of the step before (``afterok:<id>_<i>``),
and the shared step after it waits for all of them. Variants
whose plans differ (other resources, other stages) are submitted one by one, as ``kazhpc submit``.

Each variant's run directory gets its own ``submission.json`` (its tasks' SLURM ids), so ``kazhpc
status``, ``cancel`` and ``submit --resume`` work on it as on any run; ``sweep.json`` in the sweep
folder lists the run directories and how they were submitted.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import astuple
from pathlib import Path
from typing import Any

from kazhpc.errors import KazhpcError
from kazhpc.launch.cluster import ClusterConfig, JobResources
from kazhpc.launch.steps import Step, container_step, python_of
from kazhpc.launch.submit import ShellStep, Submission, prepare_submission, step_executor, submit_steps, with_dependency
from kazhpc.sweep import SweepSpec, start_sweep

log = logging.getLogger(__name__)


def shared_plan(plans: list[list[Step]]) -> bool:
    """Whether every variant's steps are the same (names, resources, commands, order)."""
    return all(len(plan) == len(plans[0]) and all(astuple(a) == astuple(b) for a, b in zip(plan, plans[0]))
               for plan in plans[1:])


def submit_sweep(spec: SweepSpec, cluster: ClusterConfig, cluster_path: Path) -> Path:
    """Validate and preflight every variant, make their run directories, queue their steps; return
    the sweep folder. Refused by sbatch half-way: everything queued is cancelled, nothing is left."""
    sweep = start_sweep(spec)
    plans: list[Submission] = []
    try:
        for entry, variant in zip(sweep.record["variants"], sweep.variants):
            plans.append(prepare_submission(variant.cfg, cluster, cluster_path, tags=sweep.tags(variant), checked=True))
            entry["run_dir"] = str(plans[-1].run_dir)
        arrays = len(plans) > 1 and shared_plan([p.steps for p in plans])
        queued: list[str] = []
        try:
            if arrays:
                per_variant = _submit_as_arrays(plans, sweep.folder / "slurm" / "logs", queued)
            else:
                per_variant = []
                for plan in plans:
                    per_variant.append(submit_steps(plan.steps, plan.run_dir, plan.log_dir))
                    queued += [s["slurm_id"] for s in per_variant[-1]]
        except KazhpcError as exc:
            if queued:
                subprocess.run(["scancel", *queued], check=False)
            for plan in plans:
                plan.abandon(exc)
            raise KazhpcError(f"sweep {spec.name}: {exc}; cancelled what was queued, removed the variants' run directories") from None
    except BaseException:
        sweep.tracker.finish_pipeline("FAILED")
        for entry in sweep.record["variants"]:
            entry["status"] = "FAILED"
        sweep.write()
        raise
    for plan, entry, submitted in zip(plans, sweep.record["variants"], per_variant):
        plan.record(submitted)
        entry["status"] = "SUBMITTED"
    sweep.record["submission"] = {"cluster": cluster.name, "arrays": arrays,
                                  "compare": _submit_compare(plans[0], sweep.folder, per_variant)}
    sweep.write()
    log.info("sweep %s: %d variants submitted%s", spec.name, len(plans),
             " as one array per step" if arrays else " one after another")
    return sweep.folder


def _submit_as_arrays(plans: list[Submission], log_dir: Path, queued: list[str]) -> list[list[dict[str, Any]]]:
    """The shared steps, each one array over the variants (an array step: one array per variant);
    return each variant's submitted steps, as its submission.json records them."""

    run_dirs = [str(p.run_dir) for p in plans]
    per_variant: list[list[dict[str, Any]]] = [[] for _ in plans]
    ids: dict[str, list[str]] = {}  # step → each variant's SLURM id for it (an array task, or its own array)
    arrays: dict[str, str] = {}  # step → the id of its one array over the variants
    for step in plans[0].steps:
        after = [a for a in step.after if a in ids]
        if step.array:  # cannot nest: one array per variant, after that variant's steps before it
            ids[step.name] = []
            for index, plan in enumerate(plans):
                depend = ("afterok:" + ":".join(ids[a][index] for a in after)) if after else None
                (record,) = submit_steps([_after(step, depend)], plan.run_dir, plan.log_dir)
                record.update(after=list(step.after), dependency=depend)
                per_variant[index].append(record)
                ids[step.name].append(record["slurm_id"])
                queued.append(record["slurm_id"])
            continue
        # One task per variant: task i waits for task i of the arrays before (aftercorr); after
        # per-variant arrays, for all of them (afterok: SLURM has no per-task form across jobs).
        if after and all(a in arrays for a in after):
            depend = "aftercorr:" + ":".join(arrays[a] for a in after)
        else:
            depend = ("afterok:" + ":".join(i for a in after for i in ids[a])) if after else None
        executor = step_executor(step, with_dependency(step.extra, depend), log_dir)
        function = ShellStep(step.name, step.command, run_dirs, step.stage, step.preemption_signal)
        try:
            jobs = executor.map_array(function, list(range(len(plans))))
        except Exception as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise KazhpcError(f"sbatch refused step {step.name} ({reason})") from None
        array_id = jobs[0].job_id.split("_")[0]
        arrays[step.name], ids[step.name] = array_id, [job.job_id for job in jobs]
        queued.append(array_id)
        log.info("submitted %s as SLURM array %s (%d variants)%s", step.name, array_id, len(plans), f" {depend}" if depend else "")
        for index, (plan, job) in enumerate(zip(plans, jobs)):
            per_variant[index].append({
                "name": step.name, "job": step.job, "stage": step.stage, "phase": step.phase, "slurm_id": job.job_id,
                "array": None, "tasks": [job.job_id], "after": list(step.after), "dependency": depend,
                "logs": [str(job.paths.stdout)], "job_log": str(plan.run_dir / step.stage / "job.log"),
                "sweep_array": array_id,
            })
    return per_variant


#: What the sweep's last job asks for: it reads manifests and writes a table and a plot.
COMPARE_RESOURCES = JobResources(time=30, cpus=1, mem_gb=4)


def _submit_compare(plan: Submission, folder: Path, per_variant: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The sweep's last job: ``kazhpc compare`` once every variant has ended, failed ones too
    (afterany), so that the table, the plot and the end of the sweep's MLflow run need no one to
    come back for them. Not fatal if refused: ``kazhpc compare`` does the same by hand."""
    last = sorted({variant[-1].get("sweep_array") or variant[-1]["slurm_id"] for variant in per_variant})
    step = container_step(plan.cfg, plan.cluster, "compare", [python_of(plan.cluster), "-m", "kazhpc.cli", "compare", str(folder)],
                          COMPARE_RESOURCES, job="compare", stage="compare",
                          extra=with_dependency({}, "afterany:" + ":".join(last)))
    try:
        (record,) = submit_steps([step], folder, folder / "slurm" / "logs")
    except KazhpcError as exc:
        log.warning("sweep: the compare job was not queued (%s); run kazhpc compare %s once the variants end", exc, folder)
        return {"error": str(exc)}
    log.info("the comparison runs as SLURM job %s once every variant has ended", record["slurm_id"])
    return {"slurm_id": record["slurm_id"], "dependency": record["dependency"], "log": record["logs"][0]}


def _after(step: Step, dependency: str | None) -> Step:
    """The step with its dependency already spelled (submit_steps adds none: no ``after``)."""
    from dataclasses import replace

    return replace(step, after=(), extra=with_dependency(step.extra, dependency))
