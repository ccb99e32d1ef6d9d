"""The evaluation results' schema: what :func:`kazhpc.evaluation.report.write_report` accepts.

One model's headline score per task (:class:`TaskScore`: metric, score, stderr, n, chance
baseline), its perplexity on held-out text (:class:`PerplexityScore`), for every model, and which
model is the baseline. :func:`validate_results` parses the dict before anything is written, so a
wrong shape is one KazhpcError line naming the key path, not a half-written report.
:func:`near_chance` is the one rule for "≈ chance", shared by report.md and report.json.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kazhpc.errors import KazhpcError

#: Metrics whose scores are proportions in [0, 1]: shown as percentages, differences in points.
PROPORTION_METRICS = frozenset({"acc", "acc_norm", "exact_match", "em", "f1", "accuracy", "mc1", "mc2"})


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


def near_chance(entry: TaskScore) -> bool:
    """A score within two standard errors of its chance baseline (marked ``≈ chance``)."""
    if entry.chance is None or entry.stderr is None:
        return False
    return abs(entry.score - entry.chance) <= 2 * entry.stderr


def _fmt(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def score_rows(manifest: dict[str, Any]) -> list[tuple[str, ...]]:
    """(model, task, metric, score ± stderr, n, chance, baseline's score, paired difference) of
    every model but the baseline, from an evaluate stage's manifest (the
    summary's scores table, an export's model card)."""
    scores, report = manifest.get("scores", {}), manifest.get("report") or {}
    baseline, differences = report.get("baseline"), report.get("differences", {})
    rows = []
    for label, tasks in scores.items():
        if label == baseline and len(scores) > 1:
            continue
        for task, s in tasks.items():
            base = scores.get(baseline, {}).get(task, {}) if baseline and label != baseline else {}
            diff = differences.get(f"{label}/{task}", {})
            rows.append((label, task, s["metric"], f"{_fmt(s['score'])} ± {_fmt(s['stderr'])}", str(s["n"]), _fmt(s["chance"]),
                         _fmt(base.get("score")), f"{_fmt(diff.get('diff'))} ± {_fmt(diff.get('stderr'))} {diff.get('verdict', '')}".strip()
                         if diff else "-"))
    return rows
