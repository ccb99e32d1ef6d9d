"""The export job's adapter: a train stage's model as a folder anyone can load and ship.

It merges the adapter into the unquantized base (kazhpc.export.merge), saves weights, tokenizer
(the extended one after extend-vocab), chat template and generation config with a model card,
optionally writes a GGUF file, then proves the folder works in a fresh process with plain
transformers: its bits per character on Kazakh passages must match the unmerged adapter's within
``export.check_tolerance`` (the GGUF file's within ``gguf_tolerance``). Only then is it registered
in MLflow and, if asked, uploaded to the hub.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext

log = logging.getLogger(__name__)


def preflight(cfg: PipelineConfig) -> list[str]:
    from kazhpc.evaluation.perplexity import read_passages
    from kazhpc.export.hub import offline_reason

    read_passages(cfg.export.check_texts, "export.check_texts")
    if cfg.export.gguf != "none" and cfg.stages_of("extend-vocab"):
        raise KazhpcError(f"export.gguf: {cfg.export.gguf}: a GGUF file carries no BPE merges (llama.cpp rebuilds them from the token "
                          "order), so an extended vocabulary would tokenize otherwise there; set export.gguf: none where the pipeline extends it")
    if cfg.export.push_to_hub and offline_reason():
        raise KazhpcError(f"export.push_to_hub: {cfg.export.push_to_hub}: {offline_reason()}")
    return []


def _tokenizer(cfg: PipelineConfig, trained: Any) -> Any:
    """The tokenizer the model was trained with (train saves it beside the adapter: the extended
    one after extend-vocab), with the configured chat template."""
    from transformers import AutoTokenizer

    from kazhpc.models import chat_template_text, load_tokenizer

    if trained.weights is not None and (trained.weights / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(str(trained.weights))
        tokenizer.chat_template = chat_template_text(cfg.model.chat_template)
        return tokenizer
    return load_tokenizer(trained.base, cfg.cache_root)


def _evaluation(ctx: JobContext, train_stage: str) -> tuple[list[tuple[str, ...]], str | None]:
    """The scores table of the evaluate stage this one reads, if it evaluated this train stage."""
    from kazhpc.evaluation.results import score_rows

    folder = ctx.upstream_dir("evaluate")
    if folder is None:
        return [], None
    manifest = ctx.manifest_of("evaluate")
    if manifest.get("upstream", {}).get("train") != train_stage:
        log.warning("%s: %s evaluated another train stage's model; the card has no evaluation table", ctx.job_dir.name, folder.name)
        return [], None
    return score_rows(manifest), folder.name


def training_datasets(run_dir: Path, train_dir: Path) -> list[dict[str, Any]]:
    """The data sets a train stage was trained on, and those of the train stages it continued
    (CPT, then SFT), as MLflow dataset records: sources, splits, blocks, held-out sets."""
    from kazhpc.corpus_job import corpus_datasets
    from kazhpc.jobspec import read_manifest
    from kazhpc.preprocess import source_datasets, split_datasets

    records: list[dict[str, Any]] = []
    stage: Path | None = train_dir
    while stage is not None:
        upstream = read_manifest(stage).get("upstream", {})
        if "preprocess" in upstream:
            folder = run_dir / upstream["preprocess"]
            manifest = read_manifest(folder)
            records += source_datasets(manifest)
            records += split_datasets(folder, manifest, {"train": "training", "validation": "validation"})
        if "corpus" in upstream:
            folder = run_dir / upstream["corpus"]
            records += corpus_datasets(folder, read_manifest(folder), "training", "evaluation", sources=True)
        stage = run_dir / upstream["train"] if "train" in upstream else None
    unique = {(r["name"], r["digest"], r["context"]): r for r in records}
    return list(unique.values())


def _checked(ctx: JobContext, out: Any, gguf: dict[str, Any] | None, texts: list[str], reference: dict[str, Any]) -> dict[str, Any]:
    """The fresh-process check, compared with the adapter's own score; KazhpcError beyond the tolerances."""
    from kazhpc.export.check import run_check

    ex = ctx.cfg.export
    result = run_check(out, out.parent / gguf["path"] if gguf else None, texts, ex.check_max_length, ctx.job_dir / "check")
    check = {"texts": ex.check_texts, "passages": len(texts), "tolerance": ex.check_tolerance,
             "reference_bits_per_char": reference["bits_per_char"],
             "export_bits_per_char": result["folder"]["score"]["bits_per_char"],
             "dtype": result["folder"]["dtype"], "chat_template": result["folder"]["chat_template"],
             "answer": result["folder"]["answer"]}
    gap = check["export_bits_per_char"] - check["reference_bits_per_char"]
    log.info("reload check: adapter %.4f, export %.4f bits/char (%+.4f)", check["reference_bits_per_char"], check["export_bits_per_char"], gap)
    if abs(gap) > ex.check_tolerance:
        raise KazhpcError(f"export check: the reloaded model scores {check['export_bits_per_char']:.4f} bits/char, the adapter "
                          f"{check['reference_bits_per_char']:.4f} ({gap:+.4f}, tolerance {ex.check_tolerance}); the export is in {out} for inspection")
    if gguf:
        check["gguf_bits_per_char"] = result["gguf"]["score"]["bits_per_char"]
        gguf_gap = check["gguf_bits_per_char"] - check["export_bits_per_char"]
        log.info("GGUF check: %.4f bits/char (%+.4f against the export)", check["gguf_bits_per_char"], gguf_gap)
        if abs(gguf_gap) > ex.gguf_tolerance:
            raise KazhpcError(f"export check: the GGUF file ({gguf['outtype']}) scores {check['gguf_bits_per_char']:.4f} bits/char, the "
                              f"export {check['export_bits_per_char']:.4f} ({gguf_gap:+.4f}, export.gguf_tolerance {ex.gguf_tolerance})")
    return check


