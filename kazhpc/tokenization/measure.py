"""Measuring one tokenizer on a list of texts: fertility, pieces per word, unknown tokens, parity.

The numbers of the tokenizer report (:mod:`kazhpc.tokenization.report`), and of the extend-vocab
job's before/after comparison, are all computed here; :data:`DEFINITIONS` says in words what each
one is, and goes into the report beside them.

Definitions (:func:`measure`)
-----------------------------
* word: :func:`kazhpc.data.text.word_count`, the one definition in kazhpc: a whitespace-separated
  token with at least one letter or digit (``—``, ``«``, ``.`` alone are not words).
* tokens: what the tokenizer makes of each passage, **without** special tokens by default;
  ``add_special_tokens=True`` adds what the model's tokenizer adds to every sequence (``<bos>``
  for Gemma, Llama and Tekken; nothing for Qwen).
* fertility = tokens / words; chars per token; UTF-8 bytes per token.
* tokens per whitespace token = tokens / ``len(text.split())``: the reference project's figure,
  which counts punctuation tokens as words. On KazNERD, whose punctuation is split off into
  tokens of its own, this is ~17% lower than fertility: Gemma-3 on the validation split gives
  2.80 with ``<bos>`` (the reference's number), 2.72 without; fertility proper is 3.39 / 3.29.
* words split into ≥3 pieces: each distinct word is tokenized **in isolation**, in the form it
  has mid-sentence: after one space (``" " + word``), without special tokens; a first token that
  is only that space (before a digit, for some tokenizers) is not counted as a piece. The share is
  over word occurrences (each distinct word is tokenized once). The leading space matters: every
  tokenizer here stores word-initial pieces with their space (``▁Қазақстан``, ``ĠҚаз``), so a bare
  ``Қазақстан`` would be cut into more, rarer pieces than the text ever shows.
* unknown-token rate: ``<unk>`` tokens / tokens, for tokenizers with an ``unk_id`` (Gemma-3,
  most transformers tokenizers). The byte-level BPEs (Llama-3/4, Qwen2.5, Tekken) have a token for
  every byte, so an unknown token cannot occur: their rate is 0 by construction.
* parity kk/X = tokens of the Kazakh side / tokens of the X side, summed over the rows where both
  sides are present, always without special tokens (they are not content).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable

from kazhpc.data.text import word_count
from kazhpc.tokenization.offline import TokenizerAdapter

__all__ = ["DEFINITIONS", "Metrics", "measure", "parity", "split_example"]

_BATCH = 2000

#: What the numbers mean; written into tokenizers.md and returned with the results.
DEFINITIONS: dict[str, str] = {
    "normalisation": "Unicode NFC only (kazhpc.data.text.nfc); passages stripped, empty ones skipped",
    "word": "kazhpc.data.text.word_count: a whitespace-separated token with at least one letter or digit",
    "tokens": "token ids of each passage; special tokens only when add_special_tokens is set "
    "(what the model's tokenizer adds to a sequence: <bos> for Gemma, Llama, Tekken; none for Qwen)",
    "fertility": "tokens / words",
    "tokens_per_space_token": "tokens / whitespace-separated tokens (punctuation tokens included): "
    "the reference project's 'tokens per word'",
    "chars_per_token": "Unicode characters / tokens",
    "bytes_per_token": "UTF-8 bytes / tokens",
    "split3_share": "share of word occurrences whose word, tokenized in isolation as it appears mid-sentence "
    "(' ' + word, no special tokens; a leading space-only token not counted), gives 3 or more pieces",
    "isolated_pieces_per_word": "mean pieces per word occurrence, each word tokenized in isolation as above",
    "unk_rate": "unknown tokens / tokens, for tokenizers with an unk id; byte-level BPEs (Llama, Qwen, "
    "Tekken) cannot produce one: 0 by construction",
    "parity": "tokens(kk) / tokens(X) over the rows where both sides are present, without special tokens",
}


# --------------------------------------------------------------------------------------------
# Measurement


@dataclass
class Metrics:
    """Counts over a list of texts for one tokenizer; the ratios are properties (see DEFINITIONS)."""

    texts: int = 0
    words: int = 0
    space_tokens: int = 0
    tokens: int = 0
    special_tokens: int = 0
    chars: int = 0
    bytes: int = 0
    distinct_words: int = 0
    words_3plus: int = 0
    isolated_pieces: int = 0
    unk_tokens: int = 0
    has_unk: bool = False

    @staticmethod
    def _ratio(a: float, b: float) -> float:
        return a / b if b else math.nan

    @property
    def fertility(self) -> float:
        return self._ratio(self.tokens, self.words)

    @property
    def tokens_per_space_token(self) -> float:
        return self._ratio(self.tokens, self.space_tokens)

    @property
    def chars_per_token(self) -> float:
        return self._ratio(self.chars, self.tokens)

    @property
    def bytes_per_token(self) -> float:
        return self._ratio(self.bytes, self.tokens)

    @property
    def split3_share(self) -> float:
        return self._ratio(self.words_3plus, self.words)

    @property
    def isolated_pieces_per_word(self) -> float:
        return self._ratio(self.isolated_pieces, self.words)

    @property
    def unk_rate(self) -> float:
        return self._ratio(self.unk_tokens, self.tokens) if self.tokens else 0.0

    def as_dict(self) -> dict[str, float | int | bool]:
        out: dict[str, float | int | bool] = asdict(self)
        for name in ("fertility", "tokens_per_space_token", "chars_per_token", "bytes_per_token",
                     "split3_share", "isolated_pieces_per_word", "unk_rate"):  # fmt: skip
            out[name] = getattr(self, name)
        return out


def _batches(texts: list[str], size: int = _BATCH) -> Iterable[list[str]]:
    for start in range(0, len(texts), size):
        yield texts[start : start + size]


def measure(adapter: TokenizerAdapter, texts: list[str], *, add_special_tokens: bool = False) -> Metrics:
    """Tokens, words, characters, bytes, ≥3-piece words and unknown tokens of ``texts``.

    ``texts`` are measured as given (normalise them with :func:`kazhpc.tokenization.corpus.normalize`
    first; the corpus readers do). Each distinct word is tokenized once, in isolation, for the ≥3-piece share.
    """
    m = Metrics(texts=len(texts), has_unk=adapter.unk_id is not None)
    words: Counter[str] = Counter()
    for batch in _batches(texts):
        for text, ids in zip(batch, adapter.encode_batch(batch)):
            m.tokens += len(ids)
            if adapter.unk_id is not None:
                m.unk_tokens += ids.count(adapter.unk_id)
            m.words += word_count(text)
            m.chars += len(text)
            m.bytes += len(text.encode("utf-8"))
            pieces = text.split()
            m.space_tokens += len(pieces)
            words.update(pieces)
    if add_special_tokens:
        m.special_tokens = len(adapter.special_ids) * len(texts)
        m.tokens += m.special_tokens
    distinct = sorted(w for w in words if word_count(w) == 1)  # the same words as word_count's
    m.distinct_words = len(distinct)
    for batch in _batches(distinct):
        for word, ids in zip(batch, _isolated(adapter, batch)):
            m.isolated_pieces += len(ids) * words[word]
            if len(ids) >= 3:
                m.words_3plus += words[word]
    return m


def _isolated(adapter: TokenizerAdapter, words: list[str]) -> list[list[int]]:
    """Token ids of each word alone, as it appears mid-sentence (after a space), without a leading
    token that is only that space."""
    out = []
    for ids in adapter.encode_batch([" " + w for w in words]):
        if ids and not adapter.decode(ids[:1]).strip():
            ids = ids[1:]
        out.append(ids)
    return out


def parity(adapter: TokenizerAdapter, kk: list[str], other: list[str]) -> tuple[float, int]:
    """tokens(kk) / tokens(other) over the aligned rows where both are non-empty; and that row count."""
    pairs = [(a, b) for a, b in zip(kk, other, strict=True) if a and b]
    if not pairs:
        return math.nan, 0
    kk_tokens = sum(len(ids) for batch in _batches([a for a, _ in pairs]) for ids in adapter.encode_batch(batch))
    other_tokens = sum(len(ids) for batch in _batches([b for _, b in pairs]) for ids in adapter.encode_batch(batch))
    return (kk_tokens / other_tokens if other_tokens else math.nan), len(pairs)


def split_example(adapter: TokenizerAdapter, word: str) -> dict[str, str | int]:
    """``{"pieces": "Қазақ|стан|ның", "tokens": 3}``; tokens that only together make whole
    characters (a byte-level BPE cutting a two-byte Cyrillic letter) show as one ``[x]``."""
    ids = _isolated(adapter, [word])[0]
    groups, start = [], 0
    for end in range(1, len(ids) + 1):
        piece = adapter.decode(ids[start:end])
        if "\ufffd" not in piece or end == len(ids):
            piece = piece.lstrip() if start == 0 else piece
            groups.append(piece if end - start == 1 else f"[{piece}]")
            start = end
    return {"pieces": "|".join(groups), "tokens": len(ids)}
