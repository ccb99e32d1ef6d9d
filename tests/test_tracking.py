"""MLflow tracking against real stores: sqlite files and real `mlflow server` processes.

No mocks: runs are written by ``kazhpc.tracking.Tracker`` and read back with ``MlflowClient``;
the offline cases use a closed port and a server that is really terminated mid-run, and the
journal is replayed with ``sync`` into a fresh sqlite store. Section 6 syncs repeatedly (twice,
after live logging, after the journal grew) into one shared store and counts the copies.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from kazhpc import __version__
from kazhpc.config import TrackingConfig, flatten
from kazhpc.errors import KazhpcError
from kazhpc.tracking import (
    JOURNAL_ID_TAG,
    PARENT_KEY,
    JobRun,
    Tracker,
    default_tracking_uri,
    read_journal,
    run_tags,
    runs_view,
    sync,
)

from mlflow_server import MlflowServer, free_port, port_open

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "kazhpc-test"

NESTED_CONFIG: dict[str, Any] = {
    "name": "smoke",
    "seed": 1234,
    "model": {"name": "google/gemma-3-270m", "revision": "main", "dtype": "bfloat16"},
    "train": {"optim": {"lr": 2e-5, "betas": [0.9, 0.95]}, "steps": 10},
    "jobs": ["prepare-model"],
    "extra": {},
}
PARAMS = flatten(NESTED_CONFIG)
CONFIG_HASH = "0123456789abcdef"


# --------------------------------------------------------------------------------------------
# Helpers.


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A deterministic environment; anything MLflow writes relative to the cwd lands in tmp."""
    for var in ("RANK", "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CLUSTER_NAME",
                "MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    # The tracker sets the MLFLOW_HTTP_* variables itself (setdefault): a set-then-delete makes
    # monkeypatch remember them as absent, so they are removed again after each test.
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


def _runs(client: MlflowClient, experiment: str = EXPERIMENT) -> tuple[Any, list[Any]]:
    """The one parent run and its children in ``experiment``."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment!r} was not created"
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], children


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    """Every file under the run's artifact root, recursively."""
    found: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            found |= _artifact_paths(client, run_id, info.path)
        else:
            found.add(info.path)
    return found


def _make_run_dir(tmp_path: Path) -> tuple[Path, Path, Path]:
    """runs_root, a run directory inside it with its config.yaml, and a job output folder."""
    runs_root = tmp_path / "runs"
    run_dir = runs_root / "smoke-20250101-000000-abc123"
    run_dir.mkdir(parents=True)
    config = run_dir / "config.yaml"
    config.write_text("name: smoke\nmodel:\n  name: google/gemma-3-270m\n", encoding="utf-8")
    job_dir = run_dir / "prepare-model"
    (job_dir / "plots").mkdir(parents=True)
    (job_dir / "manifest.json").write_text(json.dumps({"perplexity": 12.5}), encoding="utf-8")
    (job_dir / "plots" / "loss.csv").write_text("step,loss\n0,3.0\n", encoding="utf-8")
    return runs_root, run_dir, config


def _tracking_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "kazhpc.tracking" and r.levelno >= logging.WARNING]


def _check_synced_tree(client: MlflowClient, ids: dict[str, str], run_dir: Path, steps: range, store: Path) -> None:
    """What the offline tests expect after ``sync`` into the sqlite db in folder ``store``: the
    whole tree, every metric, every file (kept next to the db, as the tracker's own runs are)."""
    parent, children = _runs(client)
    assert parent.info.run_id == ids[PARENT_KEY]
    assert [c.info.run_id for c in children] == [ids["job:prepare-model"]]
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.run_name == "smoke" and child.info.run_name == "prepare-model"
    expected_params = {k: str(v) for k, v in PARAMS.items()}
    assert parent.data.params == expected_params
    assert child.data.params == expected_params
    for run in (parent, child):
        assert run.data.tags["kazhpc.config_hash"] == CONFIG_HASH
        assert run.data.tags["kazhpc.synced_from"] == str(run_dir)
        assert run.info.status == "FINISHED"
    assert child.data.tags["phase"] == "done"
    assert _history(client, child.info.run_id, "loss") == [(s, 3.0 - 0.1 * s) for s in steps]
    assert _history(client, child.info.run_id, "tokens") == [(s, float(1000 * s)) for s in steps]
    assert _artifact_paths(client, parent.info.run_id) == {"config.yaml"}
    assert _artifact_paths(client, child.info.run_id) == {"manifest.json", "plots/loss.csv"}
    local = Path(client.download_artifacts(child.info.run_id, "manifest.json", dst_path=str(run_dir.parent / "dl")))
    assert json.loads(local.read_text()) == {"perplexity": 12.5}
    assert len(list((store / "mlartifacts").rglob("manifest.json"))) == 1
    assert not (Path.cwd() / "mlruns").exists(), "sync put artifacts under the working directory"


