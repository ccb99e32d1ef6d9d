"""From a pipeline config and a cluster profile to SLURM steps: resources, setup and command per stage.

This is the one place that decides what each SLURM job asks for and runs. ``kazhpc submit`` hands
the steps to submitit and ``kazhpc render`` writes them as sbatch scripts, so both always agree.
Each stage is one step (resources from the cluster profile's entry for its job type), run after the
stage before it. A stage whose job type splits and whose section asks for n > 1 shards becomes two
steps: an array of n parts, then the stage itself (its merge), which waits for every part. A stage
whose job type has phases (corpus: datatrove's stages) and whose section asks for ``tasks`` > 1
becomes one step per phase, each an array (one process per task) after the one before, then the
stage itself, which finds the tasks done and writes the manifest.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kazhpc.config import PipelineConfig
from kazhpc.errors import ConfigError, KazhpcError
from kazhpc.launch.cluster import ClusterConfig, JobResources
from kazhpc.registry import job_type

REPO = Path(__file__).resolve().parents[2]
#: The shell variable every step's command reads its run directory from (set by submit or submit.sh).
RUN_DIR_VAR = "RUN_DIR"
#: Environment passed into a Docker container (Apptainer passes the host environment itself).
_DOCKER_PASS = ("RUN_DIR", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                "SLURM_ARRAY_TASK_COUNT", "SLURM_CLUSTER_NAME", "SLURM_PROCID", "SLURM_NODEID")


@dataclass(frozen=True)
class Step:
    """One SLURM job (or job array) of a submission."""

    name: str  # e.g. 'preprocess-parts', 'preprocess', 'train-sft'
    job: str  # the job type of the stage it runs
    params: dict[str, Any]  # sbatch options, spelled as submitit's slurm parameters
    setup: list[str]  # shell lines before the command: modules, environment
    command: list[str]  # shell lines that run the job; they read $RUN_DIR
    array: int | None = None  # number of array tasks (parts), None for a single job
    after: tuple[str, ...] = ()  # steps that must complete first (afterok)
    use_srun: bool = True  # False when the command runs srun itself (multi-node training)
    notes: list[str] = field(default_factory=list)
    #: The signal on which the job saves its state and exits 75 to be requeued (train), or None:
    #: a job without it is stopped and requeued from scratch (kazhpc.launch.submit.ShellStep).
    preemption_signal: str | None = None
    #: sbatch options submitit has no parameter for (its slurm_additional_parameters).
    extra: dict[str, Any] = field(default_factory=dict)
    #: One-line warnings about this step's request ('file:line: jobs.train.gpus: ...'); render
    #: writes them into the script, and the callers of slurm_steps() show them (step_warnings).
    warnings: list[str] = field(default_factory=list)
    #: The stage it runs: its folder in the run directory and its key in run.json.
    stage: str = field(kw_only=True)
    #: The phase of the stage whose tasks it runs (corpus: 'filter', ...), or None.
    phase: str | None = field(default=None, kw_only=True)

    def sbatch_options(self) -> dict[str, Any]:
        """Every option of the step's #SBATCH lines, as submitit and `kazhpc render` both write them."""
        return {**self.params, **self.extra}


def shards_of(cfg: PipelineConfig, job: str) -> int:
    """How many parts the config asks ``job`` to split into (``<section>.shards``; 1 if none)."""
    section = getattr(cfg, job.replace("-", "_"), None)
    return int(getattr(section, "shards", 1) or 1)


def tasks_of(cfg: PipelineConfig, job: str) -> int:
    """How many tasks the config asks each phase of ``job`` to run in (``<section>.tasks``; 1 if none)."""
    section = getattr(cfg, job.replace("-", "_"), None)
    return int(getattr(section, "tasks", 1) or 1)


def binds_for(cfg: PipelineConfig, cluster: ClusterConfig) -> list[str]:
    """Host paths the container must see: the profile's, plus runs_root, cache_dir and the submit
    directory (relative paths in the config were resolved against it)."""
    binds = list(cluster.container.binds)
    for path in (cfg.runs_root, cfg.cache_dir, Path.cwd()):
        if path is not None and not _under(str(path), binds):
            binds.append(str(path))
    return binds


def _under(path: str, binds: list[str]) -> bool:
    for bind in binds:
        host = bind.split(":")[0].rstrip("/") or "/"
        if path == host or path.startswith(host + "/") or host == "/":
            return True
    return False


