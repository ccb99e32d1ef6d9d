"""What a train stage starts from: the model (the extend-vocab stage's, when it reads one), the
adapter (an earlier train stage's, when it reads one: CPT then SFT goes on training one adapter)
and its data (the preprocess stage's Parquet).

A train stage that reads an earlier train stage loads that adapter trainable and trains it further;
its own ``train.lora`` is not used (the adapter keeps the shape it was made with), and the base it
was trained on must be the base this stage loads. After a stage that trained every weight
(``train.method: full``), its saved model is the base, and a new adapter is trained on it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError, read_json_file

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext

log = logging.getLogger(__name__)

#: The job type whose model and tokenizer a train stage fine-tunes when it reads one.
EXTEND_JOB = "extend-vocab"


def extended_model_for_training(ctx: JobContext) -> tuple[PipelineConfig, list[int]]:
    """The config the train stage should use, and the token ids to train as whole rows.

    When the stage reads an ``extend-vocab`` stage, it fine-tunes that stage's saved model and
    tokenizer (``<run>/<stage>/model``), with the new rows trainable; otherwise the config's model,
    unchanged, and no extra rows.
    """
    cfg = ctx.cfg
    trained = fully_trained_model(ctx)
    if trained is not None:  # an earlier train stage trained every weight: start from its model
        model = cfg.model.model_copy(update={"source": str(trained), "revision": None})
        return cfg.model_copy(update={"model": model}), []
    folder = ctx.upstream_dir(EXTEND_JOB)
    if folder is None:
        return cfg, []
    manifest = ctx.manifest_of(EXTEND_JOB)
    model_dir = folder / manifest["model"]["path"]
    if not (model_dir / "config.json").is_file():
        raise KazhpcError(f"{model_dir}: the {folder.name} stage's model is missing")
    first, count = manifest["tokenizer"]["first_new_id"], manifest["tokenizer"]["new_tokens"]
    model = cfg.model.model_copy(update={"source": str(model_dir), "revision": None})
    return cfg.model_copy(update={"model": model}), list(range(first, first + count))


def fully_trained_model(ctx: JobContext) -> Path | None:
    """The model an earlier train stage this one reads trained in full (``train.method: full``), or None."""
    folder = ctx.upstream_dir("train")
    if folder is None:
        return None
    manifest = ctx.manifest_of("train")
    if not manifest.get("model"):
        return None
    model = Path(manifest["model"])
    if not (model / "config.json").is_file():
        raise KazhpcError(f"{model}: the {folder.name} stage's trained model is missing (no config.json)")
    return model


def earlier_adapter(ctx: JobContext, base_source: str) -> Path | None:
    """The adapter of the earlier train stage this one goes on training, or None (a new one, also
    after a stage that trained every weight: its model is then this stage's base)."""
    folder = ctx.upstream_dir("train")
    if folder is None or fully_trained_model(ctx) is not None:
        return None
    manifest = ctx.manifest_of("train")
    adapter = Path(manifest["adapter"])
    if not (adapter / "adapter_config.json").is_file():
        raise KazhpcError(f"{adapter}: the {folder.name} stage's adapter is missing (no adapter_config.json)")
    made = read_json_file(adapter / "adapter_config.json", f"the {folder.name} stage's adapter config")
    lora = ctx.cfg.train.lora
    if (made.get("r"), made.get("lora_alpha")) != (lora.r, lora.alpha):
        log.warning("%s: goes on training %s's adapter as it was made (r=%s, alpha=%s); train.lora (r=%s, alpha=%s) is not used",
                    ctx.job_dir.name, folder.name, made.get("r"), made.get("lora_alpha"), lora.r, lora.alpha)
    if manifest.get("base_model") != base_source:
        raise KazhpcError(
            f"{ctx.job_dir.name}: the {folder.name} stage's adapter was trained on {manifest.get('base_model')}, "
            f"but this stage loads {base_source}; read the same extend-vocab stage in both (stages.*.uses)"
        )
    return adapter


def continue_adapter(model: Any, adapter: Path) -> Any:
    """``model`` with ``adapter`` loaded trainable: what trl's ``get_peft_model`` makes of a new
    LoRA config, so both ways of starting train alike (trl 1.x prepares neither for k-bit)."""
    from peft import PeftModel

    log.info("going on training the adapter in %s", adapter)
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)


def training_data(ctx: JobContext) -> tuple[Any, Any | None]:
    """The preprocess stage's train and validation splits (the `messages` column only)."""
    from datasets import load_dataset

    manifest = ctx.manifest_of("preprocess")
    folder = ctx.upstream_dir("preprocess")
    assert folder is not None  # manifest_of raised otherwise
    files: dict[str, list[str]] = {"train": [], "validation": []}
    for output in manifest["outputs"]:
        split = output["path"].split("-", 1)[0]
        files[split].append(str(folder / output["path"]))
    if not files["train"] or manifest["counts"]["train_rows"] == 0:
        raise KazhpcError(f"{folder}: the preprocess job produced no training rows")
    train = load_dataset("parquet", data_files=files["train"], split="train").select_columns(["messages"])
    validation = None
    if files["validation"] and manifest["counts"]["validation_rows"]:
        validation = load_dataset("parquet", data_files=files["validation"], split="train").select_columns(["messages"])
    return train, validation
