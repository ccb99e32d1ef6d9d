"""Kazakh vocabulary extension of a SentencePiece-style BPE tokenizer (Gemma-3's), done as BPE.

Why not ``tokenizer.add_tokens``: added tokens are matched in the raw text before the normaliser
and the BPE model run, so they bypass both (``Қазақстан`` becomes one token even inside
``Қазақстанның``, and a space handling that differs from the model's own pieces), and they make
tokenization depend on the order of the added list. Here the new tokens become part of the BPE
model itself: new entries in its ``vocab`` and new ``merges`` appended after the base merges.

How the new merges are learnt (continued BPE)
---------------------------------------------
A fresh Kazakh BPE starts from characters; its intermediate pieces often never appear under the
base tokenizer, whose own merges run first, so many of its tokens would be unreachable. Instead
the Kazakh training text is first tokenized by the **base** tokenizer, and BPE training continues
from those base tokens: each base token that occurs is mapped to one private-use Unicode
character, and the ``tokenizers`` library's ``BpeTrainer`` learns merges over those characters.
Mapped back, each learnt merge ``(a, b)`` joins two tokens that are adjacent in the base
tokenization (or results of earlier new merges), so appended after the base merges (higher ranks)
every new token is reachable exactly as during training; intermediate pieces are themselves new
tokens (they count toward K) or base tokens. A merge whose result already is a base token costs no
new id (it is added as a merge only).

The base tokenization is cut into words before training: at every token that starts with ``▁``
(a word start), and around every token that is not a piece of a word (no letter, or a digit:
punctuation, numbers, byte-fallback ``<0x..>`` tokens, special tokens). So new tokens are pieces
of words, possibly with their leading ``▁``; numbers keep Gemma's one-digit-per-token rule, and
no new token spans two words. Decoding stays exact: every new token is the concatenation of base
tokens, and the decoder (``▁`` → space, byte fallback) is unchanged.

"The K most useful" = the first K new tokens in the trainer's order (most frequent pair first);
``min_frequency`` (≥ 2) is the least number of times a pair must occur in the training text, so
the number of merges the trainer finds is what the corpus supports.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kazhpc.errors import KazhpcError

__all__ = [
    "Extension",
    "base_tokenizer_spec",
    "check_surface_form",
    "extend_spec",
    "learn_extension",
    "save_extended_tokenizer",
    "word_pieces",
]

#: Private-use code points for the base tokens during training (planes 15 and 16, then the BMP's).
_PRIVATE_RANGES = ((0xF0000, 0xFFFFE), (0x100000, 0x10FFFE), (0xE000, 0xF900))
_BYTE_TOKEN = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")
SPACE = "▁"


@dataclass
class Extension:
    """New BPE entries for a base tokenizer.

    ``merges``: appended in this order after the base merges; each is ``(left, right)`` token
    strings. ``tokens``: the new vocabulary entries, in id order (ids ``base_size + i``), each
    the result of one merge. ``pieces``: for each new token, the base tokens it was merged from
    (the base tokenizer's split of it in the training text), as base ids.
    ``supported``: how many new tokens the corpus supports at ``min_frequency``; a lower bound when
    ``supported_capped`` (the trainer stopped at the number of merges asked, not for lack of pairs).
    """

    base_size: int
    merges: list[tuple[str, str]] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    pieces: list[list[int]] = field(default_factory=list)
    supported: int = 0
    supported_capped: bool = False
    merges_to_base_tokens: int = 0

    def prefix(self, k: int) -> Extension:
        """The first ``k`` new tokens and the merges learnt up to the k-th (a smaller K)."""
        if k >= len(self.tokens):
            return self
        last = self.tokens[k - 1] if k else None
        cut = 0
        for i, (a, b) in enumerate(self.merges):
            if k and a + b == last:
                cut = i + 1
                break
        merges, tokens = self.merges[:cut], self.tokens[:k]
        new = set(tokens)
        to_base = sum(1 for a, b in merges if a + b not in new)
        return Extension(self.base_size, merges, tokens, self.pieces[:k], self.supported, self.supported_capped, to_base)


def base_tokenizer_spec(tokenizer: Any) -> dict[str, Any]:
    """The ``tokenizer.json`` content of a transformers fast tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise KazhpcError(f"{type(tokenizer).__name__}: not a fast (tokenizers) tokenizer; the extension edits tokenizer.json")
    return json.loads(backend.to_str())


def check_surface_form(spec: dict[str, Any], where: str) -> None:
    """Refuse tokenizers whose BPE this module cannot extend consistently (one line, naming why).

    Supported: a BPE model with ``▁`` for spaces (normaliser ``Replace ' '→'▁'`` or a
    ``Metaspace`` pre-tokenizer) and byte fallback: Gemma, Llama-2, Mistral-v1 style.
    """
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise KazhpcError(f"{where}: the tokenizer model is {model.get('type')}, not BPE; only a BPE vocabulary can be extended with merges")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise KazhpcError(f"{where}: BPE with subword prefixes/suffixes is not supported")
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")], ensure_ascii=False)
    if SPACE not in text:
        raise KazhpcError(
            f"{where}: the tokenizer does not write spaces as '▁' (a byte-level BPE like Llama-3's?); "
            "the extension supports SentencePiece-style BPE (Gemma)"
        )
    if not model.get("byte_fallback"):
        raise KazhpcError(f"{where}: the BPE has no byte fallback; round trips of unseen characters would fail")


def _is_word_piece(token: str) -> bool:
    body = token[1:] if token.startswith(SPACE) else token
    return bool(body) and any(c.isalpha() for c in body) and not any(c.isdigit() for c in body)


def word_pieces(spec: dict[str, Any], encodings: Iterable[list[int]]) -> tuple[list[list[list[int]]], set[int]]:
    """Cut base tokenizations into words (see the module docstring); returns, per text, its words
    as lists of base ids, and the base ids that may take part in new merges."""
    id_to_token = {i: t for t, i in spec["model"]["vocab"].items()}
    special = {t["id"] for t in spec.get("added_tokens", [])}
    usable: dict[int, bool] = {}
    out = []
    for ids in encodings:
        words: list[list[int]] = []
        current: list[int] = []
        for i in ids:
            ok = usable.get(i)
            if ok is None:
                token = id_to_token.get(i, "")
                ok = usable[i] = i not in special and not _BYTE_TOKEN.match(token) and _is_word_piece(token)
            if not ok:
                if current:
                    words.append(current)
                current = []
                continue
            if id_to_token[i].startswith(SPACE) and current:
                words.append(current)
                current = []
            current.append(i)
        if current:
            words.append(current)
        out.append(words)
    return out, {i for i, ok in usable.items() if ok}


def _private_chars(n: int) -> list[str]:
    chars: list[str] = []
    for start, end in _PRIVATE_RANGES:
        chars.extend(chr(c) for c in range(start, min(end, start + n - len(chars))))
        if len(chars) >= n:
            return chars
    raise KazhpcError(f"extension: {n} distinct base tokens in the corpus; at most {len(chars)} are supported")


def learn_extension(
    base_tokenizer: Any, texts: list[str], new_tokens: int, *, min_frequency: int = 2
) -> Extension:
    """Learn up to ``new_tokens`` new BPE tokens from Kazakh ``texts`` (see the module docstring).

    Returns everything the trainer found up to ``new_tokens`` new tokens; ``supported`` says how
    many the corpus supports (all merges found at ``min_frequency``, which may be fewer).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    spec = base_tokenizer_spec(base_tokenizer)
    vocab: dict[str, int] = spec["model"]["vocab"]
    id_to_token = {i: t for t, i in vocab.items()}
    backend = base_tokenizer.backend_tokenizer
    encodings = [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    words, usable = word_pieces(spec, encodings)
    ordered = sorted(usable)
    chars = dict(zip(ordered, _private_chars(len(ordered))))
    back = {c: i for i, c in chars.items()}
    lines = [" ".join("".join(chars[i] for i in word) for word in text) for text in words]

    # Ask for more merges than K: some results are already base tokens (no new id).
    asked = int(new_tokens * 1.2) + 100
    trainer = trainers.BpeTrainer(
        vocab_size=len(chars) + asked,
        min_frequency=min_frequency,
        show_progress=False,
        initial_alphabet=list(chars.values()),
        limit_alphabet=len(chars) + 1,
        special_tokens=[],
    )
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    learner.train_from_iterator(lines, trainer)
    learnt = json.loads(learner.to_str())["model"]["merges"]

    ext = Extension(base_size=len(vocab))
    pieces_of: dict[str, list[int]] = {}

    def pieces(symbol: str) -> list[int]:
        if len(symbol) == 1:
            return [back[symbol]]
        return pieces_of[symbol]

    total_new = 0
    for merge in learnt:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        pa, pb = pieces(a), pieces(b)
        pieces_of[a + b] = pa + pb
        left, right = "".join(id_to_token[i] for i in pa), "".join(id_to_token[i] for i in pb)
        result = left + right
        is_new = result not in vocab
        total_new += is_new
        if len(ext.tokens) < new_tokens:
            ext.merges.append((left, right))
            if is_new:
                ext.tokens.append(result)
                ext.pieces.append(pa + pb)
            else:
                ext.merges_to_base_tokens += 1
    ext.supported = total_new
    ext.supported_capped = len(learnt) >= asked
    return ext


def extend_spec(spec: dict[str, Any], ext: Extension) -> dict[str, Any]:
    """A copy of ``tokenizer.json`` content with ``ext``'s tokens and merges appended."""
    out = json.loads(json.dumps(spec))
    model = out["model"]
    vocab: dict[str, int] = model["vocab"]
    if len(vocab) != ext.base_size:
        raise KazhpcError(f"extension: learnt for a vocabulary of {ext.base_size}, applied to one of {len(vocab)}")
    ids = set(vocab.values()) | {t["id"] for t in out.get("added_tokens", [])}
    first = max(ids) + 1
    if first != ext.base_size:
        raise KazhpcError(f"extension: the base vocabulary's ids are not 0..{ext.base_size - 1}")
    for i, token in enumerate(ext.tokens):
        vocab[token] = first + i
    merges = model["merges"]
    as_strings = bool(merges) and isinstance(merges[0], str)
    merges.extend(f"{a} {b}" if as_strings else [a, b] for a, b in ext.merges)
    return out


def save_extended_tokenizer(base_tokenizer: Any, ext: Extension, out_dir: Path) -> Any:
    """Write the base tokenizer's files with the extended ``tokenizer.json`` into ``out_dir`` and
    return it reloaded by transformers (the object the training job will see)."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    base_tokenizer.save_pretrained(str(out_dir))
    spec = extend_spec(base_tokenizer_spec(base_tokenizer), ext)
    (out_dir / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    tokenizer.chat_template = base_tokenizer.chat_template
    expected = ext.base_size + len(ext.tokens)
    if len(tokenizer) != expected:
        raise KazhpcError(f"{out_dir}: the saved tokenizer has {len(tokenizer)} tokens, expected {expected}")
    return tokenizer


def backend_from_spec(spec: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` content (for measuring smaller K)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