def unbound_paths(cfg: PipelineConfig, binds: list[str], image_dir: str) -> list[tuple[str, str]]:
    """(key, path) of every absolute path in the config that a container would not see, lists of
    mappings included (``preprocess.sources[0].path``, ``stages[3].with.sources[0].path``)."""
    missing = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{key}[{index}]" if isinstance(item, (dict, list)) else key)
        elif isinstance(value, str) and value.startswith("/") and not _under(value, [*binds, image_dir]):
            missing.append((key, value))

    walk(cfg.resolved_dict(), "")
    return missing


def container_prefix(cfg: PipelineConfig, cluster: ClusterConfig, gpus: int) -> list[str]:
    """The words before `python ...`: `apptainer exec ...`, `docker run ...`, or nothing."""
    box = cluster.container
    if box.runtime == "none":
        return []
    binds = binds_for(cfg, cluster)
    if box.runtime == "apptainer":
        words = ["apptainer", "exec"] + (["--nv"] if gpus else [])
        words += ["--bind", ",".join(binds), "--pwd", box.workdir, *box.options, box.image or ""]
        return words
    # No --user: rootless Docker/Podman (what clusters allow) maps the container's root to the user.
    words = ["docker", "run", "--rm"] + (["--gpus", "all"] if gpus else [])
    words += ["-w", box.workdir]
    for bind in binds:
        words += ["-v", bind if ":" in bind else f"{bind}:{bind}"]
    for var in (*_DOCKER_PASS, *cluster.environment):
        words += ["-e", var]
    words += [*box.options, "--entrypoint", "", box.image or ""]
    return words


def host_workdir(cluster: ClusterConfig) -> str:
    """Where a step's shell stands on the host before its command.

    Without a container: this checkout, whose jobs/ the command names. With one: the submit
    directory (relative config paths were resolved against it, and binds_for binds it), which
    exists on the host; the container's workdir, where the image keeps jobs/, need not exist
    there, so it goes to the runtime instead (apptainer --pwd, docker -w; container_prefix).
    """
    return str(REPO) if cluster.container.runtime == "none" else str(Path.cwd())


#: GPUs any job but train uses: each loads its model on one device (cuda:0) or on the CPU.
SINGLE_JOB_GPUS = 1


def gpus_used(cfg: PipelineConfig, cluster: ClusterConfig, job: str) -> tuple[int, str | None]:
    """GPUs per node that ``job`` will use, and a one-line warning when the profile asks otherwise.

    The step requests what the job uses, never more: train runs train.distributed.gpus_per_node
    processes per node (one GPU each) and every other job at most one GPU, so a profile asking
    for four would leave three idle for the whole job. A profile asking for none keeps the job
    on the CPU (a one-process train as much as the other jobs); a multi-GPU train asks for
    train.distributed's GPUs whatever the profile says (the node's count is the ceiling).
    """
    asked = cluster.resources(job).gpus
    dist = cfg.train.distributed
    if job_type(job).distributed and (dist.world_size > 1 or asked):
        used = dist.gpus_per_node
        why = f"train.distributed.gpus_per_node is {used}"
        hint = f" (to train on {asked}, set train.distributed.gpus_per_node={asked})" if asked > used else ""
    else:
        used = min(asked, SINGLE_JOB_GPUS)
        why, hint = f"{job} uses at most {SINGLE_JOB_GPUS}", ""
    if used == asked:
        return used, None
    where = cluster.where("jobs", job, "gpus")
    return used, (f"{where}: jobs.{job}.gpus: {asked} GPU{'s' * (asked != 1)} per node asked, but {why}; "
                  f"requesting {used}, not {asked}{hint}")


def step_warnings(steps: list[Step]) -> list[str]:
    """The warnings of a plan, each once (a job's parts and merge share theirs)."""
    return list(dict.fromkeys(w for step in steps for w in step.warnings))


def _shell(words: list[str]) -> str:
    """Quote words for bash, leaving '"$VAR..."' words to expand on the node."""
    return " ".join(w if w.startswith('"$') else shlex.quote(w) for w in words)


def setup_lines(cluster: ClusterConfig) -> list[str]:
    lines = [f"module load {shlex.quote(m)}" for m in cluster.modules]
    lines += [f'export {key}="{value}"' for key, value in cluster.environment.items()]
    return lines + list(cluster.setup)


