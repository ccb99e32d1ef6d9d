"""The evaluate job: the Kazakh suite on every model under test, in shards, merged exactly.

``run`` evaluates the shards that are not done with the current inputs (on a cluster they are SLURM
array tasks that ran ``kazhpc evaluate --run-dir R --shard i/n`` before; kazhpc.parts), merges them into
``results.json`` and ``samples/<label>/<task>.jsonl``, writes the report (chance baselines,
differences to the baseline model) and logs everything to the job's MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping


from kazhpc.errors import KazhpcError, read_json_file

if TYPE_CHECKING:
    from kazhpc.config import ModelConfig, PipelineConfig
    from kazhpc.evaluation.models import ModelUnderTest
    from kazhpc.jobspec import JobContext

log = logging.getLogger(__name__)


def preflight(cfg: PipelineConfig) -> list[str]:
    """Task names, local data (every row rendered), adapters named explicitly, text files."""
    from kazhpc.evaluation import suite as suite_mod
    from kazhpc.evaluation.models import check_adapter
    from kazhpc.evaluation.sharding import perplexity_texts
    from kazhpc.models import parse_source

    parse_source(cfg.model.source)
    if cfg.evaluate.backend == "vllm":
        from kazhpc.evaluation.models import check_vllm

        check_vllm()
    suite = suite_mod.preflight(cfg.evaluate)
    warnings = _check_judges(cfg.evaluate)
    for model in cfg.evaluate.models:
        if model.kind != "base" and model.adapter is not None:
            check_adapter(Path(model.adapter), model.label)
    if cfg.evaluate.perplexity_texts is not None:
        perplexity_texts(cfg.evaluate.perplexity_texts)
    if cfg.evaluate.generation_prompts is not None:
        from kazhpc.evaluation.generations import read_prompts

        read_prompts(Path(cfg.evaluate.generation_prompts))
    if os.environ.get("HF_DATASETS_OFFLINE") != "1":
        hub = [s.name for s in suite.tasks if s.data_file is None and s.builder is None]  # not a held-out split
        if hub:
            warnings.append(f"tasks {', '.join(hub)} read their hub data sets (cached in HF_HOME, else downloaded)")
    return warnings


def _check_judges(evaluate: Any) -> list[str]:
    """A judge that cannot be loaded fails at preflight, not in the merge after every shard ran;
    a hub judge not yet downloaded is a warning online and an error offline."""
    from kazhpc.models import parse_source

    warnings = []
    for task in evaluate.judge_tasks():
        if task.judge is None:
            continue
        try:
            source = parse_source(task.judge.source)
        except KazhpcError as exc:
            raise KazhpcError(f"evaluate.tasks[{task.name}].judge.source: {exc}") from None
        if source.kind == "hub" and not _hub_cached(source.ref, task.judge.revision):
            where = f"evaluate.tasks[{task.name}].judge.source: {source.ref} is not in the local hub cache"
            if os.environ.get("HF_HUB_OFFLINE") == "1":
                raise KazhpcError(f"{where} and HF_HUB_OFFLINE=1; download it on a login node first")
            warnings.append(f"{where}: the merge downloads it")
    return warnings


def _hub_cached(repo: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, "config.json", revision=revision), str)


def models_under_test(cfg: PipelineConfig, train_dir: Path | None) -> list[ModelUnderTest]:
    """The configured models as the library loads them: an adapter without a path is the one of
    the train stage this evaluation reads (``train_dir``), and an adapter a kazhpc train stage made
    loads on the base that stage trained (its manifest's ``base_model``: the extend-vocab stage's
    model, say), not necessarily the configured one."""
    from kazhpc.evaluation.models import ModelUnderTest

    models = []
    for model in cfg.evaluate.models:
        if model.kind == "base":
            models.append(ModelUnderTest(model.label, model.kind, cfg.model))
            continue
        if model.adapter is not None:
            path = Path(model.adapter)
        elif train_dir is not None and (full := _fully_trained(train_dir)) is not None:
            # The train stage trained every weight (train.method: full): its model, no adapter.
            models.append(ModelUnderTest(model.label, model.kind, cfg.model.model_copy(update={"source": str(full), "revision": None})))
            continue
        elif train_dir is not None:
            path = train_dir / "adapter"
        else:
            raise KazhpcError(f"evaluate.models[{model.label}]: no adapter path and no train stage before this evaluation")
        models.append(ModelUnderTest(model.label, model.kind, trained_base(cfg.model, path), path))
    return models


def _fully_trained(train_dir: Path) -> Path | None:
    """The model a train stage trained in full (its manifest's ``model``), or None."""
    manifest = train_dir / "manifest.json"
    if not manifest.is_file():
        return None
    model = read_json_file(manifest, f"the {train_dir.name} stage's manifest").get("model")
    return Path(model) if model else None


def trained_base(configured: ModelConfig, adapter: Path) -> ModelConfig:
    """The base a kazhpc train stage's adapter was trained on (the manifest beside it), else the
    configured model (an adapter from elsewhere, or one not written yet)."""
    manifest = adapter.parent / "manifest.json"
    if adapter.name != "adapter" or not manifest.is_file():
        return configured
    source = read_json_file(manifest, f"the {adapter.parent.name} stage's manifest").get("base_model") or configured.source
    return configured if source == configured.source else configured.model_copy(update={"source": source, "revision": None})


def run_part(cfg: PipelineConfig, job_dir: Path, index: int, count: int, upstream: Mapping[str, Path] | None = None) -> Path:
    """One shard (the models under test without an adapter path use the upstream train stage's)."""
    from kazhpc.evaluation.sharding import run_part as evaluate_part

    models = models_under_test(cfg, (upstream or {}).get("train"))
    return evaluate_part(cfg.evaluate, cfg.cache_root, models, job_dir, index, count, (upstream or {}).get("preprocess"))


def run(ctx: JobContext) -> dict[str, Any]:
    from kazhpc.evaluation.sharding import merge, run_part as evaluate_part
    from kazhpc.partfiles import done_records
    from kazhpc.parts import run_parts_then_merge

    cfg = ctx.cfg
    count = cfg.evaluate.shards
    models = models_under_test(cfg, ctx.upstream_dir("train"))
    results = run_parts_then_merge(ctx.job_dir.name, ctx.job_dir, count,
                                   lambda i: evaluate_part(cfg.evaluate, cfg.cache_root, models, ctx.job_dir, i, count,
                                                           ctx.upstream_dir("preprocess")),
                                   lambda: merge(cfg.evaluate, ctx.job_dir, count, (cfg.cache_root, cfg.model)), ctx.inputs)
    results_file = ctx.job_dir / "results.json"
    results_file.write_text(json.dumps(results, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")
    ctx.tracking.log_artifact(results_file)
    if (ctx.job_dir / "rejects.jsonl").is_file():  # documents left out for special-token text
        ctx.tracking.log_artifact(ctx.job_dir / "rejects.jsonl")
    report = _report(ctx, results)
    _lineage(ctx, results, models)
    generations = _generations(ctx, models)
    parts = done_records(ctx.job_dir, count)
    return {
        "results": str(results_file),
        # Which adapter each model under test was (lineage: the train stage's, or a given path).
        "adapters": {m.label: str(m.adapter) if m.adapter else None for m in models},
        "shards": count,
        "requests_per_shard": [p["requests"] for p in parts],
        "bos_checked": {label: sum(p["bos_checked"].get(label, 0) for p in parts) for label in parts[0]["bos_checked"]},
        "scores": {
            label: {task: {k: e[k] for k in ("metric", "score", "stderr", "n", "chance")} for task, e in m["tasks"].items()}
            for label, m in results["models"].items()
        },
        "report": report,
        "generations": generations,
    }


def task_datasets(cfg: PipelineConfig, job_dir: Path, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each task's data as an MLflow dataset record (context ``evaluation``): its local file (the
    held-out split this job wrote, for those that read it) or its hub data set."""
    from kazhpc.evaluation import suite as suite_mod
    from kazhpc.tracking.lineage import file_dataset, hub_dataset

    rows = {task: entry.get("n") for m in results["models"].values() for task, entry in m["tasks"].items()}
    records = []
    for task in suite_mod.preflight(cfg.evaluate).tasks:
        if task.name not in rows:
            continue
        config = task.config
        files = (config.get("dataset_kwargs") or {}).get("data_files") or {}
        local = task.data_file or (str(job_dir / files["test"]) if config.get("dataset_path") == "json" and "test" in files else None)
        if local is not None and Path(local).is_file():
            records.append(file_dataset(Path(local), "evaluation", name=task.name, rows=rows[task.name]))
        elif config.get("dataset_path") not in (None, "json"):
            records.append(hub_dataset(config["dataset_path"], "evaluation", split=config.get("test_split"),
                                       config=config.get("dataset_name"), name=task.name, rows=rows[task.name]))
    return records


def _lineage(ctx: JobContext, results: dict[str, Any], models: list[ModelUnderTest]) -> None:
    """The evaluation sets as the run's inputs; each score, its chance and its interval as tags of
    the registered model version a kazhpc train stage logged for the adapter under test."""
    for record in task_datasets(ctx.cfg, ctx.job_dir, results):
        ctx.tracking.log_dataset(record)
    for model in models:
        manifest = Path(model.adapter).parent / "manifest.json" if model.adapter else None
        if manifest is None or not manifest.is_file():
            continue
        registered = read_json_file(manifest, f"the {manifest.parent.name} stage's manifest").get("mlflow_model")
        entry = results["models"].get(model.label)
        if not registered or entry is None:
            continue
        tags: dict[str, Any] = {"evaluated_in": ctx.job_dir.name}
        for task, score in entry["tasks"].items():
            tags[f"score.{task}"] = f"{score['score']:.4f}" if isinstance(score.get("score"), (int, float)) else score.get("score")
            if isinstance(score.get("chance"), (int, float)):
                tags[f"chance.{task}"] = f"{score['chance']:.4f}"
        ctx.tracking.tag_model(registered, tags)


def _report(ctx: JobContext, results: dict[str, Any]) -> dict[str, Any] | None:
    from kazhpc.evaluation.report import write_report

    return write_report(ctx.job_dir, results, ctx.tracking)


def _generations(ctx: JobContext, models: list[ModelUnderTest]) -> str | None:
    """Side-by-side answers of every model to the Kazakh prompt set (an HTML artifact)."""
    cfg = ctx.cfg
    if cfg.evaluate.generation_prompts is None:
        return None
    from kazhpc.evaluation.generations import greedy_generator, read_prompts, side_by_side
    from kazhpc.evaluation.models import load_for_eval

    prompts = read_prompts(Path(cfg.evaluate.generation_prompts))
    generators = {}
    for model_cfg in models:
        model, tokenizer = load_for_eval(model_cfg, cfg.cache_root)
        generators[model_cfg.label] = greedy_generator(model, tokenizer, max_new_tokens=cfg.evaluate.generation_max_new_tokens, batch_size=cfg.evaluate.batch_size,
                                                     special_tokens=cfg.evaluate.special_tokens)
    path = side_by_side(generators, prompts, ctx.job_dir / "generations.html")
    ctx.tracking.log_artifact(path)
    jsonl = Path(path).with_suffix(".jsonl")
    if jsonl.is_file():
        ctx.tracking.log_artifact(jsonl)
    return str(path)
