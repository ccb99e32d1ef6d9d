"""The Kazakh evaluation suite: task names and builders → lm-eval task configs, checked early.

A task in ``evaluate.tasks`` is one of:

* a kazhpc task shipped in ``kazhpc/evaluation/tasks/`` (the eleven kz-transformers leaderboard
  columns; ``kk-leaderboard`` names them all);
* a task lm-eval ships (``belebele_kaz_Cyrl``, ``include_base_44_kazakh``, ...);
* a builder, driven by config alone: ``kind: mc`` (a user's JSONL of question, choices, answer) or
  ``kind: translation`` (a parallel JSONL; generate, then BLEU and chrF++).

``evaluate.data_overrides`` points any named task at a local copy in the hub schema, so the real
task definition runs offline (tests, air-gapped clusters). Every config is resolved to a plain
lm-eval config dict here; the tasks themselves are built by lm-eval's TaskManager.
"""

from __future__ import annotations

import difflib
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError, jsonl_objects
from kazhpc.evaluation import prompts

if TYPE_CHECKING:
    from kazhpc.config import EvalTaskConfig, EvaluateConfig

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
UNT_SUBJECTS = (
    "kazakh_and_literature_unt_mc",
    "kk_biology_unt_mc",
    "kk_english_unt_mc",
    "kk_geography_unt_mc",
    "kk_history_of_kazakhstan_unt_mc",
    "kk_human_society_rights_unt_mc",
    "kk_world_history_unt_mc",
)
#: Scores pooled over the documents of several tasks (a leaderboard column over all UNT subjects).
COMPOSITES: dict[str, tuple[str, ...]] = {"kk_unified_national_testing_mc": UNT_SUBJECTS}
#: Names that stand for several tasks.
SUITES: dict[str, tuple[str, ...]] = {
    "kk-leaderboard": (
        "mmlu_translated_kk",
        *UNT_SUBJECTS,
        "kk_unified_national_testing_mc",
        "kk_constitution_mc",
        "kk_dastur_mc",
    ),
}
_READERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class TaskSpec:
    """One lm-eval task as kazhpc runs it: its full config and where its data comes from."""

    name: str
    config: dict[str, Any]
    origin: str  # "kazhpc", "lm-eval" or "builder"
    data_file: str | None = None  # a local file (override or builder), checked at preflight
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Suite:
    tasks: list[TaskSpec]
    composites: dict[str, tuple[str, ...]]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]


# --------------------------------------------------------------------------------------------
# Name lookup.


@functools.lru_cache(maxsize=1)
def kazhpc_task_files() -> dict[str, Path]:
    """kazhpc's own task YAMLs by task name."""
    from lm_eval.tasks._yaml_loader import load_yaml

    found = {}
    for path in sorted(TASKS_DIR.glob("*.yaml")):
        raw = load_yaml(path, resolve_func=False, recursive=False)
        if isinstance(raw.get("task"), str) and "group" not in raw:
            found[raw["task"]] = path
    return found


@functools.lru_cache(maxsize=1)
def lm_eval_index() -> dict[str, Any]:
    """Every task, group and tag lm-eval knows (its own plus kazhpc's); ~7 s, so only on demand."""
    from lm_eval.tasks import TaskManager

    return dict(TaskManager(include_path=str(TASKS_DIR)).task_index)


def _unknown(name: str) -> KazhpcError:
    known = list(dict.fromkeys([*SUITES, *COMPOSITES, *kazhpc_task_files(), *lm_eval_index()]))
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    if not close:
        close = [k for k in known if name.lower() in k.lower()][:5]
    hint = f"; closest: {', '.join(close)}" if close else ""
    return KazhpcError(f"evaluate.tasks: unknown task '{name}'{hint}")


def _yaml_config(path: Path) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    return dict(load_yaml(path, resolve_func=True, recursive=True))


def _builtin_config(name: str) -> dict[str, Any]:
    entry = lm_eval_index().get(name)
    if entry is None:
        raise _unknown(name)
    if entry.yaml_path is None or getattr(entry.kind, "name", "") not in ("TASK",):
        raise KazhpcError(
            f"evaluate.tasks: '{name}' is an lm-eval {getattr(entry.kind, 'name', 'entry').lower()}, "
            "not a single YAML task; list its tasks by name"
        )
    return _yaml_config(Path(entry.yaml_path))


# --------------------------------------------------------------------------------------------
# Builders.


