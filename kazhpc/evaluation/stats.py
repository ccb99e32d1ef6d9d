"""Per-document samples and a model's difference to the baseline, with its uncertainty.

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

import math
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from kazhpc.errors import KazhpcError, jsonl_objects
from kazhpc.evaluation.results import EvalResults, TaskScore
from kazhpc.evaluation.translation import CORPUS_METRICS, paired_difference

Z95 = NormalDist().inv_cdf(0.975)
#: Relative tolerance between a task's score and the mean of its per-document samples.
_SAMPLE_MEAN_TOL = 1e-6


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
            if entry.extra.get("judged_against") == base_label:  # a judge's preference is the comparison itself
                continue
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
