"""The evaluation report, translation scoring and side-by-side generations.

The report runs on a hand-made two-model fixture (tests/fixtures/eval_report) whose per-document
samples make the paired difference computable by hand; MLflow is a real sqlite store written
through kazhpc.tracking. Translation scores are checked against sacrebleu called directly.
The generations page runs the real bundled Gemma-3-270M.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import pytest

from kazhpc.errors import FormattingError, KazhpcError
from kazhpc.evaluation.report import write_report
from kazhpc.evaluation.results import validate_results
from kazhpc.evaluation.stats import read_samples
from kazhpc.evaluation.translation import paired_difference, score_translations, translation_task_entry

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "eval_report"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _kk_en() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "kk-en.jsonl").read_text(encoding="utf-8").splitlines()]


def _write_samples(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    """The fixture's results and samples, plus an en→kk translation task for both models."""
    job = tmp_path / "evaluate"
    shutil.copytree(FIXTURES, job)
    results = json.loads((job / "results.json").read_text(encoding="utf-8"))
    rows = _kk_en()
    for label, column in (("base", "mt_kk_b"), ("base+lora", "mt_kk")):
        hyps, refs = [r[column] for r in rows], [r["kk"] for r in rows]
        results["models"][label]["tasks"]["en_kk_mt"] = translation_task_entry(score_translations(hyps, refs))
        _write_samples(
            job / "samples" / label / "en_kk_mt.jsonl",
            [{"doc_id": i, "hypothesis": h, "reference": r} for i, (h, r) in enumerate(zip(hyps, refs))],
        )
    (job / "results.json").write_text(json.dumps(results, ensure_ascii=False), encoding="utf-8")
    return job


