"""Source adapters: one raw row of a known data set → canonical `Record` conversations.

``adapt(source, source_index, row)`` returns a list of records (KazParC rows give one per
translation direction; every other kind gives one) or raises `Reject` for a row that cannot be
adapted. Messages are ``user`` then ``assistant`` (``system`` first only for a custom source that
maps a system column); the job adds ``preprocess.system_prompt`` later, not this module.

Adapters do not clean: the text of a field is passed on as it is (NFC, look-alike letters and
whitespace are later, counted steps), except that where several fields are joined into one message
the joined parts are stripped at the joint.

Kinds and the columns they read (real schemas, see the dataset cards):

- ``muri-it`` (akoksal/muri-it-language-split, ``kaz``): ``input`` → user, ``output`` → assistant.
- ``alpaca`` (AmanMussa/kazakh-instruction-v2, saillab/alpaca-kazakh-cleaned): ``instruction``
  (+ blank line + ``input`` when not empty) → user, ``output`` → assistant.
- ``kazparc`` (issai/kazparc, config ``kazparc_raw``: ``id, kk, en, ru, tr, domain``): one record per
  ``source.directions`` entry whose two cells are both non-empty; sub-index = the direction's position
  in ``source.directions``; ``meta`` holds ``direction`` and ``domain``. Any parallel corpus fits:
  ``source.columns`` maps a language to the file's column (``{kk: Kazakh, en: English}``).
- ``ner-kazakh`` (yeshpanovrustem/ner-kazakh, KazNERD): ``tokens`` + ``ner_tags`` (ClassLabel ids,
  named by the features the reader attaches, else `KAZNERD_LABELS`; or IOB2 strings). The answer
  lists the entities one per line as ``<text> — <TYPE>``. IOB2 is read leniently, as seqeval's
  default mode does: an ``I-X`` that does not continue an ``X`` entity starts a new one (counted in
  ``meta["iob_repairs"]``); malformed tags, unknown ids or a length mismatch reject with ``bad_tags``.
- ``mc`` (kz-transformers kazakh-dastur-mc / kazakh-constitution-mc / mmlu-translated-kk:
  ``Question, Option A..D, Correct Answer``; or kazakh-unified-national-testing-mc:
  ``question, A..H, correct_answer``, detected by the ``question`` column). Empty options are
  dropped, the others keep their letters.
- ``custom``: ``source.columns`` maps ``prompt``, ``response`` (required) and ``input``, ``system``
  (optional) to column names.
- ``xlam`` (Salesforce/xlam-function-calling-60k: ``query, tools, answers``) and ``tool-chat``
  (``messages`` with ``tool_calls`` and ``tool`` turns, and ``tools``): kazhpc's Gemma-3 tool format
  (kazhpc.data.tools); ``source.language`` is the queries' language (default kk). Invalid JSON in a
  schema, call or argument rejects with ``bad_tool_json``.

Reject reasons: ``empty_text`` (an empty or whitespace-only prompt or answer; a KazParC row with no
usable direction), ``wrong_type`` (not a string where text is expected, or not a list of tokens /
tags), ``missing_column`` (a row lacks a column the kind reads), ``bad_tags``,
``too_few_choices``, ``answer_not_in_choices``, ``bad_tool_json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kazhpc.config import SourceConfig
from kazhpc.data.records import RawRow, Record, Reject
from kazhpc.errors import KazhpcError

#: Row key under which readers attach ClassLabel names: {column: [name, ...]} (never a data column).
LABEL_NAMES_KEY = "_label_names"

#: Columns each kind needs (``mc``: the MMLU-style schema; `required_columns` knows the UNT one,
#: the KazParC direction languages and the custom mapping).
REQUIRED_COLUMNS: dict[str, set[str]] = {
    "muri-it": {"input", "output"},
    "alpaca": {"instruction", "output"},
    "kazparc": {"kk"},
    "ner-kazakh": {"tokens", "ner_tags"},
    "mc": {"Question", "Option A", "Option B", "Correct Answer"},
    "custom": set(),
    "xlam": {"query", "tools", "answers"},
    "tool-chat": {"messages", "tools"},
}

#: The UNT multiple-choice schema (kazakh-unified-national-testing-mc), told apart by ``question``.
MC_UNT_COLUMNS: set[str] = {"question", "A", "B", "correct_answer"}

#: Canonical fields a custom source may map, and the ones it must.
CUSTOM_FIELDS = ("prompt", "response", "input", "system")

#: KazNERD's IOB2 tags in ClassLabel id order (IS2AI/KazNERD bert/kaznerd.py): the id → name map
#: used when a source gives integer tags without names.
KAZNERD_LABELS: tuple[str, ...] = ("O",) + tuple(
    f"{prefix}-{cls}"
    for cls in (
        "ADAGE", "ART", "CARDINAL", "CONTACT", "DATE", "DISEASE", "EVENT", "FACILITY", "GPE",
        "LANGUAGE", "LAW", "LOCATION", "MISCELLANEOUS", "MONEY", "NON_HUMAN", "NORP", "ORDINAL",
        "ORGANISATION", "PERCENTAGE", "PERSON", "POSITION", "PRODUCT", "PROJECT", "QUANTITY", "TIME",
    )
    for prefix in ("B", "I")
)  # fmt: skip

LANGUAGE_NAMES = {"kk": "қазақ", "en": "ағылшын", "ru": "орыс", "tr": "түрік"}
LANGUAGE_ADVERBS = {"kk": "қазақша", "en": "ағылшынша", "ru": "орысша", "tr": "түрікше"}

NER_INSTRUCTION = (
    "Мына сөйлемдегі атаулы нысандарды тауып, әрқайсысын түрімен бірге жеке жолға "
    "«нысан — ТҮРІ» деп жазыңыз:"
)
NER_NONE = "Бұл сөйлемде атаулы нысандар жоқ."
MC_ANSWER = "Дұрыс жауап: {letter}) {text}"

_LETTERS = "ABCDEFGH"
_CYRILLIC_LETTERS = {"А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H"}  # look-alikes typed for letters
_NO_SPACE_BEFORE = {".", ",", "!", "?", ":", ";", ")", "]", "}", "»", "”", "%", "…"}
_NO_SPACE_AFTER = {"(", "[", "{", "«", "“"}


def translation_instruction(source_lang: str, target_lang: str) -> str:
    """'Төмендегі қазақша сөйлемді ағылшын тіліне аударыңыз:' for kk → en."""
    return f"Төмендегі {LANGUAGE_ADVERBS[source_lang]} сөйлемді {LANGUAGE_NAMES[target_lang]} тіліне аударыңыз:"


def required_columns(source: SourceConfig, columns: Iterable[str] = ()) -> set[str]:
    """The columns ``source`` needs, given the columns the input has (``mc`` has two schemas)."""
    if source.kind == "custom":
        unknown = sorted(set(source.columns) - set(CUSTOM_FIELDS))
        if unknown:
            raise KazhpcError(
                f"source '{source.name}': columns.{unknown[0]}: unknown field; use {', '.join(CUSTOM_FIELDS)}"
            )
        return set(source.columns.values())
    if source.kind == "kazparc":
        return {_language_column(source, lang) for d in source.directions for lang in d.split("-")}
    if source.kind == "mc":
        return mc_schema_columns(columns)
    return set(REQUIRED_COLUMNS[source.kind])


def mc_schema_columns(columns: Iterable[str]) -> set[str]:
    """The columns of the multiple-choice schema a file with ``columns`` is in: the UNT one when it
    has ``question`` and no ``Question``, the MMLU-style one otherwise."""
    present = set(columns)
    if "question" in present and "Question" not in present:
        return set(MC_UNT_COLUMNS)
    return set(REQUIRED_COLUMNS["mc"])


def _language_column(source: SourceConfig, language: str) -> str:
    """A parallel source's column for ``language``: as mapped in ``source.columns``, else the code."""
    return source.columns.get(language, language)