# --------------------------------------------------------------------------------------------
# 1. The default sqlite store.


def test_the_ui_link_opens_the_experiment_s_runs_table(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = MlflowClient(uri).create_experiment(EXPERIMENT)
    assert runs_view("http://h:5000/", uri, EXPERIMENT) == f"http://h:5000/#/experiments/{experiment_id}/runs"
    assert runs_view("http://h:5000", uri, "not-yet") == "http://h:5000"  # no runs yet: the front page
    assert runs_view("http://h:5000", f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}", EXPERIMENT) == "http://h:5000"


def test_sqlite_parent_and_child_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    runs_root, run_dir, config = _make_run_dir(tmp_path)
    cfg = TrackingConfig(experiment=EXPERIMENT)
    tags = run_tags(CONFIG_HASH)
    tracker = Tracker(cfg, runs_root, run_dir)
    assert tracker.active and tracker.online
    assert tracker.uri == default_tracking_uri(runs_root) == f"sqlite:///{runs_root.absolute()}/mlflow.db"

    parent_id = tracker.start_pipeline("smoke", PARAMS, tags, config)
    assert parent_id
    job = tracker.job("prepare-model", PARAMS, tags)
    assert job.run_id and job.run_id != parent_id
    for step in range(5):
        job.log_metrics({"loss": 3.0 - 0.5 * step, "lr": 1e-5 * (step + 1)}, step=step)
    job.log_metrics({"perplexity": 17.25})  # no step: logged at step 0
    job.set_tags({"phase": "done", "kazhpc.device": "cpu"})
    job.log_artifact(run_dir / "prepare-model" / "manifest.json")
    job.log_artifact(run_dir / "prepare-model" / "plots", artifact_path="plots")
    job.finish()
    tracker.finish_pipeline("FINISHED")
    assert tracker.online, "a reachable sqlite store must not send the tracker offline"

    assert (runs_root / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=default_tracking_uri(runs_root))
    parent, children = _runs(client)
    assert parent.info.run_id == parent_id
    assert [c.info.run_id for c in children] == [job.run_id]
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert parent.info.run_name == "smoke" and child.info.run_name == "prepare-model"

    # The flattened config as params, on both runs.
    assert parent.data.params["model.name"] == "google/gemma-3-270m"
    assert parent.data.params["train.optim.lr"] == "2e-05"
    assert parent.data.params["train.optim.betas"] == "[0.9, 0.95]"
    assert parent.data.params == {k: str(v) for k, v in PARAMS.items()}
    assert child.data.params == parent.data.params

    # Provenance tags.
    in_checkout = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True).returncode == 0
    for run in (parent, child):
        run_tags_ = run.data.tags
        assert run_tags_["kazhpc.config_hash"] == CONFIG_HASH
        assert run_tags_["kazhpc.version"] == __version__
        assert run_tags_["kazhpc.host"] == socket.gethostname()
        assert run_tags_["slurm.job_id"] == "4242"
        assert run_tags_["mlflow.source.type"] == "JOB"  # MLflow's Source column: the command and its commit
        assert run_tags_["mlflow.source.name"].split()[0] == Path(sys.argv[0]).name
        if in_checkout:  # a commit of this checkout (not compared to HEAD: others may commit meanwhile)
            commit = run_tags_["kazhpc.git_commit"]
            assert run_tags_["mlflow.source.git.commit"] == commit.removesuffix("-dirty")
            assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit), commit
            exists = ["git", "-C", str(REPO), "cat-file", "-e", commit.removesuffix("-dirty") + "^{commit}"]
            assert subprocess.run(exists, capture_output=True).returncode == 0, commit
        else:  # pragma: no cover - the tests normally run from a checkout
            assert run_tags_["kazhpc.git_commit"] == "unknown"
    assert child.data.tags["phase"] == "done"
    assert child.data.tags["kazhpc.device"] == "cpu"

    # Every step of the metric history.
    assert _history(client, child.info.run_id, "loss") == [(s, 3.0 - 0.5 * s) for s in range(5)]
    assert [s for s, _ in _history(client, child.info.run_id, "lr")] == list(range(5))
    assert _history(client, child.info.run_id, "perplexity") == [(0, 17.25)]
    assert child.data.metrics["loss"] == 1.0  # the latest step

    # Artifacts, listed by the store and lying under <runs_root>/mlartifacts.
    assert _artifact_paths(client, parent_id) == {"config.yaml"}
    assert _artifact_paths(client, job.run_id) == {"manifest.json", "plots/loss.csv"}
    stored = list((runs_root / "mlartifacts").rglob("loss.csv"))
    assert len(stored) == 1 and stored[0].read_text() == "step,loss\n0,3.0\n"

    assert parent.info.status == "FINISHED"
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert client.get_run(job.run_id).info.status == "FINISHED"

    # The journal has every event, in order.
    events = [(e["event"], e["key"]) for e in read_journal(run_dir)]
    assert events[:3] == [("start", PARENT_KEY), ("params", PARENT_KEY), ("artifact", PARENT_KEY)]
    assert events.count(("metrics", "job:prepare-model")) == 6
    assert events[-2:] == [("end", "job:prepare-model"), ("end", PARENT_KEY)]

    # A second job of the same pipeline (another process: a new Tracker) reuses the parent run.
    monkeypatch.setenv("SLURM_JOB_ID", "4243")
    second = Tracker(cfg, runs_root, run_dir)
    assert second.start_pipeline("smoke", PARAMS, run_tags(CONFIG_HASH), config) == parent_id
    job2 = second.job("train", {"train.steps": 10}, run_tags(CONFIG_HASH))
    job2.log_metrics({"loss": 0.5}, step=10)
    job2.finish("FAILED")
    parent, children = _runs(client)
    assert parent.info.run_id == parent_id
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == {"prepare-model", "train"}
    assert by_name["train"].info.run_id == job2.run_id
    assert by_name["train"].data.tags["mlflow.parentRunId"] == parent_id
    assert by_name["train"].data.tags["slurm.job_id"] == "4243"
    assert by_name["train"].data.params == {"train.steps": "10"}
    assert by_name["train"].info.status == "FAILED"
    assert _history(client, job2.run_id, "loss") == [(10, 0.5)]
    assert _artifact_paths(client, parent_id) == {"config.yaml"}, "the reused parent got its config twice"

    # The journal synced into the store it was logged to live: nothing to add.
    result = sync(run_dir, default_tracking_uri(runs_root), EXPERIMENT)
    assert (result.created, result.sent) == (0, 0)
    assert result.runs == {PARENT_KEY: parent_id, "job:prepare-model": job.run_id, "job:train": job2.run_id}
    assert len(_runs(client)[1]) == 2


