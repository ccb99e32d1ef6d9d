"""The Kazakh evaluation suite: task names and builders → lm-eval task configs, checked early.

A task in ``evaluate.tasks`` is one of:

* a kazhpc task shipped in ``kazhpc/evaluation/tasks/`` (the eleven kz-transformers leaderboard
  columns; ``kk-leaderboard`` names them all);
* a task lm-eval ships (``belebele_kaz_Cyrl``, ``include_base_44_kazakh``, ...);
* a builder, driven by config alone: ``kind: mc`` (a user's file of question, choices, answer),
  ``kind: translation`` (a parallel file; generate, then BLEU and chrF++), ``kind: ifeval``
  (Kazakh verifiable instructions, kazhpc.evaluation.ifeval), ``kind: open`` (free answers
  against references, kazhpc.evaluation.open_answers), ``kind: tool`` (function calls,
  kazhpc.evaluation.tool_calls) or ``kind: judge`` (a judge model's pairwise preference,
  kazhpc.evaluation.judge). ``columns`` maps those
  fields to the file's own column names (a COPA-style ``premise``, ``choice1``, ``choice2``,
  ``label``; a corpus with ``Kazakh`` and ``English`` columns), ``answer_format`` says how the
  answer names its choice (0-based index, letter, 1-based number).

``evaluate.data_overrides`` points any named task at a local copy in the hub schema, so the real
task definition runs offline (tests, air-gapped clusters). Every config is resolved to a plain
lm-eval config dict here; the tasks themselves are built by lm-eval's TaskManager.

Local files are checked at preflight, before any model loads: every row read with
kazhpc.data.readers (so a row is named ``file:line``, or ``file#row`` for Parquet and JSON arrays),
the columns the task reads present (the closest present name suggested), and every document
rendered; a bad row, first or last, is one line naming its file, line and task.

Which names exist is :mod:`kazhpc.evaluation.catalog`; the builders and the data overrides are
:mod:`kazhpc.evaluation.builders`. This module resolves ``evaluate`` to the suite's
:class:`TaskSpec` list, checks local files and documents, and builds lm-eval's Task objects.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.config import suggest
from kazhpc.data.adapters import mc_schema_columns
from kazhpc.errors import KazhpcError
from kazhpc.evaluation import prompts
from kazhpc.evaluation.builders import (
    as_is, mc_config, mc_reader, override_data, render_builder_row, translation_config,
)  # fmt: skip
from kazhpc.evaluation.catalog import (
    COMPOSITES, SUITES, TASKS_DIR, builtin_config, group_members, kazhpc_task_files, yaml_config,
)  # fmt: skip

from kazhpc.evaluation.ifeval import builtin_path as ifeval_builtin
from kazhpc.evaluation.ifeval import check_row as check_ifeval_row
from kazhpc.evaluation.ifeval import ifeval_config
from kazhpc.evaluation.open_answers import HELDOUT_FILE, open_config
from kazhpc.evaluation.open_answers import check_row as check_open_row
from kazhpc.evaluation.tool_calls import builtin_path as tool_builtin
from kazhpc.evaluation.tool_calls import check_row as check_tool_row
from kazhpc.evaluation.tool_calls import tool_config

if TYPE_CHECKING:
    from kazhpc.config import EvalTaskConfig, EvaluateConfig

log = logging.getLogger(__name__)

#: What a document can raise while lm-eval renders it: the row is bad, not the code.
_DOC_ERRORS: tuple[type[BaseException], ...] = (prompts.BadItem, KeyError, ValueError, TypeError, IndexError)


@dataclass
class TaskSpec:
    """One lm-eval task as kazhpc runs it: its full config and where its data comes from."""

    name: str
    config: dict[str, Any]
    origin: str  # "kazhpc", "lm-eval" or "builder"
    data_file: str | None = None  # a local file (override or builder), checked at preflight
    extra: dict[str, Any] = field(default_factory=dict)
    builder: EvalTaskConfig | None = None  # the evaluate.tasks entry a builder task comes from

    @property
    def key(self) -> str:
        """The config key that names this task's local file."""
        return f"evaluate.tasks[{self.name}].path" if self.builder is not None else f"evaluate.data_overrides.{self.name}"


@dataclass
class Suite:
    tasks: list[TaskSpec]
    composites: dict[str, tuple[str, ...]]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]


# --------------------------------------------------------------------------------------------
# Resolution.


