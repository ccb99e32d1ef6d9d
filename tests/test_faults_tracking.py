"""Faults of `kazhpc sync`, as a person at the terminal meets them: a dead server, a directory
that is no run, a broken journal, a sync already running. Each is one line, exit 2, no
traceback, within seconds, and the journal is left as it was.

Journals are written by a real ``Tracker`` whose server is a closed port (no model, no store);
the cases that upload share one sqlite store.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest
from faults import assert_one_line_error, cli, kazhpc
from filelock import FileLock
from mlflow import MlflowClient

from kazhpc.config import TrackingConfig
from kazhpc.tracking import Tracker, read_journal, run_tags

CONFIG = "name: smoke\njobs: [prepare-model]\nmodel: gemma3-270m\ntracking:\n  experiment: {experiment}\n"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """MLflow's HTTP settings as a user has them (unset: MLflow's own minutes of retries)."""
    for var in ("RANK", "MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.setenv(var, "")  # set-then-delete: removed again after the test, whoever set it
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # the migrations, once
    return uri


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_dir(tmp_path: Path, experiment: str = "faults", steps: int = 3) -> Path:
    """A run directory with a config.yaml and the journal of one job logged offline."""
    run_dir = tmp_path / "runs" / "smoke-20250101-000000-abc123"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(CONFIG.format(experiment=experiment), encoding="utf-8")
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{_closed_port()}", experiment=experiment, timeout_s=2)
    tracker = Tracker(cfg, run_dir.parent, run_dir)
    assert not tracker.online
    tracker.start_pipeline("smoke", {"seed": 1}, run_tags("0123"), run_dir / "config.yaml")
    job = tracker.job("prepare-model", {"seed": 1}, run_tags("0123"))
    for step in range(steps):
        job.log_metrics({"loss": 3.0 - step}, step=step)
    job.finish()
    tracker.finish_pipeline("FINISHED")
    return run_dir


def _journal(run_dir: Path) -> Path:
    return run_dir / "tracking" / "journal.jsonl"


def test_sync_to_a_dead_server_fails_in_seconds_with_one_line(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    before = _journal(run_dir).read_bytes()
    uri = f"http://127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    outcome = kazhpc("sync", str(run_dir), "--uri", uri, cwd=tmp_path, timeout=120)
    elapsed = time.monotonic() - started
    line = assert_one_line_error(outcome, uri, "did not answer", "nothing was uploaded", f"kazhpc sync {run_dir}")
    assert elapsed < 10, f"took {elapsed:.1f} s: {line}"
    assert _journal(run_dir).read_bytes() == before
    assert not (run_dir / "tracking" / "synced.json").exists()


def test_sync_of_a_directory_that_is_no_run(tmp_path: Path, store: str) -> None:
    nowhere = tmp_path / "no-such-run"
    assert_one_line_error(cli("sync", str(nowhere), "--uri", store, cwd=tmp_path), str(nowhere), "not a kazhpc run directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(cli("sync", str(empty), "--uri", store, cwd=tmp_path), str(empty), "no config.yaml")


def test_sync_of_a_run_without_journal(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "smoke-1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(CONFIG.format(experiment="faults"), encoding="utf-8")
    target = tmp_path / "never" / "mlflow.db"
    outcome = cli("sync", str(run_dir), "--uri", f"sqlite:///{target}", cwd=tmp_path)
    assert_one_line_error(outcome, str(run_dir), "no tracking journal")
    assert not target.parent.exists(), "the store was opened for nothing"


@pytest.mark.parametrize(
    "bad, problem",
    [
        ('{"time": 1.0, "event": "metrics", "key": "job:prepare-model", "metr', "malformed JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"time": 1.0, "event": "metrics", "key": "job:prepare-model", "metrics": {"loss": "high"}}', "not a number"),
        ('{"time": 1.0, "event": "rename", "key": "job:prepare-model"}', "not a tracking event"),
    ],
    ids=["truncated-then-appended", "not-an-object", "metric-not-a-number", "unknown-event"],
)
def test_a_broken_journal_line_is_one_line_naming_it(tmp_path: Path, bad: str, problem: str) -> None:
    run_dir = _run_dir(tmp_path)
    lines = _journal(run_dir).read_text(encoding="utf-8").splitlines(keepends=True)
    lines.insert(4, bad + "\n")
    _journal(run_dir).write_text("".join(lines), encoding="utf-8")
    target = tmp_path / "never" / "mlflow.db"
    outcome = cli("sync", str(run_dir), "--uri", f"sqlite:///{target}", cwd=tmp_path)
    assert_one_line_error(outcome, f"{_journal(run_dir)}:5", problem, "nothing was uploaded")
    assert not target.parent.exists(), "a broken journal was half uploaded"


def test_an_incomplete_last_line_waits_for_the_next_sync(
    tmp_path: Path, store: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal that ends mid-line (a job writing it as sync reads): everything before is
    uploaded, that line is not, and once it is complete the next sync uploads it, once."""
    caplog.set_level(logging.WARNING, logger="kazhpc.tracking")
    run_dir = _run_dir(tmp_path, experiment="faults-partial")
    journal = _journal(run_dir)
    events = list(read_journal(run_dir))
    key, uid = events[-3]["key"], events[-3]["run"]  # the job's metrics
    assert events[-3]["event"] == "metrics"
    late = json.dumps({"time": time.time(), "event": "metrics", "key": key, "run": uid, "metrics": {"loss": -1.0},
                       "step": 99})
    with journal.open("a", encoding="utf-8") as out:
        out.write(late[:25])
    first = cli("sync", str(run_dir), "--uri", store, cwd=tmp_path)
    assert first.code == 0, first.stderr
    incomplete = f"{journal}:{len(events) + 1}"
    assert any(incomplete in r.getMessage() and "incomplete" in r.getMessage() for r in caplog.records)
    client = MlflowClient(tracking_uri=store)
    (exp,) = [e for e in client.search_experiments() if e.name == "faults-partial"]
    (child,) = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == "prepare-model"]
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "loss")) == [0, 1, 2]

    with journal.open("a", encoding="utf-8") as out:
        out.write(late[25:] + "\n")
    for _ in range(2):
        assert cli("sync", str(run_dir), "--uri", store, cwd=tmp_path).code == 0
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "loss")) == [0, 1, 2, 99]
    assert len(client.search_runs([exp.experiment_id])) == 2


