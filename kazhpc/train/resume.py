"""Preemption and resume: save on SLURM's warning signal, requeue, continue from the last checkpoint.

SLURM warns a job before it kills it (``#SBATCH --signal=B:USR2@90``; submitit asks for USR2 90 s
ahead). :class:`PreemptionHandler` turns that signal into a flag; its TrainerCallback makes the
trainer save a full checkpoint (adapter, optimizer, scheduler, RNG states, data position) at the end
of the current optimizer step and stop. The train job then hands over to whoever requeues:

* under submitit, the handler that was installed before ours (submitit's ``checkpoint_and_try_requeue``)
  is called when the job runs in submitit's own process; when it runs as a child process
  (kazhpc.launch.submit's ShellStep), that process waits for this one to exit and then requeues:
  nothing more to do here;
* under plain SLURM, :func:`requeue_if_slurm` runs ``scontrol requeue $SLURM_JOB_ID``;

and the job ends with :class:`Preempted` (exit status :data:`PREEMPTED_EXIT_CODE`). When the job
starts again in the same run directory, :func:`last_checkpoint` finds where it stopped and
``trainer.train(resume_from_checkpoint=...)`` continues from there. Each attempt is a new process,
so the model object is always freshly loaded (the bitsandbytes CPU pitfall, kazhpc.train.guard).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable

from kazhpc.errors import KazhpcError, Preempted
from kazhpc.signals import signal_number

log = logging.getLogger(__name__)

#: For tests and drills: raise the preemption signal in-process after this optimizer step.
PREEMPT_AFTER_STEP_ENV = "KAZHPC_PREEMPT_AFTER_STEP"
#: For drills of the delivery path: after this step, wait (up to 10 min) for the signal to come from
#: outside (`scancel --signal=USR2 JOB`), printing "waiting for the preemption signal at step N".
WAIT_FOR_SIGNAL_AT_STEP_ENV = "KAZHPC_WAIT_FOR_SIGNAL_AT_STEP"
DRILL_WAIT_S = 600

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint in ``folder`` (trainer_state.json is written last), or None.

    A job killed while saving leaves a checkpoint without trainer_state.json; it is skipped, so the
    next attempt resumes from the one before it instead of crashing on half a checkpoint.
    """
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        match = _CHECKPOINT.match(path.name)
        if match and path.is_dir():
            if (path / "trainer_state.json").is_file():
                found.append((int(match.group(1)), path))
            else:
                log.warning("%s: incomplete checkpoint (no trainer_state.json), not resuming from it", path)
    return max(found)[1] if found else None


