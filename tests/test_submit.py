"""`kazhpc submit` end to end on the real local SLURM (slurm/local-cluster.sh): submitit → sbatch →
slurmctld → slurmd → the job scripts on the real Gemma-3-270M, MLflow, then status, a killed job,
and --resume. Nothing is mocked; training is cut to 2 steps to fit the test budget."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import CONFIGS, REPO, kazhpc_ui, stage_state
from kazhpc.config import load_config
from kazhpc.registry import job_type
from kazhpc.runner import read_state

KAZHPC = str(Path(sys.executable).parent / "kazhpc")
SMOKE = "configs/pipelines/smoke.yaml"
LOCAL = "configs/clusters/local.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def kazhpc(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([KAZHPC, *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def sharded_overrides() -> list[str]:
    """Two parts for every smoke job that splits (preprocess; evaluate once it exists)."""
    jobs = load_config(CONFIGS / "pipelines" / "smoke.yaml").stage_names
    return [f"{job.replace('-', '_')}.shards=2" for job in jobs if job_type(job).splits]


def the_run_dir(runs_root: Path) -> Path:
    (run_dir,) = [p for p in runs_root.iterdir() if p.is_dir() and p.name.startswith("smoke-")]
    return run_dir


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[0] if out.strip() else ""


@pytest.fixture(scope="module")
def smoke_submission(local_slurm: str, tmp_path_factory: pytest.TempPathFactory, model_cache: Path):
    """The README's command on the local cluster, waited for with `kazhpc status --wait`."""
    runs_root = tmp_path_factory.mktemp("submit") / "runs"
    sharded = sharded_overrides()
    cut = ["train.max_steps=2", "train.loss_check_rows=4", "tokenizers.tokenizers=[gemma3,llama3]"]  # test budget
    if "evaluate" in load_config(CONFIGS / "pipelines" / "smoke.yaml").stage_names:
        cut.append("evaluate.limit=2")
    submitted = kazhpc("submit", SMOKE, f"runs_root={runs_root}", f"cache_dir={model_cache}", *cut, *sharded,
                       "--cluster", LOCAL)
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    run_dir = the_run_dir(runs_root)
    try:
        waited = kazhpc("status", str(run_dir), "--wait", "--timeout", "900", timeout=960)
        yield {"runs_root": runs_root, "run_dir": run_dir, "sharded": sharded, "waited": waited}
    finally:
        kazhpc("cancel", str(run_dir))  # nothing left queued if a check failed early