def _results(job: Path) -> dict:
    return json.loads((job / "results.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Translation.


def test_scores_match_sacrebleu_called_directly() -> None:
    from sacrebleu.metrics import BLEU, CHRF

    rows = _kk_en()
    for hyp_col, ref_col in (("mt_en", "en"), ("mt_kk", "kk")):
        hyps, refs = [r[hyp_col] for r in rows], [r[ref_col] for r in rows]
        got = score_translations(hyps, refs)
        bleu, chrf = BLEU(tokenize="intl"), CHRF(word_order=2)
        assert got["bleu"] == pytest.approx(bleu.corpus_score(hyps, [refs]).score, abs=1e-9)
        assert got["chrf"] == pytest.approx(chrf.corpus_score(hyps, [refs]).score, abs=1e-9)
        assert got["bleu_signature"] == str(bleu.get_signature())
        assert "tok:intl" in got["bleu_signature"] and "nw:2" in got["chrf_signature"]
        assert got["n"] == len(rows)
        for metric in ("bleu", "chrf"):
            low, high = got[f"{metric}_ci95"]
            assert 0 < got[f"{metric}_stderr"] < 50 and low <= got[metric] <= high
        assert score_translations(hyps, refs) == got  # the bootstrap is seeded: same input, same numbers
        assert score_translations(hyps, refs, seed=7)["bleu_stderr"] != got["bleu_stderr"]


def test_intl_tokenization_credits_words_next_to_kazakh_guillemets() -> None:
    """Why BLEU uses tok:intl: 13a leaves «» glued to words, so an exact copy of a word scores a miss."""
    hyp, ref = ["«Абай жолы» романы"], ["Абай жолы романы"]
    intl = score_translations(hyp, ref, bootstrap=0)["bleu"]
    default_13a = score_translations(hyp, ref, bootstrap=0, tokenize="13a")["bleu"]
    assert intl > default_13a


def test_translation_input_errors() -> None:
    with pytest.raises(KazhpcError, match="2 hypotheses but 1 references"):
        score_translations(["a", "b"], ["a"])
    with pytest.raises(KazhpcError, match="no hypotheses and no references"):
        score_translations([], [])
    with pytest.raises(KazhpcError, match="reference 2 is empty"):
        score_translations(["a", "b"], ["a", "  "])
    with pytest.raises(KazhpcError, match="hypothesis 1 is NoneType"):
        score_translations([None], ["a"])  # type: ignore[list-item]


def test_paired_bootstrap_of_a_system_against_itself_is_zero() -> None:
    rows = _kk_en()
    hyps, refs = [r["mt_kk"] for r in rows], [r["kk"] for r in rows]
    same = paired_difference("chrf", hyps, hyps, refs)
    assert same["diff"] == 0 and same["stderr"] == 0 and same["ci_low"] == same["ci_high"] == 0


# --------------------------------------------------------------------------------------------
# The report.


def test_report_tables_chance_and_paired_difference(job_dir: Path) -> None:
    summary = write_report(job_dir, _results(job_dir), None)
    report = json.loads((job_dir / "report.json").read_text(encoding="utf-8"))

    # Chance and score minus chance, from the fixture: base 3/8 vs chance 1/4.
    base = report["models"]["base"]["tasks"]["kk_constitution_mc"]
    assert base["chance"] == 0.25 and base["minus_chance"] == pytest.approx(0.125)
    assert base["near_chance"] is True  # 12.5 pp is within two stderrs (18.3 pp each)
    assert report["models"]["base+lora"]["tasks"]["kk_constitution_mc"]["near_chance"] is False

    # The paired difference, by hand from the sample files.
    ours = [json.loads(x)["acc"] for x in (job_dir / "samples/base+lora/kk_constitution_mc.jsonl").read_text().splitlines()]
    theirs = [json.loads(x)["acc"] for x in (job_dir / "samples/base/kk_constitution_mc.jsonl").read_text().splitlines()]
    d = [a - b for a, b in zip(ours, theirs)]
    se = statistics.stdev(d) / math.sqrt(len(d))
    (paired,) = [x for x in report["differences"] if x["task"] == "kk_constitution_mc"]
    assert paired["method"] == "paired" and paired["n"] == 8
    assert paired["diff"] == pytest.approx(0.25) and paired["stderr"] == pytest.approx(se) == pytest.approx(0.1636634, abs=1e-7)
    assert paired["ci_low"] == pytest.approx(0.25 - 1.959964 * se, abs=1e-6)
    # Pairing helps: the unpaired stderr of the same two scores is larger.
    assert paired["stderr"] < math.hypot(0.1829812, 0.1829812)

    # No samples for base+lora on Belebele: unpaired, and said so.
    (unpaired,) = [x for x in report["differences"] if x["task"] == "belebele_kaz_Cyrl"]
    assert unpaired["method"] == "unpaired" and unpaired["stderr"] == pytest.approx(math.hypot(0.2236068, 0.2108185))
    assert "base+lora / belebele_kaz_Cyrl: unpaired, samples missing: samples/base+lora/belebele_kaz_Cyrl.jsonl" in summary["notes"]
    assert any("kk_dastur_mc: the baseline base has no score" in n for n in summary["notes"])

    # Translation: a paired bootstrap over the same sentences.
    (mt,) = [x for x in report["differences"] if x["task"] == "en_kk_mt"]
    assert mt["method"] == "paired bootstrap"
    assert mt["diff"] == pytest.approx(
        report["models"]["base+lora"]["tasks"]["en_kk_mt"]["score"] - report["models"]["base"]["tasks"]["en_kk_mt"]["score"]
    )

    md = (job_dir / "report.md").read_text(encoding="utf-8")
    assert "## Model `base`, the baseline" in md and "## Model `base+lora` (adapter)\n" in md
    assert "| kk_constitution_mc | acc | **37.5%** | ±18.3 | 8 | 25.0% | +12.5 pp (≈ chance) |" in md
    assert "| base+lora | kk_constitution_mc | acc | **+25.0 pp** | ±16.4 | [-7.1, +57.1] | 8 | paired |" in md
    assert "| base | 2.9000 | 18.17 | **1.1200** | 1200 | 5400 |" in md  # per token and per character
    assert "tok:intl" in md and "nc:6|nw:2" in md
    assert "| 6 | paired bootstrap | lower (worse) |" in md  # chrF++ of base+lora is clearly below base's

    csv_rows = (job_dir / "report.csv").read_text(encoding="utf-8").splitlines()
    assert csv_rows[0].startswith("kind,model,task,metric,proportion,score,stderr,n,chance,minus_chance")
    assert "task,base+lora,kk_constitution_mc,acc,True,0.625,0.1829812,8,0.25,0.375,base,0.25," in "\n".join(csv_rows)

    png = (job_dir / "scores.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert summary["report"]["scores.png"] == str(job_dir / "scores.png")


def test_report_logs_metrics_and_artifacts_to_mlflow(job_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from kazhpc.config import TrackingConfig
    from kazhpc.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    runs_root, run_dir = tmp_path / "runs", tmp_path / "runs" / "eval-run"
    tracker = Tracker(TrackingConfig(experiment="eval-report-test"), runs_root, run_dir)
    tracker.start_pipeline("eval", {}, {})
    job = tracker.job("evaluate", {}, {})
    write_report(job_dir, _results(job_dir), job)
    assert tracker.online, "a metric name MLflow refused would have turned the tracker offline"

    client = MlflowClient(tracking_uri=tracker.uri)
    metrics = client.get_run(job.run_id).data.metrics
    # '+' is not allowed in MLflow names: the label base+lora becomes base_lora.
    assert metrics["base_lora.kk_constitution_mc.acc"] == 0.625
    assert metrics["base_lora.kk_constitution_mc.acc_minus_chance"] == pytest.approx(0.375)
    assert metrics["base_lora.kk_constitution_mc.acc_diff_vs_base"] == pytest.approx(0.25)
    assert metrics["base_lora.kk_constitution_mc.acc_diff_vs_base_stderr"] == pytest.approx(0.1636634, abs=1e-7)
    assert metrics["base.perplexity.bits_per_char"] == 1.12
    assert {"base.en_kk_mt.chrf", "base.en_kk_mt.bleu", "base.en_kk_mt.chrf_stderr"} <= metrics.keys()
    artifacts = {a.path for a in client.list_artifacts(job.run_id)}
    assert artifacts == {"report.md", "report.csv", "report.json", "scores.png"}


def test_metrics_go_to_tracking_in_batches_mlflow_accepts(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kazhpc.evaluation import report

    class Recorder:  # the JobRun interface write_report uses
        def __init__(self) -> None:
            self.batches: list[dict[str, float]] = []
            self.artifacts: list[Path] = []

        def log_metrics(self, metrics: dict[str, float]) -> None:
            self.batches.append(metrics)

        def log_artifact(self, path: Path) -> None:
            self.artifacts.append(Path(path))

    monkeypatch.setattr(report, "_METRICS_PER_CALL", 10)
    recorder = Recorder()
    summary = write_report(job_dir, _results(job_dir), recorder)
    merged = {k: v for batch in recorder.batches for k, v in batch.items()}
    assert len(recorder.batches) > 1 and all(len(b) <= 10 for b in recorder.batches)
    assert len(merged) == sum(map(len, recorder.batches)) == summary["metrics_logged"]
    assert [p.name for p in recorder.artifacts] == ["report.md", "report.csv", "report.json", "scores.png"]


def test_samples_that_disagree_fall_back_to_unpaired_with_a_note(job_dir: Path) -> None:
    path = job_dir / "samples" / "base+lora" / "kk_constitution_mc.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))  # one document fewer
    summary = write_report(job_dir, _results(job_dir), None)
    assert summary["differences"]["base+lora/kk_constitution_mc"]["method"] == "unpaired"
    assert any("documents differ (0 only in base+lora, 1 only in base)" in n for n in summary["notes"])


def test_samples_that_do_not_match_n_are_flagged(job_dir: Path) -> None:
    for label in ("base", "base+lora"):  # both lose the same document: still paired, but n disagrees
        path = job_dir / "samples" / label / "kk_constitution_mc.jsonl"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[1:]))
    summary = write_report(job_dir, _results(job_dir), None)
    assert summary["differences"]["base+lora/kk_constitution_mc"]["method"] == "paired"
    assert any("base: 7 samples but n = 8" in n for n in summary["notes"])


def test_paired_difference_reads_the_scored_filter_and_pools_composite_members(job_dir: Path) -> None:
    results = _results(job_dir)
    # A generation task scored on lm-eval's "strict" filter; its "flexible" lines must be ignored.
    strict = {"base": [0, 1, 0, 0], "base+lora": [1, 1, 1, 0]}
    for label, values in strict.items():
        rows = []
        for i, v in enumerate(values):
            rows += [{"doc_id": i, "filter": "flexible", "exact_match": 1}, {"doc_id": i, "filter": "strict", "exact_match": v}]
        _write_samples(job_dir / "samples" / label / "kk_qa_gen.jsonl", rows)
        results["models"][label]["tasks"]["kk_qa_gen"] = {
            "metric": "exact_match", "score": sum(values) / 4, "stderr": 0.2, "n": 4, "chance": None,
            "extra": {"filter": "strict"},
        }  # fmt: skip
        # A pooled task with no file of its own: its members' documents, keyed by member.
        _write_samples(job_dir / "samples" / label / "kk_biology_unt_mc.jsonl",
                       [{"doc_id": i, "filter": "none", "acc": v} for i, v in enumerate([0, 1] if label == "base" else [1, 1])])  # fmt: skip
        constitution = [json.loads(x)["acc"] for x in (job_dir / "samples" / label / "kk_constitution_mc.jsonl").read_text().splitlines()]
        pooled = constitution + ([0, 1] if label == "base" else [1, 1])
        results["models"][label]["tasks"]["unt_pooled"] = {
            "metric": "acc", "score": sum(pooled) / len(pooled), "stderr": 0.15, "n": len(pooled), "chance": 0.25,
            "extra": {"members": ["kk_constitution_mc", "kk_biology_unt_mc"]},
        }  # fmt: skip
    results["models"]["base"]["tasks"]["kk_qa_gen"]["extra"]["f1,strict"] = float("nan")  # lm-eval does this
    summary = write_report(job_dir, results, None)
    report = json.loads((job_dir / "report.json").read_text(encoding="utf-8"), parse_constant=pytest.fail)
    assert report["models"]["base"]["tasks"]["kk_qa_gen"]["extra"]["f1,strict"] is None
    by_task = {d["task"]: d for d in report["differences"]}
    d = [a - b for a, b in zip(strict["base+lora"], strict["base"])]
    assert by_task["kk_qa_gen"]["method"] == "paired" and by_task["kk_qa_gen"]["diff"] == pytest.approx(0.5)
    assert by_task["kk_qa_gen"]["stderr"] == pytest.approx(statistics.stdev(d) / 2)
    assert by_task["unt_pooled"]["method"] == "paired" and by_task["unt_pooled"]["n"] == 10
    assert by_task["unt_pooled"]["diff"] == pytest.approx((2 + 1) / 10)  # 2 from the constitution docs, 1 from biology
    assert not [n for n in summary["notes"] if "kk_qa_gen" in n or "unt_pooled" in n]


def test_samples_inconsistent_with_the_score_are_flagged(job_dir: Path) -> None:
    results = _results(job_dir)
    results["models"]["base"]["tasks"]["kk_constitution_mc"]["score"] = 0.5  # samples say 0.375
    summary = write_report(job_dir, results, None)
    assert any("base: samples mean 0.375 ≠ reported score 0.5" in n for n in summary["notes"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(baseline="gemma"), "results: baseline 'gemma' is not one of the models: base, base\\+lora$"),
        (lambda r: r["models"]["base"]["tasks"]["kk_constitution_mc"].update(score=37.5),
         "results.models.base.tasks.kk_constitution_mc: .*score 37.5 .* outside \\[0, 1\\]"),
        (lambda r: r["models"]["base"]["tasks"]["kk_constitution_mc"].pop("n"),
         "results.models.base.tasks.kk_constitution_mc.n: Field required"),
        (lambda r: r["models"]["base"]["tasks"]["kk_constitution_mc"].update(acc=1),
         "results.models.base.tasks.kk_constitution_mc.acc: Extra inputs"),
        (lambda r: r.update(models={}), "results.models: .*at least 1 item"),
    ],
)  # fmt: skip
def test_bad_results_are_one_line_errors(change, message: str) -> None:
    results = json.loads((FIXTURES / "results.json").read_text(encoding="utf-8"))
    change(results)
    with pytest.raises(KazhpcError, match=message):
        validate_results(results)


def test_stderr_na_from_lm_eval_means_no_stderr() -> None:
    results = json.loads((FIXTURES / "results.json").read_text(encoding="utf-8"))
    results["models"]["base"]["tasks"]["kk_constitution_mc"]["stderr"] = "N/A"
    assert validate_results(results).models["base"].tasks["kk_constitution_mc"].stderr is None


def test_malformed_samples_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"doc_id": 0, "acc": 1}\n{"doc_id": 1, "acc": \n')
    with pytest.raises(KazhpcError, match=f"{path}:2: malformed JSON"):
        read_samples(path, "acc")
    path.write_text('{"doc_id": 0, "acc": 1}\n\n{"doc_id": 0, "acc": 0}\n')
    with pytest.raises(KazhpcError, match=f"{path}:3: doc_id 0 appears twice"):
        read_samples(path, "acc")
    path.write_text('{"doc_id": 0, "acc_norm": 1}\n')
    with pytest.raises(KazhpcError, match=f"{path}:1: 'acc' must be a number, got None"):
        read_samples(path, "acc")
    path.write_text('{"doc_id": 0, "bleu": 3.2}\n')
    with pytest.raises(KazhpcError, match="a bleu sample needs 'hypothesis' and 'reference'"):
        read_samples(path, "bleu")
    path.write_text('{"doc_id": 0, "bleu": ["ref", "hyp"]}\n')  # lm-eval's passthrough (reference, prediction)
    assert read_samples(path, "bleu") == {0: ("hyp", "ref")}


# --------------------------------------------------------------------------------------------
# Side-by-side generations.


def test_bundled_prompts_are_kazakh() -> None:
    from kazhpc.evaluation.generations import default_prompts

    prompts = default_prompts()
    assert 10 <= len(prompts) <= 15 and len(set(prompts)) == len(prompts)
    assert all(any(c in p for c in "әғқңөұүһі") for p in prompts)  # Kazakh-specific Cyrillic letters


def test_side_by_side_errors(tmp_path: Path) -> None:
    from kazhpc.evaluation.generations import side_by_side

    with pytest.raises(KazhpcError, match="no models given"):
        side_by_side({}, ["Сәлем"], tmp_path / "g.html")
    with pytest.raises(KazhpcError, match="prompt 2 is empty"):
        side_by_side({"a": lambda ps: ps}, ["Сәлем", " "], tmp_path / "g.html")
    with pytest.raises(KazhpcError, match="model 'short' returned 1 answers for 2 prompts"):
        side_by_side({"short": lambda ps: ps[:1]}, ["Сәлем", "Қалайсыз?"], tmp_path / "g.html")
    assert not (tmp_path / "g.html").exists()


@pytest.mark.slow
def test_side_by_side_on_gemma_escapes_and_keeps_one_bos(
    gemma_model, gemma_tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kazhpc.evaluation.generations import greedy_generator, side_by_side

    bos = gemma_tokenizer.bos_token_id
    seen: list[list[int]] = []
    new_tokens: list[int] = []
    real_generate = gemma_model.generate

    def spy(*args, **kwargs):  # the real generate, recording what it was asked and how much it added
        seen.extend(kwargs["input_ids"].tolist())
        out = real_generate(*args, **kwargs)
        new_tokens.append(out.shape[1] - kwargs["input_ids"].shape[1])
        return out

    monkeypatch.setattr(gemma_model, "generate", spy)
    prompts = ['Қазақстанның астанасы <b>қай</b> қала? "A & B"', "Абай кім?"]
    hostile = '<script>alert("x")</script> & жауап'
    out = side_by_side(
        {"gemma3-270m": greedy_generator(gemma_model, gemma_tokenizer, max_new_tokens=3),
         "fixed <answer>": lambda ps: [hostile, ""]},
        prompts, tmp_path / "gen" / "side-by-side.html", title="Салыстыру <test>",
    )  # fmt: skip

    assert len(seen) == 2 and all(row.count(bos) == 1 for row in seen)  # exactly one <bos> per request
    page = out.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in page and "<title>Салыстыру &lt;test&gt;</title>" in page
    assert "<script>" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; жауап" in page
    assert "Қазақстанның астанасы &lt;b&gt;қай&lt;/b&gt; қала? &quot;A &amp; B&quot;" in page
    assert "<th>fixed &lt;answer&gt;</th>" in page and "(empty answer)" in page
    assert "gemma3-270m: chat template, one &lt;bos&gt; checked, greedy, at most 3 new tokens" in page
    rows = [json.loads(x) for x in out.with_suffix(".jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    assert new_tokens and all(0 < n <= 3 for n in new_tokens)  # greedy, at most max_new_tokens
    assert all(isinstance(r["outputs"]["gemma3-270m"], str) for r in rows)
    assert rows[0]["outputs"]["fixed <answer>"] == hostile

    # A prompt that smuggles in a second <bos> is refused before any generation.
    seen.clear()
    with pytest.raises(FormattingError, match="generation prompt 1: expected exactly one <bos>, found 2"):
        greedy_generator(gemma_model, gemma_tokenizer, 3)(["<bos>Сәлем"])
    assert not seen

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:  # look at it as a browser renders it (only where chromium is already installed)
        shot = tmp_path / "page.png"
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tempfile.mkdtemp()}", "--virtual-time-budget=5000", f"--screenshot={shot}",
             "--window-size=1200,800", out.as_uri()],
            capture_output=True, timeout=120,
        )  # fmt: skip
        import matplotlib.image

        pixels = matplotlib.image.imread(shot)
        assert pixels.shape[:2] == (800, 1200) and pixels.std() > 0.02  # a page with content (blank: 0)
