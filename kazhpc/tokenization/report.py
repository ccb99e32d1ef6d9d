"""Fertility and parity of any set of tokenizers on a corpus: the Kazakh "tokenizer tax".

Kazakh is agglutinative: one word carries a stem and a chain of suffixes (``Қазақстан-ның``,
``оқы-т-ып жатыр``), and multilingual tokenizers cut such a word into 3–5 pieces, so the same
content costs more context, compute and money than in English. This module measures that cost.

Reading a corpus (:func:`read_corpus`)
--------------------------------------
* ``text``: one passage per line.
* ``jsonl``: one JSON object per line; the passage is the string in ``field``.
* ``iob2`` (KazNERD): ``token TAG`` per line, a blank line between sentences; a sentence is its
  tokens joined by single spaces (as the reference project did).
* ``parallel``: JSONL rows or a CSV with a header whose language columns (``kk``, ``en``, ``ru``,
  ``tr``; any subset, ``kk`` required) hold translations of one another, row by row.
* ``auto`` (default): ``.csv`` → parallel; ``.jsonl``/``.json`` → jsonl when a ``field`` is given,
  else parallel; anything else → iob2 when its first lines look like ``token TAG``, else text.

Every passage is stripped of surrounding whitespace and empty ones are skipped. The only
normalisation is Unicode NFC (:func:`kazhpc.data.text.nfc`): the same letters, composed, as the
preprocess job writes them; nothing else is changed (no look-alike fixes, no lower-casing).

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

Bad input fails early, in one line: an empty corpus, a parallel file without a ``kk`` column, a
tokenizer that cannot be loaded, and a corpus whose ``kk`` texts are mostly not Kazakh (lingua,
:class:`kazhpc.data.langid.LanguageIdentifier`, on up to 1,000 evenly spaced texts).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from kazhpc.data.text import nfc, word_count
from kazhpc.errors import KazhpcError, jsonl_objects, read_user_text
from kazhpc.tokenization.offline import TokenizerAdapter, load_tokenizer_by_name

__all__ = [
    "DEFINITIONS",
    "LANGUAGES",
    "Corpus",
    "CorpusSpec",
    "Metrics",
    "flat_metrics",
    "language_shares",
    "measure",
    "normalize",
    "parity",
    "read_corpus",
    "tokenizer_report",
]

#: The languages a parallel corpus may hold, in report order.
LANGUAGES: tuple[str, ...] = ("kk", "en", "ru", "tr")
CorpusFormat = Literal["auto", "text", "jsonl", "iob2", "parallel"]
_IOB2_TAG = re.compile(r"^(?:O|[BIES]-\S+)$")
_LANGID_SAMPLE = 1000
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
# Corpora


def normalize(text: str) -> str:
    """The one text normalisation of the tokenizer report: NFC, nothing else."""
    return nfc(text)[0]


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus is and how to read it; the fields a config section holds.

    ``language`` is the language of a monolingual corpus (``text``/``jsonl``/``iob2``).
    ``max_texts`` keeps only the first rows (a quick look at a large corpus).
    """

    path: Path
    format: CorpusFormat = "auto"
    field: str | None = None
    name: str | None = None
    language: str = "kk"
    max_texts: int | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.path).name