def test_smoke_pipeline_through_slurm(smoke_submission: dict) -> None:
    runs_root, run_dir, sharded, waited = (smoke_submission[k] for k in ("runs_root", "run_dir", "sharded", "waited"))
    assert waited.returncode == 0, waited.stdout + waited.stderr[-4000:]
    assert "all jobs completed" in waited.stdout

    cfg = load_config(run_dir / "config.yaml")
    submission = json.loads((run_dir / "submission.json").read_text())
    steps = {s["name"]: s for s in submission["attempts"][0]["steps"]}
    split = [o.split(".")[0].replace("_", "-") for o in sharded]
    assert list(steps) == [name for job in cfg.stage_names for name in ([f"{job}-parts", job] if job in split else [job])]
    for job in split:  # sharded jobs ran as 2-task arrays, their merge after them
        parts = steps[f"{job}-parts"]
        assert parts["array"] == 2 and parts["tasks"] == [f"{parts['slurm_id']}_0", f"{parts['slurm_id']}_1"]
        assert steps[job]["dependency"] == f"afterok:{parts['slurm_id']}"
        assert all(read_state(run_dir)["jobs"][f"{job}[{i}/2]"]["status"] == "COMPLETED" for i in range(2))
    first = next(iter(steps.values()))
    assert first["dependency"] is None
    states, summary = waited.stdout.split("all jobs completed")
    for line in states.splitlines()[1:]:
        assert line.split()[-1] == "COMPLETED", waited.stdout
    # --wait ends with the run's summary: every stage's state from run.json, the scores table.
    assert all(stage_state(summary, stage) == "COMPLETED" for stage in cfg.stage_names), summary
    assert "evaluate: scores" in summary

    state = read_state(run_dir)["jobs"]
    client = MlflowClient(f"sqlite:///{runs_root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == "smoke"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["slurm.cluster_profile"] == "local"
    assert f"train={steps['train']['slurm_id']}" in parent.data.tags["slurm.submission.0"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(cfg.stage_names) and len(runs) == len(cfg.stage_names) + 1
    for job, child in children.items():
        assert child.info.status == "FINISHED", job
        assert child.data.tags["slurm.job_id"] == steps[job]["slurm_id"] == state[job]["slurm_job_id"]
        assert child.data.tags["slurm.cluster_name"] == "kazhpc-local"
    assert children["train"].data.metrics["train_loss"] > 0
    assert "kk_perplexity" in children["prepare-model"].data.metrics
    for step in steps.values():
        assert all(Path(log).is_file() for log in step["logs"]), step


def test_killed_job_stops_its_dependants_and_resume_finishes(local_slurm: str, tmp_path: Path, model_cache: Path) -> None:
    """scancel a running job: its dependants are cancelled (never left pending), status names the
    job and its log, and --resume reruns from it while the finished job before it is reused."""
    runs_root = tmp_path / "runs"
    submitted = kazhpc("submit", SMOKE, f"runs_root={runs_root}", f"cache_dir={model_cache}", "jobs=[tokenizers,preprocess]",
                       "tokenizers.tokenizers=[llama3]", "preprocess.shards=2", "--cluster", LOCAL)
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    run_dir = the_run_dir(runs_root)
    try:
        killed_and_resumed(run_dir, runs_root)
    finally:
        kazhpc("cancel", str(run_dir))


def killed_and_resumed(run_dir: Path, runs_root: Path) -> None:
    steps = {s["name"]: s for s in json.loads((run_dir / "submission.json").read_text())["attempts"][0]["steps"]}
    victim = steps["preprocess-parts"]["slurm_id"]
    deadline = time.time() + 240
    while not (squeue_state(f"{victim}_0") == "RUNNING" or squeue_state(f"{victim}_1") == "RUNNING"):
        assert time.time() < deadline, kazhpc("status", str(run_dir)).stdout
        time.sleep(1)
    subprocess.run(["scancel", victim], check=True)

    failed = kazhpc("status", str(run_dir), "--wait", "--timeout", "120", timeout=180)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = failed.stdout.splitlines()
    assert any(line.split()[:3] == ["tokenizers", steps["tokenizers"]["slurm_id"], "COMPLETED"] for line in lines), failed.stdout
    assert any(line.startswith(f"failed: preprocess-parts (SLURM {victim}, CANCELLED); log: ") for line in lines), failed.stdout
    assert "not run (a job they wait for failed): preprocess" in failed.stdout
    assert squeue_state(steps["preprocess"]["slurm_id"]) in ("", "CANCELLED")  # not pending forever
    assert f"kazhpc submit --resume {run_dir}" in failed.stdout

    resumed = kazhpc("submit", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "tokenizers" not in resumed.stdout.split("run directory:")[1]  # finished: reused, not rerun
    done = kazhpc("status", str(run_dir), "--wait", "--timeout", "240", timeout=300)
    assert done.returncode == 0 and "all jobs completed" in done.stdout, done.stdout + done.stderr
    attempts = json.loads((run_dir / "submission.json").read_text())["attempts"]
    assert [a["jobs"] for a in attempts] == [["tokenizers", "preprocess"], ["preprocess"]]
    assert (run_dir / "preprocess" / "manifest.json").is_file()
    client = MlflowClient(f"sqlite:///{runs_root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kazhpc-smoke").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["preprocess", "smoke", "tokenizers"]  # one parent across both
    assert all(r.info.status == "FINISHED" for r in runs)
    again = kazhpc("submit", "--resume", str(run_dir))
    assert again.returncode == 2 and "every job has finished; nothing to resume" in again.stderr




def test_two_stages_of_one_job_type_are_their_own_slurm_jobs(local_slurm: str, tmp_path: Path, model_cache: Path) -> None:
    """Two preprocess stages (the second split into a 2-task array) submitted from two-stage.yaml:
    each stage is its own SLURM job chained by afterok, with its own folder, run.json entry and
    MLflow child run, and status lists them by stage name."""
    runs_root = tmp_path / "runs"
    stages = ("stages=[{name: pre-general, job: preprocess}, {name: pre-translation, job: preprocess, with: {shards: 2, "
              "sources: [{name: kazparc, kind: kazparc, path: tests/fixtures/data/kazparc_raw.csv}]}}]")
    submitted = kazhpc("submit", "configs/pipelines/two-stage.yaml", f"runs_root={runs_root}", f"cache_dir={model_cache}",
                       stages, "--cluster", LOCAL)
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    (run_dir,) = [p for p in runs_root.iterdir() if p.is_dir() and p.name.startswith("two-stage-")]
    try:
        done = kazhpc("status", str(run_dir), "--wait", "--timeout", "300", timeout=360)
        assert done.returncode == 0 and "all jobs completed" in done.stdout, done.stdout + done.stderr[-3000:]
        steps = {s["name"]: s for s in json.loads((run_dir / "submission.json").read_text())["attempts"][0]["steps"]}
        assert list(steps) == ["pre-general", "pre-translation-parts", "pre-translation"]
        assert [(s["stage"], s["job"]) for s in steps.values()] == [("pre-general", "preprocess"), ("pre-translation", "preprocess"),
                                                                     ("pre-translation", "preprocess")]
        assert steps["pre-translation-parts"]["dependency"] == f"afterok:{steps['pre-general']['slurm_id']}"
        assert steps["pre-translation"]["dependency"] == f"afterok:{steps['pre-translation-parts']['slurm_id']}"
        state = read_state(run_dir)["jobs"]
        for key in ("pre-general", "pre-translation[0/2]", "pre-translation[1/2]", "pre-translation"):
            assert state[key]["status"] == "COMPLETED", key
        general, translation = (json.loads((run_dir / s / "manifest.json").read_text()) for s in ("pre-general", "pre-translation"))
        assert set(general["per_source"]) != set(translation["per_source"]) and translation["stage"] == "pre-translation"
        for name in ("pre-general", "pre-translation"):
            assert any(line.split()[:1] == [name] and "COMPLETED" in line for line in done.stdout.splitlines()), done.stdout
        client = MlflowClient(f"sqlite:///{runs_root / 'mlflow.db'}")
        runs = client.search_runs([client.get_experiment_by_name("kazhpc-two-stage").experiment_id])
        assert sorted(r.info.run_name for r in runs) == ["pre-general", "pre-translation", "two-stage"]
    finally:
        kazhpc("cancel", str(run_dir))


def test_step_refused_by_sbatch_cancels_the_steps_before_it_and_leaves_no_run(local_slurm: str, tmp_path: Path) -> None:
    """A profile that promises more than the cluster has passes kazhpc's own checks but not sbatch:
    the message names the step and SLURM's reason, the step queued before it is cancelled, and no
    half-made run directory is left behind (its MLflow parent run says FAILED, and why)."""
    profile = tmp_path / "big.yaml"
    text = (REPO / LOCAL).read_text().replace("memory_gb: 16", "memory_gb: 4000")
    profile.write_text(text.replace("preprocess: {time: \"00:20:00\", cpus: 1, mem_gb: 3}",
                                    "preprocess: {time: \"00:20:00\", cpus: 1, mem_gb: 3000}"))
    assert "mem_gb: 3000" in profile.read_text()
    runs_root = tmp_path / "runs"
    before = set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())
    refused = kazhpc("submit", SMOKE, f"runs_root={runs_root}", "jobs=[tokenizers,preprocess]", "--cluster", str(profile))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join(refused.stderr.split())
    assert "sbatch refused step preprocess (" in message and "cancelled 1 step(s) queued before it" in message, message
    assert "removed the new run directory" in message
    assert [p for p in runs_root.iterdir() if p.name.startswith("smoke-")] == []  # MLflow's own store stays
    queued = set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())
    assert queued - before == set()  # the tokenizers job was taken back
    client = MlflowClient(f"sqlite:///{runs_root / 'mlflow.db'}")
    (parent,) = client.search_runs([client.get_experiment_by_name("kazhpc-smoke").experiment_id])
    assert parent.info.status == "FAILED" and "sbatch refused step preprocess" in parent.data.tags["kazhpc.error"]


def test_preempted_training_saves_requeues_and_resumes(local_slurm: str, tmp_path: Path, model_cache: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SLURM's warning signal reaches the train job through submitit: the job saves a checkpoint,
    submitit requeues it only once the checkpoint is on disk, and the requeued job resumes from it and
    completes. The signal comes from `scancel --signal=USR2` (what SLURM sends 90 s before the time
    limit); the train job waits for it at step 2 (a drill switch), so the test never races training."""
    from kazhpc.train.resume import WAIT_FOR_SIGNAL_AT_STEP_ENV

    monkeypatch.setenv(WAIT_FOR_SIGNAL_AT_STEP_ENV, "2")  # sbatch passes the environment to the job
    runs_root = tmp_path / "runs"
    submitted = kazhpc("submit", SMOKE, f"runs_root={runs_root}", f"cache_dir={model_cache}", "jobs=[preprocess,train]",
                       "train.max_steps=4", "train.save_steps=100", "train.loss_check_rows=4", "--cluster", LOCAL)
    assert submitted.returncode == 0, submitted.stderr[-4000:]
    run_dir = the_run_dir(runs_root)
    try:
        (step,) = [s for s in json.loads((run_dir / "submission.json").read_text())["attempts"][0]["steps"]
                   if s["name"] == "train"]
        train_id, log = step["slurm_id"], Path(step["logs"][0])
        wait_for_line(log, "waiting for the preemption signal at step 2", run_dir)
        subprocess.run(["scancel", "--signal=USR2", train_id], check=True)
        done = kazhpc("status", str(run_dir), "--wait", "--timeout", "600", timeout=660)
        text = log.read_text() + log.with_suffix(".err").read_text()  # submitit's stdout and stderr logs
        assert done.returncode == 0 and "all jobs completed" in done.stdout, done.stdout + text[-6000:]
    finally:
        kazhpc("cancel", str(run_dir))
    assert "got the signal" in text and "preempted (exit 75); requeueing it through submitit" in text, text[-6000:]
    assert re.search(r"resuming from \S+checkpoint-2 ", text), text[-6000:]
    job = subprocess.run(["scontrol", "show", "job", train_id], capture_output=True, text=True).stdout
    assert "Restarts=1" in job and "JobState=COMPLETED" in job, job
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert manifest["steps"] == 4 and (run_dir / "train" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert read_state(run_dir)["jobs"]["train"]["status"] == "COMPLETED"
    client = MlflowClient(f"sqlite:///{runs_root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kazhpc-smoke").experiment_id])
    train_runs = sorted((r.info.status, r.data.tags.get("kazhpc.error", "")) for r in runs if r.info.run_name == "train")
    assert [status for status, _ in train_runs] == ["FINISHED", "KILLED"], train_runs  # the preempted attempt, then the rest
    assert "Preempted" in train_runs[1][1]


def wait_for_line(log: Path, line: str, run_dir: Path, timeout: float = 420) -> None:
    deadline = time.time() + timeout
    while not (log.is_file() and line in log.read_text()):
        assert time.time() < deadline, (log.read_text()[-4000:] if log.is_file() else "no log") + kazhpc("status", str(run_dir)).stdout
        time.sleep(0.5)


# --- a look at the results: the MLflow UI in headless Chromium --------------------------------


class Chromium:
    """Headless Chromium driven over the DevTools protocol: unlike `--screenshot`, it can wait until
    the page has really drawn its charts (the UI fetches metric histories after the first paint)."""

    def __init__(self, tmp: Path):
        import socket
        import urllib.request

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp}", "--window-size=1400,1000", f"--remote-debugging-port={port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as reply:
                    page = next(t for t in json.load(reply) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                assert time.time() < deadline and self.proc.poll() is None, "chromium did not start"
                time.sleep(0.3)
        import websocket

        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.calls = 0

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.ws.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.calls:
                assert "error" not in message, message
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open_until(self, url: str, expression: str, timeout: float = 90) -> None:
        """Navigate, then wait until ``expression`` is true in the page."""
        self.call("Page.enable")
        self.call("Page.navigate", url=url)
        deadline = time.time() + timeout
        while not self.evaluate(expression):
            assert time.time() < deadline, f"{url}: {expression} still false; page text: {self.evaluate('document.body.innerText')!r:.2000}"
            time.sleep(1)
        time.sleep(1)  # let the last frame settle before the screenshot

    def screenshot(self, path: Path) -> Path:
        import base64

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture
def mlflow_ui(smoke_submission: dict):
    """`kazhpc ui` on the submission's tracking store."""
    with kazhpc_ui(smoke_submission["runs_root"], SMOKE) as base:
        yield base


def test_mlflow_ui_shows_the_run_tree_and_metric_charts(smoke_submission: dict, mlflow_ui: str, tmp_path: Path) -> None:
    """The submitted run as a user sees it: the runs table with the parent and its children, and the
    train run's metric charts drawn; screenshots land in <run_dir>/ui/ for a human to look at."""
    import shutil

    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    client = MlflowClient(f"sqlite:///{smoke_submission['runs_root'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kazhpc-smoke")
    runs = client.search_runs([experiment.experiment_id])
    train = next(r for r in runs if r.info.run_name == "train")
    shots = smoke_submission["run_dir"] / "ui"
    shots.mkdir(exist_ok=True)
    browser = Chromium(tmp_path / "chromium")
    try:
        browser.open_until(f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs",
                           f"document.body.innerText.includes('{len(runs)} matching runs')")
        # The table shows only the parent, with an expander; expanded, every job's run sits under it.
        children = [r.info.run_name for r in runs if r.info.run_name != "smoke"]
        assert not all(name in browser.evaluate("document.body.innerText").split() for name in children)
        browser.evaluate("document.querySelector('button[data-component-id*=runnamecellrenderer]').click()")
        deadline = time.time() + 30
        while not all(name in browser.evaluate("document.body.innerText").split() for name in children):
            assert time.time() < deadline, browser.evaluate("document.body.innerText")[:2000]
            time.sleep(1)
        lines = browser.evaluate("document.body.innerText").split()
        assert lines.index("smoke") < min(lines.index(name) for name in children)  # parent first, then its jobs
        table = browser.screenshot(shots / "runs.png")
        browser.open_until(
            f"{mlflow_ui}/#/experiments/{experiment.experiment_id}/runs/{train.info.run_id}/model-metrics",
            "document.querySelectorAll('.js-plotly-plot').length >= 3",
        )
        titles = browser.evaluate("document.body.innerText")
        for metric in ("loss", "learning_rate", "grad_norm"):
            assert metric in titles.split(), metric
        charts = browser.screenshot(shots / "train-metrics.png")
    finally:
        browser.close()
    for png in (table, charts):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, (png, len(data))
