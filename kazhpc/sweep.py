"""Sweeps: variants of one pipeline config, run as sibling runs, compared on any manifest value.

A variant is a list of overrides on the base config. ``kazhpc sweep CONFIG key=v1,v2 key2=a,b``
makes the grid (every combination); a sweep file (``configs/sweeps/*.yaml``) lists named variants
and how to compare them. Before anything runs, every variant is loaded and validated as
``kazhpc validate`` would, a misspelt key gets the loader's "did you mean", and a sweep whose
variants give two stages-identical pipelines (a key no stage reads, or a value equal to another
variant's) is refused: it would spend the budget twice on one experiment.

The sweep has its own folder (``<runs_root>/sweep-<name>-<time>/sweep.json``: the variants and
their run directories) and its own MLflow run; each variant's pipeline run is its child
(``mlflow.parentRunId``), tagged ``kazhpc.sweep``, ``kazhpc.variant`` and ``sweep.<key>`` for every
varied key, so the MLflow UI lists the variants side by side. :func:`compare` reads values from the
variants' stage manifests (``STAGE.path.in.manifest``) into ``compare.md`` / ``.csv`` / ``.png``
and names the winner by the sweep's rule.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError, read_json_file

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig


@dataclass
class Variant:
    name: str
    overrides: list[str]
    varied: dict[str, str]  # key → value as written (tags, table columns)
    cfg: Any = None  # the loaded PipelineConfig


@dataclass
class SweepSpec:
    """What to run and how to judge it (a sweep file, or the command line's grid)."""

    name: str
    config: Path
    overrides: list[str]
    variants: list[Variant]
    metrics: list[str] = field(default_factory=list)
    winner: dict[str, Any] | None = None


def split_values(text: str) -> list[str]:
    """``v1,v2`` → values, splitting only at top-level commas (``[a, b],[c]`` is two lists)."""
    values, depth, start, quote = [], 0, 0, ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    if any(v == "" for v in values):
        raise KazhpcError(f"sweep axis value list {text!r} has an empty value")
    return values


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "variant"


def grid(axes: list[str]) -> list[Variant]:
    """Every combination of ``key=v1,v2,...`` axes, named by their values."""
    parsed = []
    for axis in axes:
        key, sep, values = axis.partition("=")
        if not sep or not key.strip():
            raise KazhpcError(f"sweep axis {axis!r}: expected key=value1,value2")
        parsed.append((key.strip(), split_values(values)))
    keys = [k for k, _ in parsed]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise KazhpcError(f"sweep: axis {', '.join(twice)} given twice; give one key=v1,v2,... per key")
    variants = []
    for combo in itertools.product(*(values for _, values in parsed)):
        varied = dict(zip(keys, combo))
        name = _slug("_".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in varied.items()))
        variants.append(Variant(name, [f"{k}={v}" for k, v in varied.items()], varied))
    return variants


def read_sweep_file(path: Path) -> SweepSpec:
    """A sweep file: ``name``, ``config`` (relative to the file), ``overrides`` (for every variant),
    ``variants`` (each ``{name, overrides: {key: value}}``), ``compare`` (``metrics``, ``winner``)."""
    from kazhpc.config import load_yaml_file

    data = load_yaml_file(path, (), ()).data
    known = {"name", "config", "overrides", "variants", "grid", "compare"}
    unknown = sorted(set(data) - known)
    if unknown:
        from kazhpc.config import suggest

        raise KazhpcError(f"{path}: unknown key {unknown[0]!r}{suggest(unknown[0], sorted(known))}")
    if "config" not in data:
        raise KazhpcError(f"{path}: no `config:` (the pipeline config the variants change)")
    variants = [Variant(_slug(str(v["name"])), [f"{k}={_yaml(x)}" for k, x in (v.get("overrides") or {}).items()],
                        {k: _yaml(x) for k, x in (v.get("overrides") or {}).items()})
                for v in data.get("variants") or []]
    variants += grid([f"{k}={','.join(_yaml(x) for x in values)}" for k, values in (data.get("grid") or {}).items()]) \
        if data.get("grid") else []
    if not variants:
        raise KazhpcError(f"{path}: no variants (`variants:` or `grid:`)")
    compare = data.get("compare") or {}
    return SweepSpec(str(data.get("name") or path.stem), (path.parent / data["config"]).resolve(),
                     [f"{k}={_yaml(v)}" for k, v in (data.get("overrides") or {}).items()], variants,
                     list(compare.get("metrics") or []), compare.get("winner"))


def _yaml(value: Any) -> str:
    import yaml

    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()


def effective(cfg: PipelineConfig) -> str:
    """What a run computes from: each stage's own section, its job and what it reads, the model and
    the seed (not its name, its store or where its runs go)."""
    stages = [{"name": s.name, "job": s.job, "upstream": cfg.upstream(s.name),
               "section": cfg.section_of(s.name).model_dump(mode="json")} for s in cfg.stages]
    return json.dumps({"stages": stages, "model": cfg.model.model_dump(mode="json"), "seed": cfg.seed}, sort_keys=True)