def under_submitit() -> bool:
    """submitit's job process sets SUBMITIT_EXECUTOR (and its own signal handlers)."""
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def requeue_if_slurm(runner: Callable[..., Any] | None = None) -> bool:
    """``scontrol requeue $SLURM_JOB_ID`` when running as a SLURM job (rank 0 only); True if done.

    The job goes back to the queue and starts again, in the same run directory, once this process
    exits; SLURM keeps the job id. Needs ``--requeue`` (or JobRequeue=1) on the cluster.
    """
    job_id = os.environ.get("SLURM_JOB_ID")  # an array task's own id, not the array's
    if not job_id or int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))) != 0:
        return False
    result = (runner or subprocess.run)(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        log.error("scontrol requeue %s failed: %s", job_id, (result.stderr or "").strip())
        return False
    log.warning("requeued SLURM job %s; it resumes from the last checkpoint when it starts again", job_id)
    return True


class PreemptionHandler:
    """Catches the preemption signal and, through :meth:`callback`, saves and stops the trainer."""

    def __init__(self, signal_name: str = "USR2") -> None:
        self.signum = signal_number(signal_name)
        self.requested_at: int | None = None  # the signal number once received
        self.stopped_at_step: int | None = None
        self.previous: Any = None

    # -- the signal ---------------------------------------------------------------------------

    def install(self) -> PreemptionHandler:
        """Install the handler (main thread only), remembering the one it replaces."""
        self.previous = signal.signal(self.signum, self._on_signal)
        return self

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(self.signum, self.previous)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag: saving from inside a signal handler could interrupt a half-done step.
        log.warning("received %s: saving a checkpoint at the end of this step, then stopping", signal.Signals(signum).name)
        self.requested_at = signum

    @property
    def requested(self) -> bool:
        return self.requested_at is not None

    def wait_for_signal(self, step: int, args: Any) -> None:
        """The delivery drill: hold at ``step`` until the signal arrives from outside (SLURM)."""
        rank = getattr(args, "process_index", 0)
        # print, not log: the drill's driver reads it from the SLURM log, whatever the log level.
        print(f"kazhpc: rank {rank} waiting for the preemption signal at step {step}", flush=True)
        deadline = time.monotonic() + DRILL_WAIT_S
        while not self.requested and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"kazhpc: rank {rank} {'got' if self.requested else 'timed out waiting for'} the signal", flush=True)

    # -- the trainer side ---------------------------------------------------------------------

    def callback(self) -> Any:
        """A TrainerCallback: at the end of an optimizer step, if the signal came, save and stop."""
        from transformers import TrainerCallback

        handler = self
        drill_step = int(os.environ.get(PREEMPT_AFTER_STEP_ENV, "0") or 0)
        wait_step = int(os.environ.get(WAIT_FOR_SIGNAL_AT_STEP_ENV, "0") or 0)

        class PreemptionCallback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if drill_step and state.global_step == drill_step and not handler.requested:
                    signal.raise_signal(handler.signum)  # the real handler path, raised in-process
                if wait_step and state.global_step == wait_step:
                    handler.wait_for_signal(state.global_step, args)
                if _any_rank(handler.requested, args):
                    control.should_save = True
                    control.should_training_stop = True
                    handler.requested_at = handler.requested_at or handler.signum
                    handler.stopped_at_step = state.global_step

        return PreemptionCallback()

    def hand_over(self, checkpoint: Path | None) -> None:
        """After the trainer saved and stopped: raise Preempted, carrying who requeues the job."""
        step = self.stopped_at_step
        if checkpoint is None:
            raise KazhpcError(f"train: preempted at step {step} but no checkpoint was saved")
        previous = self.previous
        requeue: Callable[[], Any] | None = None
        if callable(previous) and previous is not signal.default_int_handler:
            # Run in submitit's own process: its handler checkpoints the submission, requeues, exits.
            how = "the previous signal handler (submitit's) requeues the job"
            signum = self.signum

            def requeue() -> None:
                previous(signum, None)
        elif under_submitit():
            # A child of submitit's job process (kazhpc.launch.submit.ShellStep), which requeues once
            # this process has exited; a `scontrol requeue` here would end the job under it.
            how = "submitit requeues the job"
        elif os.environ.get("SLURM_JOB_ID"):
            how, requeue = "the SLURM job is requeued", requeue_if_slurm
        else:
            how = "run the job again to resume"
        log.warning("preempted at step %s, %s saved; %s", step, checkpoint, how)
        raise Preempted(f"train: preempted at step {step}; checkpoint {checkpoint} saved; {how}"
                        + (" and it resumes from there" if "requeue" in how else ""), requeue)


def train_resumably(trainer: Any, checkpoints: Path, resumed_from: Path | None,
                    preemption: PreemptionHandler) -> tuple[Any, float]:
    """``trainer.train()``, from ``resumed_from`` (the last complete checkpoint, or None); on the
    preemption signal the trainer saved and stopped, and this hands over (raises Preempted).
    Returns the train result and the seconds it took."""
    if resumed_from is not None:
        log.info("resuming from %s (optimizer, scheduler, RNG and data position)", resumed_from)
        keep_trainable_dtypes_on_resume(trainer)
    started = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=str(resumed_from) if resumed_from else None)
    finally:
        preemption.uninstall()
    if preemption.requested:
        preemption.hand_over(last_checkpoint(checkpoints))  # raises Preempted (requeued on the way out)
    return result, time.time() - started


def keep_trainable_dtypes_on_resume(trainer: Any) -> None:
    """Make a resumed run train the adapter in the dtype the interrupted run trained it in.

    trl casts LoRA weights of a quantized model to bfloat16; on resume, the Trainer reloads them
    with peft's ``load_adapter``, which upcasts adapter weights to float32 (``autocast_adapter_dtype``).
    The resumed run would then continue in another precision than the run it continues (measured:
    0.03 % loss drift after one step). The reload happens before the optimizer is built and its state
    loaded, so casting back right after it restores the exact weights (bf16 → fp32 → bf16 is lossless).
    """
    load = trainer._load_from_checkpoint

    def load_keeping_dtypes(checkpoint: str, model: Any = None) -> None:
        dtypes = {n: p.dtype for n, p in trainer.model.named_parameters() if p.requires_grad}
        load(checkpoint) if model is None else load(checkpoint, model)
        for name, param in trainer.model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    trainer._load_from_checkpoint = load_keeping_dtypes


def _any_rank(flag: bool, args: Any) -> bool:
    """True on every rank if any rank got the signal: all ranks must save and stop together."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    import torch

    device = args.device if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