def python_of(cluster: ClusterConfig) -> str:
    """The Python a step runs: the profile's, the container's own, or this one (no container)."""
    return cluster.python or ("python" if cluster.container.runtime != "none" else sys.executable)


def container_step(cfg: PipelineConfig, cluster: ClusterConfig, name: str, words: list[str], res: JobResources, *,
                   gpus: int = 0, **fields: Any) -> Step:
    """A one-node step running ``words`` (``python ...``) in the profile's container. Job scripts
    are named relative to where the command starts: this checkout without a container, the
    container's workdir inside one (--pwd / -w, container_prefix)."""
    command = [f"cd {shlex.quote(host_workdir(cluster))}", _shell([*container_prefix(cfg, cluster, gpus), *words])]
    return Step(name=name, params=_sbatch_params(cluster, name, res, gpus=gpus), setup=setup_lines(cluster), command=command,
                **fields)


def _sbatch_params(cluster: ClusterConfig, name: str, res: JobResources, nodes: int = 1, gpus: int = 0) -> dict[str, Any]:
    params: dict[str, Any] = {
        "job_name": f"kazhpc-{name}",
        "time": res.minutes,
        "nodes": nodes,
        "ntasks_per_node": 1,
        "cpus_per_task": res.cpus,
        "mem": f"{int(res.mem_gb)}GB" if res.mem_gb == int(res.mem_gb) else f"{int(res.mem_gb * 1024)}MB",
    }
    if gpus:
        params["gpus_per_node"] = f"{cluster.node.gpu_type}:{gpus}" if cluster.node.gpu_type else gpus
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cluster, key):
            params[key] = getattr(cluster, key)
    return params


def slurm_steps(cfg: PipelineConfig, cluster: ClusterConfig, stages: list[str] | None = None) -> list[Step]:
    """The SLURM steps that run ``stages`` (default: all of the config's) in order, each after the last.

    Raises ConfigError for anything the cluster cannot do, before anything is submitted.
    """
    selected = stages if stages is not None else cfg.stage_names
    image_dir = cluster.container.workdir
    if cluster.container.runtime != "none":
        missing = unbound_paths(cfg, binds_for(cfg, cluster), image_dir)
        if missing:
            key, path = missing[0]
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ConfigError(
                f"{cluster.where('container', 'binds')}: container.binds: {key}={path} is not visible inside "
                f"the container; add a bind that contains it{more}"
            )
    python = python_of(cluster)
    host_dir = host_workdir(cluster)
    steps: list[Step] = []
    previous: tuple[str, ...] = ()
    for stage in selected:
        job = cfg.stage(stage).job
        view = cfg.for_stage(stage)  # the stage's own section (shards, train.distributed, ...)
        spec = job_type(job)
        res = cluster.resources(job)
        gpus, warning = gpus_used(view, cluster, job)
        warnings = [warning] if warning else []
        workers = getattr(getattr(view, spec.section, None), "workers", 1)
        if workers > res.cpus:  # the stage's own job runs its tasks on `workers` processes
            warnings.append(f"{stage}: {spec.section}.workers is {workers}, but {cluster.where('jobs', job)} (jobs.{job}) gives "
                            f"the {job} job {res.cpus} CPUs; its processes would share them (lower the workers or raise cpus)")
        # A stage named as its job type is the one jobs/<job>.py runs by default.
        run = [python, spec.script, "--run-dir", f'"${RUN_DIR_VAR}"', *(["--stage", stage] if stage != job else [])]
        n = shards_of(view, job)
        if n > 1 and spec.splits:
            part = container_step(cfg, cluster, f"{stage}-parts", [*run, "--shard", f'"$SLURM_ARRAY_TASK_ID/{n}"'], res,
                                  job=job, stage=stage, gpus=gpus, array=n, after=previous, warnings=warnings)
            # A merge only reads the parts, unless it loads a model itself (an evaluation's judge).
            merge_gpus = gpus if job == "evaluate" and view.evaluate.judge_tasks() else 0
            merge = container_step(cfg, cluster, stage, run, res.model_copy(update={"gpus": merge_gpus}), job=job,
                                   stage=stage, gpus=merge_gpus, after=(part.name,))
            steps += [part, merge]
        elif spec.phased and tasks_of(view, job) > 1:
            steps += _phase_steps(view, stage, cluster, res, run, previous, warnings)
        elif spec.distributed and view.train.distributed.world_size > 1:
            steps.append(_distributed_train(view, stage, cluster, res, python, host_dir, previous, warnings))
        else:
            steps.append(container_step(cfg, cluster, stage, run, res, job=job, stage=stage, gpus=gpus, after=previous,
                                        warnings=warnings, **(_preemption(view) if spec.preemptible else {})))
        previous = (steps[-1].name,)
    return steps