def test_run_tags_without_slurm_and_pinned_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAZHPC_GIT_COMMIT", "feedbeef")
    monkeypatch.setattr(sys, "argv", ["/opt/kazhpc/jobs/train.py", "--run-dir", "runs/a b"])
    tags = run_tags("abc")
    assert tags == {
        "mlflow.source.type": "JOB",
        "mlflow.source.name": "jobs/train.py --run-dir 'runs/a b'",
        "mlflow.source.git.commit": "feedbeef",
        "kazhpc.git_commit": "feedbeef",
        "kazhpc.config_hash": "abc",
        "kazhpc.version": __version__,
        "kazhpc.host": socket.gethostname(),
    }
    monkeypatch.setattr(sys, "argv", ["/opt/kazhpc/kazhpc/cli.py", "compare", "runs/sweep"])
    assert run_tags("abc")["mlflow.source.name"] == "kazhpc compare runs/sweep"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    tags = run_tags("abc")
    assert tags["slurm.array_job_id"] == "77" and tags["slurm.array_task_id"] == "3"


# --------------------------------------------------------------------------------------------
# 2. Ranks other than 0, and tracking switched off.


@pytest.mark.parametrize("how", ["rank1", "disabled"])
def test_inactive_tracker_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    runs_root, run_dir, config = _make_run_dir(tmp_path)
    if how == "rank1":
        monkeypatch.setenv("RANK", "1")
        cfg = TrackingConfig(experiment=EXPERIMENT)
    else:
        cfg = TrackingConfig(experiment=EXPERIMENT, enabled=False)
    tracker = Tracker(cfg, runs_root, run_dir)
    assert not tracker.active
    assert tracker.start_pipeline("smoke", PARAMS, run_tags(CONFIG_HASH), config) is None
    job = tracker.job("prepare-model", PARAMS, run_tags(CONFIG_HASH))
    assert not job.active and job.run_id is None
    job.log_metrics({"loss": 1.0}, step=1)
    job.set_tags({"phase": "done"})
    job.log_artifact(run_dir / "prepare-model" / "manifest.json")
    job.finish()
    tracker.finish_pipeline("FINISHED")

    assert not (run_dir / "tracking").exists(), "an inactive tracker wrote a journal"
    assert list(read_journal(run_dir)) == []
    assert not (runs_root / "mlflow.db").exists(), "an inactive tracker created the store"
    assert not (runs_root / "mlartifacts").exists()
    with pytest.raises(KazhpcError, match="no tracking journal"):
        sync(run_dir, f"sqlite:///{tmp_path / 'other.db'}", EXPERIMENT)
    assert not (tmp_path / "other.db").exists(), "a sync with nothing to send opened the store"


