"""The multi-GPU / multi-node launch of the train job under SLURM.

One SLURM task per node (``srun --ntasks-per-node=1``) runs ``accelerate launch``, which starts
one process per GPU there. The nodes find each other through the first host of the allocation
(``scontrol show hostnames``) on a port derived from the job id (two jobs sharing a node do not
collide), and each node's machine rank is its ``$SLURM_NODEID``. ``$SLURM_NODEID`` must expand on
the node, not in the batch script, hence ``bash -c '...'`` under srun.

Rendezvous: one node uses the static rendezvous on the derived port. Several nodes use c10d
with a join timeout (``train.distributed.rendezvous_timeout_s``: nodes start at different
times); ``--same_network`` is left out there because with it accelerate passes torchrun only
a master address, and torchrun's c10d rendezvous then ignores it (it needs the endpoint).

``train_launch_script`` returns the bash lines (for slurm/train.sbatch, or a submitit
CommandFunction); ``train_sbatch_resources`` the matching allocation.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig

#: The entry point every rank runs (relative to the repository root, where jobs are submitted from).
TRAIN_ENTRY = "jobs/train.py"
PORT_BASE, PORT_SPAN = 20000, 20000
#: Compiled DeepSpeed ops (~37 s the first time) are kept here across jobs.
TORCH_EXTENSIONS_DEFAULT = "$HOME/.cache/kazhpc/torch_extensions"


def _word(arg: str) -> str:
    """Shell-quote one argument, except a bare "$VAR" reference, which must expand where it runs."""
    if arg.startswith("$") and arg[1:].replace("_", "").isalnum():
        return f'"{arg}"'
    return shlex.quote(arg)


def accelerate_argv(cfg: PipelineConfig, run_dir: str, python: str = "python", stage: str = "train") -> list[str]:
    """The per-node ``accelerate launch`` command (with $SLURM_NODEID etc. left to the node's shell)
    for train stage ``stage``."""
    from kazhpc.train import distributed

    dist = cfg.train.distributed
    argv = [*shlex.split(python), "-m", "accelerate.commands.launch"]
    argv += ["--num_machines", str(dist.nodes), "--num_processes", str(dist.world_size)]
    argv += ["--machine_rank", "$SLURM_NODEID", "--main_process_ip", "$KAZHPC_HEAD_NODE"]
    argv += ["--main_process_port", "$KAZHPC_MAIN_PORT", "--max_restarts", "0"]
    if dist.nodes > 1:
        argv += ["--rdzv_backend", "c10d", "--rdzv_conf", f"join_timeout={dist.rendezvous_timeout_s}"]
    else:
        argv += ["--rdzv_backend", "static", "--same_network"]
    if dist.world_size > 1 and dist.deepspeed is None:
        argv += ["--multi_gpu"]
    if dist.deepspeed is not None:
        ds_path = distributed.deepspeed_path(dist.deepspeed)
        argv += ["--use_deepspeed", "--deepspeed_config_file", str(ds_path)]
        if dist.nodes > 1:
            argv += ["--deepspeed_multinode_launcher", "standard"]  # torchrun on every node, no pdsh/ssh
        if distributed.zero_stage(distributed.load_deepspeed(dist.deepspeed)) == 3:
            argv += ["--zero3_init_flag", "true"]
    argv += ["--dynamo_backend", "no", TRAIN_ENTRY, "--run-dir", str(run_dir)]
    return argv + (["--stage", stage] if stage != "train" else [])


def train_launch_script(
    cfg: PipelineConfig,
    run_dir: str,
    python: str = "python",
    wrap: Callable[[list[str]], list[str]] | None = None,
    stage: str = "train",
) -> str:
    """Bash lines that start train stage ``stage`` on every node of the current SLURM allocation.

    ``wrap`` turns the per-node command into what really runs (e.g. a container exec in front).
    """
    dist = cfg.train.distributed
    ds = f", DeepSpeed {dist.deepspeed}" if dist.deepspeed else ", DDP" if dist.world_size > 1 else ""
    argv = accelerate_argv(cfg, run_dir, python, stage)
    if wrap is not None:
        argv = wrap(argv)
    # The launcher ignores the preemption signal (SLURM sends it to every process of the step, and
    # it would kill the launcher and with it the ranks); each rank's own handler saves and stops.
    per_node = f"trap '' {cfg.train.preemption_signal}; exec " + " ".join(_word(a) for a in argv)
    srun = ["srun", f"--nodes={dist.nodes}", f"--ntasks={dist.nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    lines = [
        f"# kazhpc train: {dist.nodes} node(s) x {dist.gpus_per_node} process(es) = {dist.world_size} rank(s){ds}",
        'export KAZHPC_HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"',
        f'export KAZHPC_MAIN_PORT="$(({PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}))"',
        f'export TORCH_EXTENSIONS_DIR="${{TORCH_EXTENSIONS_DIR:-{TORCH_EXTENSIONS_DEFAULT}}}"',
        f'echo "kazhpc train: head node $KAZHPC_HEAD_NODE, port $KAZHPC_MAIN_PORT, {dist.nodes} node(s)"',
        " ".join(srun) + " bash -c " + shlex.quote(per_node),
    ]
    return "\n".join(lines) + "\n"


def train_sbatch_resources(cfg: PipelineConfig, cpus_per_gpu: int = 8) -> dict[str, int]:
    """The allocation the launch expects: one task per node, that task holding all of its GPUs."""
    dist = cfg.train.distributed
    return {
        "nodes": dist.nodes,
        "ntasks-per-node": 1,
        "gpus-per-node": dist.gpus_per_node,
        "cpus-per-task": cpus_per_gpu * dist.gpus_per_node,
    }


def check_allocation(cfg: PipelineConfig, env: dict[str, str] | None = None) -> None:
    """Refuse, before anything starts, an allocation that does not match train.distributed."""
    env = dict(os.environ) if env is None else env
    dist = cfg.train.distributed
    if "SLURM_JOB_ID" not in env:
        raise KazhpcError("the train launch runs inside a SLURM allocation (sbatch slurm/train.sbatch)")
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    if nodes != dist.nodes:
        raise KazhpcError(
            f"train.distributed.nodes is {dist.nodes} but this job has {nodes} node(s); "
            f"submit with sbatch --nodes={dist.nodes}"
        )
    gpus = env.get("SLURM_GPUS_ON_NODE")
    if gpus and int(gpus) != dist.gpus_per_node:
        raise KazhpcError(
            f"train.distributed.gpus_per_node is {dist.gpus_per_node} but this job has {gpus} GPU(s) per node; "
            f"submit with sbatch --gpus-per-node={dist.gpus_per_node}"
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m kazhpc.launch.multinode --run-dir RUN [--stage S]``: print the launch lines for
    RUN's train stage (what slurm/train.sbatch evaluates), after checking the allocation."""
    from kazhpc.console import report_errors
    from kazhpc.runner import open_run_dir

    parser = argparse.ArgumentParser(prog="python -m kazhpc.launch.multinode", description=main.__doc__)
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--python", default="python", help="the Python that has kazhpc on every node")
    parser.add_argument("--no-check", action="store_true", help="do not compare with $SLURM_JOB_NUM_NODES")
    parser.add_argument("--stage", help="the train stage (default: the one train stage)")
    args = parser.parse_args(argv)
    with report_errors():
        from kazhpc.runner import stage_of_job

        full = open_run_dir(args.run_dir)
        stage = stage_of_job(full, "train", args.stage)
        cfg = full.for_stage(stage)
        if not args.no_check:
            check_allocation(cfg)
        sys.stdout.write(train_launch_script(cfg, str(args.run_dir.absolute()), python=args.python, stage=stage))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