def _phase_steps(
    cfg: PipelineConfig, stage: str, cluster: ClusterConfig, res: JobResources, run: list[str],
    after: tuple[str, ...], warnings: list[str],
) -> list[Step]:
    """One step per phase (an array when it has more than one task), each after the one before,
    then the stage's own step. An array task is one process, so it asks for one CPU and the
    profile's memory per CPU; a phase of one task (MinHash's clusters, which holds the duplicate
    pairs) and the stage's own step get the profile's entry as it is."""
    whole = res.model_copy(update={"gpus": 0})
    one = res.model_copy(update={"cpus": 1, "gpus": 0, "mem_gb": res.mem_gb / res.cpus})
    job = cfg.stage(stage).job
    steps: list[Step] = []
    for phase, tasks in job_type(job).adapter().phase_tasks(cfg).items():
        task = '"$SLURM_ARRAY_TASK_ID/' + str(tasks) + '"' if tasks > 1 else "0/1"
        steps.append(container_step(
            cfg, cluster, f"{stage}-{phase}", [*run, "--phase", phase, "--shard", task], one if tasks > 1 else whole,
            job=job, stage=stage, phase=phase, array=tasks if tasks > 1 else None, warnings=warnings,
            after=after if not steps else (steps[-1].name,),
            notes=[f"phase {phase} of stage {stage}: {tasks} task{'s' * (tasks != 1)}, one process each"],
        ))
    steps.append(container_step(cfg, cluster, stage, run, whole, job=job, stage=stage, after=(steps[-1].name,), warnings=warnings))
    return steps


def _distributed_train(
    cfg: PipelineConfig, stage: str, cluster: ClusterConfig, res: JobResources, python: str, host_dir: str,
    after: tuple[str, ...], warnings: list[str],
) -> Step:
    """Multi-GPU / multi-node training: TRAIN-DIST's launch script (srun + accelerate launch) as the body."""
    dist = cfg.train.distributed
    if dist.gpus_per_node > cluster.node.gpus:
        raise ConfigError(
            f"{cluster.where('node', 'gpus')}: train.distributed.gpus_per_node={dist.gpus_per_node} but a node "
            f"of '{cluster.name}' has {cluster.node.gpus} GPUs"
        )
    launch_script, launch_resources = distributed_launch_hook()
    prefix = container_prefix(cfg, cluster, dist.gpus_per_node)
    body = launch_script(cfg, f"${RUN_DIR_VAR}", python=python, wrap=(lambda argv: [*prefix, *argv]) if prefix else None,
                         stage=stage)
    params = _sbatch_params(cluster, stage, res, nodes=dist.nodes, gpus=dist.gpus_per_node)
    # Nodes and tasks as the launch expects them; CPUs and the GPU type as the profile says.
    for key, value in launch_resources(cfg).items():
        key = key.replace("-", "_")
        if key not in ("cpus_per_task", "gpus_per_node"):
            params[key] = value
    return Step(
        name=stage, job="train", stage=stage, params=params, setup=setup_lines(cluster), after=after, use_srun=False,
        warnings=warnings, command=[f"cd {shlex.quote(host_dir)}", *body.strip().splitlines()],
        notes=[f"{dist.nodes} node(s) x {dist.gpus_per_node} GPU(s): launched by kazhpc.launch.multinode"],
        **_preemption(cfg),
    )


#: Seconds of warning SLURM gives before the time limit (submitit's default, and slurm/train.sbatch's).
PREEMPTION_WARNING_S = 90


def _preemption(cfg: PipelineConfig) -> dict[str, Any]:
    """The train job saves on the warning signal: SLURM sends it to the job's steps (not B:, the
    batch shell, which would die of it) ahead of the time limit, and the job may be requeued (its
    log then continues: open-mode append, as submitit writes it too)."""
    sig = cfg.train.preemption_signal
    extra = {"signal": f"{sig}@{PREEMPTION_WARNING_S}", "requeue": True, "open_mode": "append"}
    return {"preemption_signal": sig, "extra": extra}


