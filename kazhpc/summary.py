"""What ``kazhpc run`` and ``kazhpc status --wait`` print at the end: each stage's state and time,
then its headline figures from its manifest, each score beside its chance and the baseline model,
and where to click in MLflow. A person should not need to open three files to learn whether the
adapter beat the base model.

Headlines are per job type, here beside each other (one function per type, the registry's names
as keys), since a table that compares stages is read as one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kazhpc.console import out
from kazhpc.errors import read_json_file
from kazhpc.evaluation.results import score_rows

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig

Headline = Callable[[dict[str, Any]], list[str]]


def _f(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _prepare_model(m: dict[str, Any]) -> list[str]:
    p = m.get("perplexity", {})
    return [f"Kazakh perplexity {_f(p.get('perplexity'), 1)}, {_f(p.get('bits_per_char'))} bits/char on {p.get('texts')} passages"]


def _tokenizers(m: dict[str, Any]) -> list[str]:
    rows = [r for r in m.get("results", {}).get("rows", []) if r.get("language") == "kk"]
    return [", ".join(f"{r['tokenizer']} {_f(r['fertility'], 2)}" for r in rows) + " tokens per Kazakh word"] if rows else []


def _extend_vocab(m: dict[str, Any]) -> list[str]:
    lines = [f"{m.get('tokenizer', {}).get('new_tokens')} new tokens"]
    for name, pair in m.get("fertility", {}).items():
        if isinstance(pair, dict) and "base" in pair and "extended" in pair:
            lines.append(f"{name}: {_f(pair['base']['fertility'], 2)} → {_f(pair['extended']['fertility'], 2)} tokens/word")
    return lines


def _dropped(counts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def _preprocess(m: dict[str, Any]) -> list[str]:
    c = m.get("counts", {})
    return [f"{c.get('train_rows')} train + {c.get('validation_rows')} validation rows from {c.get('rows_read')} read",
            f"dropped {c.get('rejected')}: {_dropped(c.get('dropped_by_reason', {}))}"]


def _corpus(m: dict[str, Any]) -> list[str]:
    c = m.get("counts", {})
    return [f"{c.get('documents_kept')} documents kept of {c.get('documents_read')}, {c.get('documents_heldout')} held out; "
            f"{c.get('blocks')} blocks, {c.get('tokens')} tokens", f"dropped: {_dropped(m.get('dropped_by_reason', {}))}"]


def _train(m: dict[str, Any]) -> list[str]:
    lines = [f"{m.get('steps')} steps, final train loss {_f(m.get('train_loss'))}"]
    check = m.get("loss_check") or {}
    if isinstance(check.get("base"), (int, float)):
        lines.append(f"loss on {check.get('rows')} training rows: base {_f(check['base'])} → {_f(check['adapter'])}")
    held = m.get("heldout") or {}
    for key, before in (held.get("before") or {}).items():  # CPT: heldout_<set>_bits_per_char before and after
        if key.endswith("_bits_per_char"):
            name = key.removeprefix("heldout_").removesuffix("_bits_per_char")
            lines.append(f"{name}: {_f(before)} → {_f((held.get('after') or {}).get(key))} bits/char")
    return lines


def _evaluate(m: dict[str, Any]) -> list[str]:
    """How many tasks each model under test is clearly higher or lower than the baseline on (the
    paired interval excludes 0), beside the count of tasks; the scores table has the rest."""
    scores, report = m.get("scores", {}), m.get("report") or {}
    baseline, differences = report.get("baseline"), report.get("differences", {})
    lines = []
    for label, tasks in scores.items():
        if label == baseline:
            continue
        verdicts = [differences.get(f"{label}/{task}", {}).get("verdict") for task in tasks]
        lines.append(f"{label} vs {baseline} on {len(tasks)} tasks: higher on {verdicts.count('higher')}, "
                     f"lower on {verdicts.count('lower')}, no clear difference on {len(tasks) - verdicts.count('higher') - verdicts.count('lower')}")
    return lines or [f"{len(scores)} models scored"]


def _export(m: dict[str, Any]) -> list[str]:
    c = m.get("check", {})
    lines = [f"{m.get('export_dir')} ({m.get('dtype')}): reloaded {_f(c.get('export_bits_per_char'), 4)} bits/char, "
             f"adapter {_f(c.get('reference_bits_per_char'), 4)}"]
    if m.get("gguf"):
        lines.append(f"GGUF {m['gguf'].get('outtype')}: {_f(c.get('gguf_bits_per_char'), 4)} bits/char")
    return lines


HEADLINES: dict[str, Headline] = {
    "prepare-model": _prepare_model, "tokenizers": _tokenizers, "extend-vocab": _extend_vocab,
    "preprocess": _preprocess, "corpus": _corpus, "train": _train, "evaluate": _evaluate,
    "export": _export,
}


def headline(job: str, manifest: dict[str, Any]) -> str:
    """A stage's headline figures on one line (the runner's "completed" line)."""
    try:
        return "; ".join(HEADLINES.get(job, lambda _: [])(manifest))
    except (KeyError, TypeError, ValueError):
        return ""


def stage_rows(run_dir: Path, stages: list[tuple[str, str]]) -> list[tuple[str, str, str, list[str]]]:
    """(stage, state, time, headline lines) of each (stage, job type), from run.json and the manifests."""
    state_file = run_dir / "run.json"  # read here, not through kazhpc.runner, which logs headlines from here
    jobs = read_json_file(state_file, "the run's state file").get("jobs", {}) if state_file.is_file() else {}
    rows = []
    for stage, job in stages:
        state = jobs.get(stage, {})
        started, finished = state.get("started"), state.get("finished")
        seconds = f"{finished - started:.0f} s" if isinstance(started, (int, float)) and isinstance(finished, (int, float)) else "-"
        manifest = run_dir / stage / "manifest.json"
        lines: list[str] = []
        if state.get("status") == "COMPLETED" and manifest.is_file():
            try:
                lines = HEADLINES.get(job, lambda _: [])(json.loads(manifest.read_text(encoding="utf-8")))
            except (KeyError, TypeError, ValueError) as exc:  # a manifest of an older kazhpc: the table still prints
                lines = [f"(no headline: {type(exc).__name__} {exc})"]
        elif state.get("error"):
            lines = [str(state["error"])[:200]]
        rows.append((stage, str(state.get("status", "not run")), seconds, lines))
    return rows


def mlflow_run(run_dir: Path) -> str | None:
    """The pipeline's MLflow run id (tracking/runs.json), if a store got it."""
    ids = run_dir / "tracking" / "runs.json"
    try:
        return json.loads(ids.read_text())["runs"].get("pipeline") if ids.is_file() else None
    except (ValueError, KeyError, AttributeError):
        return None