# --------------------------------------------------------------------------------------------
# 3. A real tracking server.


@pytest.mark.slow
def test_server_receives_runs_metrics_and_artifacts(tmp_path: Path, server: MlflowServer) -> None:
    runs_root, run_dir, config = _make_run_dir(tmp_path)
    cfg = TrackingConfig(uri=server.uri, experiment=EXPERIMENT, timeout_s=5)
    tags = run_tags(CONFIG_HASH)
    tracker = Tracker(cfg, runs_root, run_dir)
    assert tracker.online and tracker.uri == server.uri
    parent_id = tracker.start_pipeline("smoke", PARAMS, tags, config)
    job = tracker.job("prepare-model", PARAMS, tags)
    for step in range(4):
        job.log_metrics({"loss": 2.0 - 0.25 * step}, step=step)
    job.set_tags({"phase": "done"})
    job.log_artifact(run_dir / "prepare-model" / "manifest.json")
    job.log_artifact(run_dir / "prepare-model" / "plots", artifact_path="plots")
    job.finish()
    tracker.finish_pipeline("FINISHED")
    assert tracker.online, "the server went unreachable during the run"
    assert not (runs_root / "mlflow.db").exists(), "logged to the default sqlite store, not the server"

    client = MlflowClient(tracking_uri=server.uri)
    parent, children = _runs(client)
    assert parent.info.run_id == parent_id
    assert [c.info.run_id for c in children] == [job.run_id]
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == parent_id
    assert child.data.params["model.name"] == "google/gemma-3-270m"
    assert parent.data.tags["kazhpc.config_hash"] == CONFIG_HASH
    assert child.data.tags["phase"] == "done"
    assert _history(client, job.run_id, "loss") == [(s, 2.0 - 0.25 * s) for s in range(4)]
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"

    # Artifacts went through the server into its --artifacts-destination.
    assert _artifact_paths(client, parent_id) == {"config.yaml"}
    assert _artifact_paths(client, job.run_id) == {"manifest.json", "plots/loss.csv"}
    on_server = {p.relative_to(server.artifacts).parts[-1] for p in server.artifacts.rglob("*") if p.is_file()}
    assert {"config.yaml", "manifest.json", "loss.csv"} <= on_server
    local = Path(client.download_artifacts(job.run_id, "plots/loss.csv", dst_path=str(tmp_path / "dl")))
    assert local.read_text() == "step,loss\n0,3.0\n"


# --------------------------------------------------------------------------------------------
# 4. A server that is never reachable, then `sync`.


def _log_job(tracker: Tracker, run_dir: Path, config: Path, steps: range) -> None:
    """A pipeline of one job, logged through ``tracker`` (live or offline)."""
    tags = run_tags(CONFIG_HASH)
    tracker.start_pipeline("smoke", PARAMS, tags, config)
    job = tracker.job("prepare-model", PARAMS, tags)
    for step in steps:
        job.log_metrics({"loss": 3.0 - 0.1 * step, "tokens": 1000 * step}, step=step)
    job.set_tags({"phase": "done"})
    job.log_artifact(run_dir / "prepare-model" / "manifest.json")
    job.log_artifact(run_dir / "prepare-model" / "plots", artifact_path="plots")
    job.finish()
    tracker.finish_pipeline("FINISHED")