def load_variants(spec: SweepSpec) -> list[Variant]:
    """Load and validate every variant before any runs; refuse names used twice and variants that
    compute the same thing."""
    from kazhpc.config import load_config
    from kazhpc.errors import ConfigError

    names = [v.name for v in spec.variants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise KazhpcError(f"sweep {spec.name}: variant name {twice[0]!r} used twice")
    seen: dict[str, Variant] = {}
    for variant in spec.variants:
        try:
            variant.cfg = load_config(spec.config, [*spec.overrides, *variant.overrides])
        except ConfigError as exc:
            raise KazhpcError(f"sweep {spec.name}, variant {variant.name}: {exc}") from None
        key = effective(variant.cfg)
        if key in seen:
            other = seen[key]
            differ = sorted(set(variant.varied.items()) ^ set(other.varied.items()))
            keys = sorted({k for k, _ in differ}) or sorted(variant.varied)
            raise KazhpcError(
                f"sweep {spec.name}: variants {other.name} and {variant.name} run the same pipeline; "
                f"{', '.join(keys)} changes nothing that a stage of {spec.config.name} reads")
        seen[key] = variant
    return spec.variants


def preflight_variants(variants: list[Variant]) -> list[str]:
    """Every variant's preflight (kazhpc validate's checks), all before the first one runs: a
    variant that cannot start fails the sweep now, not after the others spent their hours."""
    from kazhpc.runner import preflight

    warnings = []
    for variant in variants:
        try:
            warnings += [f"{variant.name}: {w}" for w in preflight(variant.cfg)]
        except KazhpcError as exc:
            raise KazhpcError(f"variant {variant.name}: {exc}") from None
    return warnings


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class SweepRun:
    """A sweep under way: its folder, its record (sweep.json) and its MLflow parent run."""

    spec: SweepSpec
    variants: list[Variant]
    folder: Path
    record: dict[str, Any]
    tracker: Any
    parent: str | None

    def tags(self, variant: Variant) -> dict[str, str]:
        """A variant's pipeline run: a child of the sweep's, tagged with the sweep, the variant and
        every varied key."""
        return {"kazhpc.sweep": self.spec.name, "kazhpc.variant": variant.name,
                **{f"sweep.{k}": v for k, v in variant.varied.items()},
                **({"mlflow.parentRunId": self.parent} if self.parent else {})}

    def write(self) -> None:
        _write(self.folder, self.record)


def start_sweep(spec: SweepSpec) -> SweepRun:
    """Load, validate and preflight every variant, then make the sweep's folder and parent run."""
    from kazhpc.config import flatten
    from kazhpc.tracking import Tracker, run_tags

    variants = load_variants(spec)
    for warning in preflight_variants(variants):
        log.warning("sweep %s: %s", spec.name, warning)
    first = variants[0].cfg
    folder = first.runs_root / f"sweep-{_slug(spec.name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder.mkdir(parents=True, exist_ok=False)
    record = {"name": spec.name, "config": str(spec.config), "overrides": spec.overrides, "metrics": spec.metrics,
              "winner": spec.winner, "variants": [{"name": v.name, "overrides": v.overrides, "varied": v.varied,
                                                   "run_dir": None, "status": "PENDING"} for v in variants]}
    _write(folder, record)
    tracker = Tracker(first.tracking, first.runs_root, folder)
    parent = tracker.start_pipeline(f"sweep {spec.name}", {"variants": len(variants), **flatten(
        {"varied": {v.name: v.varied for v in variants}})}, {**run_tags(first.config_hash()), "kazhpc.sweep": spec.name})
    return SweepRun(spec, variants, folder, record, tracker, parent)


def run_sweep(spec: SweepSpec) -> Path:
    """Run the variants here, one after another; return the sweep folder."""
    from kazhpc.runner import run_pipeline

    sweep = start_sweep(spec)
    status = "FINISHED"
    try:
        for entry, variant in zip(sweep.record["variants"], sweep.variants):
            entry["status"] = "RUNNING"
            sweep.write()
            try:
                entry["run_dir"] = str(run_pipeline(variant.cfg, tags=sweep.tags(variant),
                                                    on_run_dir=lambda d, e=entry: _started(sweep.folder, sweep.record, e, d)))
                entry["status"] = "COMPLETED"
            except BaseException:
                entry["status"] = "FAILED"
                status = "FAILED"
                raise
            finally:
                sweep.write()
    finally:
        sweep.tracker.finish_pipeline(status)
    return sweep.folder


def _started(folder: Path, record: dict[str, Any], entry: dict[str, Any], run_dir: Path) -> None:
    entry["run_dir"] = str(run_dir)
    _write(folder, record)


def _write(folder: Path, record: dict[str, Any]) -> None:
    (folder / "sweep.json").write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Comparing


def manifest_value(run_dir: Path, metric: str) -> float | None:
    """``STAGE.path.to.value`` in that stage's manifest of ``run_dir`` (None when absent)."""
    stage, _, path = metric.partition(".")
    manifest_file = run_dir / stage / "manifest.json"
    if not path or not manifest_file.is_file():
        return None
    value: Any = read_json_file(manifest_file, f"the {stage} stage's manifest")
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pick_winner(rows: list[dict[str, Any]], rule: dict[str, Any] | None) -> tuple[str | None, str]:
    """The winning variant by ``rule`` (``{lowest|highest: METRIC, within: {metric, percent, of}}``)
    and the rule in words."""
    if not rule:
        return None, ""
    direction = "lowest" if "lowest" in rule else "highest"
    metric = rule.get(direction)
    candidates = [r for r in rows if r.get(metric) is not None]
    said = f"{direction} {metric}"
    within = rule.get("within")
    if within:
        base = next((r for r in rows if r["variant"] == within["of"]), None)
        if base is None or base.get(within["metric"]) is None:
            raise KazhpcError(f"compare: the winner rule's baseline variant {within['of']!r} has no {within['metric']}")
        limit = base[within["metric"]] * (1 + within["percent"] / 100)
        candidates = [r for r in candidates if r.get(within["metric"]) is not None and r[within["metric"]] <= limit]
        said += f" with {within['metric']} within +{within['percent']:g}% of {within['of']}"
    if not candidates:
        return None, said
    best = (min if direction == "lowest" else max)(candidates, key=lambda r: r[metric])
    return best["variant"], said


def compare(folder: Path, metrics: list[str] | None = None) -> Path:
    """Write ``compare.md``, ``compare.csv`` and ``compare.png`` (with metrics) for a sweep folder;
    return the table. With no metrics named, by the sweep or ``--metric``, the table has the
    variants and their states (a submitted sweep's last job runs this whatever the sweep names)."""
    record = read_json_file(folder / "sweep.json", "the sweep record")
    metrics = metrics or record.get("metrics") or []
    rule = record.get("winner") or {}
    judged = [rule.get("lowest") or rule.get("highest"), (rule.get("within") or {}).get("metric")]
    metrics = [*metrics, *[m for m in judged if m and m not in metrics]]  # the rule's values are shown too
    keys = sorted({k for v in record["variants"] for k in v["varied"]})
    if record.get("submission"):
        _update_submitted(folder, record)
    rows = []
    for v in record["variants"]:
        run_dir = Path(v["run_dir"]) if v.get("run_dir") else None
        row = {"variant": v["name"], **{k: v["varied"].get(k, "") for k in keys}, "status": v["status"]}
        for metric in metrics:
            row[metric] = manifest_value(run_dir, metric) if run_dir else None
        rows.append(row)
    winner, rule = pick_winner(rows, record.get("winner"))
    columns = ["variant", *keys, "status", *metrics]
    for row in rows:  # a varied stage list reads as its stage names
        if row.get("stages"):
            row["stages"] = _stage_names(row["stages"])
    fmt = lambda x: "—" if x is None else (f"{x:.4g}" if isinstance(x, float) else str(x))  # noqa: E731
    lines = [f"# Sweep {record['name']}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    if rule:
        lines += ["", f"Winner ({rule}): **{winner}**." if winner else f"No variant meets the rule ({rule})."]
    if not metrics:
        lines += ["", "No metrics named: pass --metric STAGE.path.in.manifest, or list compare.metrics in the sweep file."]
    (folder / "compare.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with (folder / "compare.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    if metrics:
        _plot(folder / "compare.png", rows, metrics)
    return folder / "compare.md"


def _update_submitted(folder: Path, record: dict[str, Any]) -> None:
    """A submitted sweep's variants are where their run.json says (COMPLETED once every stage is,
    FAILED if one did); once none is still going, the sweep's MLflow run ends, once."""
    from kazhpc.runner import open_run_dir, read_state

    for variant in record["variants"]:
        run_dir = Path(variant["run_dir"])
        jobs = read_state(run_dir).get("jobs", {})
        states = [jobs.get(stage, {}).get("status") for stage in open_run_dir(run_dir).stage_names]
        failed = [s for s in states if s in ("FAILED", "INTERRUPTED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY")]
        variant["status"] = "COMPLETED" if all(s == "COMPLETED" for s in states) else failed[0] if failed else "SUBMITTED"
    if not record.get("finished") and all(v["status"] != "SUBMITTED" for v in record["variants"]):
        from kazhpc.tracking import Tracker

        cfg = open_run_dir(Path(record["variants"][0]["run_dir"]))
        Tracker(cfg.tracking, cfg.runs_root, folder).finish_pipeline(
            "FINISHED" if all(v["status"] == "COMPLETED" for v in record["variants"]) else "FAILED")
        record["finished"] = time.time()
    _write(folder, record)


def _stage_names(value: str) -> str:
    import yaml

    try:
        stages = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(stages, list) and all(isinstance(s, dict) and "name" in s for s in stages):
        return " → ".join(s["name"] for s in stages)
    return value


def _plot(path: Path, rows: list[dict[str, Any]], metrics: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        shown = [r for r in rows if r[metric] is not None]
        ax.bar([r["variant"] for r in shown], [r[metric] for r in shown])
        ax.set_title(metric.split(".")[-1], fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