@dataclass
class Corpus:
    """Passages by language. For a parallel corpus the lists are aligned rows, "" where absent."""

    name: str
    path: str
    format: str
    columns: dict[str, list[str]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return max((len(v) for v in self.columns.values()), default=0)

    def texts(self, language: str) -> list[str]:
        return [t for t in self.columns.get(language, []) if t]


def _clean(value: object, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise KazhpcError(f"{where}: expected a string, got {type(value).__name__}")
    return normalize(value.strip())


def _looks_like_iob2(text: str) -> bool:
    lines = [line for line in text.splitlines()[:200] if line.strip()]
    if not lines:
        return False
    return all(len(p := line.split()) >= 2 and _IOB2_TAG.match(p[-1]) for line in lines)


def _detect_format(spec: CorpusSpec, text: str) -> str:
    suffix = Path(spec.path).suffix.lower()
    if suffix == ".csv":
        return "parallel"
    if suffix in (".jsonl", ".json"):
        return "jsonl" if spec.field else "parallel"
    return "iob2" if _looks_like_iob2(text) else "text"


def read_corpus(spec: CorpusSpec, languages: Iterable[str] = LANGUAGES) -> Corpus:
    """Read and normalise a corpus; raise KazhpcError naming the file for anything unusable."""
    path = Path(spec.path)
    if spec.language not in LANGUAGES:
        raise KazhpcError(f"{path}: corpus language '{spec.language}' is not one of {', '.join(LANGUAGES)}")
    text = read_user_text(path, "corpus")
    if text.startswith("\ufeff"):
        text = text[1:]
    fmt = _detect_format(spec, text) if spec.format == "auto" else spec.format
    corpus = Corpus(spec.label, str(path), fmt)
    wanted = [lang for lang in LANGUAGES if lang in set(languages)]
    if fmt == "text":
        corpus.columns[spec.language] = [t for t in (_clean(line, str(path)) for line in text.splitlines()) if t]
    elif fmt == "jsonl":
        if not spec.field:
            raise KazhpcError(f"{path}: a jsonl corpus needs a field (the key that holds the text)")
        texts, seen_keys, found = [], set(), False
        for number, row in jsonl_objects(text.splitlines(), path):
            seen_keys.update(row)
            if spec.field in row:
                found = True
                value = _clean(row[spec.field], f"{path}:{number}: field '{spec.field}'")
                if value:
                    texts.append(value)
        if seen_keys and not found:
            raise KazhpcError(
                f"{path}: no row has the field '{spec.field}' (fields: {', '.join(sorted(seen_keys))})"
            )
        corpus.columns[spec.language] = texts
    elif fmt == "iob2":
        corpus.columns[spec.language] = _read_iob2(text, path)
    elif fmt == "parallel":
        corpus.columns = _read_parallel(text, path, wanted)
    else:
        raise KazhpcError(f"{path}: unknown corpus format '{fmt}'; expected auto, text, jsonl, iob2 or parallel")
    if spec.max_texts is not None:
        corpus.columns = {k: v[: spec.max_texts] for k, v in corpus.columns.items()}
    if not any(corpus.texts(lang) for lang in corpus.columns):
        raise KazhpcError(f"corpus {corpus.name} ({path}): no text to measure ({fmt} format)")
    return corpus


def _read_iob2(text: str, path: Path) -> list[str]:
    sentences, current = [], []
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            if current:
                sentences.append(normalize(" ".join(current)))
                current = []
            continue
        if parts[0] == "-DOCSTART-":
            continue
        if len(parts) < 2 or not _IOB2_TAG.match(parts[-1]):
            raise KazhpcError(f"{path}:{number}: not IOB2 (expected 'token TAG', got {line.strip()[:60]!r})")
        current.append(parts[0])
    if current:
        sentences.append(normalize(" ".join(current)))
    return sentences


def _read_parallel(text: str, path: Path, wanted: list[str]) -> dict[str, list[str]]:
    rows: list[tuple[str, dict]] = []
    columns: list[str] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip() for c in reader.fieldnames or []]
        for number, row in enumerate(reader, 2):
            rows.append((f"{path}:{number}", {(k or "").strip(): v for k, v in row.items()}))
    else:
        for number, row in jsonl_objects(text.splitlines(), path):
            columns.extend(k for k in row if k not in columns)
            rows.append((f"{path}:{number}", row))
    if "kk" not in columns:
        raise KazhpcError(
            f"{path}: no 'kk' column; a parallel corpus needs the Kazakh side "
            f"(columns: {', '.join(columns) or 'none'})"
        )
    present = [lang for lang in wanted if lang in columns]
    if "kk" not in present:
        present.insert(0, "kk")
    out: dict[str, list[str]] = {lang: [] for lang in present}
    for where, row in rows:
        for lang in present:
            out[lang].append(_clean(row.get(lang), f"{where}: column '{lang}'"))
    return out


# --------------------------------------------------------------------------------------------
# Language check


def language_shares(texts: list[str], identifier=None, sample: int = _LANGID_SAMPLE) -> dict[str, float | int]:
    """Lingua's verdict on up to ``sample`` evenly spaced texts: share per language, and ``checked``.

    Shares are over the texts long enough to identify (15+ letters); ``und`` is lingua's "none of
    kk/ru/en/tr". Returns ``{"checked": 0}`` when no text is long enough.
    """
    from kazhpc.data.langid import LanguageIdentifier

    identifier = identifier or LanguageIdentifier(LANGUAGES)
    if len(texts) > sample:
        texts = [texts[(i * len(texts)) // sample] for i in range(sample)]
    results = [r for r in identifier.detect_many(texts) if not r.short]
    counts = Counter(r.language or "und" for r in results)
    shares: dict[str, float | int] = {"checked": len(results)}
    for lang, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        shares[lang] = round(n / len(results), 4)
    return shares


def _check_kazakh(corpus: Corpus, shares: dict[str, float | int], min_share: float) -> None:
    checked = int(shares.get("checked", 0))
    if not checked:
        return
    kk = float(shares.get("kk", 0.0))
    if kk >= min_share:
        return
    others = sorted(((k, float(v)) for k, v in shares.items() if k not in ("checked", "kk")), key=lambda kv: -kv[1])
    top = f" ({others[0][0]} {others[0][1]:.0%})" if others else ""
    raise KazhpcError(
        f"corpus {corpus.name}: only {kk:.0%} of the kk texts are Kazakh{top}; "
        f"lingua checked {checked} texts of {corpus.path}"
    )


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

    ``texts`` are measured as given (normalise them with :func:`normalize` first; the corpus
    readers do). Each distinct word is tokenized once, in isolation, for the ≥3-piece share.
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


def _split_example(adapter: TokenizerAdapter, word: str) -> dict[str, str | int]:
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


# --------------------------------------------------------------------------------------------
# Report

_COLUMNS = [
    "tokenizer", "language", "texts", "words", "tokens", "fertility", "tokens_per_space_token",
    "chars_per_token", "bytes_per_token", "split3_share", "isolated_pieces_per_word", "unk_rate",
    "unk_note", "parity_kk", "parity_rows", "vocab_size",
]  # fmt: skip


def _round(value: float, digits: int = 4) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(value, digits)


def tokenizer_report(
    specs: list[str],
    corpus: CorpusSpec | str | Path,
    out_dir: Path,
    cache_root: Path,
    languages: Iterable[str] = LANGUAGES,
    *,
    add_special_tokens: bool = False,
    check_language: bool = True,
    min_kk_share: float = 0.5,
    examples: int = 5,
) -> dict:
    """Measure every tokenizer on every language of ``corpus``; write the report into ``out_dir``.

    Writes ``tokenizers.md`` (table, definitions, example splits), ``tokenizers.csv`` (one row per
    tokenizer × language), ``tokenizers.json`` (the returned dict) and ``fertility.png``. Rows are
    in the order of ``specs``, then kk, en, ru, tr. Returns ``{"corpus", "add_special_tokens",
    "definitions", "tokenizers": {spec: {..., "languages": {lang: metrics}, "parity": {lang: x}}},
    "rows", "examples"}``.
    """
    spec = corpus if isinstance(corpus, CorpusSpec) else CorpusSpec(Path(corpus))
    specs = [s.strip() for s in specs]
    if not specs:
        raise KazhpcError("tokenizer report: no tokenizers given")
    repeated = sorted({s for s in specs if specs.count(s) > 1})
    if repeated:
        raise KazhpcError(f"tokenizer report: tokenizer '{repeated[0]}' listed twice")
    unknown_langs = [lang for lang in languages if lang not in LANGUAGES]
    if unknown_langs:
        raise KazhpcError(f"tokenizer report: unknown language '{unknown_langs[0]}'; expected some of {', '.join(LANGUAGES)}")

    data = read_corpus(spec, languages)
    langs = [lang for lang in LANGUAGES if lang in data.columns and data.texts(lang)]
    langid: dict[str, dict] = {}
    if check_language:
        from kazhpc.data.langid import LanguageIdentifier

        identifier = LanguageIdentifier(LANGUAGES)
        for lang in langs:
            langid[lang] = language_shares(data.texts(lang), identifier)
        if "kk" in langid:
            _check_kazakh(data, langid["kk"], min_kk_share)

    adapters = [load_tokenizer_by_name(s, cache_root) for s in specs]  # all load before any measuring

    results: dict = {
        "corpus": {
            "name": data.name, "path": data.path, "format": data.format, "rows": data.rows,
            "texts": {lang: len(data.texts(lang)) for lang in langs}, "langid": langid,
        },
        "add_special_tokens": add_special_tokens,
        "definitions": DEFINITIONS,
        "tokenizers": {},
        "rows": [],
        "examples": {},
    }  # fmt: skip
    kk_words = Counter(w for t in data.texts("kk") for w in t.split() if word_count(w) == 1)
    example_words = [
        w for w, _ in sorted(kk_words.items(), key=lambda kv: (-kv[1], kv[0])) if sum(c.isalpha() for c in w) >= 8
    ][:examples]

    for name, adapter in zip(specs, adapters):
        per_lang = {lang: measure(adapter, data.texts(lang), add_special_tokens=add_special_tokens) for lang in langs}
        parities: dict[str, dict[str, float | int | None]] = {}
        if data.format == "parallel" and "kk" in langs:
            for lang in langs:
                if lang != "kk":
                    value, rows = parity(adapter, data.columns["kk"], data.columns[lang])
                    parities[lang] = {"value": _round(value), "rows": rows}
        results["tokenizers"][name] = {
            "vocab_size": adapter.vocab_size, "bos_id": adapter.bos_id, "unk_id": adapter.unk_id,
            "special_ids": list(adapter.special_ids), "byte_level": adapter.byte_level, "source": adapter.source,
            "languages": {lang: {k: _round(v) if isinstance(v, float) else v for k, v in m.as_dict().items()}
                          for lang, m in per_lang.items()},
            "parity": {lang: p["value"] for lang, p in parities.items()},
        }  # fmt: skip
        for lang, m in per_lang.items():
            note = "" if m.has_unk else ("byte-level" if adapter.byte_level else "no unk token")
            results["rows"].append({
                "tokenizer": name, "language": lang, "texts": m.texts, "words": m.words, "tokens": m.tokens,
                "fertility": _round(m.fertility), "tokens_per_space_token": _round(m.tokens_per_space_token),
                "chars_per_token": _round(m.chars_per_token), "bytes_per_token": _round(m.bytes_per_token),
                "split3_share": _round(m.split3_share), "isolated_pieces_per_word": _round(m.isolated_pieces_per_word),
                "unk_rate": _round(m.unk_rate, 6), "unk_note": note,
                "parity_kk": parities.get(lang, {}).get("value"), "parity_rows": parities.get(lang, {}).get("rows"),
                "vocab_size": adapter.vocab_size,
            })  # fmt: skip
        results["examples"][name] = {w: _split_example(adapter, w) for w in example_words}

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(results["rows"], out_dir / "tokenizers.csv")
    (out_dir / "tokenizers.md").write_text(_markdown(results, langs), encoding="utf-8")
    (out_dir / "tokenizers.json").write_text(
        json.dumps(results, ensure_ascii=False, indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    _plot(results, specs, langs, out_dir / "fertility.png")
    return results


def _write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row[k] is None else row[k]) for k in _COLUMNS})


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _markdown(results: dict, langs: list[str]) -> str:
    corpus = results["corpus"]
    special = "with" if results["add_special_tokens"] else "without"
    lines = [
        f"# Tokenizer fertility on {corpus['name']}",
        "",
        f"Corpus: `{corpus['path']}` ({corpus['format']}, "
        + ", ".join(f"{n} {lang} texts" for lang, n in corpus["texts"].items())
        + f"). Tokens counted {special} special tokens.",
        "",
        "| tokenizer | lang | words | tokens | tokens/word | tokens/ws-token | chars/token | bytes/token "
        "| words ≥3 pieces | unk rate | parity kk/lang | vocab |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in results["rows"]:
        unk = _fmt(row["unk_rate"], ".4f") if not row["unk_note"] else f"0 ({row['unk_note']})"
        lines.append(
            f"| {row['tokenizer']} | {row['language']} | {row['words']} | {row['tokens']} | "
            f"**{_fmt(row['fertility'])}** | {_fmt(row['tokens_per_space_token'])} | "
            f"{_fmt(row['chars_per_token'])} | {_fmt(row['bytes_per_token'])} | "
            f"{_fmt(None if row['split3_share'] is None else 100 * row['split3_share'], '.1f')}% | {unk} | "
            f"{_fmt(row['parity_kk'])} | {row['vocab_size']} |"
        )
    if corpus["langid"]:
        lines += ["", "Language identification (lingua; share of the texts long enough to identify):", ""]
        for lang, shares in corpus["langid"].items():
            detail = ", ".join(f"{k} {v:.0%}" for k, v in shares.items() if k != "checked")
            lines.append(f"- `{lang}` column: {detail or 'nothing long enough'} ({shares['checked']} checked)")
    examples = results["examples"]
    words = next(iter(examples.values()), {})
    if words:
        lines += ["", "Frequent long Kazakh words, tokenized in isolation, with their token counts (`[x]`: "
                  "several byte tokens that only together make the characters x):", "",
                  "| word | " + " | ".join(examples) + " |", "|---|" + "---|" * len(examples)]  # fmt: skip
        for word in words:
            cells = [
                f"`{examples[name][word]['pieces']}` ({examples[name][word]['tokens']})".replace("|", "\\|")
                for name in examples
            ]
            lines.append(f"| {word} | " + " | ".join(cells) + " |")
    lines += ["", "Definitions:", ""]
    lines += [f"- **{key}**: {text}" for key, text in results["definitions"].items()]
    return "\n".join(lines) + "\n"


def _plot(results: dict, specs: list[str], langs: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = {(r["tokenizer"], r["language"]): r["fertility"] for r in results["rows"]}
    width = 0.8 / max(len(langs), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(specs) + 2), 4.2), dpi=100)
    for i, lang in enumerate(langs):
        xs = [j + (i - (len(langs) - 1) / 2) * width for j in range(len(specs))]
        ys = [values.get((s, lang)) or 0.0 for s in specs]
        bars = ax.bar(xs, ys, width, label=lang)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=7, padding=2)
    ax.set_xticks(range(len(specs)), specs, rotation=20 if max(map(len, specs)) > 10 else 0, ha="center")
    ax.set_ylabel("tokens per word")
    special = "with" if results["add_special_tokens"] else "without"
    ax.set_title(f"Fertility on {results['corpus']['name']} ({special} special tokens)")
    ax.axhline(1.0, color="grey", linewidth=0.6)
    if len(langs) > 1:
        ax.legend(title="language")
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def flat_metrics(results: dict) -> dict[str, float]:
    """Numbers for MLflow: ``<tokenizer>.<lang>.fertility`` etc. and ``<tokenizer>.parity_kk_<lang>``."""
    out: dict[str, float] = {}
    for row in results["rows"]:
        prefix = f"{row['tokenizer']}.{row['language']}"
        for key in ("fertility", "tokens_per_space_token", "chars_per_token", "bytes_per_token", "split3_share", "unk_rate"):
            if row[key] is not None:
                out[f"{prefix}.{key}"] = float(row[key])
        if row["parity_kk"] is not None:
            out[f"{row['tokenizer']}.parity_kk_{row['language']}"] = float(row["parity_kk"])
    return out
