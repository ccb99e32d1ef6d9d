"""The trained model as plain weights: the adapter merged into the *unquantized* base.

QLoRA trains the adapter against a 4-bit base, but a deployable model is the adapter folded into
the base's real weights (merging into dequantized NF4 weights would bake the quantization error
in). With an extended vocabulary the base is the extend-vocab stage's model and the adapter's
trained embedding rows are merged too; after a full fine-tune the trained model is the export.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError
from kazhpc.special_text import END_OF_TURN_TOKENS

if TYPE_CHECKING:
    from kazhpc.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedModel:
    """What a train stage made: the base it trained on and its adapter, or the model it trained in full."""

    stage: str
    base: ModelConfig  # the base the adapter was trained on (an extend-vocab stage's model, if any)
    adapter: Path | None
    full_model: Path | None

    @property
    def weights(self) -> Path | None:
        """The folder whose tokenizer goes with the model (train saves it beside the adapter)."""
        return self.adapter or self.full_model


def trained_model(model_cfg: ModelConfig, train_dir: Path, manifest: dict[str, Any]) -> TrainedModel:
    """The train stage's output as its manifest names it, checked to be there."""
    if manifest.get("model"):  # train.method: full
        full = Path(manifest["model"])
        if not (full / "config.json").is_file():
            raise KazhpcError(f"{full}: the {train_dir.name} stage's trained model is missing (no config.json)")
        return TrainedModel(train_dir.name, model_cfg, None, full)
    adapter = Path(manifest["adapter"])
    if not (adapter / "adapter_config.json").is_file():
        raise KazhpcError(f"{adapter}: the {train_dir.name} stage's adapter is missing (no adapter_config.json)")
    base = model_cfg.model_copy(update={"source": manifest.get("base_model") or model_cfg.source})
    if base.source != model_cfg.source:  # an extend-vocab stage's model folder: no hub revision
        base = base.model_copy(update={"revision": None})
    return TrainedModel(train_dir.name, base, adapter, None)


def load_unmerged(trained: TrainedModel, dtype: str, cache_root: Path) -> Any:
    """The base in ``dtype`` on the CPU, unquantized, with the adapter applied by peft (not merged
    yet: the reference the export is checked against); the trained model itself after a full fine-tune."""
    from kazhpc.models import load_model

    if trained.full_model is not None:
        source = trained.base.model_copy(update={"source": str(trained.full_model), "revision": None, "dtype": dtype})
        return load_model(source, cache_root, device_map={"": "cpu"})
    from peft import PeftModel

    base = load_model(trained.base.model_copy(update={"dtype": dtype}), cache_root, device_map={"": "cpu"})
    return PeftModel.from_pretrained(base, str(trained.adapter)).eval()


def merge(model: Any) -> Any:
    """The adapter folded into the weights (a no-op for a fully trained model)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        log.info("merging the adapter into the base weights")
        return model.merge_and_unload()
    return model


def generation_config(base_dir: str, model: Any, tokenizer: Any) -> Any:
    """The base's generation config, ending at the chat template's end-of-turn marker as well as
    at <eos> (a Gemma chat answer ends with <end_of_turn>; generation would run on otherwise)."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(base_dir)
    except OSError:
        config = GenerationConfig.from_model_config(model.config)
    vocab = tokenizer.get_vocab()
    eos = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    eos = [i for i in [*eos, tokenizer.eos_token_id, *(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)] if i is not None]
    config.eos_token_id = list(dict.fromkeys(eos))
    config.bos_token_id, config.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    return config


def save_model(model: Any, tokenizer: Any, base_dir: str, out_dir: Path) -> dict[str, int]:
    """Weights (safetensors), config, generation config, tokenizer and chat template in ``out_dir``;
    returns its files and their sizes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = generation_config(base_dir, model, tokenizer)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}
