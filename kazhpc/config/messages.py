"""Where a config value came from, and the one-line messages that point at it.

``Origin`` is the file and line (or the override) of a key, ``ConfigDoc`` the loaded data with the
origin of every key path; ``describe_validation_error`` turns a pydantic error into one line naming
that origin, the dotted key path, and for a misspelt key the closest valid one (``suggest``).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from kazhpc.config.paths import Strict
from kazhpc.errors import suggest


@dataclass(frozen=True)
class Origin:
    """Where a key's value came from, for error messages."""

    source: str  # a file path, or "override 'a.b=c'"
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass
class ConfigDoc:
    """Merged raw data plus the origin of every key path in it."""

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[tuple[str, ...], Origin] = field(default_factory=dict)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that sits at ``loc`` inside ``model`` (for key suggestions)."""
    current: Any = model
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        if str(part).isdigit():  # a list position: the list's item model stays current
            continue
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        current = _unwrap(info.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Optional[X] / X | None / list[X] / dict[str, X] → X (the first model class found)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, dict, tuple):
        for arg in typing.get_args(annotation):
            inner = _unwrap(arg)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def _without_union_tags(errors: list[Any]) -> list[Any]:
    """Errors of a ``str | Model`` field (``evaluate.tasks``) as the user wrote it.

    Given a mapping, pydantic reports every member: 'tasks.0.str: Input should be a valid string',
    then the model's own errors under its class name ('tasks.0.EvalTaskConfig.kind: ...'). The other
    members' type errors are dropped and the class name is taken out of the key.
    """
    members = {cls.__name__ for cls in _strict_models()}

    def member(part: Any) -> bool:  # 'EvalTaskConfig', or 'function-after[_mapping(), EvalTaskConfig]'
        return isinstance(part, str) and (part in members or part.rsplit(", ", 1)[-1].rstrip("]") in members)

    tagged = {tuple(e["loc"][:i]) for e in errors for i, part in enumerate(e["loc"]) if member(part)}
    kept = [
        {**e, "loc": tuple(part for part in e["loc"] if not member(part))}
        for e in errors
        if tuple(e["loc"][:-1]) not in tagged or member(e["loc"][-1])
    ]
    return kept or errors


def _strict_models() -> list[type[Strict]]:
    found: list[type[Strict]] = []
    todo = list(Strict.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def describe_validation_error(exc: ValidationError, doc: ConfigDoc, path: Path, root: type[BaseModel]) -> str:
    """One line for a validation error; ``root`` is the validated model (PipelineConfig, ClusterConfig)."""
    errors = _without_union_tags(exc.errors())
    first = errors[0]
    loc = tuple(str(p) for p in first["loc"])
    key = ".".join(loc)
    # The key itself, else where its keys were written (an override 'a.typo.b=1' has no line for
    # 'a.typo'), else the closest section above it.
    origin = doc.origins.get(loc) or next((o for k, o in doc.origins.items() if loc and k[: len(loc)] == loc), None)
    if origin is None:
        origin = next((doc.origins[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in doc.origins), None)
    where = str(origin) if origin else str(path)
    if first["type"] == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        hint = suggest(loc[-1], parent.model_fields) if parent else ""
        message = f"{where}: {key}: unknown key{hint}"
    elif first["type"] == "missing":
        message = f"{where}: {key}: required key is missing"
    else:
        got = first.get("input")
        shown = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
        text = first["msg"].removeprefix("Value error, ")
        message = f"{where}: {key}: {text}{shown}" if key else f"{where}: {text}"
    if len(errors) > 1:
        message += f" (+{len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return message
