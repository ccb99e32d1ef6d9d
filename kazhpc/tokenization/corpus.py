"""The tokenizer report's corpora: a file read into passages by language, and checked to be Kazakh.

The report (:mod:`kazhpc.tokenization.report`) and the extend-vocab job measure what this module
reads; reading and normalising live here so that both see the same passages.

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

Language check (:func:`language_shares`, :func:`check_kazakh`)
--------------------------------------------------------------
A corpus whose ``kk`` texts are mostly not Kazakh is refused in one line, before any tokenizer is
measured on it (lingua, :class:`kazhpc.data.langid.LanguageIdentifier`, on up to 1,000 evenly
spaced texts).
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from kazhpc.data.text import nfc
from kazhpc.errors import KazhpcError, jsonl_objects, read_user_text

__all__ = [
    "LANGUAGES",
    "Corpus",
    "CorpusSpec",
    "check_kazakh",
    "language_shares",
    "normalize",
    "read_corpus",
]

#: The languages a parallel corpus may hold, in report order.
LANGUAGES: tuple[str, ...] = ("kk", "en", "ru", "tr")
CorpusFormat = Literal["auto", "text", "jsonl", "iob2", "parallel"]
_IOB2_TAG = re.compile(r"^(?:O|[BIES]-\S+)$")
_LANGID_SAMPLE = 1000


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


def check_kazakh(corpus: Corpus, shares: dict[str, float | int], min_share: float) -> None:
    """Raise KazhpcError when under ``min_share`` of the texts lingua checked (``shares``, from
    :func:`language_shares`) are Kazakh; nothing when none was long enough to check."""
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

