"""``kind: tool``: the prompt is the training format, calls are read from the answer and scored per
call and per argument, and a bad row in a user's file is named by file and line at preflight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TOOLS = [{"name": "ауа_райы", "parameters": {"қала": {"type": "string"}, "күн": {"type": "string"}}},
         {"name": "аудару", "parameters": {"мәтін": {"type": "string"}, "тіл": {"type": "string"}}}]  # fmt: skip
REF = [{"name": "ауа_райы", "arguments": {"қала": "Тараз", "күн": "ертең"}},
       {"name": "аудару", "arguments": {"мәтін": "сәлем", "тіл": "en"}}]  # fmt: skip


def row(**change) -> dict:
    base = {"query": "Таразда ертең ауа райы қандай? «Сәлем» сөзін ағылшыншаға аудар.",
            "tools": json.dumps(TOOLS, ensure_ascii=False), "answers": json.dumps(REF, ensure_ascii=False)}  # fmt: skip
    return {**base, **change}


def test_calls_are_read_from_the_answer_and_scored_per_call_and_per_argument() -> None:
    from kazhpc.evaluation.tool_calls import process_results

    swapped = json.dumps(list(reversed(REF)), ensure_ascii=False)
    assert process_results(row(), [f"Міне шақырулар:\n{swapped}\nБолды."]) == {
        "call_exact": True, "valid_json": True, "name_match": True, "arg_accuracy": 1.0}  # fmt: skip
    one_wrong = [{"name": "ауа_райы", "arguments": {"қала": "Тараз", "күн": "бүгін"}}, REF[1]]
    assert process_results(row(), [json.dumps(one_wrong, ensure_ascii=False)]) == {
        "call_exact": False, "valid_json": True, "name_match": True, "arg_accuracy": 0.75}  # fmt: skip
    only_first = [{"name": "ауа_райы", "arguments": {"қала": "Тараз", "күн": "ертең", "артық": 1}}]
    assert process_results(row(), [json.dumps(only_first, ensure_ascii=False)]) == {
        "call_exact": False, "valid_json": True, "name_match": False, "arg_accuracy": 0.5}  # fmt: skip
    assert process_results(row(), ["Кешіріңіз, білмеймін."])["valid_json"] is False
    openai = json.dumps([{"function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
                         for c in REF], ensure_ascii=False)  # fmt: skip
    assert process_results(row(), [openai])["call_exact"] is True  # arguments as a JSON string, as OpenAI writes them


def test_the_prompt_is_what_the_chat_template_makes_of_a_training_row(gemma_tokenizer) -> None:
    from kazhpc.data.tools import xlam_messages
    from kazhpc.evaluation.tool_calls import _prompt

    messages = xlam_messages(row())
    trained = gemma_tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    asked = gemma_tokenizer.apply_chat_template([{"role": "user", "content": _prompt(row())}], tokenize=False,
                                                add_generation_prompt=True)  # fmt: skip
    assert asked == trained


def test_the_shipped_kazakh_queries_are_valid_rows() -> None:
    from kazhpc.evaluation.tool_calls import builtin_path, check_row

    rows = [json.loads(line) for line in Path(builtin_path()).read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 10 and sum(len(json.loads(r["answers"])) > 1 for r in rows) >= 2  # parallel calls too
    for r in rows:
        check_row(r)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answers": '[{"name": "ауа_райы", "arguments": {"қала": "Тараз"}'}, r"'answers' is not valid JSON"),
        ({"answers": '[{"name": "ауа_райы", "arguments": "{қала: Тараз}"}]'}, r"'answers\[0\].arguments' is not valid JSON"),
        ({"answers": '[{"name": "іздеу", "arguments": {}}]'}, r"'answers' calls 'іздеу', which is not among the row's tools"),
        ({"tools": "[]"}, r"'tools' must be a non-empty list of tool schemas"),
        ({"query": ""}, r"'query' must be a non-empty string"),
    ],
)  # fmt: skip
def test_a_bad_tool_row_is_named_by_file_and_line_at_preflight(tmp_path: Path, change: dict, message: str) -> None:
    from kazhpc.config import EvalTaskConfig, EvaluateConfig
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.suite import preflight

    data = tmp_path / "calls.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (row(), row(**change))) + "\n", encoding="utf-8")
    with pytest.raises(KazhpcError, match=rf"calls\.jsonl:2: task t: {message}"):
        preflight(EvaluateConfig(tasks=[EvalTaskConfig(name="t", kind="tool", path=str(data))]))
