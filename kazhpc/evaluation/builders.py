"""lm-eval task configs over local files: the ``mc`` and ``translation`` builders, and data overrides.

A builder task is driven by config alone (``evaluate.tasks`` entries with ``kind: mc`` or ``kind:
translation``): :func:`mc_config` turns a user's file of question, choices and answer into a
leaderboard-protocol multiple-choice task, :func:`translation_config` a parallel file into a
greedy generation scored with BLEU and chrF++. ``columns`` maps the fields to the file's own
column names and ``answer_format`` says how the answer names its choice (:func:`mc_item`).
:func:`override_data` points a named task at a local copy in the hub schema
(``evaluate.data_overrides``). :func:`render_builder_row` makes of one row the checks lm-eval's
rendering would, with kazhpc's messages, so that :mod:`kazhpc.evaluation.suite` can check a
file row by row before a model loads.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError
from kazhpc.evaluation import prompts

if TYPE_CHECKING:
    from kazhpc.config import EvalTaskConfig

_READERS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


# --------------------------------------------------------------------------------------------
# Builders.


def mc_config(task: EvalTaskConfig) -> dict[str, Any]:
    """A leaderboard-protocol multiple-choice task over a user's file (question, choices, answer)."""
    instruction = task.instruction or prompts.INSTRUCTION
    item = mc_reader(task)
    return {
        "task": task.name,
        **_data_file(task.path),
        "test_split": "test",
        "output_type": "multiple_choice",
        "num_fewshot": 0,
        "doc_to_text": functools.partial(_mc_text, item=item, instruction=instruction),
        "doc_to_choice": functools.partial(_mc_choices, item=item),
        "doc_to_target": functools.partial(_mc_target, item=item),
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "builder": "mc"},
    }


def shipped_file(name: str) -> str:
    """The path of a task file kazhpc ships in ``kazhpc/resources`` (the instruction kinds' defaults)."""
    from importlib import resources

    return str(resources.files("kazhpc").joinpath("resources", name))


def chat_generation(name: str, path: str, max_gen_toks: int, builder: str, meta: dict[str, Any] | None = None,
                    **fields: Any) -> dict[str, Any]:  # fmt: skip
    """A greedy generate_until task over a local file, its prompts asked through the chat template
    (the instruction kinds: ifeval, open, tool, judge; kazhpc.evaluation.sharding applies it)."""
    return {
        "task": name,
        **_data_file(path),
        "test_split": "test",
        "output_type": "generate_until",
        "num_fewshot": 0,
        "generation_kwargs": {"until": [], "do_sample": False, "max_gen_toks": max_gen_toks},
        **fields,
        "metadata": {"version": 1.0, "builder": builder, "chat": True, **(meta or {})},
    }


def _data_file(path: str) -> dict[str, Any]:
    reader = _READERS.get(Path(path).suffix.lower(), "json")  # another suffix fails at preflight, named
    return {"dataset_path": reader, "dataset_kwargs": {"data_files": {"test": path}}}


def mc_reader(task: EvalTaskConfig) -> Any:
    """doc → the row prompts.normalize reads. Without columns or answer_format the row is passed
    as it is: the {question, choices, answer} schema, or a copy in a leaderboard schema (MMLU, UNT)."""
    if not task.columns and task.answer_format == "auto":
        return as_is
    return functools.partial(
        mc_item, question=task.column("question"), choices=task.column("choices"),
        answer=task.column("answer"), answer_format=task.answer_format,
    )  # fmt: skip


def as_is(doc: dict[str, Any]) -> dict[str, Any]:
    """The row unchanged: already in the {question, choices, answer} or a leaderboard schema."""
    return doc


def mc_item(
    doc: dict[str, Any], *, question: str, choices: str | list[str], answer: str, answer_format: str
) -> dict[str, Any]:
    """A row in a task file's own columns → the ``{question, choices, answer}`` row of the
    leaderboard protocol (kazhpc.evaluation.prompts), the answer as a 0-based index or a letter.

    ``choices`` is one column holding a list, or several columns, one option each (COPA's
    ``choice1``, ``choice2``). ``answer_format``: ``index`` (0-based), ``letter`` (A, B, ...; Cyrillic
    look-alikes too), ``number`` (1-based), ``auto`` (an integer is an index, anything else a letter).
    Raises `prompts.BadItem` saying what is wrong with the row (the caller names file and line).
    """
    for column in (question, answer, *([choices] if isinstance(choices, str) else choices)):
        if column not in doc:
            raise prompts.BadItem(f"no column '{column}'")
    if isinstance(choices, str):
        options = doc[choices]
        if not isinstance(options, list):
            raise prompts.BadItem(f"column '{choices}' holds {type(options).__name__}, expected a list of options")
    else:
        options = [doc[c] for c in choices]
        empty = [c for c, o in zip(choices, options) if o is None or not str(o).strip()]
        if empty:
            raise prompts.BadItem(f"option column '{empty[0]}' is empty")
    raw = doc[answer]
    text = "" if raw is None else str(raw).strip()
    if answer_format != "auto" and not text:
        raise prompts.BadItem(f"the answer (column '{answer}') is empty")
    if answer_format in ("index", "number"):
        first, what = (0, "a 0-based index") if answer_format == "index" else (1, "a 1-based number")
        if isinstance(raw, bool) or not text.lstrip("-").isdigit():
            raise prompts.BadItem(f"answer {raw!r} is not {what} (answer_format: {answer_format})")
        if not first <= int(text) < first + len(options):
            raise prompts.BadItem(
                f"answer {int(text)} is not among the {len(options)} choices ({first}–{first + len(options) - 1})"
            )
        raw = int(text) - first
    elif answer_format == "letter" and (isinstance(raw, (int, float)) or text.isdigit()):
        raise prompts.BadItem(f"answer {raw!r} is not a letter A, B, ... (answer_format: letter)")
    # auto: prompts reads an integer (or digits) as a 0-based index, anything else as a letter
    return {"question": doc[question], "choices": list(options), "answer": raw}


