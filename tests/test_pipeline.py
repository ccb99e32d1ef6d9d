"""The smoke pipeline end to end: the `kazhpc` console script on the real Gemma-3-270M, MLflow,
a job joining its run as a SLURM step would, and a tracking server that is down."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, kazhpc_ui, stage_state

KAZHPC = str(Path(sys.executable).parent / "kazhpc")
pytestmark = pytest.mark.slow


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(list(args), capture_output=True, text=True, cwd=REPO, timeout=timeout)
    return result


def only_run_dir(runs_root: Path) -> Path:
    dirs = [p for p in runs_root.iterdir() if p.is_dir() and p.name.startswith("smoke-")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def runs_by_name(uri: str, experiment: str = "kazhpc-smoke") -> dict[str, list]:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} in {uri}"
    by_name: dict[str, list] = {}
    for r in client.search_runs([found.experiment_id]):
        by_name.setdefault(r.info.run_name, []).append(r)
    return by_name


def test_smoke_pipeline_leaves_parent_and_child_runs(smoke_run: dict) -> None:
    runs = runs_by_name(f"sqlite:///{smoke_run['runs_root'] / 'mlflow.db'}")
    (parent,) = runs["smoke"]
    (child,) = runs["prepare-model"]
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert 1 < child.data.metrics["kk_perplexity"] < 10_000
    assert child.data.metrics["kk_bits_per_char"] > 0
    assert parent.data.params["model.source"] == "bundled:gemma3-270m"
    assert parent.data.tags["kazhpc.config_hash"] == child.data.tags["kazhpc.config_hash"]
    # What MLflow's runs table shows as the run's Source: the command that ran it.
    assert parent.data.tags["mlflow.source.name"].startswith("kazhpc run configs/pipelines/smoke.yaml runs_root=")
    experiment = MlflowClient(f"sqlite:///{smoke_run['runs_root'] / 'mlflow.db'}").get_experiment_by_name("kazhpc-smoke")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI opens the runs table
    artifacts = {a.path for a in MlflowClient(f"sqlite:///{smoke_run['runs_root'] / 'mlflow.db'}").list_artifacts(child.info.run_id)}
    assert {"config.yaml", "manifest.json", "job.log"} <= artifacts


def test_smoke_pipeline_writes_manifest_and_state(smoke_run: dict) -> None:
    run_dir = smoke_run["run_dir"]
    manifest = json.loads((run_dir / "prepare-model" / "manifest.json").read_text())
    assert manifest["model"]["vocab_size"] == 262144
    assert manifest["perplexity"]["texts"] == 10
    assert manifest["chat_template"]["probe_assistant_tokens"] > 0
    state = json.loads((run_dir / "run.json").read_text())
    assert state["jobs"]["prepare-model"]["status"] == "COMPLETED"
    assert stage_state(smoke_run["result"].stdout, "prepare-model") == "COMPLETED"


def test_job_entry_point_joins_an_existing_run(smoke_run: dict) -> None:
    """What a SLURM step runs: the thin job script, attached to the pipeline's parent run."""
    result = run(sys.executable, "jobs/prepare_model.py", "--run-dir", str(smoke_run["run_dir"]))
    assert result.returncode == 0, result.stderr[-4000:]
    runs = runs_by_name(f"sqlite:///{smoke_run['runs_root'] / 'mlflow.db'}")
    assert len(runs["smoke"]) == 1
    assert len(runs["prepare-model"]) == 2
    parent_id = runs["smoke"][0].info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in runs["prepare-model"])


def test_tracking_server_down_job_completes_and_syncs_later(tmp_path: Path, model_cache: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run(
        KAZHPC, "run", "configs/pipelines/smoke.yaml", f"runs_root={tmp_path / 'runs'}", f"cache_dir={model_cache}",
        f"tracking.uri=http://127.0.0.1:{port}", "tracking.timeout_s=1", "--only", "prepare-model",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stderr.count("unreachable") == 1, result.stderr[-4000:]
    run_dir = only_run_dir(tmp_path / "runs")
    journal = [json.loads(line) for line in (run_dir / "tracking" / "journal.jsonl").read_text().splitlines()]
    assert any("kk_perplexity" in e.get("metrics", {}) for e in journal)

    target = f"sqlite:///{tmp_path / 'later.db'}"
    synced = run(KAZHPC, "sync", str(run_dir), "--uri", target)
    assert synced.returncode == 0, synced.stderr[-4000:]
    runs = runs_by_name(target)
    (child,) = runs["prepare-model"]
    assert child.data.tags["mlflow.parentRunId"] == runs["smoke"][0].info.run_id
    assert child.data.metrics["kk_perplexity"] > 1


def test_bad_input_fails_before_any_job(tmp_path: Path) -> None:
    result = run(KAZHPC, "run", "configs/pipelines/smoke.yaml", f"runs_root={tmp_path}",
                 "prepare_model.perplexity_texts=/no/such/file.txt")
    assert result.returncode == 2
    assert "prepare_model.perplexity_texts: /no/such/file.txt: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # no run directory was created


def test_ui_serves_the_run_tree(smoke_run: dict) -> None:
    """`kazhpc ui` starts a real MLflow server on the run's store, and it lists both runs."""
    import urllib.parse
    import urllib.request

    with kazhpc_ui(smoke_run["runs_root"]) as base:
        query = urllib.parse.urlencode({"experiment_name": "kazhpc-smoke"})
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10) as reply:
            experiment_id = json.load(reply)["experiment"]["experiment_id"]
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            names = sorted(r["info"]["run_name"] for r in json.load(reply)["runs"])
        assert set(names) == {"prepare-model", "preprocess", "smoke", "tokenizers", "train", "evaluate"}
        with urllib.request.urlopen(base + "/", timeout=10) as reply:  # the UI page itself
            assert "<html" in reply.read().decode("utf-8", "replace").lower()


def test_job_scripts_do_not_shadow_installed_modules() -> None:
    """`python jobs/X.py` puts jobs/ first on sys.path: a jobs/tokenizers.py would hide the
    tokenizers library from transformers in every job."""
    import importlib.util

    for script in sorted((REPO / "jobs").glob("*.py")):
        assert importlib.util.find_spec(script.stem) is None, f"{script} shadows the module '{script.stem}'"
