"""``kazhpc status`` and ``kazhpc cancel``: a submitted run's jobs as SLURM and the run directory see them.

SLURM knows a job while it is queued, running, or recently ended (squeue), or for good when the site
keeps accounting (sacct); the run directory's run.json knows what each job itself recorded. A job
that left the queue while run.json still says RUNNING was killed (scancel, out of memory, node lost).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kazhpc.launch.records import latest_steps, read_submission

FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                 "PREEMPTED", "LOST", "INTERRUPTED"}  # INTERRUPTED: Ctrl-C, as run.json records it
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}
NEVER = "DependencyNeverSatisfied"


@dataclass
class StepState:
    name: str
    job: str
    slurm_id: str
    state: str
    logs: list[str]
    job_log: str
    tasks: dict[str, str] = field(default_factory=dict)  # array task id → state
    reason: str = ""
    error: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def failed(self) -> bool:
        return self.state.split()[0] in FAILED_STATES


def _run(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def slurm_states(job_id: str) -> dict[str, tuple[str, str]]:
    """Job (or array task) id → (state, reason), from squeue, else sacct; {} when SLURM forgot it."""
    out = _run(["squeue", "-h", "-r", "-t", "all", "-j", job_id, "-o", "%i|%T|%r"])
    states: dict[str, tuple[str, str]] = {}
    for line in (out or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            states[parts[0]] = (parts[1], parts[2])
    if states:
        return states
    out = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,Reason"])
    for line in (out or "").splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            states[parts[0]] = (parts[1].split()[0], parts[2] if len(parts) > 2 else "")
    return states


def _overall(states: list[str]) -> str:
    for bad in ("FAILED", "OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "CANCELLED", "LOST"):
        if bad in states:
            return bad
    for active in ("RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "PENDING"):
        if active in states:
            return active
    if states and all(s == "COMPLETED" for s in states):
        return "COMPLETED"
    return states[0] if states else "UNKNOWN"


def _recorded(state: dict[str, Any], key: str, since: float) -> dict[str, Any] | None:
    entry = state.get("jobs", {}).get(key)
    return entry if entry and entry.get("started", 0) >= since - 1 else None


def step_states(run_dir: Path, cancel_never_satisfied: bool = True) -> list[StepState]:
    """Every step of the latest submission, with its state; pending dependants of a failed job are
    cancelled (they could never start) and reported as such."""
    from kazhpc.runner import read_state

    submission = read_submission(run_dir)
    run_state = read_state(run_dir)
    result = []
    for step in latest_steps(submission).values():
        slurm = slurm_states(step["slurm_id"])
        since = step["attempt_time"]
        keys = state_keys(step)
        if step["array"]:
            tasks = {}
            for key, task in zip(keys, step["tasks"]):
                found = slurm.get(task)
                tasks[task] = found[0] if found else _from_record(_recorded(run_state, key, since))
            reasons = [r for s, r in slurm.values()]
        else:
            found = slurm.get(step["slurm_id"])
            tasks = {step["slurm_id"]: found[0] if found else _from_record(_recorded(run_state, keys[0], since))}
            reasons = [found[1]] if found else []
        reason = next((r for r in reasons if r and r != "None"), "")
        record = next((r for key in keys if (r := _recorded(run_state, key, since)) and r.get("error")), None) or {}
        item = StepState(step["name"], step["job"], step["slurm_id"], _overall(list(tasks.values())), step["logs"],
                         step["job_log"], tasks, reason, record.get("error", ""))
        _record_kills(run_dir, step, tasks, run_state)
        if item.state == "PENDING" and NEVER in reason and cancel_never_satisfied:
            _run(["scancel", step["slurm_id"]])
            item.state = "CANCELLED"
            item.reason = f"{NEVER}: cancelled, a job it waits for failed"
        result.append(item)
    return result


def stage_of(step: dict[str, Any]) -> str:
    """The stage a submitted step ran (its run.json key); records from before named stages give
    only the job, which was the stage's name then."""
    return step.get("stage") or step["job"]


def state_keys(step: dict[str, Any]) -> list[str]:
    """run.json's keys for a submitted step's tasks: the stage's (one job), its parts' (an array
    of parts), or its phase's tasks' (kazhpc.runner.task_key)."""
    from kazhpc.runner import task_key

    stage, phase, n = stage_of(step), step.get("phase"), step["array"]
    if phase is not None:
        return [task_key(stage, i, n or 1, phase) for i in range(n or 1)]
    return [task_key(stage, i, n) for i in range(n)] if n else [stage]


def _record_kills(run_dir: Path, step: dict[str, Any], tasks: dict[str, str], run_state: dict[str, Any]) -> None:
    """A job SLURM ended (scancel, timeout, out of memory) never wrote its own end: write it for it in
    run.json, and end its MLflow child run as KILLED, so neither says RUNNING forever."""
    from kazhpc.runner import set_job_state

    whole = not step["array"] and not step.get("phase")  # the stage's own job: it has a child run
    for key, (task, state) in zip(state_keys(step), tasks.items()):
        recorded = _recorded(run_state, key, step["attempt_time"])
        if state in FAILED_STATES - {"FAILED", "LOST"} and recorded and recorded.get("status") == "RUNNING":
            set_job_state(run_dir, key, status=state, error=f"SLURM job {task} ended {state}")
            _end_runs(run_dir, stage_of(step) if whole else None)


