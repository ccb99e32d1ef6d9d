"""``kind: ifeval``: Kazakh verifiable instructions, scored by lm-eval's IFEval machinery.

What is lm-eval's and stays so: the row schema (``key``, ``prompt``, ``instruction_id_list``,
``kwargs``), the instruction classes, the strict and loose tests (loose retries the answer without
its first line, its last line and its ``*``), and the four metrics (prompt- and instruction-level
accuracy, strict and loose). :func:`process_results` runs lm-eval's own ``process_results`` with
the Kazakh registry below in place of its English one.

What is wrong for Kazakh in the English checks, and replaced (each a subclass of lm-eval's class):

* **Language** (``language:response_language``, ``change_case:english_*``): langdetect has no
  Kazakh; lingua (kazhpc.data.langid) decides. An answer too short to identify does not count as
  in the language (lm-eval counts a langdetect failure as followed).
* **Words** (``number_words``, ``capital_word_frequency``): kazhpc's word definition
  (kazhpc.data.text.word_count), so ``Python-да`` and ``«Абай»,`` are one word each.
* **Sentences** (``number_sentences``): NLTK's English Punkt model, which lm-eval loads, knows no
  Kazakh; a sentence ends at ``.``, ``!``, ``?`` or ``…`` (closing quotes after it included) followed
  by an upper-case letter, a digit, an opening quote or the end, so ``т.б. және`` does not end one.
* **Keywords** (``existence``, ``frequency``, ``forbidden_words``): Kazakh adds suffixes to a stem
  (кітап → кітаптар, кітабы), so a keyword matches a word that *starts with* it, a stem-final
  п/к/қ also as its voiced б/г/ғ (кітап → кітабы, жүрек → жүрегі, ақ → ағы); a phrase matches
  word for word with the last word as a stem. A short keyword overmatches (ат, "horse", matches
  атау, "name"): prefer stems of four letters or more.
* **Letters** (``letter_frequency``): lm-eval accepts only a-z (any other letter it replaces by a
  random one); any single letter is accepted here.
* **Case, quotes, fixed answers**: ``change_case:kazakh_capital`` / ``kazakh_lowercase`` (the whole
  answer in upper / lower case *and* in Kazakh), ``startend:quotation`` accepts «…» as well as
  "…", ``detectable_format:kazakh_constrained_response`` asks for one of "Менің жауабым: иә." /
  "жоқ." / "мүмкін.".

Every other id is lm-eval's unchanged (formats, sections, placeholders, postscript, ...).
"""

from __future__ import annotations

import functools
import inspect
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.config import suggest
from kazhpc.data.text import word_count
from kazhpc.errors import KazhpcError
from kazhpc.evaluation.builders import chat_generation, shipped_file
from kazhpc.evaluation.prompts import BadItem

if TYPE_CHECKING:
    from kazhpc.config import EvalTaskConfig

#: The Kazakh IFEval prompts shipped with kazhpc (written for this project).
BUILTIN_FILE = "kk-ifeval.jsonl"
#: Kazakh options of ``detectable_format:kazakh_constrained_response``.
KAZAKH_CONSTRAINED_OPTIONS = ("Менің жауабым: иә.", "Менің жауабым: жоқ.", "Менің жауабым: мүмкін.")
#: Languages lingua chooses among for a response-language check (the asked one is added).
_CANDIDATES = ("kk", "ru", "en", "tr")
_VOICED = {"п": "[пб]", "к": "[кг]", "қ": "[қғ]"}
_SENTENCE_END = re.compile(r"[.!?…]+[»\"')\]]*(?=\s+[«\"(\[]?[^\W_a-zа-яёәғқңөұүһі]|\s*$)")
_WORD_TOKEN = re.compile(r"[^\W_]+(?:[-'’][^\W_]+)*")
_EDGE_PUNCT = re.compile(r"^[^\w]+|[^\w]+$")
_INT_ARGS = {
    "num_sentences", "num_placeholders", "num_bullets", "num_highlights", "num_sections", "num_paragraphs",
    "nth_paragraph", "num_words", "frequency", "let_frequency", "capital_frequency",
}  # fmt: skip
_LIST_ARGS = {"keywords", "forbidden_words"}


