"""The console is for people: kazhpc's own lines, third-party noise only in job.log (or with -v),
and a summary table of stages, headline figures and scores at the end of `kazhpc run`."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import REPO

NOISE = (
    "import logging, warnings\n"
    "from kazhpc.console import setup_logging\n"
    "setup_logging()\n"
    "logging.getLogger('lm_eval.api.task').info('third-party info')\n"
    "warnings.warn('a deprecation', FutureWarning)\n"
    "logging.getLogger('datasets').error('third-party error')\n"
    "logging.getLogger('kazhpc.train').info('our line')\n"
)


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_lines_reach_the_console_only_with_verbose(verbose: bool) -> None:
    env = {"PATH": "/usr/bin:/bin", **({"KAZHPC_VERBOSE": "1"} if verbose else {})}
    done = subprocess.run([sys.executable, "-c", NOISE], capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "our line" in done.stderr and "third-party error" in done.stderr  # errors always show
    assert ("third-party info" in done.stderr) == verbose
    assert ("a deprecation" in done.stderr) == verbose


@pytest.mark.slow
def test_the_smoke_run_ends_with_a_summary_and_keeps_the_noise_in_job_logs(smoke_run: dict) -> None:
    stdout, stderr, run_dir = smoke_run["result"].stdout, smoke_run["result"].stderr, smoke_run["run_dir"]
    # No third-party warning or INFO line on the console; they are in the stages' job.log.
    assert "FutureWarning" not in stderr and "lm_eval" not in stderr, stderr[-3000:]
    assert "Generating train split" not in stderr
    assert "lm_eval" in (run_dir / "evaluate" / "job.log").read_text(encoding="utf-8")
    # The trainer's raw log dicts are replaced by kazhpc's progress lines.
    assert "{'loss':" not in stdout + stderr
    assert "train: SFT steps: step 8/8, loss" in stderr
    # lm-eval's request loops and the side-by-side generations as kazhpc's lines, not tqdm bars;
    # MLflow's own stderr handler is off (its records are in job.log).
    assert re.search(r"evaluate adapter: loglikelihood requests: (\d+)/\1 \(", stderr), stderr[-3000:]
    assert "it/s]" not in stderr and "Running loglikelihood requests" not in stderr
    assert re.search(r"generations: \d+ prompts, batches: (\d+)/\1", stderr)
    assert "INFO mlflow" not in stderr and "Setting accelerator to CPU" not in stdout + stderr  # DeepSpeed's, in job.log
    # One row per stage with its state, then the headline figures from each manifest.
    manifests = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}
    for stage in ("prepare-model", "tokenizers", "preprocess", "train", "evaluate"):
        assert stage in stdout
    assert stdout.count("COMPLETED") == 5
    train = manifests["train"]
    assert f"final train loss {train['train_loss']:.3f}" in stdout
    counts = manifests["preprocess"]["counts"]
    assert f"{counts['train_rows']} train + {counts['validation_rows']} validation rows" in stdout
    # Each score beside its chance and the base model's, from the evaluate manifest.
    assert "evaluate: scores" in stdout
    for task, score in manifests["evaluate"]["scores"]["adapter"].items():
        assert task in stdout
        assert f"{score['score']:.3f} ± " in stdout, task
    assert "MLflow: experiment kazhpc-smoke, run smoke (" in stdout and "Models → kazhpc-smoke" in stdout
    # And each stage's "completed" line carries its headline.
    assert re.search(rf"job preprocess: completed in [\d.]+ s: {counts['train_rows']} train \+ {counts['validation_rows']} validation rows", stderr)
    assert re.search(r"job evaluate: completed in [\d.]+ s: adapter vs base on \d+ tasks: higher on \d+", stderr)


@pytest.mark.slow
def test_headlines_of_the_corpus_and_cpt_stages(cpt_sft_run: dict) -> None:
    from kazhpc.summary import headline

    corpus = cpt_sft_run["manifests"]["corpus"]
    said = headline("corpus", corpus)
    assert f"{corpus['counts']['documents_kept']} documents kept of {corpus['counts']['documents_read']}" in said
    cpt = cpt_sft_run["manifests"]["train-cpt"]
    before, after = cpt["heldout"]["before"]["heldout_kk_bits_per_char"], cpt["heldout"]["after"]["heldout_kk_bits_per_char"]
    assert f"kk: {before:.3f} → {after:.3f} bits/char" in headline("train", cpt)
    assert "new tokens" in headline("extend-vocab", cpt_sft_run["manifests"]["extend-vocab"])


def test_library_bars_and_unbounded_loops_log_a_few_lines_off_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    from kazhpc.console import LibraryBar, progress

    caplog.set_level("INFO", logger="kazhpc")
    bar = LibraryBar(total=8, desc="Running loglikelihood requests")
    for _ in range(8):
        bar.update(1)
    bar.close()
    assert list(LibraryBar(range(5), desc="Building contexts for kk_dastur_mc")) == list(range(5))  # silent, but iterates
    assert list(LibraryBar(range(3), desc="Running generate_until requests", disable=True)) == [0, 1, 2]
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"evaluate: loglikelihood requests: {n}/8" for n in (2, 4, 6, 8)]
    caplog.clear()
    assert sum(1 for _ in progress(iter(range(25)), None, "rows", every=10)) == 25
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["rows: 10", "rows: 20", "rows: 25"]
    caplog.clear()
    assert sum(1 for _ in progress(iter(range(7)), None, "rows", every=10)) == 7
    assert not caplog.records  # a short loop says nothing