def run(ctx: JobContext) -> dict[str, Any]:
    from kazhpc.evaluation.perplexity import read_passages, score_texts
    from kazhpc.export.card import model_card
    from kazhpc.export.merge import load_unmerged, merge, save_model, trained_model
    from kazhpc.models import local_checkpoint

    cfg, ex = ctx.cfg, ctx.cfg.export
    train_dir = ctx.upstream_dir("train")
    assert train_dir is not None  # the config requires a train stage before export
    train = ctx.manifest_of("train")
    trained = trained_model(cfg.model, train_dir, train)
    texts = read_passages(ex.check_texts, "export.check_texts")[0][: ex.check_passages]
    datasets = training_datasets(ctx.run_dir, train_dir)
    for record in datasets:
        ctx.tracking.log_dataset(record)

    base_dir = local_checkpoint(trained.base, cfg.cache_root)
    if ex.gguf != "none":  # before any model loads: the base's architecture and tokenizer decide
        from kazhpc.export.gguf import unsupported_reason

        reason = unsupported_reason(Path(base_dir))
        if reason:
            raise KazhpcError(f"export.gguf: {ex.gguf}: {reason}")
    out = ctx.job_dir / "model"
    shutil.rmtree(out, ignore_errors=True)  # never a folder mixing this export with an earlier one
    tokenizer = _tokenizer(cfg, trained)
    model = load_unmerged(trained, ex.dtype, cfg.cache_root)
    reference = score_texts(model, tokenizer, texts, max_length=ex.check_max_length).to_dict()
    model = merge(model)
    files = save_model(model, tokenizer, base_dir, out)

    gguf = None
    if ex.gguf != "none":
        from kazhpc.export.gguf import write_gguf

        gguf = write_gguf(out, ctx.job_dir / f"{cfg.name}-{train_dir.name}.{ex.gguf}.gguf", ex.gguf)
        gguf["path"] = str(gguf["path"]).removeprefix(str(ctx.job_dir) + "/")
    check = _checked(ctx, out, gguf, texts, reference)

    scores, evaluated_in = _evaluation(ctx, train_dir.name)
    new_tokens = int(train.get("new_token_rows_trained") or 0)
    card = model_card(name=f"{cfg.name}-{train_dir.name}", base=cfg.model.source, revision=cfg.model.revision, train=train,
                      train_section=cfg.section_of(train_dir.name).model_dump(mode="json"), datasets=datasets, scores=scores,
                      evaluated_in=evaluated_in, check=check, gguf=gguf, config_hash=cfg.config_hash(), new_tokens=new_tokens)
    (out / "README.md").write_text(card, encoding="utf-8")
    files["README.md"] = (out / "README.md").stat().st_size
    (ctx.job_dir / "export.md").write_text(_summary(out, check, gguf), encoding="utf-8")

    manifest: dict[str, Any] = {
        "export_dir": str(out), "files": files, "dtype": ex.dtype, "train_stage": train_dir.name,
        "adapter": str(trained.adapter) if trained.adapter else None, "base_model": trained.base.source,
        "new_tokens": new_tokens, "check": check, "gguf": gguf, "evaluated_in": evaluated_in,
    }
    ctx.tracking.log_metrics({"export_bits_per_char": check["export_bits_per_char"],
                              "adapter_bits_per_char": check["reference_bits_per_char"],
                              **({"gguf_bits_per_char": check["gguf_bits_per_char"]} if gguf else {})})
    manifest["mlflow_model"] = _register(ctx, model, tokenizer, card, train, datasets, check, scores)
    if ex.push_to_hub:
        from kazhpc.export.hub import push

        manifest["hub"] = push(out, ex.push_to_hub, ex.private, f"kazhpc export of {cfg.name}/{train_dir.name} (config {cfg.config_hash()})")
    return manifest