def test_a_second_sync_of_the_same_run_at_once_is_refused(tmp_path: Path, store: str) -> None:
    run_dir = _run_dir(tmp_path)
    with FileLock(str(run_dir / "tracking" / "synced.json.lock")):
        outcome = cli("sync", str(run_dir), "--uri", store, cwd=tmp_path)
    assert_one_line_error(outcome, str(run_dir), "another `kazhpc sync`")


def test_sync_prints_what_it_did(tmp_path: Path, store: str) -> None:
    run_dir = _run_dir(tmp_path, experiment="faults-report")
    first = cli("sync", str(run_dir), "--uri", store, cwd=tmp_path)
    assert first.code == 0, first.stderr
    assert "2 runs created" in first.stdout and store in first.stdout
    again = cli("sync", str(run_dir), "--uri", store, cwd=tmp_path)
    assert again.code == 0 and "already has everything" in again.stdout, again.stdout


def test_sync_to_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    """A port that accepts connections and then says nothing (a hung server): the config's
    tracking.timeout_s, once, not MLflow's retries."""
    run_dir = _run_dir(tmp_path)
    config = run_dir / "config.yaml"
    config.write_text(config.read_text(encoding="utf-8") + "  timeout_s: 2\n", encoding="utf-8")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        uri = f"http://127.0.0.1:{hung.getsockname()[1]}"
        started = time.monotonic()
        outcome = cli("sync", str(run_dir), "--uri", uri, cwd=tmp_path)
        elapsed = time.monotonic() - started
    assert_one_line_error(outcome, uri, "timed out", "nothing was uploaded")
    assert elapsed < 10, f"took {elapsed:.1f} s"


def test_a_sync_that_stops_midway_resumes_without_copies(tmp_path: Path, store: str) -> None:
    """The store fails during the upload (here: its artifact folder is a file): one line naming
    the journal line; once the store is fixed, the next sync finishes the same runs."""
    experiment = "faults-midway"
    blocker = tmp_path / "artifacts"
    blocker.write_text("not a folder", encoding="utf-8")
    client = MlflowClient(tracking_uri=store)
    experiment_id = client.create_experiment(experiment, artifact_location=blocker.as_uri())
    run_dir = _run_dir(tmp_path, experiment=experiment)
    journal = _journal(run_dir)
    artifact_line = next(n for n, line in enumerate(journal.read_text().splitlines(), 1) if '"artifact"' in line)

    outcome = cli("sync", str(run_dir), "--uri", store, cwd=tmp_path)
    assert_one_line_error(outcome, f"sync to {store} stopped at {journal}:{artifact_line}", f"kazhpc sync {run_dir}")
    assert len(client.search_runs([experiment_id])) == 1  # the parent, created before the failure
    assert store in json.loads((run_dir / "tracking" / "synced.json").read_text())

    blocker.unlink()
    done = cli("sync", str(run_dir), "--uri", store, cwd=tmp_path)
    assert done.code == 0, done.stderr
    runs = client.search_runs([experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["prepare-model", "smoke"]
    (parent,) = [r for r in runs if r.info.run_name == "smoke"]
    (child,) = [r for r in runs if r.info.run_name == "prepare-model"]
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["config.yaml"]
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "loss")) == [0, 1, 2]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