def mc_config(task: EvalTaskConfig) -> dict[str, Any]:
    """A leaderboard-protocol multiple-choice task over a user's JSONL (question, choices, answer)."""
    instruction = task.instruction or prompts.INSTRUCTION
    return {
        "task": task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": task.path}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "num_fewshot": 0,
        "doc_to_text": functools.partial(prompts.doc_to_text, instruction=instruction),
        "doc_to_choice": prompts.doc_to_choice,
        "doc_to_target": prompts.doc_to_target,
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "builder": "mc"},
    }


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
    if task.instruction:
        instruction = task.instruction
    elif src in LANGUAGE_NAMES and tgt in LANGUAGE_NAMES:
        instruction = translation_instruction(src, tgt)
    else:
        instruction = f"Translate from {src} into {tgt}:"
    labels = tuple(LANGUAGE_ADVERBS.get(lang, lang).capitalize() for lang in (src, tgt))
    return {
        "task": task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": task.path}},
        "test_split": "test",
        "output_type": "generate_until",
        "num_fewshot": 0,
        "doc_to_text": functools.partial(_translation_text, source=src, instruction=instruction, labels=labels),
        "doc_to_target": functools.partial(_translation_target, target=tgt),
        "target_delimiter": " ",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": task.max_gen_toks},
        "metric_list": [
            {"metric": "bleu", "aggregation": "bleu", "higher_is_better": True},
            {"metric": "chrf++", "aggregation": "chrf++", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0, "builder": "translation", "source_lang": src, "target_lang": tgt},
    }


def _override_data(config: dict[str, Any], path: str) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------
# Resolution.


def resolve(cfg: EvaluateConfig) -> Suite:
    """The suite's tasks in order, each with a full lm-eval config, and its composites."""
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
            build = mc_config if entry.kind == "mc" else translation_config
            add(TaskSpec(entry.name, build(entry), "builder", entry.path))
            continue
        members = COMPOSITES.get(entry) or (None if entry in kazhpc_task_files() else _group_members(entry))
        if members:
            composites[entry] = members
            for member in members:
                add(_named(member, cfg))
            continue
        add(_named(entry, cfg))
    unused = sorted(set(cfg.data_overrides) - seen)
    if unused:
        raise KazhpcError(
            f"evaluate.data_overrides.{unused[0]}: not a task of this suite{_closest(unused[0], seen)}"
        )
    return Suite(specs, composites)


def _closest(name: str, options: Any) -> str:
    match = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _group_members(name: str) -> tuple[str, ...] | None:
    """The task names of an lm-eval group (include_base_44_kazakh); scored pooled, like COMPOSITES."""
    entry = lm_eval_index().get(name)
    if entry is None or getattr(entry.kind, "name", "") != "GROUP":
        return None
    members = (entry.cfg or {}).get("task")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise KazhpcError(f"evaluate.tasks: lm-eval group '{name}' does not list plain task names; list its tasks")
    return tuple(members)


def _named(name: str, cfg: EvaluateConfig) -> TaskSpec:
    own = kazhpc_task_files()
    if name in own:
        config, origin = _yaml_config(own[name]), "kazhpc"
    else:
        config, origin = _builtin_config(name), "lm-eval"
    config.pop("tag", None)
    config.pop("group", None)
    local = cfg.data_overrides.get(name)
    if local is not None:
        config = _override_data(config, local)
    return TaskSpec(name, config, origin, local)


# --------------------------------------------------------------------------------------------
# Checks on local data (preflight) and on every task's documents (before a model loads).


def check_local_file(path: str, what: str) -> None:
    """A local data file exists and is not empty (JSONL: has a row)."""
    p = Path(path)
    if not p.is_file():
        raise KazhpcError(f"{what}: {path}: file not found")
    if p.stat().st_size == 0 or (p.suffix == ".jsonl" and not p.read_text(encoding="utf-8").strip()):
        raise KazhpcError(f"{what}: {path}: empty file (no rows)")
    if p.suffix == ".jsonl":
        for _ in jsonl_objects(p.read_text(encoding="utf-8").splitlines(), path):
            pass  # every row parses as an object, or the first that does not is named


def check_documents(task: Any, spec: TaskSpec) -> None:
    """Render every document's prompt, choices and target; the first failure names file and row."""
    where = spec.data_file or f"{spec.config.get('dataset_path')} ({spec.config.get('test_split')} split)"
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
        except (prompts.BadItem, KeyError, ValueError, TypeError, IndexError) as exc:
            detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise KazhpcError(f"{where}: row {row + 1}: task {spec.name}: {detail}") from None


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
        except Exception as exc:  # noqa: BLE001 - datasets raises many types for a missing hub set
            if type(exc).__name__ in ("DatasetNotFoundError", "ConnectionError", "OfflineModeIsEnabled", "HfHubHTTPError"):
                raise KazhpcError(
                    f"task {spec.name}: data set '{spec.config.get('dataset_path')}' is not available "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); download it on a login node "
                    f"(HF_HOME) or give a local copy in evaluate.data_overrides.{spec.name}"
                ) from None
            raise
        task = loaded[spec.name]
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        tasks[spec.name] = task
    return tasks


def preflight(cfg: EvaluateConfig) -> Suite:
    """Resolve names and check every local file; raises on the first problem."""
    suite = resolve(cfg)
    for spec in suite.tasks:
        if spec.data_file is not None:
            what = f"evaluate.data_overrides.{spec.name}" if spec.origin != "builder" else f"evaluate.tasks[{spec.name}].path"
            check_local_file(spec.data_file, what)
    local = [s for s in suite.tasks if s.data_file is not None]
    if local:
        for name, task in load_tasks(local).items():
            check_documents(task, next(s for s in local if s.name == name))
    return suite


def chance_of(spec_task: Any, num_choices: list[int]) -> float | None:
    """Mean over items of 1/choices for multiple choice; None for generation tasks."""
    if spec_task.OUTPUT_TYPE != "multiple_choice" or not num_choices:
        return None
    return sum(1.0 / n for n in num_choices) / len(num_choices)

