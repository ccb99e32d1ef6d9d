"""The evaluation report: scores beside their chance baselines, differences with their uncertainty.

The reference project printed 14–33% on Kazakh multiple-choice sets without saying that guessing
scores 19–25% there. Here every task row shows its chance baseline and the score minus chance,
marked ``≈ chance`` when that gap is within two standard errors; and a model's difference to the
baseline model comes with a stderr and a 95% interval.

Differences are *paired* whenever the per-document outputs of both models exist: both models
answered the same documents, so the per-document difference ``d_i = x_i − y_i`` has a far smaller
spread than two independent scores (the shared difficulty of each item cancels). Its stderr is
``sd(d) / sqrt(n)`` (sample sd, as lm-eval's own ``mean_stderr``), the interval ``mean ± 1.96 se``.
Corpus metrics (BLEU, chrF++) are not means of document scores, so their difference is a paired
bootstrap over sentences (:func:`kazhpc.evaluation.translation.paired_difference`). Without both
models' samples, or when their document sets differ, the report falls back to the unpaired
``sqrt(se1² + se2²)`` and says so in the row and in the notes.

Per-document outputs: ``<job_dir>/samples/<LABEL>/<TASK>.jsonl``, one JSON object per line with
``doc_id`` (int) and the task's metric (a number or bool, e.g. ``{"doc_id": 3, "acc": 1}``); for a
corpus metric, ``hypothesis`` and ``reference`` strings instead (or lm-eval's passthrough pair
``"bleu": [reference, hypothesis]``). Lines may carry lm-eval's ``filter``; the one named in the
task's ``extra["filter"]`` (else the first line's) is read. A task whose ``extra["members"]`` lists
other tasks (a pooled score) is paired over its members' files.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kazhpc.errors import KazhpcError, jsonl_objects
from kazhpc.evaluation.translation import CORPUS_METRICS, paired_difference

#: Metrics whose scores are proportions in [0, 1]: shown as percentages, differences in points.
PROPORTION_METRICS = frozenset({"acc", "acc_norm", "exact_match", "em", "f1", "accuracy", "mc1", "mc2"})
Z95 = NormalDist().inv_cdf(0.975)
REPORT_FILES = ("report.md", "report.csv", "report.json", "scores.png")
_METRICS_PER_CALL = 500
#: Relative tolerance between a task's score and the mean of its per-document samples.
_SAMPLE_MEAN_TOL = 1e-6


# --------------------------------------------------------------------------------------------
# The input: validated before anything is written.


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskScore(_Input):
    """One task's headline score for one model."""

    metric: str = Field(min_length=1)
    score: float = Field(allow_inf_nan=False)
    stderr: float | None = Field(None, ge=0)
    n: int = Field(ge=0)
    chance: float | None = None
    higher_is_better: bool = True
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("stderr", mode="before")
    @classmethod
    def _no_stderr(cls, value: Any) -> Any:
        # lm-eval writes "N/A" (or NaN) where a metric has no stderr.
        if value == "N/A" or (isinstance(value, float) and math.isnan(value)):
            return None
        return value

    @property
    def proportion(self) -> bool:
        return bool(self.extra.get("proportion", self.metric in PROPORTION_METRICS))

    @model_validator(mode="after")
    def _proportion_in_range(self) -> TaskScore:
        if self.proportion:
            for key in ("score", "chance"):
                value = getattr(self, key)
                if value is not None and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{key} {value} of the proportion metric '{self.metric}' is outside [0, 1] "
                                     "(a percentage? pass fractions)")  # fmt: skip
        return self


class PerplexityScore(BaseModel):
    """Perplexity on held-out text (``PerplexityResult.to_dict()``; further keys are kept)."""

    model_config = ConfigDict(extra="allow")
    perplexity: float
    bits_per_char: float
    loss: float | None = None
    tokens: int | None = None
    chars: int | None = None


class ModelScores(BaseModel):
    """One model's scores; further keys describing the model (``kind``, ``adapter``) are kept."""

    model_config = ConfigDict(extra="allow")
    tasks: dict[str, TaskScore] = Field(default_factory=dict)
    perplexity: PerplexityScore | None = None


class EvalResults(_Input):
    models: dict[str, ModelScores] = Field(min_length=1)
    baseline: str | None = None

    @model_validator(mode="after")
    def _baseline_known(self) -> EvalResults:
        if self.baseline is not None and self.baseline not in self.models:
            raise ValueError(f"baseline '{self.baseline}' is not one of the models: {', '.join(self.models)}")
        return self