def _end_runs(run_dir: Path, job: str | None) -> None:
    """The killed job's child run ends KILLED, the pipeline's parent run FAILED (a resume that
    completes every job marks it FINISHED again)."""
    from kazhpc.runner import open_run_dir
    from kazhpc.tracking import JobRun, Tracker

    cfg = open_run_dir(run_dir)
    tracker = Tracker(cfg.tracking, cfg.runs_root, run_dir)
    if not tracker.active:
        return
    run_id = tracker.run_ids().get(f"job:{job}") if job else None
    if run_id:
        JobRun(tracker, f"job:{job}", run_id).finish("KILLED")
    tracker.finish_pipeline("FAILED")


def _from_record(recorded: dict[str, Any] | None) -> str:
    if recorded is None:
        return "UNKNOWN"
    status = recorded.get("status", "UNKNOWN")
    return "LOST" if status == "RUNNING" else status  # ended without recording a result: killed


def describe(run_dir: Path, steps: list[StepState]) -> tuple[list[str], bool]:
    """Lines for the terminal, and whether every step completed."""
    lines = [f"run directory: {run_dir}"]
    width = max(len(s.name) for s in steps) if steps else 0
    for s in steps:
        extra = f"  ({s.reason})" if s.reason and s.state != "COMPLETED" else ""
        lines.append(f"  {s.name:<{width}}  {s.slurm_id:<10} {s.state}{extra}")
    failed = [s for s in steps if s.failed and NEVER not in s.reason]
    for s in failed:
        log = next((p for p in s.logs if Path(p).is_file()), s.logs[0] if s.logs else "")
        lines.append(f"failed: {s.name} (SLURM {s.slurm_id}, {s.state}); log: {log}")
        if Path(s.job_log).is_file():
            lines.append(f"        job log: {s.job_log}")
        if s.error:
            lines.append(f"        error: {s.error[:300]}")
        bad_tasks = [t for t, state in s.tasks.items() if state in FAILED_STATES]
        if len(s.tasks) > 1 and bad_tasks:
            lines.append(f"        failed tasks: {', '.join(bad_tasks)}")
    stopped = [s.name for s in steps if s.failed and s not in failed]
    if stopped:
        lines.append(f"not run (a job they wait for failed): {', '.join(stopped)}")
    done = bool(steps) and all(s.state == "COMPLETED" for s in steps)
    if done:
        lines.append("all jobs completed")
    elif failed or stopped:
        lines.append(f"resume with: kazhpc submit --resume {run_dir}")
    return lines, done


def cancel(run_dir: Path) -> list[str]:
    """scancel every step of the latest submission that is still queued or running."""
    cancelled = []
    for s in step_states(run_dir, cancel_never_satisfied=False):
        if s.active:
            _run(["scancel", s.slurm_id])
            cancelled.append(f"{s.name} ({s.slurm_id})")
    return cancelled


# --------------------------------------------------------------------------------------------
# Runs made on this machine (kazhpc run): run.json alone.


def is_submitted(run_dir: Path) -> bool:
    from kazhpc.launch.records import submission_path

    return submission_path(run_dir).is_file()


def local_states(run_dir: Path) -> list[StepState]:
    """Each job of a run made by ``kazhpc run``, as run.json records it. A job recorded RUNNING
    whose process (on this host) is gone was killed: LOST."""
    import os
    import socket

    from kazhpc.runner import open_run_dir, read_state

    cfg = open_run_dir(run_dir)
    jobs = read_state(run_dir).get("jobs", {})
    result = []
    for name in cfg.stage_names:
        record = jobs.get(name, {})
        state = record.get("status", "NOT RUN")
        if state == "RUNNING" and record.get("host") == socket.gethostname() and record.get("pid"):
            try:
                os.kill(int(record["pid"]), 0)
            except ProcessLookupError:
                state = "LOST"
            except PermissionError:
                pass
        seconds = f"{record['finished'] - record['started']:.0f} s" if "finished" in record and "started" in record else ""
        result.append(StepState(name, cfg.stage(name).job, "", state, [], str(run_dir / name / "job.log"), reason=seconds,
                                error=record.get("error", "")))
    return result


def describe_local(run_dir: Path, steps: list[StepState]) -> tuple[list[str], bool]:
    """Lines for the terminal (each job's state and time; a failed job's log and error), and
    whether every job completed."""
    lines = [f"run directory: {run_dir} (run on this machine)"]
    width = max(len(s.name) for s in steps)
    for s in steps:
        lines.append(f"  {s.name:<{width}}  {s.state:<11} {s.reason}".rstrip())
    for s in steps:
        if s.failed:
            lines.append(f"{s.state.lower()}: {s.name}; job log: {s.job_log}")
            if s.error:
                lines.append(f"        error: {s.error[:300]}")
    done = all(s.state == "COMPLETED" for s in steps)
    lines.append("all jobs completed" if done else f"resume with: kazhpc run --run-dir {run_dir}")
    return lines, done
