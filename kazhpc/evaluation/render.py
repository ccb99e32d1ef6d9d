"""The evaluation report's files as text and picture: report.md, report.csv and scores.png.

Rendering only: the numbers arrive validated (:mod:`kazhpc.evaluation.results`) and the
differences computed (:mod:`kazhpc.evaluation.stats`). Proportions are shown in %, their
differences in percentage points, BLEU and chrF++ in sacrebleu points; every task row carries its
chance baseline and the score minus chance, so no score is read without its control.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable

from kazhpc.evaluation.results import EvalResults, TaskScore, near_chance
from kazhpc.evaluation.stats import Difference
from kazhpc.evaluation.translation import CORPUS_METRICS


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


def _is_translation(entry: TaskScore) -> bool:
    return entry.metric in CORPUS_METRICS or any(f"{m}_signature" in entry.extra for m in CORPUS_METRICS)


def _verdict_text(d: Difference, entry: TaskScore) -> str:
    if d.verdict not in ("higher", "lower"):
        return d.verdict
    better = (d.verdict == "higher") == entry.higher_is_better
    return f"{d.verdict} ({'better' if better else 'worse'})"


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(results: EvalResults, diffs: list[Difference], notes: list[str]) -> str:
    lines = [
        "# Evaluation report",
        "",
        "Proportions (accuracy and the like) are in %, their differences in percentage points (pp); "
        "BLEU and chrF++ are sacrebleu points (0–100). ± is one standard error. *Chance* is the expected "
        "score of guessing uniformly among each item's options (for an instruction task, ifeval: the score "
        "of echoing each prompt back as the answer); *≈ chance* marks a score within two standard errors of it.",
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
            if near_chance(e):
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


def write_csv(results: EvalResults, diffs: list[Difference], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in _csv_rows(results, diffs):
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in _CSV_COLUMNS})


def plot_scores(results: EvalResults, path: Path) -> None:
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