def builtin_path() -> str:
    return shipped_file(BUILTIN_FILE)


def count_sentences(text: str) -> int:
    """Sentences in ``text`` by the Kazakh rule of the module docstring."""
    pieces = _SENTENCE_END.split(text)
    return sum(1 for piece in pieces if _WORD_TOKEN.search(piece))


def keyword_pattern(keyword: str) -> re.Pattern[str]:
    """A phrase's words in order, the last one as a Kazakh stem (suffixes and voicing allowed)."""
    words = keyword.lower().split()
    last = words[-1]
    stem = re.escape(last[:-1]) + _VOICED[last[-1]] if last[-1] in _VOICED else re.escape(last)
    body = r"\s+".join([*map(re.escape, words[:-1]), stem])
    return re.compile(rf"(?<![^\W_]){body}[^\W_]*", re.IGNORECASE)


def _words(text: str) -> list[str]:
    return _WORD_TOKEN.findall(text)


@functools.lru_cache(maxsize=8)
def _identifier(language: str) -> Any:
    from kazhpc.data.langid import LanguageIdentifier

    return LanguageIdentifier(tuple(dict.fromkeys((*_CANDIDATES, language))), min_letters=5)


def in_language(text: str, language: str) -> bool:
    return _identifier(language).detect(text).language == language


@functools.lru_cache(maxsize=1)
def _lm_eval_ifeval() -> tuple[Any, Any, Any]:
    """lm-eval's (instructions, instructions_registry, utils) modules, imported offline.

    Importing ``instructions_util`` downloads NLTK's English Punkt data when it is missing; no
    Kazakh check uses it, so an empty placeholder, last on NLTK's path (a real copy still wins),
    keeps the import from reaching the network."""
    import nltk

    placeholder = Path(tempfile.gettempdir()) / "kazhpc-nltk"
    (placeholder / "tokenizers" / "punkt_tab").mkdir(parents=True, exist_ok=True)
    if str(placeholder) not in nltk.data.path:
        nltk.data.path.append(str(placeholder))
    from lm_eval.tasks.ifeval import instructions, instructions_registry, utils

    return instructions, instructions_registry, utils


