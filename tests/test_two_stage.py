"""`kazhpc run configs/pipelines/two-stage.yaml` on the CPU: a job type runs twice, each stage in
its own folder and MLflow child run, the second train stage goes on training the first one's
adapter on another data mix, and each evaluation scores the adapter of the train stage it reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CONFIGS, stage_state
from faults import kazhpc

pytestmark = pytest.mark.slow

#: The shipped config at test scale (fewer steps and documents; the stages as shipped).
SMALL = ["train.max_steps=2", "train.save_steps=2", "train.loss_check_rows=4", "stages.train-2.with.max_steps=2",
         "evaluate.limit=2", "evaluate.perplexity_texts=null", "evaluate.bootstrap_iters=0"]


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict:
    runs_root = tmp_path_factory.mktemp("two-stage-runs")
    done = kazhpc("run", str(CONFIGS / "pipelines" / "two-stage.yaml"), f"runs_root={runs_root}", f"cache_dir={model_cache}",
                  *SMALL, timeout=1500)
    assert done.code == 0, done.stderr[-4000:]
    (run_dir,) = [p for p in runs_root.iterdir() if p.is_dir() and p.name.startswith("two-stage-")]
    manifests = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}
    return {"runs_root": runs_root, "run_dir": run_dir, "manifests": manifests, "outcome": done}


def test_every_stage_has_its_folder_and_manifest(two_stage: dict) -> None:
    from kazhpc.config import load_config

    stages = load_config(CONFIGS / "pipelines" / "two-stage.yaml").stages
    manifests = two_stage["manifests"]
    assert set(manifests) == {s.name for s in stages}
    for stage in stages:
        assert (manifests[stage.name]["stage"], manifests[stage.name]["job"]) == (stage.name, stage.job)
    assert manifests["preprocess-translation"]["counts"]["train_rows"] != manifests["preprocess-general"]["counts"]["train_rows"]
    for stage in stages:
        assert stage_state(two_stage["outcome"].stdout, stage.name) == "COMPLETED"


def test_the_second_train_stage_goes_on_training_the_first_adapter_on_its_own_data(two_stage: dict) -> None:
    first, second = two_stage["manifests"]["train-1"], two_stage["manifests"]["train-2"]
    assert second["upstream"] == {"train": "train-1", "preprocess": "preprocess-translation"}
    assert second["continued_from"] == first["adapter"] and first["continued_from"] is None
    assert second["train_rows"] == two_stage["manifests"]["preprocess-translation"]["counts"]["train_rows"]
    weights = [Path(m["adapter"]) / "adapter_model.safetensors" for m in (first, second)]
    assert weights[0].read_bytes() != weights[1].read_bytes()  # trained further, not copied
    for manifest in (first, second):  # each still lowers the answer loss on its own rows
        assert manifest["loss_check"]["adapter"] < manifest["loss_check"]["base"]


def test_each_evaluation_scores_the_adapter_of_the_train_stage_before_it(two_stage: dict) -> None:
    manifests = two_stage["manifests"]
    for evaluation, train, pre in (("eval-1", "train-1", "preprocess-general"), ("eval-2", "train-2", "preprocess-translation")):
        assert manifests[evaluation]["upstream"] == {"preprocess": pre, "train": train}
        assert manifests[evaluation]["adapters"] == {"base": None, "adapter": manifests[train]["adapter"]}
        assert set(manifests[evaluation]["scores"]) == {"base", "adapter"}
    # The same base model on the same documents: the base rows agree exactly across the two stages.
    assert manifests["eval-1"]["scores"]["base"] == manifests["eval-2"]["scores"]["base"]


def test_mlflow_holds_one_child_run_per_stage_under_one_parent(two_stage: dict) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{two_stage['runs_root'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kazhpc-two-stage")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    manifests = two_stage["manifests"]
    assert set(children) == set(manifests) and len(runs) == len(manifests) + 1
    for name, child in children.items():
        assert child.info.status == "FINISHED", name
        assert (child.data.tags["kazhpc.stage"], child.data.tags["kazhpc.job"]) == (name, manifests[name]["job"])
    # Each train stage logged its own section: train-2's with: keys, train-1's top-level ones.
    assert children["train-2"].data.params["train.max_steps"] == "2" and children["train-1"].data.params["train.max_steps"] == "2"
    assert children["train-2"].data.params["train.learning_rate"] == "0.0005"
    assert children["train-1"].data.params["train.learning_rate"] == "0.001"


def test_a_rerun_reuses_every_stage_and_status_lists_them(two_stage: dict) -> None:
    run_dir = two_stage["run_dir"]
    again = kazhpc("run", "--run-dir", str(run_dir))
    assert again.code == 0, again.stderr[-3000:]
    for name in two_stage["manifests"]:
        assert f"job {name}: completed earlier from the same inputs: reused" in again.stderr, name
    status = kazhpc("status", str(run_dir))
    assert status.code == 0, status.stderr
    for name in two_stage["manifests"]:
        assert any(line.split()[:2] == [name, "COMPLETED"] for line in status.stdout.splitlines()), status.stdout
