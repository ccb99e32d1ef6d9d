"""A GGUF file of a saved Gemma-3 text checkpoint, for llama.cpp and Ollama.

It follows llama.cpp's ``convert_hf_to_gguf.py`` (``Gemma3Model``), with the ``gguf`` package's
writer, tensor names and quantizers, and was checked by round trip (the file read back by
transformers gives the checkpoint's logits and token ids) rather than by reading alone:

* norms: HF's ``Gemma3RMSNorm`` computes ``x * (1 + w)``, llama.cpp ``x * w``: every
  ``*norm.weight`` is written as ``w + 1``, in float32 (as are all 1-D tensors);
* the tokenizer: Gemma's SentencePiece-style vocabulary (``tokenizer.ggml.model`` ``llama``):
  tokens in id order, control tokens (special added tokens) and user-defined ones (plain added
  tokens, and the runs of spaces, spelled with real spaces) scored -1000, byte tokens 0, and
  normal tokens scored by id (a lower id merges first). Both consumers rebuild the merges from
  that order: llama.cpp merges the best-scored adjacent pair, transformers regenerates the
  merges by token position; so a ``tokenizer.json`` whose merges are not exactly those is refused
  (:func:`unsupported_reason`): its tokenization would not survive the file;
* what llama.cpp fixes for Gemma-3 rather than reads (one full-attention layer in six, a local
  RoPE base of 10000, attention scaled by ``1/sqrt(head_dim)``) is checked, not assumed.

transformers reads back less than llama.cpp does: it ignores the RoPE scaling (linear, factor 8
on the global layers of Gemma-3 4B and larger), the final logit soft-capping and the 27B's
attention scale (it keeps query_pre_attn_scalar 256), so such files are right for llama.cpp but
score differently when transformers loads them.

Tensors are read one at a time (safetensors ``safe_open``) and streamed into the file, so a
model never sits in memory whole.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from kazhpc.errors import KazhpcError
from kazhpc.fingerprint import file_digest

__all__ = ["GGUF_TYPES", "unsupported_reason", "write_gguf"]

#: The tensor types ``export.gguf`` may name (besides ``none``).
GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")

_ELSEWHERE = "(use llama.cpp's convert_hf_to_gguf.py)"
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
_SPACE = "\u2581"  # SentencePiece's '▁'
#: llama.cpp's score for added (control and user-defined) tokens.
_ADDED_SCORE = -1000.0


@dataclass
class _Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]


@dataclass
class _Plan:
    """What is written: the config, the vocabulary, and the safetensors files to read."""

    config: dict[str, Any]
    vocab: _Vocab
    shards: list[Path]
    tensors: dict[str, Path] = field(default_factory=dict)  # checkpoint tensor name → its file


def unsupported_reason(model_dir: Path) -> str | None:
    """None if :func:`write_gguf` can convert ``model_dir``; else one line saying what and why.

    The export job asks this before writing, so that a checkpoint the file cannot describe
    faithfully (one llama.cpp would run or tokenize differently) is refused, not shipped.
    """
    try:
        _plan(Path(model_dir))
    except KazhpcError as exc:
        return str(exc)
    return None


def write_gguf(model_dir: Path, out_file: Path, outtype: str = "bf16") -> dict[str, Any]:
    """Write ``model_dir`` (a saved Gemma-3 text checkpoint) as one GGUF file ``out_file``.

    ``outtype``: the type of the 2-D weights (norms and other 1-D tensors stay float32, and a
    ``q8_0`` matrix whose rows are no multiple of 32 falls back to f16, as in llama.cpp).
    Returns ``{"path", "outtype", "tensors", "bytes", "vocab_size", "sha256"}``. The file appears
    only once complete (written beside it, then renamed).
    """
    import gguf
    import numpy as np

    if outtype not in GGUF_TYPES:
        raise KazhpcError(f"export.gguf: unknown tensor type '{outtype}'; one of {', '.join(GGUF_TYPES)} (or none)")
    model_dir, out_file = Path(model_dir), Path(out_file)
    plan = _plan(model_dir)
    qtype = getattr(gguf.GGMLQuantizationType, outtype.upper())
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]

    out_file.parent.mkdir(parents=True, exist_ok=True)
    partial = out_file.with_name(out_file.name + ".partial")
    writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GEMMA3])
    try:
        layout = _tensor_layout(plan, qtype)
        for name, (_, _, shape, tensor_type) in layout.items():
            byte_shape = gguf.quant_shape_to_byte_shape(shape, tensor_type)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=tensor_type)
        name = out_file.name.removesuffix(".gguf").removesuffix(f".{outtype}")
        _add_metadata(writer, model_dir, plan, file_type, name)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, data in _converted_tensors(layout):
            writer.write_tensor_data(data)
        writer.close()
        os.replace(partial, out_file)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return {
        "path": str(out_file), "outtype": outtype, "tensors": len(layout), "bytes": out_file.stat().st_size,
        "vocab_size": len(plan.vocab.tokens), "sha256": file_digest(out_file),
    }


# --------------------------------------------------------------------------------------------
# What can be converted.


def _plan(model_dir: Path) -> _Plan:
    config = _read_json(model_dir / "config.json")
    _check_config(config, model_dir / "config.json")
    vocab = _read_vocab(model_dir)
    shards = _shards(model_dir)
    plan = _Plan(config, vocab, shards)
    _index_tensors(plan)
    return plan


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise KazhpcError(f"{path}: not found (a GGUF file is written from a saved transformers checkpoint)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KazhpcError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise KazhpcError(f"{path}: not a JSON object")
    return data


def _check_config(config: dict[str, Any], where: Path) -> None:
    """Refuse what llama.cpp's Gemma-3 would run differently from transformers: llama.cpp fixes
    these for the architecture instead of reading them from the file."""
    model_type = config.get("model_type")
    if model_type != "gemma3_text":
        what = " (the multimodal Gemma-3; export its text model)" if model_type == "gemma3" else ""
        raise KazhpcError(f"{where}: model_type {model_type!r}{what} — kazhpc writes GGUF for Gemma-3 text models only {_ELSEWHERE}")
    architectures = config.get("architectures") or ["Gemma3ForCausalLM"]
    if architectures != ["Gemma3ForCausalLM"]:
        raise KazhpcError(f"{where}: architectures {architectures} — kazhpc writes GGUF for Gemma3ForCausalLM only {_ELSEWHERE}")
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim"):
        if not isinstance(config.get(key), int):
            raise KazhpcError(f"{where}: no integer {key}")
    layers, head_dim = config["num_hidden_layers"], config["head_dim"]
    # llama.cpp: set_swa_pattern(6), i.e. layer i is full attention iff i % 6 == 5 (as transformers' default).
    pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern", 6))
    layer_types = config.get("layer_types") or [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)
    ]
    expected = ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(layers)]
    if layer_types != expected:
        raise KazhpcError(f"{where}: layer_types other than one full-attention layer in six (5 sliding, 1 full) — "
                          "llama.cpp's Gemma-3 fixes that pattern")
    full, local = _rope(config)
    if local != {"rope_type": "default", "rope_theta": 10000.0}:
        raise KazhpcError(f"{where}: sliding-attention RoPE {local} — llama.cpp's Gemma-3 fixes it to rope_theta 10000, no scaling")
    if full["rope_type"] not in ("default", "linear"):
        raise KazhpcError(f"{where}: full-attention RoPE type {full['rope_type']!r} — kazhpc writes default or linear RoPE only")
    if full["rope_type"] == "linear" and not isinstance(full.get("factor"), (int, float)):
        raise KazhpcError(f"{where}: linear RoPE scaling without a numeric factor")
    # llama.cpp scales attention by 1/sqrt(head_dim), by 1/sqrt(hidden/heads) for the 62-layer 27B.
    scalar = config.get("query_pre_attn_scalar", 256)
    llama_cpp_scalar = config["hidden_size"] // config["num_attention_heads"] if layers == 62 else head_dim
    if scalar != llama_cpp_scalar:
        raise KazhpcError(f"{where}: query_pre_attn_scalar {scalar} — llama.cpp's Gemma-3 scales attention by "
                          f"1/sqrt({llama_cpp_scalar}) and reads no other value")
    if config.get("attn_logit_softcapping") is not None:
        raise KazhpcError(f"{where}: attn_logit_softcapping {config['attn_logit_softcapping']} — Gemma-3 in llama.cpp has none")
    activation = config.get("hidden_activation") or config.get("hidden_act") or "gelu_pytorch_tanh"
    if activation != "gelu_pytorch_tanh":
        raise KazhpcError(f"{where}: hidden_activation {activation!r} — llama.cpp's Gemma-3 uses the tanh-approximated GELU")
    if config.get("attention_bias"):
        raise KazhpcError(f"{where}: attention_bias true — llama.cpp's Gemma-3 has no attention biases")
    if config.get("use_bidirectional_attention"):
        raise KazhpcError(f"{where}: use_bidirectional_attention true (an embedding model) — not a causal LM")
    if not isinstance(config.get("sliding_window"), int):
        raise KazhpcError(f"{where}: no integer sliding_window")


def _rope(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(full-attention, sliding-attention) RoPE as ``{"rope_type", "rope_theta"[, "factor"]}``,
    from transformers 5's ``rope_parameters`` or the older rope_theta / rope_local_base_freq / rope_scaling."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params:
        full, local = dict(params["full_attention"]), dict(params.get("sliding_attention") or {})
    else:
        scaling = config.get("rope_scaling") or {}
        full = {"rope_type": scaling.get("rope_type", scaling.get("type", "default")),
                "rope_theta": config.get("rope_theta", 1_000_000.0), **({"factor": scaling["factor"]} if "factor" in scaling else {})}
        local = {"rope_type": "default", "rope_theta": config.get("rope_local_base_freq", 10_000.0)}
    local = {"rope_type": local.get("rope_type", "default"), "rope_theta": float(local.get("rope_theta", 10_000.0)),
             **{k: v for k, v in local.items() if k not in ("rope_type", "rope_theta")}}
    full.setdefault("rope_type", "default")
    full["rope_theta"] = float(full.get("rope_theta", 1_000_000.0))
    return full, local


def _read_vocab(model_dir: Path) -> _Vocab:
    """Gemma's vocabulary as llama.cpp's SentencePiece converter writes it (see the module docstring)."""
    where = model_dir / "tokenizer.json"
    spec = _read_json(where)
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise KazhpcError(f"{where}: a {model.get('type')} model{'' if model.get('byte_fallback') else ' without byte fallback'} — "
                          "the GGUF's SentencePiece tokenizer is Gemma's BPE with byte fallback")
    normalizer = spec.get("normalizer") or {}
    if normalizer.get("type") == "Sequence" and len(normalizer.get("normalizers") or []) == 1:
        normalizer = normalizer["normalizers"][0]
    if not (normalizer.get("type") == "Replace" and normalizer.get("pattern") == {"String": " "} and normalizer.get("content") == _SPACE):
        raise KazhpcError(f"{where}: normalizer {json.dumps(normalizer)[:80]} — the GGUF's tokenizer only replaces "
                          "spaces by '▁' (Gemma-3's, no prefix space)")
    vocab: dict[str, int] = model.get("vocab") or {}
    added = {t["id"]: t for t in spec.get("added_tokens") or []}
    size = max([*vocab.values(), *added], default=-1) + 1
    text: list[str | None] = [None] * size
    for token, i in vocab.items():
        text[i] = token
    for i, t in added.items():
        if text[i] is not None and text[i] != t["content"]:
            raise KazhpcError(f"{where}: id {i} is both {text[i]!r} and the added token {t['content']!r}")
        text[i] = t["content"]
    if None in text:
        raise KazhpcError(f"{where}: token ids are not 0..{size - 1} (id {text.index(None)} is missing)")
    _check_merges(where, {token: i for i, token in enumerate(text)}, model.get("merges") or [])

    import gguf

    tokens, scores, types = [], [], []
    rank = 0
    for i, token in enumerate(text):
        assert token is not None
        if i in added and added[i].get("special"):
            kind, score = gguf.TokenType.CONTROL, _ADDED_SCORE
        elif i in added or (len(token) > 1 and token == _SPACE * len(token)):
            # A plain added token, or a run of spaces (Gemma's SentencePiece model declares those
            # user-defined): llama.cpp matches them whole in the raw text, spelled with spaces.
            kind, score, token = gguf.TokenType.USER_DEFINED, _ADDED_SCORE, token.replace(_SPACE, " ")
        elif _BYTE_TOKEN.match(token):
            kind, score = gguf.TokenType.BYTE, 0.0
        elif token == model.get("unk_token"):
            kind, score = gguf.TokenType.UNKNOWN, 0.0
        else:
            kind, score, rank = gguf.TokenType.NORMAL, -float(rank), rank + 1
        tokens.append(token)
        scores.append(score)
        types.append(int(kind))
    return _Vocab(tokens, scores, types)


def _check_merges(where: Path, ids: dict[str, int], merges: list[Any]) -> None:
    """The GGUF carries no merges: llama.cpp and transformers both take as merges every split of
    a token into two tokens, best first by the token's id (transformers' ``generate_merges`` with
    positions; for one token, the longer left part first). A tokenizer whose merges are anything
    else (e.g. extended with learnt merges appended after the base ones) could tokenize
    differently once read back: refuse it."""

    def implied() -> Iterator[tuple[str, str]]:
        for token in sorted(ids, key=ids.__getitem__):
            for k in range(len(token) - 1, 0, -1):
                if token[:k] in ids and token[k:] in ids:
                    yield token[:k], token[k:]

    actual = (tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges)
    for differ, (got, want) in enumerate(itertools.zip_longest(actual, implied())):
        if got != want:
            raise KazhpcError(
                f"{where}: its merges are not the ones a GGUF file implies (every split of each token into two, the "
                f"lower token id first; they differ from merge {differ} of {len(merges)} on, {sum(1 for _ in implied())} "
                "implied) — a vocabulary extended with merges of its own (kazhpc's extend-vocab appends them) cannot be "
                "written to GGUF exactly: llama.cpp and transformers rebuild the merges from the vocabulary and may "
                "tokenize differently"
            )


def _shards(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map") or {}
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise KazhpcError(f"{index}: names {missing[0]}, which is not in {model_dir}")
        return files
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise KazhpcError(f"{single}: not found (a GGUF file is written from safetensors weights)")
    return [single]


def _index_tensors(plan: _Plan) -> None:
    from safetensors import safe_open

    for shard in plan.shards:
        with safe_open(str(shard), framework="pt") as f:
            for name in f.keys():
                plan.tensors[name] = shard
    embed = "model.embed_tokens.weight"
    if embed not in plan.tensors:
        raise KazhpcError(f"{plan.shards[0].name}: no {embed} (not a Gemma3ForCausalLM checkpoint)")
    with safe_open(str(plan.tensors[embed]), framework="pt") as f:
        rows = f.get_slice(embed).get_shape()[0]
    if rows < len(plan.vocab.tokens):
        raise KazhpcError(f"{plan.tensors[embed].name}: {rows} embedding rows for the tokenizer's {len(plan.vocab.tokens)} tokens")


# --------------------------------------------------------------------------------------------
# Writing.


def _tensor_layout(plan: _Plan, qtype: Any) -> dict[str, tuple[str, Path, tuple[int, ...], Any]]:
    """GGUF name → (checkpoint name, file, shape, GGML type), in the order they are written."""
    import gguf
    from safetensors import safe_open

    config = plan.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3, config["num_hidden_layers"])
    tied = config.get("tie_word_embeddings", True)
    layout: dict[str, tuple[str, Path, tuple[int, ...], Any]] = {}
    for name, shard in sorted(plan.tensors.items(), key=lambda item: _order(item[0])):
        if name == "lm_head.weight" and tied:
            continue  # the embedding matrix, written once as token_embd
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise KazhpcError(f"{shard.name}: tensor {name} has no GGUF name for Gemma-3 (gguf's tensor map)")
        with safe_open(str(shard), framework="pt") as f:
            shape = tuple(f.get_slice(name).get_shape())
        if new_name in ("token_embd.weight", "output.weight"):
            shape = (len(plan.vocab.tokens), *shape[1:])  # llama.cpp drops rows past the vocabulary
        tensor_type = qtype
        if len(shape) <= 1 or new_name.endswith("_norm.weight"):
            tensor_type = gguf.GGMLQuantizationType.F32  # llama.cpp keeps 1-D tensors and norms in float32
        elif tensor_type == gguf.GGMLQuantizationType.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[tensor_type][0]:
            tensor_type = gguf.GGMLQuantizationType.F16  # llama.cpp's fallback for rows no block divides
        layout[new_name] = (name, shard, shape, tensor_type)
    return layout


def _order(name: str) -> tuple[int, int, str]:
    """Embeddings, then the layers in order, then the rest (the final norm, an untied head)."""
    found = re.match(r"model\.layers\.(\d+)\.", name)
    if name == "model.embed_tokens.weight":
        return (0, 0, name)
    return (1, int(found.group(1)), name) if found else (2, 0, name)


def _converted_tensors(layout: dict[str, tuple[str, Path, tuple[int, ...], Any]]) -> Iterator[tuple[str, Any]]:
    import gguf
    import torch
    from safetensors import safe_open

    for new_name, (name, shard, shape, tensor_type) in layout.items():
        with safe_open(str(shard), framework="pt") as f:
            data = f.get_tensor(name)
        data = data[: shape[0]] if data.shape[0] != shape[0] else data
        data = data.to(torch.float32)
        if name.endswith("norm.weight"):
            data = data + 1.0  # Gemma3RMSNorm's x * (1 + w) is llama.cpp's x * w'
        yield new_name, gguf.quants.quantize(data.numpy(), tensor_type)


def _add_metadata(writer: Any, model_dir: Path, plan: _Plan, file_type: Any, name: str) -> None:
    """llama.cpp's keys for Gemma-3. general.*: what gguf's Metadata finds (the model card's
    license, tags, languages; generation_config's sampling), named after the file (the export's
    checkpoint folder is just 'model')."""
    import gguf

    config, vocab = plan.config, plan.vocab
    total, shared, expert, experts = writer.get_total_parameter_count()
    meta = gguf.Metadata.load(None, model_dir, name, total)
    meta.size_label = meta.size_label or gguf.size_label(total, shared, expert, experts)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)

    writer.add_context_length(config.get("max_position_embeddings", 131072))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_key_length(config["head_dim"])
    writer.add_value_length(config["head_dim"])
    full, _ = _rope(config)
    writer.add_rope_freq_base(full["rope_theta"])  # the global layers'; llama.cpp fixes the local 10000
    if full["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(full["factor"])
    writer.add_sliding_window(config["sliding_window"])
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(config["final_logit_softcapping"])

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    quiet = logging.getLogger("gguf.vocab")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns that Gemma's pair template repeats <bos>: harmless
    try:
        special = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=len(vocab.tokens))
    finally:
        quiet.setLevel(level)
    special.add_special_token.setdefault("eos", False)  # the post-processor adds none (SpecialVocab only sees a trailing one)
    special.add_to_gguf(writer, quiet=True)
    writer.add_add_space_prefix(False)

    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_file_type(file_type)
