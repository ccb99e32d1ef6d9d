"""User-facing errors.

A `KazhpcError` is a problem with the user's input (a config, a data file, a resource request),
never a bug: the CLI prints its one-line message and exits with status 2, without a traceback,
so that a mistake costs seconds rather than a queue wait.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


class KazhpcError(Exception):
    """An input error with a message that says what is wrong and where."""

    exit_code = 2


class ConfigError(KazhpcError):
    """A config file is missing, malformed, or does not validate."""


class ModelSourceError(KazhpcError):
    """A model source cannot be resolved or loaded."""


class FormattingError(KazhpcError):
    """A formatted example breaks an invariant (e.g. not exactly one <bos>)."""


#: EX_TEMPFAIL from sysexits.h: "a temporary failure; the user is invited to retry". The job saved
#: its state and asked to be requeued; it did not fail.
PREEMPTED_EXIT_CODE = 75


class Preempted(KazhpcError):
    """A job stopped on the preemption signal after saving a checkpoint; it is to be requeued.

    The requeue itself waits for :meth:`requeue` (kazhpc.console.report_errors calls it on the way
    out, once run.json and MLflow have recorded the preemption): `scontrol requeue` ends the job at once.
    """

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, message: str, requeue: Callable[[], Any] | None = None) -> None:
        super().__init__(message)
        self._requeue = requeue

    def requeue(self) -> None:
        if self._requeue is not None:
            self._requeue()


class Interrupted(KazhpcError):
    """Ctrl-C (SIGINT) during a job: the message names the job and the command that resumes it."""

    exit_code = 130


def read_user_text(path: Path, what: str, error: type[KazhpcError] = KazhpcError) -> str:
    """Read a UTF-8 file the user named; any failure is one ``error`` line: '<path>: <what> ...'."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: {what} is a directory, expected a file") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror}") from None


def read_json_file(path: Path, what: str) -> Any:
    """A JSON file kazhpc wrote (run.json, a manifest); an empty or cut-short one (a full disk, a
    copy interrupted) is one line naming it, not a JSONDecodeError traceback."""
    text = read_user_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        state = "is empty" if not text.strip() else f"is not valid JSON ({exc.msg} at line {exc.lineno})"
        raise KazhpcError(f"{path}: {what} {state}; restore it, or delete it to redo what it recorded") from None


def jsonl_objects(lines: Iterable[str], path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line of a JSONL file that must be all objects;
    the first line that is not fails as '<path>:<line>: malformed JSON (...)' or names its type."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise KazhpcError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise KazhpcError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def suggest(word: str, options: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest option: a near spelling, or the one option it abbreviates.
    The one "did you mean" of kazhpc: config keys, job names, task names, data columns."""
    options = list(options)
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not match and len(word) >= 3:
        match = [o for o in options if o.startswith(word)]
    return f" (did you mean '{match[0]}'?)" if len(match) == 1 else ""