def distributed_launch_hook() -> tuple[Any, Any]:
    """TRAIN-DIST's ``train_launch_script`` and ``train_sbatch_resources`` (kazhpc.launch.multinode)."""
    try:
        from kazhpc.launch.multinode import train_launch_script, train_sbatch_resources
    except ImportError as exc:
        raise KazhpcError(
            f"train.distributed.world_size > 1 needs kazhpc.launch.multinode (multi-GPU launch): {exc}"
        ) from None
    return train_launch_script, train_sbatch_resources


# --------------------------------------------------------------------------------------------
# sbatch text, from the same parameters submitit gets.


def sbatch_flag(key: str, value: Any) -> str:
    """'#SBATCH --key=value', written exactly as submitit writes its own sbatch files."""
    key = key.replace("_", "-")
    return f"#SBATCH --{key}" if value is True else f"#SBATCH --{key}={shlex.quote(str(value))}"


def render_script(step: Step, log_dir: Path) -> str:
    """A standalone sbatch script for one step (the run directory comes from $RUN_DIR at submit time)."""
    params = step.sbatch_options()
    params["output"] = str(log_dir / ("%x-%A_%a.out" if step.array else "%x-%j.out"))
    if step.array:
        params["array"] = f"0-{step.array - 1}"
    what = f"job {step.job}" if step.stage == step.job else f"stage {step.stage}, job {step.job}"
    lines = ["#!/bin/bash", f"# kazhpc step '{step.name}' ({what})"
             + (f", {step.array} array tasks" if step.array else "")
             + (f"; after {', '.join(step.after)} (submit.sh adds --dependency=afterok)" if step.after else "")]
    lines += [sbatch_flag(k, params[k]) for k in sorted(params)]
    lines += ["set -euo pipefail", f': "${{{RUN_DIR_VAR}:?set {RUN_DIR_VAR} to the run directory (kazhpc init CONFIG)}}"']
    lines += [f"# {note}" for note in step.notes]
    lines += [f"# warning: {warning}" for warning in step.warnings]
    command = list(step.command)
    if step.use_srun:  # as submitit runs it: a job step, which is what SLURM's --signal reaches
        command[-1] = f"srun --unbuffered {command[-1]}"
    lines += ["", "# setup", *step.setup, "", "# command", *command, ""]
    return "\n".join(lines)


def render(steps: list[Step], out_dir: Path, config: Path, overrides: list[str]) -> list[Path]:
    """Write one sbatch script per step and submit.sh, which chains them with afterok dependencies."""
    if out_dir.exists() and not out_dir.is_dir():
        raise KazhpcError(f"{out_dir}: is a file; give a folder for the sbatch scripts (-o)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent that is a file, no permission, read-only file system
        raise KazhpcError(f"{out_dir}: cannot create the folder for the sbatch scripts ({exc.strerror})") from None
    log_dir = (out_dir / "logs").absolute()
    written = []
    variables: dict[str, str] = {}
    submit = [
        "#!/bin/bash",
        "# Submit the pipeline as chained SLURM jobs. Usage: bash submit.sh [RUN_DIR]",
        "# Without RUN_DIR, `kazhpc init` creates a run directory for the config below.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"mkdir -p {shlex.quote(str(log_dir))}",
        f'RUN_DIR="${{1:-$(${{KAZHPC:-kazhpc}} init {_shell([str(Path(config).absolute()), *overrides])})}}"',
        "export RUN_DIR",
        'echo "run directory: $RUN_DIR"',
    ]
    for index, step in enumerate(steps, start=1):
        path = out_dir / f"{index:02d}-{step.name}.sbatch"
        _write_script(path, render_script(step, log_dir))
        written.append(path)
        var = "JOB_" + re.sub(r"\W", "_", step.name).upper()
        variables[step.name] = var
        dependency = ":".join(f"${variables[a]}" for a in step.after if a in variables)
        flag = f" --dependency=afterok:{dependency} --kill-on-invalid-dep=yes" if dependency else ""
        submit.append(f"{var}=$(sbatch --parsable{flag} {path.name})")
        submit.append(f'echo "{step.name}: ${var}"')
    submit_path = out_dir / "submit.sh"
    _write_script(submit_path, "\n".join(submit) + "\n")
    return [*written, submit_path]


def _write_script(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
    except OSError as exc:  # a folder of that name, no permission, a full disk
        raise KazhpcError(f"{path}: cannot write the script ({exc.strerror})") from None
