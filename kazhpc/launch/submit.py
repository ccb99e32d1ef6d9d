"""``kazhpc submit``: the pipeline as chained SLURM jobs through submitit, and ``--resume``.

Each step of :func:`kazhpc.launch.steps.slurm_steps` becomes one SLURM job (a job array for parts), chained
with ``afterok`` dependencies and ``kill-on-invalid-dep`` (a failed job cancels its dependants
instead of leaving them pending forever). The submission opens the run's MLflow parent run; each job
adds its child run when it starts (tagged with its SLURM ids by kazhpc.tracking.run_tags). What was
submitted is recorded in ``<run_dir>/submission.json``; ``kazhpc status`` reads it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kazhpc.config import PipelineConfig, flatten
from kazhpc.errors import ConfigError, KazhpcError
from kazhpc.launch.cluster import ClusterConfig
from kazhpc.launch.records import read_submission, submission_path
from kazhpc.launch.steps import RUN_DIR_VAR, Step, render, slurm_steps, step_warnings
from kazhpc.errors import PREEMPTED_EXIT_CODE
from kazhpc.signals import signal_number

log = logging.getLogger(__name__)


try:  # submitit requeues a Checkpointable job on preemption/timeout (USR2) instead of failing it
    from submitit.helpers import Checkpointable as _Requeueable
except ImportError:  # pragma: no cover - submitit is a hard dependency
    _Requeueable = object  # type: ignore[misc,assignment]


class StepFailed(RuntimeError):
    """A step's command exited non-zero (the job's own log says why)."""


class ShellStep(_Requeueable):  # type: ignore[misc,valid-type]
    """What a submitit job runs: the step's command lines in bash, with $RUN_DIR set.

    The command's output goes straight to the SLURM log (not buffered, unlike CommandFunction).

    Preemption (SLURM's warning signal ahead of the time limit, or `scancel --signal`): submitit's
    own handler would requeue and exit at once, and leaving ``subprocess`` kills the child, perhaps
    half-way through saving a checkpoint. So while the command runs, this process holds the signal:

    * a job that saves on it (train, ``preemption_signal``) gets it forwarded, and is waited for; it
      exits 75 (or, several ranks under torchrun, records PREEMPTED in run.json) once its checkpoint
      is on disk, and only then does submitit's handler requeue the job, which resumes from there;
    * any other job is stopped (SIGTERM) and requeued; it runs again from the start.

    Bash itself ignores the signal (``trap ''``; Python's handler in the train job replaces that)
    so that a signal sent to every process of the step does not kill the shell between the two.
    """

    def __init__(self, name: str, command: list[str], run_dir: str | list[str], job: str | None = None,
                 preemption_signal: str | None = None):
        self.name = name
        self.command = command
        #: One run directory, or one per array task (a sweep's variants, kazhpc.launch.sweep).
        self.run_dirs = [run_dir] if isinstance(run_dir, str) else list(run_dir)
        self.job = job or name
        self.preemption_signal = preemption_signal

    @property
    def run_dir(self) -> str:
        return self.run_dirs[0]

    def __call__(self, task: int | None = None) -> int:
        run_dir = self.run_dirs[task] if task is not None and len(self.run_dirs) > 1 else self.run_dirs[0]
        env = dict(os.environ, **{RUN_DIR_VAR: run_dir})
        signum = signal_number(self.preemption_signal or "USR2")
        script = f"set -euo pipefail\ntrap '' {signum.name.removeprefix('SIG')}\n" + "\n".join(self.command)
        started = time.time()
        process = subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True)
        received: list[int] = []

        def hold(sig: int, frame: Any) -> None:
            received.append(sig)
            log.warning("step %s: received %s; %s", self.name, signal.Signals(sig).name,
                        "passing it on and waiting for the checkpoint" if self.preemption_signal else "stopping it")
            _signal_group(process.pid, sig if self.preemption_signal else signal.SIGTERM)

        requeue_handler = signal.getsignal(signal.SIGUSR2)  # submitit's checkpoint_and_try_requeue
        previous = signal.signal(signum, hold)
        try:
            code = process.wait()
        except BaseException:
            _signal_group(process.pid, signal.SIGTERM)
            raise
        finally:
            signal.signal(signum, previous)
        if code == 0:
            return 0
        preempted = (code == PREEMPTED_EXIT_CODE or self._recorded_preempted(run_dir, since=started)
                     or bool(received and not self.preemption_signal))
        where = f"step {self.name}" + (f" task {task}" if task is not None else "")
        if preempted and callable(requeue_handler):
            log.warning("%s: preempted (exit %s); requeueing it through submitit", where, code)
            requeue_handler(signal.SIGUSR2, None)  # requeues and exits this process
        raise StepFailed(f"{where} exited with {code}" + (" (preempted, not requeued: not under submitit)" if preempted else ""))

    def _recorded_preempted(self, run_dir: str, since: float) -> bool:
        """Several ranks exit 75 each, but torchrun reports 1: run.json says what this attempt did
        (not an earlier one: a job that now crashes before it starts is not requeued for ever)."""
        from kazhpc.runner import read_state

        try:
            state = read_state(Path(run_dir)).get("jobs", {}).get(self.job, {})
        except (OSError, ValueError):
            return False
        return state.get("status") == "PREEMPTED" and float(state.get("finished") or 0) >= since


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the child leads its own process group (start_new_session)
    except ProcessLookupError:
        pass


def finished_jobs(cfg: PipelineConfig, run_dir: Path) -> list[str]:
    """Stages whose outputs can be reused: COMPLETED in run.json from exactly today's inputs (the
    section, its files, the upstream stages: kazhpc.runner.up_to_date)."""
    from kazhpc.runner import up_to_date

    return [stage for stage in cfg.stage_names if up_to_date(cfg, run_dir, stage)[0]]


def jobs_to_resume(cfg: PipelineConfig, run_dir: Path) -> list[str]:
    """From the first unfinished stage on (later stages may read its outputs, so they run again too)."""
    done = finished_jobs(cfg, run_dir)
    names = cfg.stage_names
    for index, stage in enumerate(names):
        if stage not in done:
            return names[index:]
    return []


def check_image(cluster: ClusterConfig) -> None:
    """An Apptainer image given as a path must be there before its jobs queue: `kazhpc submit`
    runs on a login node, which sees the file systems the compute nodes read it from (a
    docker://, oras:// or library:// URI is apptainer's to pull; a Docker tag, the daemon's)."""
    box = cluster.container
    if box.runtime == "apptainer" and box.image and "://" not in box.image and not Path(box.image).is_file():
        raise ConfigError(
            f"{cluster.where('container', 'image')}: container.image: {box.image} does not exist "
            f"(build it first: apptainer build {box.image} containers/kazhpc.def)"
        )


@dataclass
class Submission:
    """A run directory made ready for its SLURM steps: the steps, the MLflow parent run, the
    rendered sbatch scripts; :meth:`record` writes what was queued, :meth:`abandon` undoes it."""

    cfg: PipelineConfig
    cluster: ClusterConfig
    cluster_path: Path
    run_dir: Path
    jobs: list[str]
    steps: list[Step]
    tracker: Any
    parent_id: str | None
    attempt: int
    fresh: bool

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "slurm" / "logs"

    def abandon(self, exc: KazhpcError) -> KazhpcError:
        """sbatch refused a step (what was queued before it is cancelled by the caller): say why in
        MLflow, and remove a new run directory (nothing ran in it); return the error to raise."""
        from kazhpc.tracking import PARENT_KEY, JobRun

        if self.parent_id is not None:
            JobRun(self.tracker, PARENT_KEY, self.parent_id).set_tags({"kazhpc.error": str(exc)[:5000]})
            if self.fresh:
                self.tracker.finish_pipeline("FAILED")
        if not self.fresh:
            return exc
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return KazhpcError(f"{exc}; removed the new run directory {self.run_dir}")

    def record(self, submitted: list[dict[str, Any]]) -> None:
        """Append this attempt to submission.json (kazhpc status reads it) and tag the parent run."""
        from kazhpc.tracking import PARENT_KEY, JobRun

        path = submission_path(self.run_dir)
        record = read_submission(self.run_dir) if path.is_file() else {
            "run_dir": str(self.run_dir), "cluster": self.cluster.name,
            "cluster_file": str(Path(self.cluster_path).absolute()), "attempts": [],
        }
        record["attempts"].append({"time": time.time(), "jobs": self.jobs, "steps": submitted})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
        if self.parent_id is not None:  # the parent run names every SLURM job of the submission
            JobRun(self.tracker, PARENT_KEY, self.parent_id).set_tags(
                {"slurm.cluster_profile": self.cluster.name, f"slurm.submission.{self.attempt}":
                 ",".join(f"{s['name']}={s['slurm_id']}" for s in submitted)}
            )


def prepare_submission(
    cfg: PipelineConfig,
    cluster: ClusterConfig,
    cluster_path: Path,
    run_dir: Path | None = None,
    tags: dict[str, str] | None = None,
    checked: bool = False,
) -> Submission:
    """Everything before sbatch: preflight (unless ``checked``), the steps with every resource check,
    the image and sbatch at hand, then the run directory (new, or ``run_dir`` to resume), its MLflow
    parent run (with ``tags``) and its sbatch scripts."""
    from kazhpc.runner import new_run_dir, preflight
    from kazhpc.tracking import Tracker, run_tags

    for warning in [] if checked else preflight(cfg):
        log.warning(warning)
    if run_dir is not None:
        from kazhpc.launch.status import step_states

        if submission_path(run_dir).is_file():
            active = [s for s in step_states(run_dir) if s.active]
            if active:
                raise KazhpcError(
                    f"{run_dir}: {', '.join(f'{s.name} ({s.state})' for s in active)} still in the queue; "
                    f"wait, or `kazhpc cancel {run_dir}` first"
                )
        jobs = jobs_to_resume(cfg, run_dir)
        if not jobs:
            raise KazhpcError(f"{run_dir}: every job has finished; nothing to resume")
        skipped = [j for j in cfg.stage_names if j not in jobs]
        log.info("resuming %s from %s (reusing %s)", run_dir, jobs[0], ", ".join(skipped) or "nothing")
    else:
        jobs = cfg.stage_names
    steps = slurm_steps(cfg, cluster, jobs)  # every resource check, before a run directory or a job exists
    for warning in step_warnings(steps):
        log.warning(warning)
    check_image(cluster)
    if shutil.which("sbatch") is None:
        raise KazhpcError("sbatch not found: submit from a SLURM login node (or `kazhpc render` the scripts)")
    fresh = run_dir is None
    run_dir = (run_dir or new_run_dir(cfg)).absolute()
    tracker = Tracker(cfg.tracking, cfg.runs_root, run_dir)
    parent_id = tracker.start_pipeline(cfg.name, flatten(cfg.resolved_dict()), {**run_tags(cfg.config_hash()), **(tags or {})},
                                       run_dir / "config.yaml")
    slurm_dir = run_dir / "slurm"
    attempt = len(json.loads(submission_path(run_dir).read_text())["attempts"]) if submission_path(run_dir).is_file() else 0
    render(steps, slurm_dir / f"sbatch-{attempt}", run_dir / "config.yaml", [])  # the same steps as plain sbatch
    return Submission(cfg, cluster, cluster_path, run_dir, jobs, steps, tracker, parent_id, attempt, fresh)


def submit(
    cfg: PipelineConfig,
    cluster: ClusterConfig,
    cluster_path: Path,
    run_dir: Path | None = None,
) -> tuple[Path, list[dict[str, Any]]]:
    """Submit the pipeline (or, with ``run_dir``, resume it); return the run dir and the submitted steps."""
    plan = prepare_submission(cfg, cluster, cluster_path, run_dir)
    try:
        submitted = submit_steps(plan.steps, plan.run_dir, plan.log_dir)
    except KazhpcError as exc:  # sbatch refused a step; what was queued before it is cancelled
        raise plan.abandon(exc) from None
    plan.record(submitted)
    return plan.run_dir, submitted


def with_dependency(extra: dict[str, Any], dependency: str | None) -> dict[str, Any]:
    """sbatch's extra settings with a dependency: a job whose dependency can never be met is
    cancelled (kill_on_invalid_dep), never left pending."""
    return {**extra, **({"dependency": dependency, "kill_on_invalid_dep": "yes"} if dependency else {})}


def step_executor(step: Step, extra: dict[str, Any], log_dir: Path) -> Any:
    """A submitit executor for one step (one per step: no settings leak from one to the next)."""
    import submitit

    executor = submitit.AutoExecutor(folder=log_dir, cluster="slurm")
    executor.update_parameters(slurm_setup=step.setup, slurm_additional_parameters=extra, slurm_use_srun=step.use_srun,
                               **{f"slurm_{key}": value for key, value in step.params.items()})
    return executor


def submit_steps(steps: list[Step], run_dir: Path, log_dir: Path) -> list[dict[str, Any]]:
    """Queue the steps in order, each after the ones it names (afterok); return what was queued."""

    ids: dict[str, str] = {}
    submitted: list[dict[str, Any]] = []
    for step in steps:
        depends = [ids[a] for a in step.after if a in ids]
        extra = with_dependency(step.extra, "afterok:" + ":".join(depends) if depends else None)
        executor = step_executor(step, extra, log_dir)
        function = ShellStep(step.name, step.command, str(run_dir), step.stage, step.preemption_signal)
        try:
            if step.array:
                jobs = executor.map_array(function, list(range(step.array)))
                slurm_id = jobs[0].job_id.split("_")[0]
                tasks = [j.job_id for j in jobs]
                logs = [str(j.paths.stdout) for j in jobs]
            else:
                job = executor.submit(function)
                slurm_id, tasks, logs = job.job_id, [job.job_id], [str(job.paths.stdout)]
        except Exception as exc:  # sbatch refused it: take back what this submission queued, say why
            if ids:
                subprocess.run(["scancel", *ids.values()], check=False)
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise KazhpcError(f"sbatch refused step {step.name} ({reason}); cancelled {len(ids)} step(s) queued before it") from None
        ids[step.name] = slurm_id
        log.info("submitted %s as SLURM job %s%s", step.name, slurm_id, f" after {','.join(depends)}" if depends else "")
        submitted.append({
            "name": step.name, "job": step.job, "stage": step.stage, "phase": step.phase, "slurm_id": slurm_id, "array": step.array, "tasks": tasks,
            "after": list(step.after), "dependency": extra.get("dependency"), "logs": logs,
            "job_log": str(run_dir / step.stage / "job.log"),
        })
    return submitted