@functools.lru_cache(maxsize=1)
def registry() -> dict[str, type]:
    """Instruction id → class: lm-eval's registry with the Kazakh checks in place."""
    instructions, instructions_registry, _ = _lm_eval_ifeval()
    relation = ("less than", "at least")

    def compare(count: int, threshold: int, how: str) -> bool:
        return count < threshold if how == relation[0] else count >= threshold

    class ResponseLanguage(instructions.ResponseLanguageChecker):
        def build_description(self, *, language: str | None = None) -> str:
            if language is None:  # lm-eval's random choice; check_row refuses a row without one
                return super().build_description()
            _identifier(language)  # raises KazhpcError for a code lingua does not know
            self._language = language  # lm-eval's list of codes has no kk
            return f"Жауабыңыз түгелдей {language} тілінде болсын."

        def check_following(self, value: str) -> bool:
            return in_language(value, self._language)

    class Sentences(instructions.NumberOfSentences):
        def check_following(self, value: str) -> bool:
            return compare(count_sentences(value), self._num_sentences_threshold, self._comparison_relation)

    class Words(instructions.NumberOfWords):
        def check_following(self, value: str) -> bool:
            return compare(word_count(value), self._num_words, self._comparison_relation)

    class FirstWord(instructions.ParagraphFirstWordCheck):
        def check_following(self, value: str) -> bool:
            paragraphs = [p.strip() for p in re.split(r"\n\n", value)]
            found = [p for p in paragraphs if p]
            if len(found) != self._num_paragraphs or self._nth_paragraph > len(paragraphs):
                return False
            paragraph = paragraphs[self._nth_paragraph - 1]
            return bool(paragraph) and _EDGE_PUNCT.sub("", paragraph.split()[0]).lower() == self._first_word.lower()

    class Keywords(instructions.KeywordChecker):
        def check_following(self, value: str) -> bool:
            return all(keyword_pattern(k).search(value) for k in self._keywords)

    class KeywordFrequency(instructions.KeywordFrequencyChecker):
        def check_following(self, value: str) -> bool:
            found = len(keyword_pattern(self._keyword).findall(value))
            return compare(found, self._frequency, self._comparison_relation)

    class Forbidden(instructions.ForbiddenWords):
        def check_following(self, value: str) -> bool:
            return not any(keyword_pattern(w).search(value) for w in self._forbidden_words)

    class LetterFrequency(instructions.LetterFrequencyChecker):
        def build_description(self, *, letter: str | None = None, let_frequency: int | None = None,
                              let_relation: str | None = None) -> str:  # fmt: skip
            described = super().build_description(letter=letter, let_frequency=let_frequency, let_relation=let_relation)
            if letter and len(letter.strip()) == 1 and letter.strip().isalpha():
                self._letter = letter.strip().lower()  # any alphabet's letter, not only a-z
            return described

    class EnglishCapital(instructions.CapitalLettersEnglishChecker):
        def check_following(self, value: str) -> bool:
            return value.isupper() and in_language(value, "en")

    class EnglishLowercase(instructions.LowercaseLettersEnglishChecker):
        def check_following(self, value: str) -> bool:
            return value.islower() and in_language(value, "en")

    class KazakhCapital(instructions.CapitalLettersEnglishChecker):
        def build_description(self) -> str:
            return "Бүкіл жауабыңызды қазақ тілінде, тек бас әріптермен жазыңыз."

        def check_following(self, value: str) -> bool:
            return value.isupper() and in_language(value, "kk")

    class KazakhLowercase(instructions.LowercaseLettersEnglishChecker):
        def build_description(self) -> str:
            return "Бүкіл жауабыңызды қазақ тілінде, тек кіші әріптермен жазыңыз."

        def check_following(self, value: str) -> bool:
            return value.islower() and in_language(value, "kk")

    class CapitalWords(instructions.CapitalWordFrequencyChecker):
        def check_following(self, value: str) -> bool:
            capital = sum(1 for w in _words(value) if w.isupper() and any(c.isalpha() for c in w))
            return compare(capital, self._frequency, self._comparison_relation)

    class Quotation(instructions.QuotationChecker):
        def check_following(self, value: str) -> bool:
            value = value.strip()
            return len(value) > 1 and (value[0], value[-1]) in (('"', '"'), ("«", "»"))

    class KazakhConstrained(instructions.ConstrainedResponseChecker):
        def build_description(self) -> str:
            self._constrained_responses = KAZAKH_CONSTRAINED_OPTIONS
            return "Мына нұсқалардың бірімен жауап беріңіз: " + " / ".join(KAZAKH_CONSTRAINED_OPTIONS)

    table = dict(instructions_registry.INSTRUCTION_DICT)
    table.update({
        "language:response_language": ResponseLanguage,
        "length_constraints:number_sentences": Sentences,
        "length_constraints:number_words": Words,
        "length_constraints:nth_paragraph_first_word": FirstWord,
        "keywords:existence": Keywords,
        "keywords:frequency": KeywordFrequency,
        "keywords:forbidden_words": Forbidden,
        "keywords:letter_frequency": LetterFrequency,
        "change_case:english_capital": EnglishCapital,
        "change_case:english_lowercase": EnglishLowercase,
        "change_case:kazakh_capital": KazakhCapital,
        "change_case:kazakh_lowercase": KazakhLowercase,
        "change_case:capital_word_frequency": CapitalWords,
        "startend:quotation": Quotation,
        "detectable_format:kazakh_constrained_response": KazakhConstrained,
    })  # fmt: skip
    return table


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """lm-eval's IFEval ``process_results`` (strict and loose), with the Kazakh registry in place."""
    from unittest import mock

    _, instructions_registry, utils = _lm_eval_ifeval()
    with mock.patch.dict(instructions_registry.INSTRUCTION_DICT, registry(), clear=True):
        return utils.process_results({**doc, "key": doc.get("key", 0)}, results)


