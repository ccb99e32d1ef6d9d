"""MLflow as its users navigate it, on the shared smoke run: each stage's datasets (the same split
named alike where it is written and where it is read), the adapter as a registered model version
with the data digests and the scores as tags, all of it again in a real server after `sync`, and
the MLflow UI showing it in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from conftest import REPO, kazhpc_ui
from kazhpc.tracking import sync
from mlflow_server import MlflowServer

pytestmark = pytest.mark.slow
EXPERIMENT = "kazhpc-smoke"  # configs/pipelines/smoke.yaml's


def _stage_runs(client: MlflowClient) -> dict[str, Any]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    return {r.data.tags["kazhpc.stage"]: r for r in runs if "kazhpc.stage" in r.data.tags}


def _inputs(run: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """(name, context) -> the dataset's digest, source and rows."""
    found = {}
    for item in run.inputs.dataset_inputs:
        context = {t.key: t.value for t in item.tags}["mlflow.data.context"]
        profile = json.loads(item.dataset.profile) if item.dataset.profile else {}
        found[item.dataset.name, context] = {"digest": item.dataset.digest, "source": json.loads(item.dataset.source),
                                             "rows": profile.get("num_rows"), "type": item.dataset.source_type}
    return found


@pytest.fixture(scope="module")
def store(smoke_run: dict) -> MlflowClient:
    return MlflowClient(f"sqlite:///{smoke_run['runs_root'] / 'mlflow.db'}")


def _check_lineage(client: MlflowClient, run_dir: Path) -> None:
    runs = _stage_runs(client)
    manifest = json.loads((run_dir / "preprocess" / "manifest.json").read_text())
    pre = _inputs(runs["preprocess"])
    # Every source, with the sha256 the manifest has, then both splits as outputs.
    for entry in manifest["sources"]:
        assert pre[entry["source"], "source"]["digest"] == entry["sha256"][:16]
    shards = [o["sha256"] for o in manifest["outputs"] if o["path"].startswith("train-")]
    split_digest = hashlib.sha256("".join(shards).encode()).hexdigest()[:16]
    assert pre["preprocess/train", "output"]["digest"] == split_digest
    assert pre["preprocess/train", "output"]["rows"] == manifest["counts"]["train_rows"]
    # The train run read that same data set (name and digest: MLflow's link between the runs).
    train = _inputs(runs["train"])
    assert train["preprocess/train", "training"]["digest"] == split_digest
    assert ("preprocess/validation", "validation") in train
    # The evaluation sets every score came from, with their row counts.
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    evaluated = _inputs(runs["evaluate"])
    adapter_tasks = results["models"]["adapter"]["tasks"]
    assert {name for name, context in evaluated if context == "evaluation"} == set(adapter_tasks)
    for task, entry in adapter_tasks.items():
        assert evaluated[task, "evaluation"]["rows"] == entry["n"], task
    # The texts the model and the tokenizers are measured on.
    for stage in ("prepare-model", "tokenizers"):
        assert [context for _, context in _inputs(runs[stage])] == ["evaluation"], stage
    # System metrics of the stages that hold accelerators: a reading at the start and at the end.
    for stage in ("train", "evaluate"):
        history = client.get_metric_history(runs[stage].info.run_id, "system/cpu_utilization_percentage")
        assert len(history) >= 2 and sorted(m.step for m in history) == list(range(len(history))), stage
        assert client.get_metric_history(runs[stage].info.run_id, "system/system_memory_usage_megabytes")
    assert not any(k.startswith("system/") for k in runs["preprocess"].data.metrics)


def _check_registered(client: MlflowClient, run_dir: Path) -> Any:
    (version,) = client.search_model_versions("name = 'kazhpc-smoke'")
    train_manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert train_manifest["mlflow_model"] == {"name": "kazhpc-smoke", "uid": version.tags["kazhpc.model_uid"]}
    runs = _stage_runs(client)
    assert version.run_id == runs["train"].info.run_id
    train_inputs = _inputs(runs["train"])
    assert version.tags["data.preprocess/train"] == train_inputs["preprocess/train", "training"]["digest"]
    assert version.tags["base_model"] == "bundled:gemma3-270m"
    # The evaluate stage's scores, each beside its chance, as the version's tags.
    results = json.loads((run_dir / "evaluate" / "results.json").read_text())
    for task, entry in results["models"]["adapter"]["tasks"].items():
        if isinstance(entry.get("score"), (int, float)):
            assert version.tags[f"score.{task}"] == f"{entry['score']:.4f}", task
        if isinstance(entry.get("chance"), (int, float)):
            assert version.tags[f"chance.{task}"] == f"{entry['chance']:.4f}", task
    assert version.tags["evaluated_in"] == "evaluate"
    # The version is the train run's logged model: the PEFT weights and MLflow's MLmodel.
    (model,) = client.search_logged_models([runs["train"].info.experiment_id],
                                           filter_string=f"tags.`kazhpc.model_uid` = '{version.tags['kazhpc.model_uid']}'")
    assert model.source_run_id == runs["train"].info.run_id and version.source == model.artifact_location
    files = {f.path for f in client.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "peft"} <= files, files
    return version


def test_stages_log_the_data_sets_they_read_and_write(store: MlflowClient, smoke_run: dict) -> None:
    _check_lineage(store, smoke_run["run_dir"])


