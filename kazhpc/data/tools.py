"""Function calling in kazhpc's Gemma-3 tool prompt format: what preprocess trains on and ``kind: tool`` asks.

Gemma-3 has no tool role and its chat template knows none, so kazhpc writes tools into the text.
This is the format it ships and documents:

* **The tool schemas** go in a system turn, which the Gemma-3 template prefixes to the first user
  turn. :data:`TOOL_SYSTEM` says in Kazakh which tools exist (their JSON schemas, as the data set
  gives them) and how to call them.
* **A call** is the model's turn. It holds only a JSON list, ``[{"name": ..., "arguments": {...}}]``,
  with several calls in one list.
* **A tool's result** is a user turn, ``Құрал нәтижесі (NAME):`` followed by the result, because
  the template requires user and model turns to alternate. The model's next turn answers from it.

Loss falls on the model's turns only, so on the calls and on the answers, by the same assistant
mask as any chat row.

Two layouts of real data sets are read. The first is xLAM's (``Salesforce/xlam-function-calling-60k``):
``query``, ``tools`` and ``answers``, where the last two are JSON strings. The second is a chat
layout: ``messages`` with assistant ``tool_calls`` and ``tool`` turns, plus a ``tools`` list.
Arguments given as a JSON string (OpenAI's layout) are decoded. Anything that is not valid JSON
raises :class:`BadTool` naming the field. Preprocess counts the row as ``bad_tool_json`` and
keeps it aside; the evaluation's preflight stops on it, naming the row's file and line.
"""

from __future__ import annotations

import json
from typing import Any

TOOL_SYSTEM = (
    "Сізге мына құралдар (функциялар) қолжетімді, олардың JSON сипаттамасы:\n{tools}\n\n"
    "Құралды шақыру керек болса, жауабыңызға тек JSON тізімін жазыңыз: "
    '[{{"name": "функция_аты", "arguments": {{"аргумент": "мәні"}}}}]. '
    "Құрал қажет болмаса, әдеттегідей жауап беріңіз."
)
TOOL_RESULT = "Құрал нәтижесі ({name}):\n{content}"


class BadTool(ValueError):
    """A tool schema, call or result that is not what the layout says (the message names the field)."""


def decoded(value: Any, field: str) -> Any:
    """A JSON field as data: a string is decoded (xLAM stores lists as JSON text), data passes."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise BadTool(f"'{field}' is not valid JSON ({exc.msg} at character {exc.pos})") from None
    return value


def tools_list(value: Any, field: str = "tools") -> list[dict[str, Any]]:
    tools = decoded(value, field)
    if isinstance(tools, list):  # OpenAI's {"type": "function", "function": {...}} unwrapped
        tools = [t["function"] if isinstance(t, dict) and isinstance(t.get("function"), dict) else t for t in tools]
    if not isinstance(tools, list) or not tools or not all(isinstance(t, dict) and t.get("name") for t in tools):
        raise BadTool(f"'{field}' must be a non-empty list of tool schemas, each with a name")
    return tools


def calls_list(value: Any, field: str = "answers") -> list[dict[str, Any]]:
    """Calls as ``[{"name", "arguments": dict}]``; OpenAI's ``{"function": {...}}`` wrapper unwrapped."""
    calls = decoded(value, field)
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list) or not calls:
        raise BadTool(f"'{field}' must be a non-empty list of calls")
    out = []
    for i, call in enumerate(calls):
        call = call.get("function", call) if isinstance(call, dict) else call
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
            raise BadTool(f"'{field}'[{i}] must be a call with a name")
        arguments = decoded(call.get("arguments", {}), f"{field}[{i}].arguments")
        if not isinstance(arguments, dict):
            raise BadTool(f"'{field}'[{i}].arguments must be an object, got {type(arguments).__name__}")
        out.append({"name": call["name"], "arguments": arguments})
    return out


def render_calls(calls: list[dict[str, Any]]) -> str:
    return json.dumps(calls, ensure_ascii=False)


def system_turn(tools: list[dict[str, Any]]) -> dict[str, str]:
    return {"role": "system", "content": TOOL_SYSTEM.format(tools=json.dumps(tools, ensure_ascii=False))}


def query_prompt(query: str, tools: list[dict[str, Any]]) -> str:
    """The single user turn a tool query becomes (the system turn folded in, as Gemma-3's template does)."""
    return f"{system_turn(tools)['content']}\n\n{query}"


def xlam_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """xLAM's {query, tools, answers} → system (tools), user (query), assistant (the calls)."""
    tools = tools_list(row.get("tools"))
    calls = calls_list(row.get("answers"))
    return [system_turn(tools), {"role": "user", "content": str(row["query"])},
            {"role": "assistant", "content": render_calls(calls)}]  # fmt: skip


def chat_messages(row: dict[str, Any]) -> list[dict[str, str]]:
    """A chat row with ``tools``, assistant ``tool_calls`` and ``tool`` turns → kazhpc's format."""
    out = [system_turn(tools_list(row.get("tools")))]
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadTool("'messages' must be a non-empty list of turns")
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict):
            raise BadTool(f"'messages'[{i}] must be an object")
        role = turn.get("role")
        if role == "system":  # the data set's own system text goes after the tool block
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{turn.get('content') or ''}".rstrip()}
        elif role == "assistant" and turn.get("tool_calls"):
            out.append({"role": "assistant", "content": render_calls(calls_list(turn["tool_calls"], f"messages[{i}].tool_calls"))})
        elif role == "tool":
            content = turn.get("content")
            content = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
            out.append({"role": "user", "content": TOOL_RESULT.format(name=turn.get("name") or "tool", content=content)})
        elif role in ("user", "assistant"):
            out.append({"role": role, "content": str(turn.get("content") or "")})
        else:
            raise BadTool(f"'messages'[{i}]: unknown role {role!r} (system, user, assistant, tool)")
    return out


def parse_calls(text: str) -> list[dict[str, Any]] | None:
    """The first JSON list or object in a model's answer, read as calls; None when there is none."""
    decoder = json.JSONDecoder()
    for start, char in enumerate(text):
        if char in "[{":
            try:
                value, _ = decoder.raw_decode(text, start)
            except json.JSONDecodeError:
                continue
            try:
                return calls_list(value, "answer")
            except BadTool:
                return None
    return None