def scores_table(run_dir: Path, stage: str) -> Table | None:
    """An evaluate stage's scores, each beside its chance and the baseline model's."""
    manifest = run_dir / stage / "manifest.json"
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text(encoding="utf-8"))
    baseline = (data.get("report") or {}).get("baseline") or "baseline"
    table = Table(title=f"{stage}: scores", title_justify="left")
    for column in ("model", "task", "metric", "score ± stderr", "n", "chance", baseline, f"vs {baseline} (paired)"):
        table.add_column(column, overflow="fold")
    for row in score_rows(data):
        table.add_row(*(Text(cell) for cell in row))
    return table


def summary_table(run_dir: Path, stages: list[tuple[str, str]]) -> Table:
    table = Table(title=f"{run_dir.name}", title_justify="left", show_lines=True)
    for column in ("stage", "state", "time", "headline"):
        table.add_column(column, overflow="fold")
    for stage, state, seconds, lines in stage_rows(run_dir, stages):
        style = {"COMPLETED": "green", "FAILED": "red", "PREEMPTED": "yellow"}.get(state, "")
        table.add_row(Text(stage), Text(state, style=style), Text(seconds), Text("\n".join(lines)))
    return table


def print_summary(run_dir: Path, cfg: PipelineConfig) -> None:
    """The table of stages, states, times and headline figures; then the run's MLflow ids."""
    # A log file (a pipe, CI, SLURM): each row on one line, not folded at 80 columns.
    console = out if out.is_terminal else Console(width=240, markup=False, highlight=False)
    console.print(summary_table(run_dir, [(s.name, s.job) for s in cfg.stages]))
    for stage in cfg.stages_of("evaluate"):
        table = scores_table(run_dir, stage.name)
        if table is not None and table.row_count:
            console.print(table)
    run_id = mlflow_run(run_dir)
    if run_id:
        console.print(f"MLflow: experiment {cfg.tracking.experiment}, run {cfg.name} ({run_id}); its stages are its child runs, "
                  f"the registered adapters under Models → kazhpc-{cfg.name}", highlight=False)