def test_unreachable_server_then_sync(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, store: tuple[str, Path]
) -> None:
    caplog.set_level(logging.WARNING, logger="kazhpc.tracking")
    runs_root, run_dir, config = _make_run_dir(tmp_path)
    port = free_port()  # bound then closed: nothing listens there
    assert not port_open(port)
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{port}", experiment=EXPERIMENT, timeout_s=2)
    started = time.monotonic()
    tracker = Tracker(cfg, runs_root, run_dir)
    assert tracker.active and not tracker.online
    steps = range(50)
    _log_job(tracker, run_dir, config, steps)
    assert time.monotonic() - started < 30, "offline logging should not wait on the network per call"

    warnings = _tracking_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert f"127.0.0.1:{port}" in message and "kazhpc sync" in message and str(run_dir) in message
    assert not (run_dir / "tracking" / "runs.json").exists()
    assert not (runs_root / "mlflow.db").exists()

    journal = list(read_journal(run_dir))
    kinds = [(e["event"], e["key"]) for e in journal]
    assert kinds.count(("metrics", "job:prepare-model")) == len(steps)
    assert [e["step"] for e in journal if e["event"] == "metrics"] == list(steps)
    assert ("start", PARENT_KEY) in kinds and ("start", "job:prepare-model") in kinds
    assert ("end", PARENT_KEY) == kinds[-1]
    assert sum(1 for e in journal if e["event"] == "artifact") == 3

    # Into one store, then into another: the second is a full upload of its own.
    shared = sync(run_dir, store[0], EXPERIMENT)
    target = f"sqlite:///{tmp_path / 'synced' / 'mlflow.db'}"
    (tmp_path / "synced").mkdir()
    result = sync(run_dir, target, EXPERIMENT)
    assert set(result.runs) == {PARENT_KEY, "job:prepare-model"}
    assert set(result.runs.values()).isdisjoint(shared.runs.values())
    assert (result.created, result.lines) == (2, len(journal))
    _check_synced_tree(MlflowClient(tracking_uri=target), result.runs, run_dir, steps, tmp_path / "synced")

    # Again: the same runs, nothing sent, nothing copied.
    again = sync(run_dir, target, EXPERIMENT)
    assert (again.runs, again.created, again.sent) == (result.runs, 0, 0)
    _check_synced_tree(MlflowClient(tracking_uri=target), result.runs, run_dir, steps, tmp_path / "synced")


# --------------------------------------------------------------------------------------------
# 5. The server dies in the middle of a job.


@pytest.mark.slow
def test_server_dies_mid_run_then_sync(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="kazhpc.tracking")
    srv = MlflowServer(tmp_path / "dying-server")
    try:
        srv.wait_healthy()
        runs_root, run_dir, config = _make_run_dir(tmp_path)
        cfg = TrackingConfig(uri=srv.uri, experiment=EXPERIMENT, timeout_s=5)
        tags = run_tags(CONFIG_HASH)
        tracker = Tracker(cfg, runs_root, run_dir)
        assert tracker.online
        parent_id = tracker.start_pipeline("smoke", PARAMS, tags, config)
        job = tracker.job("prepare-model", PARAMS, tags)
        assert parent_id and job.run_id
        for step in range(3):
            job.log_metrics({"loss": 3.0 - 0.1 * step, "tokens": 1000 * step}, step=step)
        live = MlflowClient(tracking_uri=srv.uri)
        assert [s for s, _ in _history(live, job.run_id, "loss")] == [0, 1, 2]
    finally:
        srv.stop()
    assert srv.proc.poll() is not None

    started = time.monotonic()
    for step in range(3, 10):
        job.log_metrics({"loss": 3.0 - 0.1 * step, "tokens": 1000 * step}, step=step)
    job.set_tags({"phase": "done"})
    job.log_artifact(run_dir / "prepare-model" / "manifest.json")
    job.log_artifact(run_dir / "prepare-model" / "plots", artifact_path="plots")
    job.finish()
    tracker.finish_pipeline("FINISHED")
    assert time.monotonic() - started < 30
    assert not tracker.online
    warnings = _tracking_warnings(caplog)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert srv.uri in warnings[0].getMessage()

    # The dead server's own store holds only what came before the failure.
    dead = MlflowClient(tracking_uri=f"sqlite:///{srv.db}")
    assert [s for s, _ in _history(dead, job.run_id, "loss")] == [0, 1, 2]
    assert dead.get_run(job.run_id).info.status == "RUNNING"

    target = f"sqlite:///{tmp_path / 'synced' / 'mlflow.db'}"
    (tmp_path / "synced").mkdir()
    ids = sync(run_dir, target, EXPERIMENT).runs
    client = MlflowClient(tracking_uri=target)
    _check_synced_tree(client, ids, run_dir, range(10), tmp_path / "synced")
    assert ids[PARENT_KEY] != parent_id  # a new run tree in the new store

    # The server comes back (its store, on another port): sync completes the runs it has from
    # before the failure, found by their journal id, instead of adding copies.
    back = MlflowServer(tmp_path / "dying-server")
    try:
        back.wait_healthy()
        result = sync(run_dir, back.uri, EXPERIMENT)
        client = MlflowClient(tracking_uri=back.uri)
        parent, children = _runs(client)
        assert parent.info.run_id == parent_id and [c.info.run_id for c in children] == [job.run_id]
        assert result.created == 0 and result.runs == {PARENT_KEY: parent_id, "job:prepare-model": job.run_id}
        assert _history(client, job.run_id, "loss") == [(s, 3.0 - 0.1 * s) for s in range(10)]
        assert client.get_run(job.run_id).info.status == "FINISHED"
        assert _artifact_paths(client, job.run_id) == {"manifest.json", "plots/loss.csv"}
        assert _artifact_paths(client, parent_id) == {"config.yaml"}
        assert sync(run_dir, back.uri, EXPERIMENT).sent == 0
    finally:
        back.stop()


