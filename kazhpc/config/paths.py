"""What every section schema shares: the ``Strict`` base, names and dtypes, path resolution, and
two small helpers the loader and the stages share (``deep_merge``, ``repeated``).

Paths are resolved once, at load time (``absolute_path``), so that the resolved config a SLURM job
receives means the same thing on a compute node and holds the very path that was checked.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

#: Parameter dtypes a model, its quantization or its scoring may use.
Dtype = Literal["bfloat16", "float16", "float32"]

#: A run, model, source, task or label name: it becomes part of folder and run names.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


#: ``$NAME`` / ``${NAME}``, the forms os.path.expandvars (and datasets' loaders after it) expand.
_ENV_VAR = re.compile(r"\$(\w+|\{[^}]*\})")
#: How a configured value says it is a path rather than a name (hub id, built-in, template name).
PATH_PREFIXES = (".", "/", "~", "$")


def absolute_path(value: str) -> str:
    """A relative path means relative to where kazhpc runs; stored absolute for SLURM steps.

    ``~`` and ``$VAR`` / ``${VAR}`` are expanded here, once, at load time: the resolved config holds
    the path every job opens, and the path checked is the path used (datasets' loaders would
    otherwise expand a ``$`` left in a path again, after validation). A variable that is not set is
    an error, not a literal folder name.
    """
    expanded = os.path.expandvars(os.path.expanduser(value))
    unset = _ENV_VAR.search(expanded)
    if unset:
        raise ValueError(
            f"environment variable {unset.group(0)} is not set; set it, or write the path out"
        )
    return os.path.abspath(os.path.expanduser(expanded))


def deep_merge(into: dict[str, Any], over: dict[str, Any]) -> None:
    """Merge ``over`` into ``into`` in place: mappings merge, anything else (lists too) is replaced.
    The one rule for ``include:``, model-file defaults and a stage's ``with:`` keys."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            deep_merge(into[key], value)
        else:
            into[key] = value


def repeated(names: list[str]) -> list[str]:
    """The names that occur more than once, sorted (for 'listed twice' errors)."""
    return sorted({n for n in names if names.count(n) > 1})


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
