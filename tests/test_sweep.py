"""Sweeps: variants of one config validated before anything runs, run as sibling MLflow runs under
one parent, and compared on manifest values with a winner rule."""

from __future__ import annotations

import json
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
