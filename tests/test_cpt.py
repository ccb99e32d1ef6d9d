"""Continued pretraining (train.objective: cpt) and the CPT → SFT pipeline, on the real Gemma-3-270M.

One run of configs/pipelines/kazakh-cpt-sft.yaml (conftest.cpt_sft_run) backs the slow tests; the
budget arithmetic and its refusal are checked without a model."""

from __future__ import annotations


import pytest

from conftest import CONFIGS, stage_state
from kazhpc.config import load_config
from kazhpc.errors import KazhpcError

CPT_SFT = CONFIGS / "pipelines" / "kazakh-cpt-sft.yaml"


def test_the_budget_sets_the_steps_and_a_budget_the_corpus_cannot_fill_is_refused() -> None:
    from kazhpc.train.cpt import planned_steps, tokens_per_step

    cfg = load_config(CPT_SFT).for_stage("train-cpt")
    assert tokens_per_step(cfg, 64) == 64 * 4
    assert planned_steps(cfg, blocks=40, block_length=64, corpus_stage="corpus") == 2048 // 256
    too_much = load_config(CPT_SFT, ["stages.train-cpt.with.max_tokens=10000"]).for_stage("train-cpt")
    with pytest.raises(KazhpcError) as caught:
        planned_steps(too_much, blocks=40, block_length=64, corpus_stage="corpus")
    message = str(caught.value)
    assert "train.max_tokens: 10,000 tokens, but the corpus stage's blocks hold 2,560 (40 blocks of 64)" in message
    assert "raise train.epochs to 4" in message and "\n" not in message
    by_steps = load_config(CPT_SFT, ["stages.train-cpt.with.max_tokens=null", "stages.train-cpt.with.max_steps=3"])
    assert planned_steps(by_steps.for_stage("train-cpt"), 40, 64, "corpus") == 3


def test_cpt_stage_order_is_checked() -> None:
    with pytest.raises(KazhpcError, match="stages: corpus must come before train-cpt"):
        load_config(CPT_SFT, ["stages=[{name: train-cpt, job: train, with: {objective: cpt}}, {name: corpus, job: corpus},"
                              " {name: preprocess, job: preprocess}]"])


@pytest.mark.slow
def test_cpt_trains_on_the_blocks_within_its_budget_and_lowers_held_out_kazakh(cpt_sft_run: dict) -> None:
    cpt, corpus = cpt_sft_run["manifests"]["train-cpt"], cpt_sft_run["manifests"]["corpus"]
    assert cpt["objective"] == "cpt" and cpt["upstream"] == {"extend-vocab": "extend-vocab", "corpus": "corpus"}
    assert cpt["corpus"]["sha256"] == corpus["blocks"]["sha256"]
    assert cpt["steps"] == 4 and cpt["tokens_seen"] == 1024 == cpt["max_tokens"]  # 4 steps of 4 blocks of 64
    assert cpt["chars_seen"] == round(1024 * corpus["counts"]["chars_kept"] / corpus["counts"]["tokens"])
    assert cpt["new_token_rows_trained"] == 150  # the extension's rows (train.trainable_embeddings: new)
    flops, vocab = cpt["flops"], corpus["blocks"]["vocab_size"]
    # Gemma-3-270M: ~100M in the blocks, plus its tied embedding (640 wide) over the extended vocabulary.
    assert 90e6 < flops["parameters"] - 640 * vocab < 115e6 and 0 < flops["trainable"] < flops["parameters"] / 50
    assert flops["per_token"] == 4 * flops["parameters"] + 2 * flops["trainable"]
    assert flops["total"] == flops["per_token"] * cpt["tokens_seen"]
    assert flops["per_char"] == pytest.approx(flops["total"] / cpt["chars_seen"], rel=1e-3)  # per character of the text seen
    assert cpt["loss_check"]["adapter"] < cpt["loss_check"]["base"]
    before, after = cpt["heldout"]["before"], cpt["heldout"]["after"]
    assert cpt["heldout"]["texts"] == {"kk": corpus["counts"]["documents_heldout"], "en": 8, "kk_ood": 8}
    assert after["heldout_kk_bits_per_char"] < before["heldout_kk_bits_per_char"]
    assert 0.3 < after["heldout_en_bits_per_char"] < 3 and 0.3 < after["heldout_kk_bits_per_char"] < 8
    assert 0.3 < after["heldout_kk_ood_bits_per_char"] < 8  # Kazakh of other genres (train.cpt.heldout_extra)
    curve = cpt["heldout"]["during_training"]
    assert [row["step"] for row in curve] == [0, 2, 4]
    # Scored on the training object at step 0, on a fresh reload with the adapter off: the same model.
    assert curve[0]["heldout_kk_bits_per_char"] == pytest.approx(before["heldout_kk_bits_per_char"], rel=1e-3)


@pytest.mark.slow
def test_preempted_cpt_resumes_from_its_checkpoint(cpt_sft_run: dict) -> None:
    cpt = cpt_sft_run["manifests"]["train-cpt"]
    assert "preempted at step 2" in cpt_sft_run["first"].stderr
    assert cpt["resumed_from"] is not None and cpt["resumed_from"].endswith("checkpoint-2")
    assert [h["step"] for h in cpt["history"]] == list(range(1, 5))


@pytest.mark.slow
def test_sft_goes_on_from_the_cpt_adapter_and_evaluate_scores_it(cpt_sft_run: dict) -> None:
    manifests = cpt_sft_run["manifests"]
    sft, cpt = manifests["train-sft"], manifests["train-cpt"]
    assert sft["upstream"] == {"extend-vocab": "extend-vocab", "preprocess": "preprocess", "train": "train-cpt"}
    assert sft["continued_from"] == cpt["adapter"] and sft["base_model"] == cpt["base_model"]
    assert sft["loss_check"]["adapter"] < sft["loss_check"]["base"]
    evaluation = manifests["evaluate"]
    assert evaluation["upstream"] == {"extend-vocab": "extend-vocab", "preprocess": "preprocess", "train": "train-sft"}
    assert evaluation["adapters"]["adapter"] == sft["adapter"]
    for stage in ("tokenizers", "extend-vocab", "corpus", "train-cpt", "preprocess", "train-sft", "evaluate"):
        assert stage_state(cpt_sft_run["second"].stdout, stage) == "COMPLETED"


@pytest.mark.slow
def test_cpt_metrics_are_in_mlflow_by_step(cpt_sft_run: dict) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{cpt_sft_run['runs_root'] / 'mlflow.db'}")
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`kazhpc.stage` = 'train-cpt'",
                              order_by=["attributes.start_time ASC"])
    assert len(runs) == 2  # the preempted attempt and the one that resumed it
    run = runs[-1]
    curve = client.get_metric_history(run.info.run_id, "heldout_kk_bits_per_char")
    assert sorted(m.step for m in curve) == [0, 2, 4]
    for key in ("tokens_seen", "chars_seen", "chars_per_s", "flops", "flops_per_char", "heldout_en_bits_per_char_after",
                "heldout_kk_bits_per_char_before"):
        assert key in run.data.metrics, key