def _summary(out: Any, check: dict[str, Any], gguf: dict[str, Any] | None) -> str:
    lines = [f"exported model: {out}",
             f"reload check: adapter {check['reference_bits_per_char']:.4f}, export {check['export_bits_per_char']:.4f} bits/char "
             f"on {check['passages']} passages (tolerance {check['tolerance']})"]
    if gguf:
        lines.append(f"GGUF ({gguf['outtype']}): {out.parent / gguf['path']}, {check['gguf_bits_per_char']:.4f} bits/char")
    return "\n".join(lines) + "\n"


def _register(ctx: JobContext, model: Any, tokenizer: Any, card: str, train: dict[str, Any], datasets: list[dict[str, Any]],
              check: dict[str, Any], scores: list[tuple[str, ...]]) -> dict[str, str] | None:
    """The export as an MLflow transformers model (kazhpc.tracking.lineage.save_merged_model),
    registered as a version of kazhpc-<pipeline> beside the adapters, with the data
    digests, the check and the adapter's scores as tags."""
    cfg = ctx.cfg
    if not (ctx.tracking.active and cfg.tracking.register_models and cfg.export.register_model):
        return None
    from kazhpc.tracking.lineage import save_merged_model

    folder = save_merged_model(model, tokenizer, ctx.job_dir / "mlflow-model", card)
    tags: dict[str, Any] = {
        "base_model": cfg.model.source, "pipeline": cfg.name, "stage": ctx.job_dir.name, "exported_from": train.get("stage", ""),
        "dtype": cfg.export.dtype, "config_hash": cfg.config_hash(), "check.bits_per_char": f"{check['export_bits_per_char']:.4f}",
        "check.adapter_bits_per_char": f"{check['reference_bits_per_char']:.4f}",
        **{f"data.{r['name']}": r["digest"] for r in datasets},
        **{f"evaluated.{row[0]}.{row[1]}": row[3].split(" ")[0] for row in scores},
    }
    return ctx.tracking.log_model(f"kazhpc-{cfg.name}", folder, tags, model_type="merged")
