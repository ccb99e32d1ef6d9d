"""Sharded evaluation on the real Gemma-3-270M: 2 and 3 shards merge to the unsharded result exactly,
and that result is lm-eval's own (scores and stderrs of its unsharded evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, write_yaml

pytestmark = pytest.mark.slow
FIX = REPO / "tests" / "fixtures" / "eval"
LIMIT = 3


def config(tmp: Path, model_cache: Path, shards: int):
    from kazhpc.config import load_config

    path = write_yaml(tmp / f"eval-{shards}.yaml", f"""
        name: shards
        jobs: [evaluate]
        model: gemma3-270m
        runs_root: {tmp / 'runs'}
        cache_dir: {model_cache}
        tracking: {{enabled: false}}
        evaluate:
          tasks:
            - kk_dastur_mc
            - belebele_kaz_Cyrl
            - {{name: kk_en, kind: translation, path: {FIX / 'kk_en.jsonl'}, max_gen_toks: 4}}
            - {{name: kk_ifeval, kind: ifeval, max_gen_toks: 8}}
            - {{name: kk_open, kind: open, path: {FIX / 'open_kk.jsonl'}, max_gen_toks: 6}}
          data_overrides:
            kk_dastur_mc: {FIX / 'dastur_mc.jsonl'}
            belebele_kaz_Cyrl: {FIX / 'belebele_kaz.jsonl'}
          models: [{{label: base}}]
          limit: {LIMIT}
          perplexity_texts: null
          shards: {shards}
        """)
    return load_config(path)


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict:
    from kazhpc.evaluation.job import run_part
    from kazhpc.evaluation.sharding import merge

    tmp = tmp_path_factory.mktemp("shards")
    out = {}
    for count in (1, 2, 3):
        cfg = config(tmp, model_cache, count)
        job_dir = tmp / f"run-{count}" / "evaluate"
        for index in range(count):
            run_part(cfg, job_dir, index, count)
        results = merge(cfg.evaluate, job_dir, count)
        (job_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True))
        out[count] = {"cfg": cfg, "job_dir": job_dir, "results": results}
    return out


def test_two_and_three_shards_equal_the_unsharded_run_to_the_last_digit(merged: dict) -> None:
    one = (merged[1]["job_dir"] / "results.json").read_text()
    for count in (2, 3):
        assert (merged[count]["job_dir"] / "results.json").read_text() == one
        # The per-document outputs (log-likelihoods, predictions, metric values) are the same bytes:
        # at batch size 1 no document shares a padded batch with another shard's documents.
        for path in sorted((merged[1]["job_dir"] / "samples").rglob("*.jsonl")):
            other = merged[count]["job_dir"] / "samples" / path.relative_to(merged[1]["job_dir"] / "samples")
            assert other.read_text() == path.read_text(), other
    plan = json.loads((merged[3]["job_dir"] / "parts" / "00000-of-00003" / "plan.json").read_text())
    split = [t for t in ("kk_dastur_mc", "belebele_kaz_Cyrl", "kk_en", "kk_ifeval", "kk_open")
             if sum(1 for units in plan["shards"] for u in units if u["task"] == t) > 1]
    assert split, "3 shards should cut at least one task into document ranges"
    tasks = merged[1]["results"]["models"]["base"]["tasks"]
    assert {t: e["n"] for t, e in tasks.items()} == {"kk_dastur_mc": LIMIT, "belebele_kaz_Cyrl": LIMIT, "kk_en": LIMIT,
                                                     "kk_ifeval": LIMIT, "kk_open": LIMIT}
    assert tasks["kk_dastur_mc"]["chance"] == 0.25 and tasks["kk_en"]["chance"] is None
    assert tasks["kk_en"]["metric"] == "chrf" and "nrefs:1" in tasks["kk_en"]["extra"]["chrf_signature"]


def test_merged_scores_are_lm_evals_own_unsharded_scores(merged: dict, model_cache: Path) -> None:
    """The reference: lm-eval's evaluate on the whole (limited) tasks in one go, nothing of kazhpc's merge."""
    from lm_eval.evaluator import evaluate

    from kazhpc.evaluation.job import models_under_test
    from kazhpc.evaluation.models import checked_lm, load_for_eval
    from kazhpc.evaluation.suite import load_tasks, resolve

    cfg = merged[1]["cfg"]
    suite = resolve(cfg.evaluate)
    tasks = load_tasks([s for s in suite.tasks if s.name not in ("kk_en", "kk_ifeval", "kk_open")])
    model, tokenizer = load_for_eval(models_under_test(cfg, None)[0], cfg.cache_root)
    lm = checked_lm(model, tokenizer, cfg.evaluate.batch_size)
    reference = evaluate(lm, {"tasks": tasks, "groups": {}}, limit=LIMIT, bootstrap_iters=cfg.evaluate.bootstrap_iters)
    assert lm.bos_checked > 0
    # IFEval through lm-eval's own chat-template path and its own aggregation of the four metrics.
    (ifeval,) = [s for s in suite.tasks if s.name == "kk_ifeval"]
    lm.chat = True
    chat = evaluate(lm, {"tasks": load_tasks([ifeval]), "groups": {}}, limit=LIMIT,
                    bootstrap_iters=cfg.evaluate.bootstrap_iters, apply_chat_template=True)["results"]["kk_ifeval"]
    for count in (1, 2, 3):
        ours = merged[count]["results"]["models"]["base"]["tasks"]["kk_ifeval"]
        assert ours["score"] == chat["prompt_level_strict_acc,none"]
        assert ours["stderr"] == chat["prompt_level_strict_acc_stderr,none"]
        for metric in ("inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"):
            assert ours["extra"][f"{metric},none"] == chat[f"{metric},none"]
    for count in (1, 2, 3):
        ours = merged[count]["results"]["models"]["base"]["tasks"]
        for name in tasks:
            assert ours[name]["score"] == reference["results"][name]["acc,none"]
            assert ours[name]["stderr"] == reference["results"][name]["acc_stderr,none"]
        assert ours["belebele_kaz_Cyrl"]["extra"]["acc_norm,none"] == reference["results"]["belebele_kaz_Cyrl"]["acc_norm,none"]
