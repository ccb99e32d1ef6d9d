"""Preemption and resume: a run stopped by the preemption signal and started again matches an
uninterrupted run step for step (real Gemma-3-270M, QLoRA on CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import CONFIGS, REPO
from kazhpc.config import load_config
from kazhpc.errors import PREEMPTED_EXIT_CODE, ConfigError, KazhpcError
from kazhpc.signals import signal_number
from kazhpc.train.resume import PREEMPT_AFTER_STEP_ENV, PreemptionHandler, last_checkpoint, requeue_if_slurm

KAZHPC = str(Path(sys.executable).parent / "kazhpc")
#: Few, short steps: 2 before the interruption, 2 after (the second one after it only matches
#: if the optimizer moments and the scheduler were restored, the first only if the data position was).
OVERRIDES = [
    "jobs=[preprocess, train]",
    "train.max_steps=4",
    "train.save_steps=3",  # the interruption at step 2 is not a regular save step: the signal saves
    "train.per_device_batch_size=2",
    "train.max_length=128",
    "train.loss_check_rows=0",  # 4 tiny steps need not lower the loss; resume is what is under test
    "train.lora.dropout=0.1",  # dropout draws random numbers: the RNG state must be restored too
]


def _job(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=900, env={**os.environ, **(env or {})})


def _history(run_dir: Path) -> list[dict]:
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    return [h for h in manifest["history"] if "loss" in h]


@pytest.fixture(scope="module")
def two_run_dirs(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> tuple[Path, Path]:
    """Two run directories of one config, sharing one preprocess output (run once)."""
    root = tmp_path_factory.mktemp("resume-runs")
    overrides = [*OVERRIDES, f"runs_root={root}", f"cache_dir={model_cache}"]
    dirs = []
    for _ in range(2):
        init = _job([KAZHPC, "init", str(CONFIGS / "pipelines" / "smoke.yaml"), *overrides])
        assert init.returncode == 0, init.stderr[-3000:]
        dirs.append(Path(init.stdout.strip().splitlines()[-1]))
    pre = _job([sys.executable, "jobs/preprocess.py", "--run-dir", str(dirs[0])])
    assert pre.returncode == 0, pre.stderr[-3000:]
    shutil.copytree(dirs[0] / "preprocess", dirs[1] / "preprocess")
    return dirs[0], dirs[1]


@pytest.mark.slow
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(two_run_dirs: tuple[Path, Path]) -> None:
    interrupted, straight = two_run_dirs
    train = [sys.executable, "jobs/train.py", "--run-dir"]

    first = _job([*train, str(interrupted)], env={PREEMPT_AFTER_STEP_ENV: "2"})
    assert first.returncode == PREEMPTED_EXIT_CODE, first.stderr[-3000:]
    assert "preempted at step 2" in first.stderr
    checkpoints = interrupted / "train" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == ["checkpoint-2"]
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {p.name for p in (checkpoints / "checkpoint-2").iterdir()}
    state = json.loads((interrupted / "run.json").read_text())["jobs"]["train"]
    assert state["status"] == "PREEMPTED"
    assert not (interrupted / "train" / "adapter").exists()

    second = _job([*train, str(interrupted)])
    assert second.returncode == 0, second.stderr[-3000:]
    resumed = json.loads((interrupted / "train" / "manifest.json").read_text())
    assert resumed["resumed_from"] == str(checkpoints / "checkpoint-2")

    reference = _job([*train, str(straight)])
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert json.loads((straight / "train" / "manifest.json").read_text())["resumed_from"] is None

    got, want = _history(interrupted), _history(straight)
    assert [h["step"] for h in got] == [h["step"] for h in want] == [1, 2, 3, 4]
    # Same kernels, same thread count, the whole state restored: the runs are bitwise identical
    # (measured), so the tolerance is float noise, 1e-6 relative. What it catches: a wrong data
    # position or lost RNG state (dropout is on) changes step 3, a fresh optimizer or scheduler
    # step 4; and an adapter reloaded in another dtype (peft upcasts bf16 LoRA weights to fp32 on
    # load, kazhpc.train.resume.keep_trainable_dtypes_on_resume) drifted by 3e-4 before the fix.
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-6), (g, w)
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-6), (g, w)
        assert g["learning_rate"] == pytest.approx(w["learning_rate"], rel=1e-6)


# -- the pieces, without a model -------------------------------------------------------------


def test_signal_names() -> None:
    assert signal_number("USR2") is signal.SIGUSR2
    assert signal_number("sigterm") is signal.SIGTERM
    assert signal_number("10") is signal.SIGUSR1
    with pytest.raises(KazhpcError, match="not a catchable signal"):
        signal_number("KILL")
    with pytest.raises(KazhpcError, match="not a catchable signal"):
        signal_number("USR3")


def test_config_normalises_and_refuses_signals() -> None:
    smoke = CONFIGS / "pipelines" / "smoke.yaml"
    assert load_config(smoke, ["train.preemption_signal=SIGTERM"]).train.preemption_signal == "TERM"
    with pytest.raises(ConfigError, match=r"train\.preemption_signal: .*'KILL' is not a catchable signal"):
        load_config(smoke, ["train.preemption_signal=KILL"])


def test_last_checkpoint_skips_a_half_written_one(tmp_path: Path) -> None:
    assert last_checkpoint(tmp_path / "none") is None
    for step, complete in ((3, True), (10, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-99.tmp").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_requeue_only_under_slurm_and_on_rank_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return SimpleNamespace(returncode=0, stderr="")

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert requeue_if_slurm(fake_run) is False and calls == []
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("RANK", "1")
    assert requeue_if_slurm(fake_run) is False and calls == []
    monkeypatch.setenv("RANK", "0")
    assert requeue_if_slurm(fake_run) is True
    assert calls == [["scontrol", "requeue", "4242"]]


def test_signal_sets_save_and_stop_then_hands_over_to_the_previous_handler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler chain submitit relies on: ours saves first, then submitit's requeues."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)

    handed = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handed.append(signum))
    try:
        handler = PreemptionHandler("USR1").install()
        callback = handler.callback()
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
        state, control = TrainerState(), TrainerControl()
        state.global_step = 5
        callback.on_step_end(args, state, control)
        assert not control.should_save and not control.should_training_stop
        os.kill(os.getpid(), signal.SIGUSR1)  # a real signal from outside the trainer
        callback.on_step_end(args, state, control)
        assert control.should_save and control.should_training_stop and handler.stopped_at_step == 5
        handler.uninstall()
        with pytest.raises(KazhpcError, match="no checkpoint was saved"):
            handler.hand_over(None)
        (tmp_path / "checkpoint-5").mkdir()
        with pytest.raises(KazhpcError, match="preempted at step 5") as info:
            handler.hand_over(tmp_path / "checkpoint-5")
        assert info.value.exit_code == PREEMPTED_EXIT_CODE
        assert handed == []  # not yet: the runner records the preemption first
        info.value.requeue()
        assert handed == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_under_submitit_the_train_process_leaves_the_requeue_to_submitit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as submitit's child process: submitit's handler (in the parent) requeues; no scontrol here."""
    import kazhpc.train.resume as resume

    calls = []
    monkeypatch.setattr(resume.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or SimpleNamespace(returncode=0, stderr=""))
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    handler = PreemptionHandler("USR2")  # not installed: the previous handler is nobody's
    handler.stopped_at_step = 7
    with pytest.raises(KazhpcError, match="submitit requeues the job") as info:
        handler.hand_over(tmp_path)
    info.value.requeue()
    assert info.value.exit_code == PREEMPTED_EXIT_CODE and calls == []
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    with pytest.raises(KazhpcError, match="the SLURM job is requeued") as info:  # plain sbatch: kazhpc requeues
        handler.hand_over(tmp_path)
    assert calls == []  # on the way out of the job (kazhpc.console.report_errors), after run.json and MLflow
    info.value.requeue()
    assert calls == [["scontrol", "requeue", "4243"]]