def validate_results(results: dict) -> EvalResults:
    """Parse the ``results`` dict; a wrong shape is one KazhpcError line naming the key path."""
    try:
        return EvalResults.model_validate(results)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in ("results", *first["loc"]))
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = first["msg"].removeprefix("Value error, ")
        raise KazhpcError(f"evaluation report: {where}: {message}{more}") from None


# --------------------------------------------------------------------------------------------
# Per-document samples and differences.


def samples_path(job_dir: Path, label: str, task: str) -> Path:
    return Path(job_dir) / "samples" / label / f"{task}.jsonl"


def read_samples(path: Path, metric: str, filter_name: str | None = None) -> dict[int, Any]:
    """doc_id → the line's ``metric`` value (or ``(hypothesis, reference)`` for corpus metrics).

    Lines may carry lm-eval's ``filter`` (a generation task can have several per document): only
    ``filter_name``'s lines are read, by default the filter of the first line (the one whose
    metric is the task's headline score).
    """
    out: dict[int, Any] = {}
    chosen = filter_name
    with Path(path).open(encoding="utf-8") as lines:
        for number, row in jsonl_objects(lines, path):
            where = f"{path}:{number}"
            if "filter" in row:
                chosen = row["filter"] if chosen is None else chosen
                if row["filter"] != chosen:
                    continue
            doc_id = row.get("doc_id")
            if not isinstance(doc_id, int) or isinstance(doc_id, bool):
                raise KazhpcError(f"{where}: 'doc_id' must be an integer, got {doc_id!r}")
            if doc_id in out:
                raise KazhpcError(f"{where}: doc_id {doc_id} appears twice")
            out[doc_id] = _sample_value(row, metric, where)
    if not out:
        raise KazhpcError(f"{path}: no samples" + (f" for filter '{filter_name}'" if filter_name else ""))
    return out


def _load_samples(job_dir: Path, label: str, task: str, entry: TaskScore) -> dict[Any, Any] | str:
    """The per-document values of one model on one task, or why there are none.

    A composite task (``extra["members"]``, e.g. the UNT subjects pooled) has no file of its own:
    its documents are its members' documents, keyed ``member:doc_id``.
    """
    filter_name = entry.extra.get("filter") if isinstance(entry.extra.get("filter"), str) else None
    path = samples_path(job_dir, label, task)
    if path.is_file():
        return read_samples(path, entry.metric, filter_name)
    members = entry.extra.get("members")
    if not isinstance(members, list) or not members:
        return f"samples missing: {path.relative_to(job_dir)}"
    pooled: dict[Any, Any] = {}
    for member in members:
        member_path = samples_path(job_dir, label, str(member))
        if not member_path.is_file():
            return f"samples missing: {member_path.relative_to(job_dir)} (member of {task})"
        pooled.update({f"{member}:{i}": v for i, v in read_samples(member_path, entry.metric, filter_name).items()})
    return pooled


def _sample_value(row: dict, metric: str, where: str) -> Any:
    if metric in CORPUS_METRICS:
        if isinstance(row.get("hypothesis"), str) and isinstance(row.get("reference"), str):
            return (row["hypothesis"], row["reference"])
        pair = row.get(metric)
        if isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair):
            return (pair[1], pair[0])  # lm-eval's passthrough order: (reference, prediction)
        raise KazhpcError(f"{where}: a {metric} sample needs 'hypothesis' and 'reference' strings")
    value = row.get(metric)
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise KazhpcError(f"{where}: '{metric}' must be a number, got {value!r}")
    return float(value)


@dataclass
class Difference:
    """A model's score minus the baseline's on one task."""

    model: str
    task: str
    metric: str
    diff: float
    stderr: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    method: str  # "paired", "paired bootstrap" or "unpaired"
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.ci_low is None or self.ci_high is None:
            return "no interval"
        if self.ci_low > 0:
            return "higher"
        if self.ci_high < 0:
            return "lower"
        return "no clear difference"