def resolve(cfg: EvaluateConfig, heldout: Path | None = None) -> Suite:
    """The suite's tasks in order, each with a full lm-eval config, and its composites.

    ``heldout``: the file an ``open`` task without a path reads (kazhpc.evaluation.open_answers);
    until the run writes it, such a task has no data file and preflight leaves it to the run."""
    from kazhpc.config import EvalTaskConfig

    names: list[str | EvalTaskConfig] = []
    for entry in cfg.tasks:
        if isinstance(entry, str) and entry in SUITES:
            names += list(SUITES[entry])
        else:
            names.append(entry)
    specs: list[TaskSpec] = []
    composites: dict[str, tuple[str, ...]] = {}
    seen: set[str] = set()

    def add(spec: TaskSpec) -> None:
        if spec.name in seen:
            return
        seen.add(spec.name)
        specs.append(spec)

    for entry in names:
        if isinstance(entry, EvalTaskConfig):
            if entry.kind in ("open", "judge"):
                data = entry.path or (str(heldout) if heldout is not None else None)
                add(TaskSpec(entry.name, open_config(entry, data or HELDOUT_FILE), "builder", data, builder=entry))
                continue
            build = {"mc": mc_config, "translation": translation_config, "ifeval": ifeval_config, "tool": tool_config}[entry.kind]
            shipped = {"ifeval": ifeval_builtin, "tool": tool_builtin}.get(entry.kind)
            add(TaskSpec(entry.name, build(entry), "builder", entry.path or (shipped() if shipped else None), builder=entry))
            continue
        members = COMPOSITES.get(entry) or (None if entry in kazhpc_task_files() else group_members(entry))
        if members:
            composites[entry] = members
            for member in members:
                add(_named(member, cfg))
            continue
        add(_named(entry, cfg))
    unused = sorted(set(cfg.data_overrides) - seen)
    if unused:
        raise KazhpcError(
            f"evaluate.data_overrides.{unused[0]}: not a task of this suite{suggest(unused[0], sorted(seen))}"
        )
    return Suite(specs, composites)



def _named(name: str, cfg: EvaluateConfig) -> TaskSpec:
    own = kazhpc_task_files()
    if name in own:
        config, origin = yaml_config(own[name]), "kazhpc"
    else:
        config, origin = builtin_config(name), "lm-eval"
    config.pop("tag", None)
    config.pop("group", None)
    local = cfg.data_overrides.get(name)
    if local is not None:
        config = override_data(config, local)
    return TaskSpec(name, config, origin, local)


# --------------------------------------------------------------------------------------------
# Checks on local data (preflight) and on every task's documents (before a model loads).


def check_local_file(spec: TaskSpec) -> list[str]:
    """Read every row of a task's local file; check the columns the task reads and, for a builder,
    every row's item. Returns the rows' origins (``file:line``, ``file#row``) in document order."""
    from kazhpc.data.readers import BadRow, iter_file, missing_columns

    assert spec.data_file is not None
    path = spec.data_file
    if not Path(path).exists():
        raise KazhpcError(f"{spec.key}: {path}: file not found")
    columns: list[str] = []
    origins: list[str] = []
    for row in iter_file(path, columns.extend, owner=spec.key):
        if isinstance(row, BadRow):  # lm-eval reads the whole file: one bad row and it cannot
            what = {"malformed_json": "malformed JSON", "malformed_csv": "malformed CSV"}.get(row.reason, row.reason)
            raise KazhpcError(f"{row.origin}: {what}: {row.detail} ({spec.key})")
        if len(origins) == 0:
            required, key = _columns_read(spec, columns)
            problem = missing_columns(columns, required)
            if problem:
                raise KazhpcError(f"{path}: {key}: {problem}")
        if spec.builder is not None:
            try:
                check_builder_row(spec.builder, row.data)
            except prompts.BadItem as exc:
                raise KazhpcError(f"{row.origin}: task {spec.name}: {exc}") from None
        origins.append(row.origin)
    return origins


def check_builder_row(task: EvalTaskConfig, row: dict[str, Any]) -> None:
    """A builder task's checks of one row of its file (prompts.BadItem says what is wrong)."""
    if task.kind == "ifeval":
        check_ifeval_row(row)
    elif task.kind == "tool":
        check_tool_row(row)
    elif task.kind in ("open", "judge"):
        check_open_row(task, row)
    else:
        render_builder_row(task, row)


def _columns_read(spec: TaskSpec, present: list[str]) -> tuple[set[str], str]:
    """The columns ``spec`` reads from its file, and the config key to name when one is missing."""
    task = spec.builder
    if task is not None:
        key = f"evaluate.tasks[{spec.name}]" + (".columns" if task.columns else "")
        if task.kind == "ifeval":
            return {"prompt", "instruction_id_list", "kwargs"}, key
        if task.kind in ("open", "judge"):
            return {str(task.column("prompt")), *([str(task.column("reference"))] if task.kind == "open" else [])}, key
        if task.kind == "tool":
            return {"query", "tools", "answers"}, key
        if task.kind == "translation":
            return {str(task.column(task.source_lang)), str(task.column(task.target_lang))}, key
        choices = task.column("choices")
        if mc_reader(task) is as_is and "choices" not in present and _leaderboard_schema(present):
            return mc_schema_columns(present), key
        return {str(task.column("question")), str(task.column("answer")), *([choices] if isinstance(choices, str) else choices)}, key
    if spec.origin == "kazhpc":  # the leaderboard protocol reads the MMLU-style or the UNT schema
        return mc_schema_columns(present), spec.key
    return _template_columns(spec.config), spec.key


def _leaderboard_schema(present: list[str]) -> bool:
    return "Question" in present or {"A", "B", "correct_answer"} <= set(present)


