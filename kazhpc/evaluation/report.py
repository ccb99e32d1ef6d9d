"""The evaluation report: scores beside their chance baselines, differences with their uncertainty.

The reference project printed 14–33% on Kazakh multiple-choice sets without saying that guessing
scores 19–25% there. Here every task row shows its chance baseline and the score minus chance,
marked ``≈ chance`` when that gap is within two standard errors; and a model's difference to the
baseline model comes with a stderr and a 95% interval.

The parts live in modules of their own: the input's schema (:mod:`kazhpc.evaluation.results`);
per-document samples and the paired differences (:mod:`kazhpc.evaluation.stats`, whose docstring
says how a difference and its interval are computed and where the samples are read from); the
markdown, CSV and plot (:mod:`kazhpc.evaluation.render`). This module is the entry point,
:func:`write_report`: it writes the files, and logs the metrics and the files to MLflow.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kazhpc.evaluation.render import plot_scores, render_markdown, write_csv
from kazhpc.evaluation.results import EvalResults, near_chance, validate_results
from kazhpc.evaluation.stats import Z95, Difference, differences
from kazhpc.evaluation.translation import CORPUS_METRICS

REPORT_FILES = ("report.md", "report.csv", "report.json", "scores.png")
_METRICS_PER_CALL = 500


# --------------------------------------------------------------------------------------------
# MLflow.


#: Figures in a task entry's extra that are logged as metrics of their own.
EXTRA_METRICS = ("kazakh", "answer_words", "chrf_item", "bleu_item", "win_rate", "tie_rate", "loss_rate", "unparsed")


def metric_name(*parts: str) -> str:
    """An MLflow-safe metric name: parts joined by '.', characters MLflow refuses replaced by '_'."""
    name = ".".join(re.sub(r"[^\w.\-]", "_", p) for p in parts)
    return re.sub(r"\.{2,}", ".", name)[:250]


def flat_metrics(results: EvalResults, diffs: list[Difference]) -> dict[str, float]:
    """``<label>.<task>.<metric>`` and its ``_stderr``, ``_minus_chance``, ``_diff_vs_<baseline>``..."""
    out: dict[str, float] = {}
    for label, scores in results.models.items():
        for task, e in scores.tasks.items():
            out[metric_name(label, task, e.metric)] = e.score
            if e.stderr is not None:
                out[metric_name(label, task, f"{e.metric}_stderr")] = e.stderr
            if e.chance is not None:
                out[metric_name(label, task, f"{e.metric}_minus_chance")] = e.score - e.chance
            for m in CORPUS_METRICS:
                if m != e.metric and isinstance(e.extra.get(m), (int, float)):
                    out[metric_name(label, task, m)] = float(e.extra[m])
            for key in EXTRA_METRICS:  # an open or judge task's per-item means, a judge's rates
                value = e.extra.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != e.metric:
                    out[metric_name(label, task, key)] = float(value)
            for key, value in e.extra.items():  # lm-eval's other metrics ("acc_norm,none", IFEval's levels)
                metric, _, filt = key.partition(",")
                if filt and not metric.endswith("_stderr") and isinstance(value, (int, float)) and math.isfinite(value):
                    out.setdefault(metric_name(label, task, metric if filt == "none" else f"{metric}_{filt}"), float(value))
        if scores.perplexity is not None:
            for key, value in scores.perplexity.model_dump().items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    out[metric_name(label, "perplexity", key)] = float(value)
    for d in diffs:
        suffix = f"{d.metric}_diff_vs_{results.baseline}"
        out[metric_name(d.model, d.task, suffix)] = d.diff
        if d.stderr is not None:
            out[metric_name(d.model, d.task, suffix + "_stderr")] = d.stderr
    return out


# --------------------------------------------------------------------------------------------
# Entry point.


def _finite(value: Any) -> Any:
    """NaN/inf (lm-eval puts them in secondary metrics) become null: report.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_report(job_dir: Path, results: dict, tracking: Any) -> dict:
    """Write report.md/.csv/.json and scores.png into ``job_dir``; log them and the metrics.

    ``results`` is ``{"models": {LABEL: {"tasks": {TASK: {"metric", "score", "stderr", "n",
    "chance", "higher_is_better", "extra"}}, "perplexity": {...} | None}}, "baseline": LABEL | None}``;
    per-document outputs are read from ``<job_dir>/samples/<LABEL>/<TASK>.jsonl``
    (:mod:`kazhpc.evaluation.stats`). ``tracking`` is a :class:`kazhpc.tracking.JobRun` or None.
    Returns a small summary for the job manifest: report paths, scores, differences and notes.
    """
    parsed = validate_results(results)
    job_dir = Path(job_dir)
    diffs, notes = differences(job_dir, parsed)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "report.md").write_text(render_markdown(parsed, diffs, notes), encoding="utf-8")
    write_csv(parsed, diffs, job_dir / "report.csv")
    full = {
        **parsed.model_dump(),
        "z95": Z95,
        "differences": [{**asdict(d), "verdict": d.verdict} for d in diffs],
        "notes": notes,
    }
    for label, scores in full["models"].items():
        for task, entry in scores["tasks"].items():
            typed = parsed.models[label].tasks[task]
            entry["proportion"] = typed.proportion
            entry["minus_chance"] = None if typed.chance is None else typed.score - typed.chance
            entry["near_chance"] = near_chance(typed)
    (job_dir / "report.json").write_text(
        json.dumps(_finite(full), ensure_ascii=False, indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    plot_scores(parsed, job_dir / "scores.png")
    metrics = flat_metrics(parsed, diffs)
    if tracking is not None:
        items = list(metrics.items())
        for start in range(0, len(items), _METRICS_PER_CALL):  # MLflow takes at most 1000 per batch
            tracking.log_metrics(dict(items[start : start + _METRICS_PER_CALL]))
        for name in REPORT_FILES:
            tracking.log_artifact(job_dir / name)
    return {
        "report": {name: str(job_dir / name) for name in REPORT_FILES},
        "baseline": parsed.baseline,
        "scores": {label: {task: e.score for task, e in s.tasks.items()} for label, s in parsed.models.items()},
        "differences": {
            f"{d.model}/{d.task}": {"diff": d.diff, "stderr": d.stderr, "method": d.method, "verdict": d.verdict}
            for d in diffs
        },
        "notes": notes,
        "metrics_logged": len(metrics),
    }
