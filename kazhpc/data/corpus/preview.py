"""The corpus job's preflight: each source's first documents, read as the job reads them.

A missing path, a folder without files, a text field that is not there, an empty source, a source
that is not in the corpus language: each is a one-line error naming the source, before anything is
queued; a source that is only partly in the language is a warning.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from typing import TYPE_CHECKING

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.config.corpus import TextCorpusConfig, TextSourceConfig


def preview_source(source: TextSourceConfig, section: TextCorpusConfig, documents: int) -> list[str]:
    """Check ``source``; return warnings."""
    from kazhpc.data.corpus.sources import CorpusSources, source_files

    key = f"corpus.sources[{source.name}]"
    if source.path is not None and not os.path.exists(source.path):
        raise KazhpcError(f"{key}.path: {source.path}: file or folder not found")
    if source.dataset is not None and source.dataset.startswith("/") and not os.path.isdir(source.dataset):
        raise KazhpcError(f"{key}.dataset: {source.dataset}: folder not found (a local copy of a data set is a folder)")
    files = source_files(source)
    if not files:
        raise KazhpcError(f"{key}: no files in {source.origin}" + (f" match glob {source.glob!r}" if source.glob else ""))
    reader = CorpusSources([source])
    texts, problems = [], []
    for folder, name in files:
        for doc in itertools.islice(reader._read(source, folder, name), documents - len(texts) + 10):
            if doc.text is None:
                problems.append(doc.metadata)
            elif doc.text.strip():
                texts.append(doc.text)
            if len(texts) >= documents:
                break
        if len(texts) >= documents:
            break
    if not texts:
        if problems:
            first = problems[0]
            detail = first["detail"]
            if detail.startswith("no_text_field"):
                fields = _fields(first.get("raw", ""))
                raise KazhpcError(f"{key}: {first['file']}:{first['row']}: no field {source.text_key!r}"
                                  + (f" (its fields: {fields})" if fields else "") + "; set text_key")
            raise KazhpcError(f"{key}: {first['file']}:{first['row']}: {detail.replace('_', ' ', 1)}")
        raise KazhpcError(f"{key}: {source.origin} holds no documents (empty)")
    return _language_check(key, texts, section)


def _fields(raw: str) -> str:
    import ast

    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return ""
    return ", ".join(map(str, value)) if isinstance(value, dict) else ""


def _language_check(key: str, texts: list[str], section: TextCorpusConfig) -> list[str]:
    from kazhpc.data.langid import LanguageIdentifier

    found = Counter(r.language or "unknown" for r in LanguageIdentifier(section.languages).detect_many(texts))
    share = found[section.language] / len(texts)
    said = ", ".join(f"{lang} {n}" for lang, n in found.most_common())
    if share == 0:
        raise KazhpcError(f"{key}: none of its first {len(texts)} documents is in {section.language!r} "
                          f"(lingua: {said}); check the source, or corpus.language")
    if share < 0.5:
        return [f"{key}: only {found[section.language]} of its first {len(texts)} documents are in "
                f"{section.language!r} (lingua: {said}); the rest will be dropped"]
    return []
