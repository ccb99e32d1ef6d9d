"""Sweeps: variants of one config validated before anything runs, run as sibling MLflow runs under
one parent, and compared on manifest values with a winner rule."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import CONFIGS
from faults import assert_one_line_error, kazhpc
from kazhpc.errors import KazhpcError
from kazhpc.sweep import SweepSpec, grid, load_variants, manifest_value, pick_winner, read_sweep_file, split_values

SMOKE = CONFIGS / "pipelines" / "smoke.yaml"


def test_values_split_at_top_level_commas_only() -> None:
    assert split_values("1,2, 3") == ["1", "2", "3"]
    assert split_values("[a, b],[c]") == ["[a, b]", "[c]"]
    assert split_values("{r: 8, alpha: 16},'x,y'") == ["{r: 8, alpha: 16}", "'x,y'"]
    with pytest.raises(KazhpcError, match="empty value"):
        split_values("1,,2")


def test_a_grid_is_every_combination() -> None:
    variants = grid(["train.lora.r=8,16", "train.learning_rate=1e-4,2e-4,5e-4"])
    assert len(variants) == 6 and len({v.name for v in variants}) == 6
    assert variants[0].overrides == ["train.lora.r=8", "train.learning_rate=1e-4"]
    assert variants[-1].varied == {"train.lora.r": "16", "train.learning_rate": "5e-4"}
    with pytest.raises(KazhpcError, match="given twice"):
        grid(["seed=1,2", "seed=3,4"])


def test_bad_sweeps_are_one_line_before_anything_runs(tmp_path: Path) -> None:
    spec = SweepSpec("s", SMOKE, [f"runs_root={tmp_path}"], grid(["train.lora.rr=4,8"]))
    with pytest.raises(KazhpcError) as caught:
        load_variants(spec)
    assert "variant rr-4" in str(caught.value) and "did you mean 'r'" in str(caught.value)
    # extend-vocab is not among smoke's stages: the key changes nothing that runs.
    spec = SweepSpec("s", SMOKE, [f"runs_root={tmp_path}"], grid(["extend_vocab.new_tokens=100,200"]))
    with pytest.raises(KazhpcError, match="extend_vocab.new_tokens changes nothing that a stage of smoke.yaml reads"):
        load_variants(spec)
    spec = SweepSpec("s", SMOKE, [f"runs_root={tmp_path}"], grid(["train.lora.r=8,8.0"]))
    with pytest.raises(KazhpcError, match="run the same pipeline"):
        load_variants(spec)
    outcome = kazhpc("sweep", str(SMOKE), "train.lora.rr=4,8", "--dry-run")
    assert_one_line_error(outcome, "did you mean 'r'")


def test_the_tokenization_study_loads_every_variant() -> None:
    spec = read_sweep_file(CONFIGS / "sweeps" / "tokenization.yaml")
    variants = load_variants(spec)
    assert [v.name for v in variants] == ["base", "k150-mean07", "k300-mean07", "k150-mean10"]
    base, extended = variants[0].cfg, variants[1].cfg
    assert "extend-vocab" not in base.stage_names and extended.upstream("corpus") == {"extend-vocab": "extend-vocab"}
    assert variants[3].cfg.extend_vocab.init_scale == 1.0 and variants[2].cfg.extend_vocab.new_tokens == 300
    for v in variants:  # the same text for every variant: passes over all blocks, no token budget
        cpt = v.cfg.section_of("train-cpt")
        assert (cpt.objective, cpt.max_tokens, cpt.epochs) == ("cpt", None, 2)
    assert spec.winner["within"] == {"metric": "train-cpt.heldout.after.heldout_en_bits_per_char", "percent": 2, "of": "base"}


def test_the_cluster_sized_study_is_the_same_study_on_gemma3_4b() -> None:
    """configs/sweeps/tokenization-4b.yaml: K from 4k to 32k and two init rules on the 4B, every
    variant one pass over its blocks with the same CPT settings, so the same characters."""
    spec = read_sweep_file(CONFIGS / "sweeps" / "tokenization-4b.yaml")
    variants = load_variants(spec)
    assert [v.name for v in variants] == ["base", "k4000-mean07", "k8000-mean07", "k16000-mean07", "k32000-mean07", "k16000-mean10"]
    assert {v.cfg.model.source for v in variants} == {"google/gemma-3-4b-pt"}
    assert [v.cfg.extend_vocab.new_tokens for v in variants[1:]] == [4000, 8000, 16000, 32000, 16000]
    assert [v.cfg.extend_vocab.init_scale for v in variants[3:]] == [0.7, 0.7, 1.0]
    assert "extend-vocab" not in variants[0].cfg.stage_names
    cpts = [v.cfg.section_of("train-cpt") for v in variants]
    assert {(c.objective, c.max_tokens, c.epochs, c.learning_rate) for c in cpts} == {("cpt", None, 1, 2.0e-4)}
    assert {v.cfg.corpus.blocks.length for v in variants} == {2048}


def test_winner_rule_and_manifest_paths(tmp_path: Path) -> None:
    rows = [{"variant": "base", "kk": 2.0, "en": 1.00}, {"variant": "a", "kk": 1.8, "en": 1.05},
            {"variant": "b", "kk": 1.9, "en": 1.01}]
    rule = {"lowest": "kk", "within": {"metric": "en", "percent": 2, "of": "base"}}
    assert pick_winner(rows, rule) == ("b", "lowest kk with en within +2% of base")
    assert pick_winner(rows, {"lowest": "kk"})[0] == "a"
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "manifest.json").write_text(json.dumps({"heldout": {"after": {"x": 1.5}}, "h": [{"loss": 3}]}))
    assert manifest_value(tmp_path, "train.heldout.after.x") == 1.5
    assert manifest_value(tmp_path, "train.h.-1.loss") == 3.0
    assert manifest_value(tmp_path, "train.heldout.before") is None and manifest_value(tmp_path, "eval.x") is None


@pytest.mark.slow
def test_a_sweep_runs_sibling_runs_under_one_parent_and_compares_them(tmp_path: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    done = kazhpc("sweep", str(SMOKE), f"runs_root={tmp_path}", "jobs=[preprocess]",
                  "preprocess.cleaning.min_answer_words=1,40", "--metric", "preprocess.counts.train_rows", timeout=900)
    assert done.code == 0, done.stderr[-3000:]
    (folder,) = tmp_path.glob("sweep-smoke-*")
    record = json.loads((folder / "sweep.json").read_text())
    assert [v["status"] for v in record["variants"]] == ["COMPLETED", "COMPLETED"]
    rows = [manifest_value(Path(v["run_dir"]), "preprocess.counts.train_rows") for v in record["variants"]]
    assert rows[0] > rows[1]  # a 40-word minimum keeps fewer answers than a 1-word one
    table = (folder / "compare.md").read_text(encoding="utf-8")
    assert f"| min_answer_words-1 | 1 | COMPLETED | {rows[0]:.4g} |" in table
    assert (folder / "compare.png").stat().st_size > 1000 and (folder / "compare.csv").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, "tags.`kazhpc.sweep` = 'smoke' and attributes.run_name = 'sweep smoke'")
    children = client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["kazhpc.variant"] for c in children) == ["min_answer_words-1", "min_answer_words-40"]
    assert {c.data.tags["sweep.preprocess.cleaning.min_answer_words"] for c in children} == {"1", "40"}


def test_variants_share_a_plan_only_when_their_steps_are_the_same() -> None:
    """Shared steps (one array per step over the variants) need the same names, resources and
    commands; a variant with other shards has other steps, so the sweep submits it on its own."""
    from kazhpc.config import load_config
    from kazhpc.launch.cluster import load_cluster
    from kazhpc.launch.steps import slurm_steps
    from kazhpc.launch.sweep import shared_plan

    local = load_cluster(CONFIGS / "clusters" / "local.yaml")
    plan = lambda *o: slurm_steps(load_config(SMOKE, ["jobs=[tokenizers,preprocess]", *o]), local)  # noqa: E731
    assert shared_plan([plan("preprocess.cleaning.min_answer_words=1"), plan("preprocess.cleaning.min_answer_words=40")])
    assert not shared_plan([plan("preprocess.shards=1"), plan("preprocess.shards=2")])


@pytest.mark.slow
@pytest.mark.slurm
def test_a_sweep_submitted_to_slurm_is_one_array_per_shared_step(local_slurm: str, tmp_path: Path, model_cache: Path) -> None:
    """`kazhpc sweep ... --cluster`: tokenizers is one array over the two variants; preprocess-parts
    is an array itself, so one per variant, each after its own variant's tokenizers task; the
    preprocess merge is one array again. Each variant's run directory is a run like any other
    (kazhpc status); the sweep's last job (afterany on both) runs compare, which writes the table
    and ends the sweep's MLflow run with no one coming back for it."""
    from mlflow.tracking import MlflowClient

    from kazhpc.runner import read_state

    done = kazhpc("sweep", str(SMOKE), f"runs_root={tmp_path}", f"cache_dir={model_cache}", "jobs=[tokenizers,preprocess]",
                  "tokenizers.tokenizers=[gemma3]", "preprocess.shards=2", "preprocess.cleaning.min_answer_words=1,40",
                  "--cluster", str(CONFIGS / "clusters" / "local.yaml"), timeout=300)
    assert done.code == 0, done.stderr[-3000:]
    (folder,) = tmp_path.glob("sweep-smoke-*")
    record = json.loads((folder / "sweep.json").read_text())
    assert record["submission"]["arrays"] is True
    run_dirs = [Path(v["run_dir"]) for v in record["variants"]]
    try:
        for run_dir in run_dirs:
            waited = kazhpc("status", str(run_dir), "--wait", "--timeout", "600", timeout=660)
            assert waited.code == 0 and "all jobs completed" in waited.stdout, waited.stdout + waited.stderr[-2000:]
        last = record["submission"]["compare"]
        assert last["dependency"] == f"afterany:{json.loads((run_dirs[0] / 'submission.json').read_text())['attempts'][0]['steps'][-1]['sweep_array']}"
        deadline = time.time() + 180
        while not json.loads((folder / "sweep.json").read_text()).get("finished"):
            assert time.time() < deadline, Path(last["log"]).read_text() if Path(last["log"]).is_file() else last
            time.sleep(2)
    finally:
        for run_dir in run_dirs:
            kazhpc("cancel", str(run_dir))
    by_job = (folder / "compare.md").read_text()  # written by the compare job: the states, no metrics named
    assert "| min_answer_words-1 | 1 | COMPLETED |" in by_job and "No metrics named" in by_job
    steps = [{s["name"]: s for s in json.loads((d / "submission.json").read_text())["attempts"][0]["steps"]} for d in run_dirs]
    tokenizers = steps[0]["tokenizers"]["sweep_array"]
    for i, variant in enumerate(steps):
        assert list(variant) == ["tokenizers", "preprocess-parts", "preprocess"]
        assert variant["tokenizers"]["slurm_id"] == f"{tokenizers}_{i}"
        assert variant["preprocess-parts"]["array"] == 2
        assert variant["preprocess-parts"]["dependency"] == f"afterok:{tokenizers}_{i}"  # its own variant's task
        parts = ":".join(v["preprocess-parts"]["slurm_id"] for v in steps)
        assert variant["preprocess"]["dependency"] == f"afterok:{parts}"
        assert variant["preprocess"]["slurm_id"] == f"{steps[0]['preprocess']['sweep_array']}_{i}"
        state = read_state(run_dirs[i])["jobs"]
        assert all(state[k]["status"] == "COMPLETED" for k in ("tokenizers", "preprocess[0/2]", "preprocess[1/2]", "preprocess"))
    table = kazhpc("compare", str(folder), "--metric", "preprocess.counts.train_rows")
    assert table.code == 0, table.stderr
    rows = [manifest_value(d, "preprocess.counts.train_rows") for d in run_dirs]
    assert rows[0] > rows[1]  # a 40-word minimum keeps fewer answers than a 1-word one
    assert f"| min_answer_words-1 | 1 | COMPLETED | {rows[0]:.4g} |" in table.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (parent,) = client.search_runs(experiments, "attributes.run_name = 'sweep smoke'")
    assert parent.info.status == "FINISHED"
    children = client.search_runs(experiments, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(c.data.tags["kazhpc.variant"] for c in children) == ["min_answer_words-1", "min_answer_words-40"]