# --------------------------------------------------------------------------------------------
# 6. Sync is idempotent: one copy of each run in a store, however often and whatever was live.


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One sqlite store for the module's sync cases (a new one costs seconds of migrations);
    each case logs into an experiment of its own."""
    folder = tmp_path_factory.mktemp("shared-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri, folder


@pytest.fixture
def experiment(request: pytest.FixtureRequest) -> str:
    return f"sync-{request.node.name}"


def _offline_tracker(runs_root: Path, run_dir: Path, experiment: str) -> Tracker:
    """A tracker whose server is a closed port: it journals and sends nothing."""
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{free_port()}", experiment=experiment, timeout_s=2)
    tracker = Tracker(cfg, runs_root, run_dir)
    assert tracker.active and not tracker.online
    return tracker


def _journal_lines(run_dir: Path) -> int:
    return len((run_dir / "tracking" / "journal.jsonl").read_text(encoding="utf-8").splitlines())


def test_sync_twice_gives_one_copy(tmp_path: Path, store: tuple[str, Path], experiment: str) -> None:
    uri = store[0]
    runs_root, run_dir, config = _make_run_dir(tmp_path)
    _log_job(_offline_tracker(runs_root, run_dir, experiment), run_dir, config, range(20))

    first = sync(run_dir, uri, experiment)
    assert first.created == 2 and first.sent > 0
    second = sync(run_dir, uri, experiment)
    assert (second.runs, second.created, second.sent) == (first.runs, 0, 0)
    recorded = json.loads((run_dir / "tracking" / "synced.json").read_text())
    assert recorded[uri]["lines"] == _journal_lines(run_dir) == second.lines
    assert sorted(recorded[uri]["runs"].values()) == sorted(first.runs.values())

    # Without the record (deleted, or the run directory copied elsewhere) the store's runs are
    # found by their journal id: still no copy.
    (run_dir / "tracking" / "synced.json").unlink()
    third = sync(run_dir, uri, experiment)
    assert (third.runs, third.created, third.sent) == (first.runs, 0, 0)

    client = MlflowClient(tracking_uri=uri)
    parent, children = _runs(client, experiment)
    assert parent.info.run_id == first.runs[PARENT_KEY]
    assert [c.info.run_id for c in children] == [first.runs["job:prepare-model"]]
    child = children[0].info.run_id
    assert _history(client, child, "loss") == [(s, 3.0 - 0.1 * s) for s in range(20)]
    assert _artifact_paths(client, child) == {"manifest.json", "plots/loss.csv"}
    assert _artifact_paths(client, parent.info.run_id) == {"config.yaml"}
    starts = {e["key"]: e["run"] for e in read_journal(run_dir) if e["event"] == "start"}
    assert parent.data.tags[JOURNAL_ID_TAG] == starts[PARENT_KEY]
    assert children[0].data.tags[JOURNAL_ID_TAG] == starts["job:prepare-model"]


def test_sync_after_live_logging_adds_nothing(tmp_path: Path, store: tuple[str, Path], experiment: str) -> None:
    uri = store[0]
    runs_root, run_dir, config = _make_run_dir(tmp_path)
    tracker = Tracker(TrackingConfig(uri=uri, experiment=experiment), runs_root, run_dir)
    _log_job(tracker, run_dir, config, range(5))
    assert tracker.online
    client = MlflowClient(tracking_uri=uri)
    parent, children = _runs(client, experiment)
    assert parent.data.tags[JOURNAL_ID_TAG] and children[0].data.tags[JOURNAL_ID_TAG]

    result = sync(run_dir, uri, experiment)
    assert (result.created, result.sent) == (0, 0)
    assert result.runs == {PARENT_KEY: parent.info.run_id, "job:prepare-model": children[0].info.run_id}
    parent, children = _runs(client, experiment)
    assert len(children) == 1
    assert _history(client, children[0].info.run_id, "loss") == [(s, 3.0 - 0.1 * s) for s in range(5)]


def test_sync_completes_a_run_logged_partly_live(tmp_path: Path, store: tuple[str, Path], experiment: str) -> None:
    uri = store[0]
    runs_root, run_dir, config = _make_run_dir(tmp_path)
    tags = run_tags(CONFIG_HASH)
    tracker = Tracker(TrackingConfig(uri=uri, experiment=experiment), runs_root, run_dir)
    parent_id = tracker.start_pipeline("smoke", PARAMS, tags, config)
    job = tracker.job("prepare-model", PARAMS, tags)
    for step in range(3):
        job.log_metrics({"loss": 3.0 - 0.1 * step}, step=step)
    # The store goes away: the job's later events reach only the journal.
    offline = JobRun(_offline_tracker(runs_root, run_dir, experiment), job.key, None, job.uid)
    for step in range(3, 8):
        offline.log_metrics({"loss": 3.0 - 0.1 * step}, step=step)
    offline.log_artifact(run_dir / "prepare-model" / "manifest.json")
    offline.finish()

    result = sync(run_dir, uri, experiment)
    assert result.created == 0
    assert result.runs == {PARENT_KEY: parent_id, "job:prepare-model": job.run_id}
    client = MlflowClient(tracking_uri=uri)
    _, children = _runs(client, experiment)
    assert [c.info.run_id for c in children] == [job.run_id]
    assert _history(client, job.run_id, "loss") == [(s, 3.0 - 0.1 * s) for s in range(8)]
    assert _artifact_paths(client, job.run_id) == {"manifest.json"}
    assert client.get_run(job.run_id).info.status == "FINISHED"


def test_sync_after_the_journal_grew(tmp_path: Path, store: tuple[str, Path], experiment: str) -> None:
    uri = store[0]
    runs_root, run_dir, config = _make_run_dir(tmp_path)
    _log_job(_offline_tracker(runs_root, run_dir, experiment), run_dir, config, range(3))
    first = sync(run_dir, uri, experiment)
    lines_before = first.lines

    # A later job of the same run directory, logged offline too.
    later = _offline_tracker(runs_root, run_dir, experiment)
    assert later.start_pipeline("smoke", PARAMS, run_tags(CONFIG_HASH), config) is None
    train = later.job("train", {"train.steps": 10}, run_tags(CONFIG_HASH))
    for step in range(4):
        train.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    train.finish()
    later.finish_pipeline("FINISHED")
    parent_starts = [e for e in read_journal(run_dir) if e["event"] == "start" and e["key"] == PARENT_KEY]
    assert len(parent_starts) == 1, "a later job started a second pipeline run"

    second = sync(run_dir, uri, experiment)
    assert second.created == 1 and second.lines > lines_before
    assert second.runs[PARENT_KEY] == first.runs[PARENT_KEY]
    assert second.runs["job:prepare-model"] == first.runs["job:prepare-model"]
    client = MlflowClient(tracking_uri=uri)
    parent, children = _runs(client, experiment)
    by_name = {c.info.run_name: c for c in children}
    assert len(children) == 2 and set(by_name) == {"prepare-model", "train"}
    assert by_name["train"].info.run_id == second.runs["job:train"]
    assert by_name["train"].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert by_name["train"].data.params == {"train.steps": "10"}
    assert _history(client, second.runs["job:train"], "loss") == [(s, 1.0 / (s + 1)) for s in range(4)]
    assert _history(client, first.runs["job:prepare-model"], "loss") == [(s, 3.0 - 0.1 * s) for s in range(3)]
    assert sync(run_dir, uri, experiment).sent == 0


def test_a_job_finding_the_store_up_completes_the_offline_parent(
    tmp_path: Path, store: tuple[str, Path], experiment: str
) -> None:
    """The first job logged offline; the next one finds the store: it gives the store the same
    parent run (by journal id), and a sync then fills in the first job, with no second parent."""
    uri = store[0]
    runs_root, run_dir, config = _make_run_dir(tmp_path)
    _log_job(_offline_tracker(runs_root, run_dir, experiment), run_dir, config, range(3))
    live = Tracker(TrackingConfig(uri=uri, experiment=experiment), runs_root, run_dir)
    parent_id = live.start_pipeline("smoke", PARAMS, run_tags(CONFIG_HASH), config)
    assert parent_id
    train = live.job("train", {"train.steps": 10}, run_tags(CONFIG_HASH))
    train.log_metrics({"loss": 0.5}, step=1)
    train.finish()
    assert len([e for e in read_journal(run_dir) if e["event"] == "start" and e["key"] == PARENT_KEY]) == 1

    result = sync(run_dir, uri, experiment)
    assert result.created == 1  # the offline job's run; the parent and the train run were there
    assert result.runs[PARENT_KEY] == parent_id and result.runs["job:train"] == train.run_id
    client = MlflowClient(tracking_uri=uri)
    parent, children = _runs(client, experiment)
    assert parent.info.run_id == parent_id
    assert sorted(c.info.run_name for c in children) == ["prepare-model", "train"]
    assert _artifact_paths(client, parent_id) == {"config.yaml"}
    assert parent.info.status == "FINISHED"


def test_system_metrics_are_named_per_node_and_journaled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's monitors, MLflow's names (system/<node>/... when the job spans nodes), through the
    JobRun: a store that is down still gets them from the journal."""
    from kazhpc.tracking import SystemMetrics, node_id

    monkeypatch.delenv("SLURM_NNODES", raising=False)
    assert node_id() is None
    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    assert node_id() == "node_1"
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{free_port()}", experiment=EXPERIMENT, timeout_s=1)
    tracker = Tracker(cfg, tmp_path, tmp_path / "run")
    tracker.start_pipeline("p", {}, {})
    job = tracker.job("train", {}, {})
    with SystemMetrics(job, interval_s=0.2, node=node_id()):
        time.sleep(0.7)
    points = [e for e in read_journal(tmp_path / "run") if e["event"] == "metrics"]
    assert len(points) >= 3 and [p["step"] for p in points] == list(range(len(points)))
    assert "system/node_1/cpu_utilization_percentage" in points[0]["metrics"]
    assert all(k.startswith("system/node_1/") for p in points for k in p["metrics"])