def _mc_text(doc: dict[str, Any], *, item: Any, instruction: str) -> str:
    return prompts.doc_to_text(item(doc), instruction=instruction)


def _mc_choices(doc: dict[str, Any], *, item: Any) -> list[str]:
    return prompts.doc_to_choice(item(doc))


def _mc_target(doc: dict[str, Any], *, item: Any) -> int:
    return prompts.doc_to_target(item(doc))


def _translation_text(doc: dict[str, Any], *, source: str, instruction: str, labels: tuple[str, str]) -> str:
    # "Қазақша: ...\nАғылшынша:" makes a base model answer on the same line (a bare "Аударма:" line
    # made Gemma-3-270M start with a newline, i.e. an empty translation).
    return f"{instruction}\n{labels[0]}: {_field(doc, source)}\n{labels[1]}:"


def _translation_target(doc: dict[str, Any], *, target: str) -> str:
    return _field(doc, target)


def _field(doc: dict[str, Any], name: str) -> str:
    """A text field of a parallel row; a missing or empty one is a BadItem (the check names the row)."""
    value = doc.get(name)
    if value is None or not str(value).strip():
        raise prompts.BadItem(f"missing field '{name}'" if value is None else f"field '{name}' is empty")
    return str(value).strip()


def translation_config(task: EvalTaskConfig) -> dict[str, Any]:
    """Generate a translation greedily up to the line end; BLEU and chrF++ from sacrebleu via lm-eval."""
    from kazhpc.data.adapters import LANGUAGE_ADVERBS, LANGUAGE_NAMES, translation_instruction

    src, tgt = task.source_lang, task.target_lang
    src_column, tgt_column = task.column(src), task.column(tgt)
    if task.instruction:
        instruction = task.instruction
    elif src in LANGUAGE_NAMES and tgt in LANGUAGE_NAMES:
        instruction = translation_instruction(src, tgt)
    else:
        instruction = f"Translate from {src} into {tgt}:"
    labels = tuple(LANGUAGE_ADVERBS.get(lang, lang).capitalize() for lang in (src, tgt))
    return {
        "task": task.name,
        **_data_file(task.path),
        "test_split": "test",
        "output_type": "generate_until",
        "num_fewshot": 0,
        "doc_to_text": functools.partial(_translation_text, source=src_column, instruction=instruction, labels=labels),
        "doc_to_target": functools.partial(_translation_target, target=tgt_column),
        "target_delimiter": " ",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": task.max_gen_toks or 64},
        "metric_list": [
            {"metric": "bleu", "aggregation": "bleu", "higher_is_better": True},
            {"metric": "chrf++", "aggregation": "chrf++", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0, "builder": "translation", "source_lang": src, "target_lang": tgt},
    }


def override_data(config: dict[str, Any], path: str) -> dict[str, Any]:
    """Point every split the task names at one local file in the hub schema."""
    reader = _READERS.get(Path(path).suffix.lower())
    if reader is None:
        raise KazhpcError(
            f"evaluate.data_overrides.{config['task']}: {path}: unsupported file type; use "
            + ", ".join(_READERS)
        )
    splits = {config.get(k) for k in ("training_split", "validation_split", "test_split", "fewshot_split")}
    fewshot = config.get("fewshot_config") or {}
    splits.add(fewshot.get("split") if isinstance(fewshot, dict) else None)
    splits.discard(None)
    config = dict(config)
    config.update(
        dataset_path=reader,
        dataset_name=None,
        dataset_kwargs={"data_files": {split: path for split in sorted(splits)}},
    )
    return config


def render_builder_row(task: EvalTaskConfig, row: dict[str, Any]) -> None:
    """The checks lm-eval's rendering would make of one row of a builder task, with kazhpc's messages."""
    if task.kind == "translation":
        _field(row, str(task.column(task.source_lang)))
        _field(row, str(task.column(task.target_lang)))
        return
    prompts.normalize(mc_reader(task)(row))
