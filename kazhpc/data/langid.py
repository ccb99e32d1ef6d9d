"""Language identification of assistant answers (lingua), with a mixed Kazakh–Russian flag.

Costs measured on the development machine (lingua-language-detector 2.1.1, 4 languages, models
preloaded; one core):

* ``compute_language_confidence_values`` ≈ 0.45 µs per character once the statistical models
  run (~90 µs for 160 characters, ~480 µs for 1,000). When most words carry letters unique to one
  candidate language (Kazakh әғқңөұүһі among kk/ru/en/tr) lingua decides by rule in a few µs.
  So :meth:`LanguageIdentifier.detect` scores at most ``max_chars`` characters (default 300:
  three evenly spaced windows of a longer text, cut at spaces), which bounds a row at ~140 µs;
  300 characters (~40 words) are far more than lingua needs to tell kk/ru/en/tr apart.
* ``detect_multiple_languages_of`` costs 3–5× more (~500 µs for 150 characters, ~1.9 ms for
  1,000), so it only runs when cheap regex pre-checks find both Kazakh-specific letters and
  Russian function words (see :meth:`LanguageIdentifier.detect`).
* The ``*_in_parallel`` APIs run on lingua's rayon pool, which spreads over every CPU of the
  process's affinity mask (``RAYON_NUM_THREADS`` caps it): 99 → 52 µs/text with 2 CPUs, no gain
  with 1 (``taskset -c 0``). The preprocess job already runs one worker per allocated core, so
  :meth:`LanguageIdentifier.detect_many` is sequential unless ``parallel=True`` is asked for.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import LanguageIdConfig
    from kazhpc.data.records import Record

__all__ = ["LangResult", "LanguageIdentifier", "check_record"]

#: Letters of the Kazakh Cyrillic alphabet that Russian does not have.
KAZAKH_LETTERS = "әғқңөұүһіӘҒҚҢӨҰҮҺІ"

_KK_LETTER = re.compile(f"[{KAZAKH_LETTERS}]")
# Frequent Russian function words that are not Kazakh words (so "не", "он", "от", "же", "да",
# which are, are left out). Two of them in a text make the Russian side of the pre-check.
_RU_WORD = re.compile(
    r"(?<!\w)(?:и|в|во|что|это|как|для|или|также|был|была|было|были|который|которая|которое|"
    r"которые|чтобы|если|при|его|её|ее|они|она|мы|вы|на|по|из|за|но|бы|то|с|к|об|так|только|"
    r"уже|можно|нужно|очень|все|всё|этот|эта|эти|тоже|потом|когда|где)(?!\w)",
    re.IGNORECASE,
)
_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True, slots=True)
class LangResult:
    """What :meth:`LanguageIdentifier.detect` found.

    ``language`` is the most likely ISO 639-1 code, or None when the text is too short
    (``short``: fewer than ``min_letters`` letters) or lingua recognises none of the candidate
    languages (e.g. Chinese text for kk/ru/en/tr). ``confidence`` is lingua's confidence of that
    language (0.0 when None); ``scores`` holds every candidate's confidence.
    """

    language: str | None
    confidence: float
    mixed_kk_ru: bool = False
    short: bool = False
    scores: dict[str, float] = field(default_factory=dict, compare=False)


class LanguageIdentifier:
    """A lingua detector restricted to a few languages, returning ISO 639-1 codes.

    Build once per process (loading the models takes ~0.5 s) and reuse for every row.
    ``min_letters``: texts with fewer letters are too short to identify (``short``, language None).
    ``max_chars``: longer texts are scored on a sample of this many characters (see the module
    docstring). ``min_segment_chars``: a Kazakh or Russian segment shorter than this does not make
    a text mixed.
    """

    def __init__(
        self,
        languages: tuple[str, ...] | list[str] = ("kk", "ru", "en", "tr"),
        *,
        min_letters: int = 15,
        max_chars: int = 300,
        min_segment_chars: int = 20,
    ):
        from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

        if len(languages) < 2:
            raise KazhpcError(f"language identification needs at least two languages, got {list(languages)}")
        self.languages = tuple(languages)
        self._to_code: dict[object, str] = {}
        lingua_languages = []
        for code in self.languages:
            try:
                language = Language.from_iso_code_639_1(IsoCode639_1.from_str(code))
            except (ValueError, AttributeError):
                raise KazhpcError(f"unknown ISO 639-1 language code {code!r} for language identification") from None
            lingua_languages.append(language)
            self._to_code[language] = code
        self._detector = (
            LanguageDetectorBuilder.from_languages(*lingua_languages).with_preloaded_language_models().build()
        )
        self.min_letters = min_letters
        self.max_chars = max_chars
        self.min_segment_chars = min_segment_chars
        self._kk_ru = "kk" in self.languages and "ru" in self.languages

    # ----------------------------------------------------------------------------------------

    def _has_letters(self, text: str) -> bool:
        """At least ``min_letters`` letters (stops counting there)."""
        if len(text) < self.min_letters:
            return False
        found = len(_LETTER.findall(text, 0, 4 * self.min_letters))
        if found >= self.min_letters:
            return True
        return sum(1 for _ in itertools.islice(_LETTER.finditer(text), self.min_letters)) >= self.min_letters

    def _sample(self, text: str) -> str:
        """The text itself, or three evenly spaced windows of it cut at spaces."""
        if len(text) <= self.max_chars:
            return text
        width = self.max_chars // 3
        parts = []
        for start in (0, (len(text) - width) // 2, len(text) - width):
            part = text[start : start + width]
            if start > 0 and " " in part:
                part = part[part.index(" ") + 1 :]
            if start + width < len(text) and " " in part:
                part = part[: part.rindex(" ")]
            parts.append(part)
        return "\n".join(parts)

    @staticmethod
    def _maybe_mixed(text: str) -> bool:
        """Cheap pre-check: 3+ Kazakh-specific letters and 2+ Russian function words (a few µs)."""
        return len(_KK_LETTER.findall(text)) >= 3 and len(_RU_WORD.findall(text)) >= 2

    def mixed_kk_ru(self, text: str) -> bool:
        """Whether ``text`` holds a Kazakh and a Russian segment of ``min_segment_chars`` or more.

        Runs lingua's ``detect_multiple_languages_of`` only when the pre-check (three Kazakh-specific
        letters and two Russian function words such as и/в/что/это/для) passes; a text that fails
        it is not mixed. Texts longer than ``max_chars`` are judged by their sample, like
        :meth:`detect`.
        """
        return self._mixed_sample(self._sample(text))

    def _mixed_sample(self, sample: str) -> bool:
        if not self._kk_ru or not self._maybe_mixed(sample):
            return False
        seen: set[str] = set()
        for segment in self._detector.detect_multiple_languages_of(sample):
            if segment.end_index - segment.start_index >= self.min_segment_chars:
                seen.add(self._to_code[segment.language])
        return "kk" in seen and "ru" in seen

    def _result(self, sample: str, values: list) -> LangResult:
        scores = {self._to_code[v.language]: v.value for v in values}
        top = values[0] if values else None
        mixed = self._mixed_sample(sample)
        if top is None or top.value <= 0.0:
            return LangResult(None, 0.0, mixed, False, scores)
        return LangResult(self._to_code[top.language], top.value, mixed, False, scores)

    def detect(self, text: str) -> LangResult:
        """The most likely language of ``text`` with its confidence, and the mixed kk–ru flag.

        Texts with fewer than ``min_letters`` letters give ``LangResult(None, 0.0, short=True)``;
        texts longer than ``max_chars`` are scored on a sample of three evenly spaced windows.
        """
        if not self._has_letters(text):
            return LangResult(None, 0.0, False, True)
        sample = self._sample(text)
        return self._result(sample, self._detector.compute_language_confidence_values(sample))

    def detect_many(self, texts: list[str], *, parallel: bool = False) -> list[LangResult]:
        """:meth:`detect` for each text, in order.

        ``parallel=True`` scores the texts on lingua's rayon pool (every CPU the process may use;
        see the module docstring): only worth it when the caller is not already running one
        worker per core.
        """
        if not parallel:
            return [self.detect(t) for t in texts]
        results: list[LangResult | None] = [None] * len(texts)
        todo: list[int] = []
        for i, text in enumerate(texts):
            if self._has_letters(text):
                todo.append(i)
            else:
                results[i] = LangResult(None, 0.0, False, True)
        samples = [self._sample(texts[i]) for i in todo]
        scored = self._detector.compute_language_confidence_values_in_parallel(samples)
        for i, sample, values in zip(todo, samples, scored):
            results[i] = self._result(sample, values)
        return results  # type: ignore[return-value]


def check_record(record: Record, ident: LanguageIdentifier, cfg: LanguageIdConfig) -> None:
    """Check that the record's assistant answers are in ``record.answer_language``.

    The answers are joined with newlines and identified together. Notes go to ``record.meta``:
    ``lang`` (the detected code, or ``"und"`` when the answers are too short to identify or in
    none of the candidate languages), ``lang_confidence`` and ``mixed_kk_ru``; the manifest
    derives its language shares from them.

    Raises ``Reject("wrong_language", "expected kk, got ru (0.93)")`` when the expected language's
    confidence is below ``cfg.min_confidence``. Answers with fewer than ``ident.min_letters``
    letters are never rejected. Does nothing when ``cfg.enabled`` is false.
    """
    from kazhpc.data.records import Reject

    if not cfg.enabled:
        return
    expected = record.answer_language
    if expected not in ident.languages:
        raise KazhpcError(
            f"{record.origin}: cannot check answer language {expected!r}: language identification "
            f"knows {', '.join(ident.languages)}"
        )
    # Structured answers (NER's "entity — LABEL" lines) say so in meta: their prompt is identified.
    # Tool rows (JSON calls) name the text to identify: their queries.
    texts = record.prompts() if record.meta.get("langid_on") == "prompt" else record.answers()
    if "langid_text" in record.meta:
        texts = [record.meta["langid_text"]]
    result = ident.detect("\n".join(texts))
    record.meta["lang"] = result.language or "und"
    record.meta["lang_confidence"] = round(result.confidence, 3)
    record.meta["mixed_kk_ru"] = result.mixed_kk_ru
    if result.mixed_kk_ru and cfg.drop_mixed_kk_ru:
        raise Reject("mixed_kk_ru", detail="the answer switches between Kazakh and Russian")
    if result.short:
        return
    confidence = result.scores.get(expected, 0.0)
    if confidence < cfg.min_confidence:
        if result.language == expected:  # the most likely language, but not likely enough
            detail = f"expected {expected} with confidence >= {cfg.min_confidence:.2f}, got {confidence:.2f}"
        else:
            detail = f"expected {expected}, got {result.language or 'und'} ({result.confidence:.2f})"
        raise Reject("wrong_language", detail=detail)