def adapt(source: SourceConfig, source_index: int, row: RawRow) -> list[Record]:
    """The records one row gives; `Reject` when it gives none."""
    adapter = _ADAPTERS[source.kind]
    out: list[Record] = []
    for k, messages, answer_language, languages, meta in adapter(source, row):
        out.append(
            Record(
                source=source.name,
                origin=row.origin,
                order=(source_index, row.index, k),
                messages=messages,
                answer_language=answer_language,
                languages=languages,
                meta=meta,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Field access.


def _text(data: dict[str, Any], column: str, *, required: bool = True) -> str | None:
    """A text cell; None for an absent / null / blank optional one."""
    if column not in data:
        if required:
            raise Reject("missing_column", f"no column '{column}'")
        return None
    value = data[column]
    if value is not None and not isinstance(value, str):
        raise Reject("wrong_type", f"column '{column}' holds {type(value).__name__}, expected text")
    if value is None or not value.strip():
        if required:
            raise Reject("empty_text", f"column '{column}' is empty")
        return None
    return value


def _join(first: str, second: str | None) -> str:
    return first if second is None else f"{first.rstrip()}\n\n{second.strip()}"


def _chat(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


Adapted = tuple[int, list[dict[str, str]], str, tuple[str, ...], dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Kinds.


def _muri(source: SourceConfig, row: RawRow) -> list[Adapted]:
    user = _text(row.data, "input")
    answer = _text(row.data, "output")
    assert user is not None and answer is not None
    return [(0, _chat(user, answer), "kk", ("kk",), {})]


def _alpaca(source: SourceConfig, row: RawRow) -> list[Adapted]:
    instruction = _text(row.data, "instruction")
    extra = _text(row.data, "input", required=False)
    answer = _text(row.data, "output")
    assert instruction is not None and answer is not None
    return [(0, _chat(_join(instruction, extra), answer), "kk", ("kk",), {})]


def _kazparc(source: SourceConfig, row: RawRow) -> list[Adapted]:
    domain = row.data.get("domain")
    out: list[Adapted] = []
    for k, direction in enumerate(source.directions):
        src, tgt = direction.split("-")
        text = _text(row.data, _language_column(source, src), required=False)
        target = _text(row.data, _language_column(source, tgt), required=False)
        if text is None or target is None:
            continue
        user = f"{translation_instruction(src, tgt)}\n\n{text.strip()}"
        meta: dict[str, Any] = {"direction": direction}
        if isinstance(domain, str) and domain:
            meta["domain"] = domain
        out.append((k, _chat(user, target), tgt, (src, tgt), meta))
    if not out:
        raise Reject("empty_text", f"no direction of {', '.join(source.directions)} has both sentences")
    return out


def detokenize(tokens: list[str]) -> str:
    """Tokens joined by spaces, except before closing and after opening punctuation."""
    out = ""
    previous = ""
    for token in tokens:
        if out and token not in _NO_SPACE_BEFORE and previous not in _NO_SPACE_AFTER:
            out += " "
        out += token
        previous = token
    return out


def _tag_names(row: RawRow, tags: list[Any]) -> list[str]:
    names_by_column = row.data.get(LABEL_NAMES_KEY)
    names = names_by_column.get("ner_tags") if isinstance(names_by_column, dict) else None
    names = list(names) if names else list(KAZNERD_LABELS)
    out = []
    for position, tag in enumerate(tags):
        if isinstance(tag, bool) or not isinstance(tag, (int, str)):
            raise Reject("bad_tags", f"tag {position} is {type(tag).__name__}, expected an id or a name")
        if isinstance(tag, int):
            if not 0 <= tag < len(names):
                raise Reject("bad_tags", f"tag id {tag} at {position} is out of range ({len(names)} labels)")
            tag = names[tag]
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
            raise Reject("bad_tags", f"tag {tag!r} at {position} is not IOB2 (O, B-TYPE, I-TYPE)")
        out.append(tag)
    return out


def entities(tokens: list[str], tags: list[str]) -> tuple[list[tuple[str, str]], int]:
    """(entity text, type) in order, and how many I- tags had to start an entity (lenient IOB2)."""
    spans: list[list[Any]] = []  # [start, end, type]
    repairs = 0
    current: list[Any] | None = None
    for i, tag in enumerate(tags):
        if tag == "O":
            current = None
            continue
        prefix, kind = tag[0], tag[2:]
        if prefix == "I" and current is not None and current[2] == kind:
            current[1] = i + 1
            continue
        repairs += prefix == "I"
        current = [i, i + 1, kind]
        spans.append(current)
    return [(detokenize(tokens[s:e]), kind) for s, e, kind in spans], repairs


def _ner(source: SourceConfig, row: RawRow) -> list[Adapted]:
    for column in ("tokens", "ner_tags"):
        if column not in row.data:
            raise Reject("missing_column", f"no column '{column}'")
    tokens, tags = row.data["tokens"], row.data["ner_tags"]
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise Reject("wrong_type", "column 'tokens' must be a list of strings")
    if not isinstance(tags, list):
        raise Reject("wrong_type", "column 'ner_tags' must be a list")
    if not any(t.strip() for t in tokens):
        raise Reject("empty_text", "column 'tokens' is empty")
    if len(tokens) != len(tags):
        raise Reject("bad_tags", f"{len(tokens)} tokens but {len(tags)} tags")
    found, repairs = entities(tokens, _tag_names(row, tags))
    answer = "\n".join(f"{text} — {kind}" for text, kind in found) if found else NER_NONE
    user = f"{NER_INSTRUCTION}\n\n{detokenize(tokens)}"
    # The answer is "entity — LABEL" lines with English labels: identify the sentence's language.
    meta: dict[str, Any] = {"langid_on": "prompt"}
    if repairs:
        meta["iob_repairs"] = repairs
    return [(0, _chat(user, answer), "kk", ("kk",), meta)]


def _mc(source: SourceConfig, row: RawRow) -> list[Adapted]:
    data = row.data
    if "Question" not in data and "question" in data:
        question_col, answer_col, option_col = "question", "correct_answer", "{}"
    else:
        question_col, answer_col, option_col = "Question", "Correct Answer", "Option {}"
    question = _text(data, question_col)
    assert question is not None
    options = {}
    for letter in _LETTERS:
        text = _text(data, option_col.format(letter), required=False)
        if text is not None:
            options[letter] = text.strip()
    if len(options) < 2:
        raise Reject("too_few_choices", f"{len(options)} non-empty option{'s' if len(options) != 1 else ''}")
    raw_answer = _text(data, answer_col)
    assert raw_answer is not None
    letter = raw_answer.strip().upper().rstrip(").")
    letter = _CYRILLIC_LETTERS.get(letter, letter)
    if letter not in options:
        raise Reject(
            "answer_not_in_choices", f"answer {raw_answer.strip()!r} is not one of {', '.join(options)}"
        )
    user = question.strip() + "\n" + "\n".join(f"{key}) {text}" for key, text in options.items())
    answer = MC_ANSWER.format(letter=letter, text=options[letter])
    return [(0, _chat(user, answer), "kk", ("kk",), {})]


def _custom(source: SourceConfig, row: RawRow) -> list[Adapted]:
    columns = source.columns
    prompt = _text(row.data, columns["prompt"])
    answer = _text(row.data, columns["response"])
    assert prompt is not None and answer is not None
    extra = _text(row.data, columns["input"], required=False) if "input" in columns else None
    system = _text(row.data, columns["system"], required=False) if "system" in columns else None
    messages = _chat(_join(prompt, extra), answer)
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    return [(0, messages, "kk", ("kk",), {})]


def _tools(source: SourceConfig, row: RawRow) -> list[Adapted]:
    """xLAM's {query, tools, answers} or a chat row with tool calls, in kazhpc's tool format."""
    from kazhpc.data.tools import BadTool, chat_messages, xlam_messages

    if source.kind == "xlam":
        _text(row.data, "query")
    try:
        messages = xlam_messages(row.data) if source.kind == "xlam" else chat_messages(row.data)
    except BadTool as exc:
        raise Reject("bad_tool_json", str(exc)) from None
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise Reject("empty_text", "no assistant turn to learn")
    # Language ID reads the user's queries: the answers are JSON, the system turn is the tools' schemas.
    queries = [m["content"] for m in messages if m["role"] == "user" and not m["content"].startswith("Құрал нәтижесі")]
    language = source.language or "kk"
    return [(0, messages, language, (language,), {"langid_text": "\n".join(queries)})]


_ADAPTERS = {
    "xlam": _tools,
    "tool-chat": _tools,
    "muri-it": _muri,
    "alpaca": _alpaca,
    "kazparc": _kazparc,
    "ner-kazakh": _ner,
    "mc": _mc,
    "custom": _custom,
}
