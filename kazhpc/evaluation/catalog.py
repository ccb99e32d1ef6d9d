"""The task names the evaluation suite knows: kazhpc's own task YAMLs, lm-eval's index, suites, composites.

A name in ``evaluate.tasks`` is looked up here: a suite (``kk-leaderboard``) stands for several
tasks, a composite (the UNT subjects pooled) is scored over its members' documents, and any other
name is one of kazhpc's task YAMLs in ``kazhpc/evaluation/tasks/`` or a task lm-eval ships. An
unknown name is one line with the closest known ones. lm-eval's index takes ~7 s to build, so it
is built once, and only when a name is not kazhpc's own.
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path
from typing import Any

from kazhpc.errors import KazhpcError

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


def yaml_config(path: Path) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    return dict(load_yaml(path, resolve_func=True, recursive=True))


def builtin_config(name: str) -> dict[str, Any]:
    entry = lm_eval_index().get(name)
    if entry is None:
        raise _unknown(name)
    if entry.yaml_path is None or getattr(entry.kind, "name", "") not in ("TASK",):
        raise KazhpcError(
            f"evaluate.tasks: '{name}' is an lm-eval {getattr(entry.kind, 'name', 'entry').lower()}, "
            "not a single YAML task; list its tasks by name"
        )
    return yaml_config(Path(entry.yaml_path))


def group_members(name: str) -> tuple[str, ...] | None:
    """The task names of an lm-eval group (include_base_44_kazakh); scored pooled, like COMPOSITES."""
    entry = lm_eval_index().get(name)
    if entry is None or getattr(entry.kind, "name", "") != "GROUP":
        return None
    members = (entry.cfg or {}).get("task")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise KazhpcError(f"evaluate.tasks: lm-eval group '{name}' does not list plain task names; list its tasks")
    return tuple(members)