# --------------------------------------------------------------------------------------------
# The task, and the checks on its rows (preflight, before any model loads).


def ifeval_config(task: EvalTaskConfig) -> dict[str, Any]:
    """An lm-eval generate_until task over an IFEval-schema file, answered through the chat template."""
    agg_inst_level_acc = _lm_eval_ifeval()[2].agg_inst_level_acc
    path = task.path or builtin_path()
    metrics = [
        {"metric": name, "aggregation": "mean" if name.startswith("prompt") else agg_inst_level_acc,
         "higher_is_better": True}
        for name in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
    ]  # fmt: skip
    return chat_generation(
        task.name, path, task.max_gen_toks or 512, "ifeval",
        doc_to_text="prompt", doc_to_target=0, process_results=process_results, metric_list=metrics,
    )


def _normal(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip().lower()
    if isinstance(value, (list, tuple)):
        return sorted(_normal(v) for v in value)
    return value


def check_row(row: dict[str, Any]) -> None:
    """Raise BadItem saying what is wrong with one IFEval row: schema, ids, each instruction's kwargs.

    lm-eval fills a missing or unusable argument with a random one (and drops falsy ones first),
    so an argument it would not keep as given is an error here, not a silently random target."""
    for field, kind in (("prompt", str), ("instruction_id_list", list), ("kwargs", list)):
        if field not in row:
            raise BadItem(f"no field '{field}' (the IFEval schema: key, prompt, instruction_id_list, kwargs)")
        if not isinstance(row[field], kind) or (kind is str and not row[field].strip()):
            raise BadItem(f"'{field}' must be a {'non-empty string' if kind is str else 'list'}")
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    if not ids:
        raise BadItem("instruction_id_list is empty")
    if len(kwargs) != len(ids):
        raise BadItem(f"{len(ids)} instruction ids but {len(kwargs)} kwargs entries; they pair up one to one")
    table = registry()
    for iid, given in zip(ids, kwargs):
        if iid not in table:
            raise BadItem(f"unknown instruction id '{iid}'{suggest(str(iid), sorted(table))}")
        if not isinstance(given, dict):
            raise BadItem(f"{iid}: kwargs must be an object, got {type(given).__name__}")
        _check_kwargs(iid, table[iid], {k: v for k, v in given.items() if v is not None}, row["prompt"])


def _check_kwargs(iid: str, cls: type, given: dict[str, Any], prompt: str) -> None:
    params = [p for p in inspect.signature(cls.build_description).parameters if p not in ("self", "prompt")]
    for key in given:
        if key not in params:
            allowed = ", ".join(params) if params else "none"
            raise BadItem(f"{iid}: unknown argument '{key}'{suggest(key, params)} (it takes: {allowed})")
    for key in params:
        if key not in given:
            raise BadItem(f"{iid}: argument '{key}' is missing (lm-eval would pick a random one)")
        value = given[key]
        if key in _INT_ARGS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise BadItem(f"{iid}: {key} must be a positive integer, got {value!r}")
        if key in _LIST_ARGS and (not isinstance(value, list) or not value
                                  or not all(isinstance(v, str) and v.strip() for v in value)):  # fmt: skip
            raise BadItem(f"{iid}: {key} must be a non-empty list of words, got {value!r}")
        if key not in _INT_ARGS | _LIST_ARGS and (not isinstance(value, str) or not value.strip()):
            raise BadItem(f"{iid}: {key} must be a non-empty string, got {value!r}")
    instruction = cls(iid)
    try:
        instruction.build_description(**given)
    except (ValueError, KazhpcError) as exc:
        raise BadItem(f"{iid}: {exc}") from None
    kept = instruction.get_instruction_args() or {}
    for key, value in given.items():
        if _normal(kept.get(key)) != _normal(value):
            raise BadItem(f"{iid}: {key}={value!r} is not usable (lm-eval would replace it by {kept.get(key)!r})")
