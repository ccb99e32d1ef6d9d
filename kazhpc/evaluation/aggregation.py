"""Per-document rows → one results entry (score, stderr, n, chance) with lm-eval's own code.

The merge (kazhpc.evaluation.sharding) gathers every part's per-document rows of a task in
document order; here they go through lm-eval's aggregation and stderr functions
(``_compute_task_aggregations``, the function its evaluator uses), so a merged score and stderr
are those of an unsharded run, digit for digit. Translation tasks are scored as a corpus by
sacrebleu (kazhpc.evaluation.translation); a composite pools its members' documents.
"""

from __future__ import annotations

import math
from typing import Any

from kazhpc.errors import KazhpcError
from kazhpc.evaluation.suite import TaskSpec, chance_of

#: Per-document fields that are not metric values.
RESERVED = ("doc_id", "filter", "prompt", "prediction", "target", "num_choices", "scores", "hypothesis", "reference")


def _stderr(value: Any) -> float | None:
    return None if value in (None, "N/A") or (isinstance(value, float) and math.isnan(value)) else float(value)


def aggregate(task: Any, rows: list[dict[str, Any]], bootstrap_iters: int) -> dict[str, Any]:
    """Scores and stderrs from per-document rows with lm-eval's own aggregation code."""
    from lm_eval.evaluator_utils import _compute_task_aggregations

    raw: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in RESERVED:
                raw.setdefault((key, row["filter"]), []).append(value)
    agg, n = _compute_task_aggregations(task, raw, bootstrap_iters)
    found = {k for k, _ in raw}
    ordered = [m for m in task.aggregation() if m in found] + sorted(found - set(task.aggregation()))
    return {"values": agg, "n": n, "metrics": ordered, "filters": list(dict.fromkeys(f for _, f in raw))}


def task_entry(task: Any, spec: TaskSpec, rows: list[dict[str, Any]], bootstrap_iters: int) -> dict[str, Any]:
    builder = (spec.config.get("metadata") or {}).get("builder")
    if builder == "translation":
        return translation_entry(spec, rows)
    if builder == "open":
        from kazhpc.evaluation.open_answers import open_entry

        entry = open_entry([r for r in rows if r["filter"] == rows[0]["filter"]], task, spec.config["metadata"]["prompt_field"])
        entry["extra"].update(origin=spec.origin, output_type="generate_until", dataset=spec.data_file)
        return entry
    agg = aggregate(task, rows, bootstrap_iters)
    values, primary, filt = agg["values"], agg["metrics"][0], agg["filters"][0]
    higher = task.higher_is_better()
    first = [r for r in rows if r["filter"] == filt]
    extra: dict[str, Any] = {
        "origin": spec.origin,
        "output_type": task.OUTPUT_TYPE,
        "filter": filt,
        "dataset": spec.data_file or spec.config.get("dataset_path"),
    }
    for key, value in values.items():
        metric, _, f = key.partition(",")
        if metric != primary or f != filt:
            extra[key] = value if isinstance(value, (int, float, str)) else str(value)
    published = (spec.config.get("metadata") or {}).get("random_baseline")
    if published is not None:
        extra["random_baseline_published"] = published
    if builder == "judge":  # the answers' facts; the judged preference replaces them (kazhpc.evaluation.judge)
        chance = None
        extra["proportion"] = True
    elif builder in ("ifeval", "tool"):
        chance = echo_floor(task, first, primary)
        extra.update(proportion=True, chance_is="the prompt echoed back as the answer")
    else:
        chance = chance_of(task, [r["num_choices"] for r in first if "num_choices" in r])
    return {
        "metric": primary,
        "score": float(values[f"{primary},{filt}"]),
        "stderr": _stderr(values.get(f"{primary}_stderr,{filt}")),
        "n": agg["n"],
        "chance": chance,
        "higher_is_better": bool(higher.get(primary, True)),
        "extra": extra,
    }


def echo_floor(task: Any, rows: list[dict[str, Any]], metric: str) -> float | None:
    """The task's own per-item score of answering each scored prompt with the prompt itself: what a
    model earns by following nothing (the chance shown beside an instruction or tool task)."""
    docs = task.eval_docs
    hits = [float(task.process_results(docs[r["doc_id"]], [task.doc_to_text(docs[r["doc_id"]])])[metric]) for r in rows]
    return sum(hits) / len(hits) if hits else None


def translation_entry(spec: TaskSpec, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """sacrebleu corpus BLEU and chrF++ with signatures (kazhpc.evaluation.translation), in document order."""
    from kazhpc.evaluation.translation import score_translations, translation_task_entry

    rows = [r for r in rows if r["filter"] == rows[0]["filter"]]
    entry = translation_task_entry(score_translations([r["hypothesis"] for r in rows], [r["reference"] for r in rows]))
    entry["extra"].update(origin=spec.origin, output_type="generate_until", dataset=spec.data_file)
    return entry


def composite_entry(member_rows: list[list[dict[str, Any]]], members: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy pooled over the members' documents (the size-weighted mean), with lm-eval's mean stderr."""
    from lm_eval.api.metrics import mean, mean_stderr

    rows = [r for member in member_rows for r in member if r["filter"] == "none"]
    if not rows or any("acc" not in r or "num_choices" not in r for r in rows):
        raise KazhpcError(f"evaluate: a pooled score needs multiple-choice members with acc: {', '.join(members)}")
    values = [r["acc"] for r in rows]
    choices = [r["num_choices"] for r in rows]
    return {
        "metric": "acc",
        "score": float(mean(values)),
        "stderr": float(mean_stderr(values)) if len(values) > 1 else None,
        "n": len(values),
        "chance": sum(1.0 / c for c in choices) / len(choices),
        "higher_is_better": True,
        "extra": {"origin": "composite", "members": list(members)},
    }
