"""Fertility and parity of any set of tokenizers on a corpus: the Kazakh "tokenizer tax".

Kazakh is agglutinative: one word carries a stem and a chain of suffixes (``Қазақстан-ның``,
``оқы-т-ып жатыр``), and multilingual tokenizers cut such a word into 3–5 pieces, so the same
content costs more context, compute and money than in English. This module measures that cost.

The work is in three modules: :mod:`kazhpc.tokenization.corpus` reads a corpus (its docstring
lists the formats) and checks its language; :mod:`kazhpc.tokenization.measure` measures one
tokenizer on a list of texts (its docstring defines every number); this one,
:func:`tokenizer_report`, runs every tokenizer on every language of a corpus and writes
``tokenizers.md``/``.csv``/``.json`` and ``fertility.png``; :func:`flat_metrics` are its numbers
for MLflow.

Bad input fails early, in one line: an empty corpus, a parallel file without a ``kk`` column, a
tokenizer that cannot be loaded, and a corpus whose ``kk`` texts are mostly not Kazakh (lingua,
:class:`kazhpc.data.langid.LanguageIdentifier`, on up to 1,000 evenly spaced texts).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Iterable

from kazhpc.data.text import word_count
from kazhpc.errors import KazhpcError
from kazhpc.tokenization.corpus import LANGUAGES, CorpusSpec, check_kazakh, language_shares, read_corpus
from kazhpc.tokenization.measure import DEFINITIONS, measure, parity, split_example
from kazhpc.tokenization.offline import load_tokenizer_by_name

__all__ = ["flat_metrics", "tokenizer_report"]


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
            check_kazakh(data, langid["kk"], min_kk_share)

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
        results["examples"][name] = {w: split_example(adapter, w) for w in example_words}

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
