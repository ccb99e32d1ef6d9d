"""Decontamination: drop training rows that share a word n-gram with an evaluation item.

Evaluation files (``cleaning.decontamination.files``):

* ``.jsonl`` / ``.json`` — one JSON value per line (a ``.json`` file holding one JSON array is read
  as that array). Every string in a row is an item: string values, strings inside lists (choices),
  and inside nested objects. Keys are not items.
* ``.csv`` / ``.parquet`` — one row per record, read as the preprocess and evaluate jobs read them;
  every string cell is an item.
* anything else — UTF-8 text, one item per line.

Items and training texts are compared after ``fix_lookalikes`` and ``normalize_for_hash``
(casefold, NFC, punctuation at word edges dropped), as sequences of words. A training row is
contaminated when any ``ngram``-word run of its text (all turns) is also a run of some item.

Items with fewer than 2 words (answer letters, labels, ids, one-word choices) are ignored. Items
with 2 to ``ngram - 1`` words cannot be matched: no training text can share an ``ngram``-word run
with them; they are counted in :attr:`Decontaminator.short_items` so that a report can say how much
of an evaluation set is not covered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from kazhpc.data.records import Reject
from kazhpc.data.text import fix_lookalikes, normalize_for_hash
from kazhpc.errors import KazhpcError, read_user_text

if TYPE_CHECKING:
    from kazhpc.config import DecontaminationConfig
    from kazhpc.data.records import Record

__all__ = ["Decontaminator"]


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value (dict values, list items, nested), in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _normalize(text: str) -> list[str]:
    return normalize_for_hash(fix_lookalikes(text)[0]).split()


class Decontaminator:
    """Word n-gram overlap against evaluation items (see the module docstring).

    Attributes after loading: ``items`` (items indexed: ``ngram`` words or more), ``short_items``
    (2 to ``ngram - 1`` words: cannot be matched), ``ignored_items`` (fewer than 2 words) and
    ``ngrams`` (distinct n-grams indexed), per file in ``per_file``.
    """

    def __init__(self, cfg: DecontaminationConfig):
        self.cfg = cfg
        self.n = cfg.ngram
        self._grams: dict[tuple[str, ...], int] = {}  # n-gram → index into _locations
        self._locations: list[str] = []  # "file:line" of the item that first had the n-gram
        self.items = 0
        self.short_items = 0
        self.ignored_items = 0
        self.per_file: dict[str, dict[str, int]] = {}
        for name in cfg.files:
            self._load(name)

    @property
    def ngrams(self) -> int:
        return len(self._grams)

    def __bool__(self) -> bool:
        return bool(self._grams)

    # ----------------------------------------------------------------------------------------

    def _rows(self, name: str, path: Path) -> Iterator[tuple[str, list[str]]]:
        """(location, item strings) for every row of an evaluation file."""
        suffix = path.suffix.lower()
        if suffix in (".csv", ".parquet"):  # the formats the evaluate job's builders read too
            from kazhpc.data.readers import BadRow, iter_file

            for row in iter_file(name, owner="decontamination file"):
                if isinstance(row, BadRow):
                    raise KazhpcError(f"{row.origin}: {row.detail}")
                yield row.origin, list(_strings(row.data))
            return
        text = read_user_text(path, "decontamination file")
        if suffix == ".json" and text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise KazhpcError(f"{name}:{exc.lineno}: malformed JSON: {exc.msg}") from None
            for i, row in enumerate(rows):
                yield f"{name}#{i}", list(_strings(row))
            return
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if suffix in (".jsonl", ".json"):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise KazhpcError(f"{name}:{lineno}: malformed JSON line: {exc.msg}") from None
                yield f"{name}:{lineno}", list(_strings(row))
            else:
                yield f"{name}:{lineno}", [line]

    def _load(self, name: str) -> None:
        counts = {"items": 0, "short_items": 0, "ignored_items": 0, "ngrams": 0}
        before = len(self._grams)
        n = self.n
        for location, strings in self._rows(name, Path(name)):
            location_index = -1
            for string in strings:
                words = _normalize(string)
                if len(words) < 2:
                    counts["ignored_items"] += 1
                    continue
                if len(words) < n:
                    counts["short_items"] += 1
                    continue
                counts["items"] += 1
                if location_index == -1:
                    location_index = len(self._locations)
                    self._locations.append(location)
                for gram in zip(*(words[i:] for i in range(n))):
                    self._grams.setdefault(gram, location_index)
        counts["ngrams"] = len(self._grams) - before
        self.per_file[name] = counts
        self.items += counts["items"]
        self.short_items += counts["short_items"]
        self.ignored_items += counts["ignored_items"]

    # ----------------------------------------------------------------------------------------

    def match(self, text: str, *, normalized: bool = False) -> str | None:
        """The location ("file:line") of an item sharing an n-gram with ``text``, or None.

        ``normalized=True``: ``text`` already is ``normalize_for_hash`` output of a text whose
        lookalikes were fixed (the preprocess job's cleaned text), so that the job normalises
        each row once for the exact key, the MinHash signature and this check.
        """
        if not self._grams:
            return None
        words = text.split() if normalized else _normalize(text)
        n = self.n
        if len(words) < n:
            return None
        grams = self._grams
        if grams.keys().isdisjoint(zip(*(words[i:] for i in range(n)))):
            return None  # the common case, decided without leaving C
        for gram in zip(*(words[i:] for i in range(n))):
            index = grams.get(gram)
            if index is not None:
                return self._locations[index]
        return None  # pragma: no cover - isdisjoint said otherwise

    def check(self, record: Record, *, normalized: str | None = None) -> None:
        """Raise ``Reject("contaminated", "8-gram overlap with FILE:LINE")`` on any shared n-gram.

        The record's text is all its turns; ``normalized`` may pass its ``normalize_for_hash``
        form when the caller already has it (see :meth:`match`).
        """
        if normalized is not None:
            location = self.match(normalized, normalized=True)
        else:
            location = self.match(record.text())
        if location is not None:
            raise Reject("contaminated", detail=f"{self.n}-gram overlap with {location}")
