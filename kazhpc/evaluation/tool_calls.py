"""``kind: tool``: held-out function calls, asked in kazhpc's Gemma-3 tool format and scored per call.

Rows use xLAM's layout (``query``, ``tools``, ``answers``; kazhpc.data.tools). With no ``path`` the
task reads kazhpc's own Kazakh queries (``kazhpc/resources/kk-tools.jsonl``, written for this
project). The prompt is the one preprocess trains on: the tool schemas, then the query, through the
chat template. The first JSON list or object in the answer is read as the calls. Per item:

* ``call_exact`` (the headline): the same calls as the reference, in any order, with the same
  names and exactly the same arguments.
* ``valid_json``: the answer holds calls at all.
* ``name_match``: the same function names, each as many times as in the reference.
* ``arg_accuracy``: the share of the reference's arguments that the model gave with the same value.
  Each reference call is paired with the model's first unpaired call of the same name.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Any

from kazhpc.data.tools import BadTool, calls_list, parse_calls, query_prompt, render_calls, tools_list
from kazhpc.evaluation.builders import chat_generation, shipped_file
from kazhpc.evaluation.prompts import BadItem

if TYPE_CHECKING:
    from kazhpc.config import EvalTaskConfig

BUILTIN_FILE = "kk-tools.jsonl"
METRICS = ("call_exact", "valid_json", "name_match", "arg_accuracy")


def builtin_path() -> str:
    return shipped_file(BUILTIN_FILE)


def _prompt(doc: dict[str, Any]) -> str:
    return query_prompt(str(doc["query"]).strip(), tools_list(doc["tools"]))


def _target(doc: dict[str, Any]) -> str:
    return render_calls(calls_list(doc["answers"]))


def _canonical(call: dict[str, Any]) -> str:
    return json.dumps(call, ensure_ascii=False, sort_keys=True)


def score_calls(predicted: list[dict[str, Any]] | None, reference: list[dict[str, Any]]) -> dict[str, Any]:
    """The four per-item metrics of the module docstring."""
    if predicted is None:
        return {"call_exact": False, "valid_json": False, "name_match": False, "arg_accuracy": 0.0}
    unpaired = list(predicted)
    matched = total = 0
    for ref in reference:
        total += len(ref["arguments"])
        mate = next((c for c in unpaired if c["name"] == ref["name"]), None)
        if mate is None:
            continue
        unpaired.remove(mate)
        matched += sum(1 for k, v in ref["arguments"].items() if k in mate["arguments"] and mate["arguments"][k] == v)
    names = Counter(c["name"] for c in predicted) == Counter(c["name"] for c in reference)
    exact = sorted(map(_canonical, predicted)) == sorted(map(_canonical, reference))
    return {"call_exact": exact, "valid_json": True, "name_match": names,
            "arg_accuracy": matched / total if total else float(names)}  # fmt: skip


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    return score_calls(parse_calls(results[0]), calls_list(doc["answers"]))


def tool_config(task: EvalTaskConfig) -> dict[str, Any]:
    return chat_generation(
        task.name, task.path or builtin_path(), task.max_gen_toks or 128, "tool",
        doc_to_text=_prompt, doc_to_target=_target, process_results=process_results,
        metric_list=[{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in METRICS],
    )


def check_row(row: dict[str, Any]) -> None:
    """BadItem naming what is wrong: the query, the tool schemas, the reference calls, or a call
    to a function the row's tools do not offer."""
    query = row.get("query")
    if not isinstance(query, str) or not query.strip():
        raise BadItem("'query' must be a non-empty string")
    try:
        tools = tools_list(row.get("tools"))
        calls = calls_list(row.get("answers"))
    except BadTool as exc:
        raise BadItem(str(exc)) from None
    offered = {t["name"] for t in tools}
    for call in calls:
        if call["name"] not in offered:
            raise BadItem(f"'answers' calls '{call['name']}', which is not among the row's tools ({', '.join(sorted(offered))})")