def _template_columns(config: dict[str, Any]) -> set[str]:
    """The document fields an lm-eval task's Jinja templates read (none known when it rewrites its
    documents first with process_docs, or renders them with Python functions)."""
    import jinja2
    import jinja2.meta

    if config.get("process_docs") is not None:
        return set()
    env = jinja2.Environment()
    names: set[str] = set()
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        value = config.get(key)
        for template in value if isinstance(value, list) else [value]:
            if isinstance(template, str) and ("{{" in template or "{%" in template):
                names |= jinja2.meta.find_undeclared_variables(env.parse(template))
    return names - set(env.globals)


def _row_origin(spec: TaskSpec, row: int) -> str:
    """``file:line`` (or ``file#row``) of document ``row`` (0-based) of the task's local file."""
    from kazhpc.data.readers import RawRow, iter_file

    if spec.data_file is None:
        return f"{spec.config.get('dataset_path')} ({spec.config.get('test_split')} split): row {row + 1}"
    good = (r for r in iter_file(spec.data_file) if isinstance(r, RawRow))
    found = next(itertools.islice(good, row, None), None)
    return found.origin if found is not None else f"{spec.data_file}: row {row + 1}"


def check_documents(task: Any, spec: TaskSpec) -> None:
    """Render every document's prompt, choices and target; the first failure names file and line."""
    is_mc = task.OUTPUT_TYPE == "multiple_choice"
    for row, doc in enumerate(task.eval_docs):
        try:
            task.doc_to_text(doc)
            target = task.doc_to_target(doc)
            if is_mc:
                choices = task.doc_to_choice(doc)
                if isinstance(target, int) and not 0 <= target < len(choices):
                    raise prompts.BadItem(f"target {target} is not among {len(choices)} choices")
                if isinstance(target, str) and target not in choices:
                    raise prompts.BadItem(f"target {target!r} is not one of the choices")
            elif not str(target).strip():
                raise prompts.BadItem("the reference is empty")
        except _doc_errors() as exc:
            raise KazhpcError(f"{_row_origin(spec, row)}: task {spec.name}: {_doc_problem(exc)}") from None


def _doc_errors() -> tuple[type[BaseException], ...]:
    import jinja2

    return (*_DOC_ERRORS, jinja2.TemplateError)


def _doc_problem(exc: BaseException) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)


def load_tasks(specs: list[TaskSpec]) -> dict[str, Any]:
    """lm-eval Task objects for the specs, built from their full configs (no defaults index needed)."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    tasks = {}
    for spec in specs:
        try:
            loaded = manager.load([dict(spec.config)])["tasks"]
        except FileNotFoundError as exc:
            raise KazhpcError(f"task {spec.name}: data set not found: {exc}") from None
        except _doc_errors() as exc:
            if spec.data_file is None:
                raise
            # lm-eval renders the first document while it builds the task (ConfigurableTask.__init__)
            raise KazhpcError(f"{_row_origin(spec, 0)}: task {spec.name}: {_doc_problem(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for a missing hub set
            if type(exc).__name__ in ("DatasetNotFoundError", "ConnectionError", "OfflineModeIsEnabled", "HfHubHTTPError"):
                raise KazhpcError(
                    f"task {spec.name}: data set '{spec.config.get('dataset_path')}' is not available "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); download it on a login node "
                    f"(HF_HOME) or give a local copy in evaluate.data_overrides.{spec.name}"
                ) from None
            if spec.data_file is not None and type(exc).__name__ in ("DatasetGenerationError", "ArrowInvalid"):
                cause = exc.__cause__ or exc
                raise KazhpcError(
                    f"{spec.data_file}: {spec.key}: the data set loader cannot read it "
                    f"({type(cause).__name__}: {str(cause).strip().splitlines()[0][:200] if str(cause).strip() else ''})"
                ) from None
            raise
        task = loaded[spec.name]
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        tasks[spec.name] = task
    return tasks


def preflight(cfg: EvaluateConfig) -> Suite:
    """Resolve names and check every local file, row by row; raises on the first problem."""
    suite = resolve(cfg)
    local = [s for s in suite.tasks if s.data_file is not None]
    for spec in local:
        check_local_file(spec)
    if local:
        for name, task in _quietly(load_tasks, local).items():
            check_documents(task, next(s for s in local if s.name == name))
    return suite


def _quietly(function: Any, *args: Any) -> Any:
    """``function(*args)`` without datasets' progress bars (a check's output is its verdict)."""
    from datasets.utils import logging as datasets_logging

    shown = datasets_logging.is_progress_bar_enabled()
    datasets_logging.disable_progress_bar()
    try:
        return function(*args)
    finally:
        if shown:
            datasets_logging.enable_progress_bar()


def chance_of(spec_task: Any, num_choices: list[int]) -> float | None:
    """Mean over items of 1/choices for multiple choice; None for generation tasks."""
    if spec_task.OUTPUT_TYPE != "multiple_choice" or not num_choices:
        return None
    return sum(1.0 / n for n in num_choices) / len(num_choices)

