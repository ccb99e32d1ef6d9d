"""The evaluate job inside the smoke pipeline: the bundled model and the adapter the train job just
wrote, on local copies of a leaderboard task, Belebele, a translation task, Kazakh IFEval,
answers to the held-out split and tool calls, logged to MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO

pytestmark = pytest.mark.slow


def test_smoke_pipeline_evaluates_base_and_adapter_with_chance_baselines(smoke_run: dict) -> None:
    job_dir = smoke_run["run_dir"] / "evaluate"
    results = json.loads((job_dir / "results.json").read_text(encoding="utf-8"))
    assert set(results["models"]) == {"base", "adapter"} and results["baseline"] == "base"
    for label, model in results["models"].items():
        tasks = model["tasks"]
        assert set(tasks) == {"kk_dastur_mc", "belebele_kaz_Cyrl", "kk_en_translation", "kk_ifeval", "kk_heldout", "kk_tools", "kk_judge"}
        assert tasks["kk_dastur_mc"]["chance"] == 0.25 and tasks["belebele_kaz_Cyrl"]["chance"] == 0.25
        held = json.loads((job_dir / "heldout.json").read_text())  # the preprocess stage's validation split
        assert held["from"] == str(smoke_run["run_dir"] / "preprocess") and held["rows"] > 0
        short = {"kk_heldout": held["rows"], "kk_judge": held["rows"]} if held["rows"] < 4 else {}  # judge: its prompts
        assert {t: e["n"] for t, e in tasks.items() if e["n"] != 4 and not e["extra"].get("judged_against")} == short
        heldout = tasks["kk_heldout"]
        assert heldout["metric"] == "chrf" and heldout["chance"] is not None and 0.0 <= heldout["extra"]["kazakh"] <= 1.0
        assert heldout["extra"]["answer_words"] >= 0 and "chrf_signature" in heldout["extra"]
        assert 0.0 <= tasks["kk_dastur_mc"]["score"] <= 1.0 and tasks["kk_dastur_mc"]["stderr"] is not None
        assert tasks["kk_en_translation"]["metric"] == "chrf" and "bleu_signature" in tasks["kk_en_translation"]["extra"]
        ifeval = tasks["kk_ifeval"]  # asked through the chat template, scored by lm-eval's IFEval code
        assert ifeval["metric"] == "prompt_level_strict_acc" and 0.0 <= ifeval["chance"] <= 1.0
        assert {"inst_level_strict_acc,none", "prompt_level_loose_acc,none"} <= set(ifeval["extra"])
        rows = [json.loads(x) for x in (job_dir / "samples" / label / "kk_ifeval.jsonl").read_text().splitlines()]
        assert all(r["prompt"].startswith("<bos><start_of_turn>user\n") for r in rows)
        assert ifeval["score"] == sum(r["prompt_level_strict_acc"] for r in rows) / len(rows)
        tools = tasks["kk_tools"]
        assert tools["metric"] == "call_exact" and {"valid_json,none", "arg_accuracy,none"} <= set(tools["extra"])
        assert tools["chance"] is not None and tools["extra"]["chance_is"] == "the prompt echoed back as the answer"
        assert model["perplexity"]["bits_per_char"] > 0
        lines = (job_dir / "samples" / label / "kk_dastur_mc.jsonl").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["doc_id"] for line in lines] == [0, 1, 2, 3]
    # The judge (the bundled model itself here) compared the adapter's answers with the base's, both orders.
    judged = results["models"]["adapter"]["tasks"]["kk_judge"]
    assert judged["metric"] == "preference" and judged["chance"] == 0.5 and judged["extra"]["judged_against"] == "base"
    records = (job_dir / "judge" / "adapter" / "kk_judge.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(records) == judged["n"] + judged["extra"]["unparsed"] and all(len(json.loads(r)["verdicts"]) == 2 for r in records)
    # The adapter really is another model: some log-likelihood differs.
    base, adapter = ([json.loads(line)["scores"] for line in (job_dir / "samples" / m / "kk_dastur_mc.jsonl").read_text().splitlines()]
                     for m in ("base", "adapter"))
    assert base != adapter
    manifest = json.loads((job_dir / "manifest.json").read_text())
    assert all(n > 0 for n in manifest["bos_checked"].values())
    report = (job_dir / "report.md").read_text(encoding="utf-8")
    dastur_rows = [line for line in report.splitlines() if line.startswith("| kk_dastur_mc | acc |")]
    assert len(dastur_rows) == 2 and all("| 25.0% |" in row for row in dastur_rows)  # chance beside each score
    assert (job_dir / "generations.html").is_file()

    client = MlflowClient(f"sqlite:///{smoke_run['runs_root'] / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("kazhpc-smoke")
    (run,) = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == "evaluate"]
    assert run.data.metrics["base.kk_dastur_mc.acc"] == results["models"]["base"]["tasks"]["kk_dastur_mc"]["score"]
    assert "adapter.perplexity.bits_per_char" in run.data.metrics
    assert {"adapter.kk_judge.preference", "adapter.kk_judge.unparsed", "base.kk_ifeval.inst_level_strict_acc",
            "adapter.kk_tools.arg_accuracy", "base.kk_heldout.kazakh"} <= set(run.data.metrics)  # fmt: skip
    judged = results["models"]["adapter"]["tasks"]["kk_judge"]  # the 270M judge rarely answers A, B or T
    assert ("adapter.kk_judge.win_rate" in run.data.metrics) == (judged["n"] > 0)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "results.json" in artifacts


def test_evaluate_cli_rejects_a_bad_shard_spec_before_loading_anything(tmp_path: Path) -> None:
    kazhpc = str(Path(sys.executable).parent / "kazhpc")
    result = subprocess.run([kazhpc, "evaluate", "--run-dir", str(tmp_path), "--shard", "3/2"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert "not a kazhpc run directory" in result.stderr or "--shard '3/2'" in result.stderr