def _mean_and_se(values: list[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def _unpaired(model: str, task: str, a: TaskScore, b: TaskScore, why: str) -> Difference:
    diff = a.score - b.score
    se = math.sqrt(a.stderr**2 + b.stderr**2) if a.stderr is not None and b.stderr is not None else None
    low, high = (diff - Z95 * se, diff + Z95 * se) if se is not None else (None, None)
    return Difference(model, task, a.metric, diff, se, low, high, min(a.n, b.n), "unpaired", why)


def difference(job_dir: Path, model: str, baseline: str, task: str, a: TaskScore, b: TaskScore) -> Difference:
    """``model`` minus ``baseline`` on ``task``: paired when both models' samples allow it."""
    ours, theirs = _load_samples(job_dir, model, task, a), _load_samples(job_dir, baseline, task, b)
    reasons = [x for x in (ours, theirs) if isinstance(x, str)]
    if reasons:
        return _unpaired(model, task, a, b, "; ".join(reasons))
    assert isinstance(ours, dict) and isinstance(theirs, dict)
    if ours.keys() != theirs.keys():
        only_ours, only_theirs = len(ours.keys() - theirs.keys()), len(theirs.keys() - ours.keys())
        return _unpaired(
            model, task, a, b,
            f"documents differ ({only_ours} only in {model}, {only_theirs} only in {baseline})",
        )  # fmt: skip
    ids = sorted(ours)
    if a.metric in CORPUS_METRICS:
        references = [ours[i][1] for i in ids]
        if references != [theirs[i][1] for i in ids]:
            return _unpaired(model, task, a, b, "the two models' samples have different references")
        paired = paired_difference(a.metric, [ours[i][0] for i in ids], [theirs[i][0] for i in ids], references)
        return Difference(
            model, task, a.metric, paired["diff"], paired["stderr"], paired["ci_low"], paired["ci_high"],
            len(ids), "paired bootstrap",
        )  # fmt: skip
    problems = []  # the samples should be exactly what the score was computed from
    for label, entry, values in ((model, a, ours), (baseline, b, theirs)):
        mean = sum(values.values()) / len(values)
        if not math.isclose(mean, entry.score, rel_tol=_SAMPLE_MEAN_TOL, abs_tol=1e-9):
            problems.append(f"{label}: samples mean {mean:.6g} ≠ reported score {entry.score:.6g}")
        if len(values) != entry.n:
            problems.append(f"{label}: {len(values)} samples but n = {entry.n}")
    note = "; ".join(problems)
    diff, se = _mean_and_se([ours[i] - theirs[i] for i in ids])
    low, high = (diff - Z95 * se, diff + Z95 * se) if se is not None else (None, None)
    return Difference(model, task, a.metric, diff, se, low, high, len(ids), "paired", note)


def differences(job_dir: Path, results: EvalResults) -> tuple[list[Difference], list[str]]:
    """Every model against the baseline on every task both have; and notes on what was skipped."""
    out: list[Difference] = []
    notes: list[str] = []
    base_label = results.baseline
    if base_label is None:
        return out, notes
    base = results.models[base_label]
    no_samples = [label for label in results.models if not (Path(job_dir) / "samples" / label).is_dir()]
    if no_samples:
        notes.append(
            "no per-document samples for " + ", ".join(no_samples) + " (samples/<model>/ missing): "
            "differences involving them are unpaired"
        )
    for label, scores in results.models.items():
        if label == base_label:
            continue
        for task, entry in scores.tasks.items():
            other = base.tasks.get(task)
            if other is None:
                notes.append(f"{label} / {task}: the baseline {base_label} has no score for this task")
                continue
            if other.metric != entry.metric:
                notes.append(f"{label} / {task}: metric {entry.metric} vs the baseline's {other.metric}; not compared")
                continue
            found = difference(job_dir, label, base_label, task, entry, other)
            if found.note and not {label, base_label} & set(no_samples):
                notes.append(f"{label} / {task}: {found.method}, {found.note}")
            out.append(found)
    return out, notes


# --------------------------------------------------------------------------------------------
# Formatting.


def _scale(entry: TaskScore) -> float:
    return 100.0 if entry.proportion else 1.0


def _num(value: float | None, scale: float = 1.0, digits: int = 1, sign: bool = False) -> str:
    return "–" if value is None else f"{value * scale:{'+' if sign else ''}.{digits}f}"


def _value(entry: TaskScore, value: float | None, sign: bool = False) -> str:
    """A number on the entry's scale (percent for proportions, two decimals otherwise), no unit."""
    return _num(value, _scale(entry), 1 if entry.proportion else 2, sign)


def _score_text(entry: TaskScore, value: float | None, sign: bool = False, diff: bool = False) -> str:
    text = _value(entry, value, sign)
    if value is None or not entry.proportion:
        return text
    return text + (" pp" if diff else "%")


def _stderr_text(entry: TaskScore, value: float | None) -> str:
    return "–" if value is None else "±" + _value(entry, value)


def _near_chance(entry: TaskScore) -> bool:
    if entry.chance is None or entry.stderr is None:
        return False
    return abs(entry.score - entry.chance) <= 2 * entry.stderr


def _is_translation(entry: TaskScore) -> bool:
    return entry.metric in CORPUS_METRICS or any(f"{m}_signature" in entry.extra for m in CORPUS_METRICS)


def _verdict_text(d: Difference, entry: TaskScore) -> str:
    if d.verdict not in ("higher", "lower"):
        return d.verdict
    better = (d.verdict == "higher") == entry.higher_is_better
    return f"{d.verdict} ({'better' if better else 'worse'})"


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(results: EvalResults, diffs: list[Difference], notes: list[str]) -> str:
    lines = [
        "# Evaluation report",
        "",
        "Proportions (accuracy and the like) are in %, their differences in percentage points (pp); "
        "BLEU and chrF++ are sacrebleu points (0–100). ± is one standard error. *Chance* is the expected "
        "score of guessing uniformly among each item's options; *≈ chance* marks a score within two "
        "standard errors of it.",
    ]
    for label, scores in results.models.items():
        kind = (scores.model_extra or {}).get("kind")
        role = (f" ({kind})" if isinstance(kind, str) and kind != label else "") + (
            ", the baseline" if label == results.baseline else ""
        )
        lines += ["", f"## Model `{label}`{role}", ""]
        if not scores.tasks:
            lines.append("No task scores.")
            continue
        lines += [
            "| task | metric | score | ± stderr | n | chance | score − chance |",
            "|---|---|--:|--:|--:|--:|--:|",
        ]
        for task, e in scores.tasks.items():
            minus = "–" if e.chance is None else _score_text(e, e.score - e.chance, sign=True, diff=True)
            if _near_chance(e):
                minus += " (≈ chance)"
            lines.append(
                f"| {_md_cell(task)} | {e.metric} | **{_score_text(e, e.score)}** | {_stderr_text(e, e.stderr)} | "
                f"{e.n} | {_score_text(e, e.chance)} | {minus} |"
            )
    if results.baseline is not None and len(results.models) > 1:
        lines += ["", f"## Difference to the baseline `{results.baseline}`", ""]
        lines += [
            "Model minus baseline on the same documents. *paired*: mean of per-document differences; "
            "*paired bootstrap*: corpus metric resampled over the same sentences; *unpaired*: "
            "√(se₁² + se₂²), used only when per-document outputs are missing (see notes).",
            "",
        ]
        if diffs:
            lines += [
                "| model | task | metric | model − baseline | ± stderr | 95% interval | n | method | verdict |",
                "|---|---|---|--:|--:|--:|--:|---|---|",
            ]
            for d in diffs:
                e = results.models[d.model].tasks[d.task]
                interval = "–" if d.ci_low is None else f"[{_value(e, d.ci_low, True)}, {_value(e, d.ci_high, True)}]"
                lines.append(
                    f"| {d.model} | {_md_cell(d.task)} | {d.metric} | "
                    f"**{_score_text(e, d.diff, sign=True, diff=True)}** | {_stderr_text(e, d.stderr)} | {interval} | {d.n} | {d.method} | {_verdict_text(d, e)} |"
                )
        else:
            lines.append("No task is scored for both a model and the baseline.")
    perplexities = {label: s.perplexity for label, s in results.models.items() if s.perplexity is not None}
    if perplexities:
        lines += ["", "## Perplexity on held-out Kazakh text", ""]
        lines += [
            "Perplexity per token depends on the tokenizer (more, shorter tokens make each prediction "
            "easier); bits per character do not, so compare models with different tokenizers by bits/char.",
            "",
            "| model | loss (nats/token) | perplexity (per token) | bits per char | tokens | chars |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for label, p in perplexities.items():
            lines.append(
                f"| {label} | {_num(p.loss, 1, 4)} | {p.perplexity:.2f} | **{p.bits_per_char:.4f}** | "
                f"{'–' if p.tokens is None else p.tokens} | {'–' if p.chars is None else p.chars} |"
            )
    translation = [
        (label, task, e) for label, s in results.models.items() for task, e in s.tasks.items() if _is_translation(e)
    ]
    if translation:
        lines += ["", "## Translation", ""]
        lines += ["| model | task | BLEU | ± stderr | chrF++ | ± stderr | n |", "|---|---|--:|--:|--:|--:|--:|"]
        signatures: dict[str, set[str]] = {}
        for label, task, e in translation:
            values = {m: (e.score, e.stderr) if e.metric == m else (e.extra.get(m), e.extra.get(f"{m}_stderr"))
                      for m in CORPUS_METRICS}  # fmt: skip
            cells = [
                f"{_num(v, 1, 2)} | {'–' if se is None else '±' + _num(se, 1, 2)}" for v, se in values.values()
            ]
            lines.append(f"| {label} | {_md_cell(task)} | " + " | ".join(cells) + f" | {e.n} |")
            for m in CORPUS_METRICS:
                if e.extra.get(f"{m}_signature"):
                    signatures.setdefault(f"{m}", set()).add(str(e.extra[f"{m}_signature"]))
        if signatures:
            lines += ["", "sacrebleu signatures:", ""]
            names = {"bleu": "BLEU", "chrf": "chrF++"}
            lines += [f"- {names[m]}: `{sig}`" for m, sigs in signatures.items() for sig in sorted(sigs)]
        bootstraps = {(e.extra.get("bootstrap"), e.extra.get("bootstrap_seed")) for _, _, e in translation}
        bootstraps.discard((None, None))
        for resamples, seed in sorted(bootstraps, key=str):
            lines.append(f"- stderr: bootstrap over sentences, {resamples} resamples, seed {seed}")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {_md_cell(note)}" for note in notes]
    return "\n".join(lines) + "\n"


_CSV_COLUMNS = [
    "kind", "model", "task", "metric", "proportion", "score", "stderr", "n", "chance", "minus_chance",
    "baseline", "diff", "diff_stderr", "diff_ci_low", "diff_ci_high", "diff_n", "diff_method",
]  # fmt: skip


def _csv_rows(results: EvalResults, diffs: list[Difference]) -> Iterable[dict[str, Any]]:
    by_key = {(d.model, d.task): d for d in diffs}
    for label, scores in results.models.items():
        for task, e in scores.tasks.items():
            d = by_key.get((label, task))
            yield {
                "kind": "task", "model": label, "task": task, "metric": e.metric, "proportion": e.proportion,
                "score": e.score, "stderr": e.stderr, "n": e.n, "chance": e.chance,
                "minus_chance": None if e.chance is None else e.score - e.chance,
                "baseline": results.baseline if d else None, "diff": d and d.diff, "diff_stderr": d and d.stderr,
                "diff_ci_low": d and d.ci_low, "diff_ci_high": d and d.ci_high, "diff_n": d and d.n,
                "diff_method": d and d.method,
            }  # fmt: skip
        if scores.perplexity is not None:
            p = scores.perplexity
            for metric in ("perplexity", "bits_per_char", "loss"):
                value = getattr(p, metric)
                if value is not None:
                    yield {"kind": "perplexity", "model": label, "task": "perplexity", "metric": metric,
                           "proportion": False, "score": value,
                           "n": p.chars if metric == "bits_per_char" else p.tokens}  # fmt: skip


def _write_csv(results: EvalResults, diffs: list[Difference], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in _csv_rows(results, diffs):
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in _CSV_COLUMNS})


def _plot(results: EvalResults, path: Path) -> None:
    """Horizontal bars (task names stay readable), one colour per model, ±1 stderr, chance dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results.models)
    tasks: list[str] = []  # those on a 0–100 scale: proportions and sacrebleu points
    for scores in results.models.values():
        tasks += [t for t, e in scores.tasks.items() if t not in tasks and (e.proportion or e.metric in CORPUS_METRICS)]
    perplexity = [label for label in labels if results.models[label].perplexity is not None]
    panels = [kind for kind, present in (("tasks", tasks), ("perplexity", perplexity)) if present] or ["none"]
    ppl_height = 1.4 + 0.4 * len(perplexity)
    height = min(max(3.2, 1.5 + len(tasks) * (0.24 * len(labels) + 0.3), ppl_height), 60.0)
    ratios = [3.0 if kind == "tasks" else 1.2 for kind in panels]
    fig = plt.figure(figsize=(4.0 + 2.6 * sum(ratios), height), dpi=110)
    grid = fig.add_gridspec(
        2, len(panels), width_ratios=ratios, height_ratios=[ppl_height, max(height - ppl_height, 0.01)]
    )
    # The task panel takes the full height; the perplexity panel only what its few bars need.
    axes = [fig.add_subplot(grid[:, i] if kind != "perplexity" or len(panels) == 1 else grid[0, i])
            for i, kind in enumerate(panels)]  # fmt: skip
    colors = plt.get_cmap("tab10").colors
    for ax, kind in zip(axes, panels):
        if kind == "tasks":
            band = 0.8 / len(labels)
            for i, label in enumerate(labels):
                ys, xs, errs = [], [], []
                for j, task in enumerate(tasks):
                    e = results.models[label].tasks.get(task)
                    if e is not None:
                        ys.append(j + (i - (len(labels) - 1) / 2) * band)
                        xs.append(e.score * _scale(e))
                        errs.append((e.stderr or 0.0) * _scale(e))
                ax.barh(ys, xs, band * 0.9, xerr=errs, capsize=2.5, color=colors[i % 10], label=label,
                        error_kw={"elinewidth": 1, "ecolor": "#333333"})  # fmt: skip
                for y, x, err in zip(ys, xs, errs):  # beyond the error bar, not through it
                    ax.annotate(f"{x:.1f}", (x + err, y), xytext=(3, 0), textcoords="offset points",
                                ha="left", va="center", fontsize=7)  # fmt: skip
            chance_drawn = False
            for j, task in enumerate(tasks):
                chances = {e.chance * _scale(e) for s in results.models.values()
                           if (e := s.tasks.get(task)) is not None and e.chance is not None}  # fmt: skip
                for chance in chances:
                    ax.vlines(chance, j - 0.45, j + 0.45, colors="black", linestyles="--", linewidth=1.5,
                              label=None if chance_drawn else "chance (random guessing)", zorder=3)  # fmt: skip
                    chance_drawn = True
            names = []
            for task in tasks:
                e = next(s.tasks[task] for s in results.models.values() if task in s.tasks)
                names.append(f"{task}  ({e.metric}{', %' if e.proportion else ''})")
            ax.set_yticks(range(len(tasks)), names, fontsize=8)
            ax.set_ylim(len(tasks) - 0.5, -0.5)  # first task on top
            ax.set_xlim(0, min(105.0, max(ax.get_xlim()[1] * 1.12, 10.0)))
            ax.set_xlabel("score: % for proportions, sacrebleu points for BLEU/chrF++ (±1 stderr)")
            ax.grid(axis="x", alpha=0.3)
            ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=min(len(labels) + 1, 4),
                      frameon=False, borderaxespad=0.3)  # fmt: skip
        elif kind == "perplexity":
            values = [results.models[label].perplexity.bits_per_char  # type: ignore[union-attr]
                      for label in perplexity]  # fmt: skip
            bars = ax.barh(range(len(perplexity)), values, 0.6,
                           color=[colors[labels.index(label) % 10] for label in perplexity])  # fmt: skip
            ax.bar_label(bars, labels=[f"{v:.3f}" for v in values], fontsize=8, padding=3)
            ax.set_yticks(range(len(perplexity)), perplexity, fontsize=8)
            ax.set_ylim(len(perplexity) - 0.5, -0.5)
            ax.set_xlabel("bits per character (lower is better)")
            ax.set_title("Held-out Kazakh text")
            ax.margins(x=0.2)
            ax.grid(axis="x", alpha=0.3)
        else:
            ax.text(0.5, 0.5, "no scores", ha="center", va="center")
            ax.set_axis_off()
        ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# MLflow.


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
    per-document outputs are read from ``<job_dir>/samples/<LABEL>/<TASK>.jsonl`` (module
    docstring). ``tracking`` is a :class:`kazhpc.tracking.JobRun` or None. Returns a small summary
    for the job manifest: report paths, scores, differences and notes.
    """
    parsed = validate_results(results)
    job_dir = Path(job_dir)
    diffs, notes = differences(job_dir, parsed)
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "report.md").write_text(_markdown(parsed, diffs, notes), encoding="utf-8")
    _write_csv(parsed, diffs, job_dir / "report.csv")
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
            entry["near_chance"] = _near_chance(typed)
    (job_dir / "report.json").write_text(
        json.dumps(_finite(full), ensure_ascii=False, indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    _plot(parsed, job_dir / "scores.png")
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