def test_the_adapter_is_a_registered_version_with_data_digests_and_scores(store: MlflowClient, smoke_run: dict) -> None:
    version = _check_registered(store, smoke_run["run_dir"])
    # It loads through MLflow's own loader, offline, in a fresh process: the base model from the
    # local folder the version references, the adapter's weights those the train stage saved.
    script = (
        "import sys, torch, mlflow.transformers\n"
        "from safetensors.torch import load_file\n"
        "pipe = mlflow.transformers.load_model(sys.argv[1])\n"
        "saved = load_file(sys.argv[2])\n"
        "loaded = {k: v for k, v in pipe.model.state_dict().items() if 'lora_' in k}\n"
        "name = next(iter(saved)); match = [k for k in loaded if k.startswith(name.rsplit('.weight', 1)[0])]\n"
        "assert type(pipe.model).__name__.startswith('Peft'), type(pipe.model)\n"
        "assert match and torch.equal(loaded[match[0]].float(), saved[name].float()), (name, match)\n"
        "print('ok', len(saved))\n"
    )
    adapter = smoke_run["run_dir"] / "train" / "adapter" / "adapter_model.safetensors"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{smoke_run['runs_root'] / 'mlflow.db'}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script, f"models:/kazhpc-smoke/{version.version}", str(adapter)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0 and done.stdout.startswith("ok"), done.stderr[-3000:]


def test_sync_gives_a_server_the_same_datasets_and_model_once(smoke_run: dict, tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "server")
    try:
        server.wait_healthy()
        first = sync(smoke_run["run_dir"], server.uri, EXPERIMENT)
        assert first.created >= 5
        client = MlflowClient(server.uri)
        _check_lineage(client, smoke_run["run_dir"])
        _check_registered(client, smoke_run["run_dir"])
        again = sync(smoke_run["run_dir"], server.uri, EXPERIMENT)
        assert (again.created, again.sent) == (0, 0)
        assert len(client.search_model_versions("name = 'kazhpc-smoke'")) == 1
    finally:
        server.stop()


def _render(chromium: str, url: str, shot: Path) -> str:
    """The page's DOM after its scripts ran (and a screenshot of it), as headless Chromium sees it."""
    common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", f"--user-data-dir={tempfile.mkdtemp()}",
              "--virtual-time-budget=20000", "--window-size=1400,1000"]
    subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    return subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="needs chromium")
def test_the_ui_shows_the_lineage_and_the_registered_version(smoke_run: dict, store: MlflowClient, tmp_path: Path) -> None:
    import matplotlib.image

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    runs = _stage_runs(store)
    experiment_id = runs["train"].info.experiment_id
    (version,) = store.search_model_versions("name = 'kazhpc-smoke'")
    with kazhpc_ui(smoke_run["runs_root"]) as base:
        run_page = _render(chromium, f"{base}/#/experiments/{experiment_id}/runs/{runs['train'].info.run_id}",
                           tmp_path / "train-run.png")
        version_page = _render(chromium, f"{base}/#/models/kazhpc-smoke/versions/{version.version}",
                               tmp_path / "model-version.png")
    assert "preprocess/train" in run_page, run_page[-2000:]
    assert "data.preprocess/train" in version_page and "score." in version_page, version_page[-2000:]
    for shot in ("train-run.png", "model-version.png"):
        pixels = matplotlib.image.imread(tmp_path / shot)
        assert pixels.shape[:2] == (1000, 1400) and pixels.std() > 0.02, shot


def test_cpt_then_sft_each_register_a_version_on_the_corpus_lineage(cpt_sft_run: dict) -> None:
    """The two-stage pipeline: the corpus stage's blocks are what train-cpt logs as its training
    set (same name, same digest), and both train stages' adapters are versions of one model."""
    client = MlflowClient(f"sqlite:///{cpt_sft_run['runs_root'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kazhpc-cpt-sft")
    runs = {r.data.tags["kazhpc.stage"]: r for r in client.search_runs([experiment.experiment_id])
            if "kazhpc.stage" in r.data.tags and r.info.status == "FINISHED"}
    blocks = cpt_sft_run["manifests"]["corpus"]["blocks"]["sha256"][:16]
    assert _inputs(runs["corpus"])["corpus/blocks", "output"]["digest"] == blocks
    cpt = _inputs(runs["train-cpt"])
    assert cpt["corpus/blocks", "training"]["digest"] == blocks
    assert ("corpus/heldout", "evaluation") in cpt
    assert any(context == "source" for _, context in _inputs(runs["corpus"]))
    assert "training" in {context for _, context in _inputs(runs["extend-vocab"])}  # the text the tokens are learnt from
    versions = {v.tags["stage"]: v for v in client.search_model_versions("name = 'kazhpc-kazakh-cpt-sft'")}
    assert set(versions) == {"train-cpt", "train-sft", "export"}
    assert versions["export"].tags["exported_from"] == "train-sft"
    assert versions["train-cpt"].tags["data.corpus/blocks"] == blocks
    assert versions["train-cpt"].tags["objective"] == "cpt" and versions["train-sft"].tags["objective"] == "sft"
    for stage in ("train-cpt", "train-sft"):
        assert cpt_sft_run["manifests"][stage]["mlflow_model"]["uid"] == versions[stage].tags["kazhpc.model_uid"]