def test_another_node_attaches_to_the_job_run_rank_0_started(tmp_path: Path) -> None:
    cfg = TrackingConfig(uri=default_tracking_uri(tmp_path), experiment=EXPERIMENT)
    run_dir = tmp_path / "run"
    tracker = Tracker(cfg, tmp_path, run_dir)
    tracker.start_pipeline("p", {}, {})
    assert not Tracker(cfg, tmp_path, run_dir).attach("train", wait_s=0).active  # not started yet
    started = tracker.job("train", {}, {})
    other = Tracker(cfg, tmp_path, run_dir)
    other.active = False  # as on a rank other than 0
    attached = other.attach("train", wait_s=0)
    assert attached.active and attached.run_id == started.run_id
    attached.log_metrics({"system/node_1/cpu_utilization_percentage": 50.0}, step=0)
    client = MlflowClient(cfg.uri)
    assert client.get_run(started.run_id).data.metrics["system/node_1/cpu_utilization_percentage"] == 50.0


def test_datasets_and_a_registered_model_logged_offline_reach_a_server_by_sync(tmp_path: Path, server: MlflowServer) -> None:
    """With the store down, datasets, a model registration and its score tags go to the journal;
    sync gives a real server each of them once."""
    from kazhpc.tracking.lineage import file_dataset, hub_dataset

    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "Сәлем"}\n', encoding="utf-8")
    model_dir = tmp_path / "mlflow-model"
    model_dir.mkdir()
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    run_dir = tmp_path / "run"
    experiment = "offline-lineage"
    tracker = _offline_tracker(tmp_path, run_dir, experiment)
    tracker.start_pipeline("p", {}, {})
    job = tracker.job("train", {}, {})
    local = file_dataset(data, "training", rows=1, columns={"text": "string"})
    job.log_dataset(local)
    job.log_dataset(hub_dataset("kz-transformers/multidomain-kazakh-dataset", "source", split="train"))
    model = job.log_model("kazhpc-p", model_dir, {"data.train.jsonl": local["digest"]})
    job.tag_model(model, {"score.kk_mc": "0.5000"})
    job.finish()
    kinds = [e["event"] for e in read_journal(run_dir)]
    assert kinds.count("dataset") == 2 and "model" in kinds and "model_tags" in kinds

    first = sync(run_dir, server.uri, experiment)
    client = MlflowClient(server.uri)
    run = client.get_run(first.runs["job:train"])
    inputs = {(d.dataset.name, d.dataset.digest, d.tags[0].value) for d in run.inputs.dataset_inputs}
    assert ("train.jsonl", local["digest"], "training") in inputs
    assert any(name == "kz-transformers/multidomain-kazakh-dataset" for name, _, _ in inputs)
    (version,) = client.search_model_versions("name = 'kazhpc-p'")
    assert version.run_id == run.info.run_id
    assert version.tags["score.kk_mc"] == "0.5000" and version.tags["data.train.jsonl"] == local["digest"]
    again = sync(run_dir, server.uri, experiment)
    assert again.sent == 0 and len(client.search_model_versions("name = 'kazhpc-p'")) == 1
    assert len(client.get_run(run.info.run_id).inputs.dataset_inputs) == 2
