"""The tracking journal: ``<run_dir>/tracking/journal.jsonl``, one JSON event per line.

Jobs append to it (:mod:`kazhpc.tracking.live`) before they send anything to a store, so it holds
everything measured; this module reads it back and checks each event, for ``sync`` and for tests.
Each ``start`` event names its run by a stable id (:func:`start_uid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kazhpc.errors import KazhpcError, jsonl_objects

JOURNAL = Path("tracking") / "journal.jsonl"


def start_uid(event: dict[str, Any], line: int, run_dir: Path) -> str:
    """The stable id of the run that a journal ``start`` event opens (for journals written before
    runs had one: the run directory's name and the event's line)."""
    return str(event.get("run") or f"{run_dir.name}:{line}")


#: The fields each kind of journal event has, beyond "event", "key" and "time".
EVENT_FIELDS: dict[str, dict[str, type]] = {
    "start": {"name": str, "tags": dict},
    "params": {"params": dict},
    "metrics": {"metrics": dict},
    "tags": {"tags": dict},
    "artifact": {"path": str},
    "dataset": {"dataset": dict},  # kazhpc.tracking.lineage's record
    "model": {"model": dict},  # name, uid, stage, path, tags
    "model_tags": {"model": dict, "tags": dict},  # model: name, uid
    "end": {"status": str},
}


@dataclass
class Journal:
    """A journal's complete lines, checked: ``events`` as (line number, event)."""

    path: Path
    events: list[tuple[int, dict[str, Any]]]
    lines: int  # lines that end in a newline; a last line without one is still being written
    partial: bool  # whether there is such a last line (it is left for a later sync)


def _check_event(path: Path, number: int, event: dict[str, Any]) -> None:
    kind = event.get("event")
    fields = EVENT_FIELDS.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise KazhpcError(f"{path}:{number}: event {kind!r} is not a tracking event ({', '.join(EVENT_FIELDS)})")
    for name, type_ in {"key": str, "time": (int, float), **fields}.items():
        value = event.get(name)
        if isinstance(value, bool) or not isinstance(value, type_):
            raise KazhpcError(f"{path}:{number}: {kind} event without a valid {name!r}")
    if kind == "metrics":
        for name, value in event["metrics"].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise KazhpcError(f"{path}:{number}: metric {name!r} is {value!r}, not a number")
        step = event.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise KazhpcError(f"{path}:{number}: metrics event with step {step!r}, not an integer")


def parse_journal(path: Path) -> Journal:
    """Every complete line of a journal, checked; the first that is not a tracking event is one
    KazhpcError naming path:line (before anything is sent anywhere)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KazhpcError(f"{path}: cannot read the tracking journal: {exc.strerror}") from None
    chunks = data.split(b"\n")
    tail = chunks.pop()  # b"" when the file ends in a newline
    events = []
    try:
        for number, event in jsonl_objects([c.decode("utf-8", errors="replace") for c in chunks], path):
            _check_event(path, number, event)
            events.append((number, event))
    except KazhpcError as exc:
        raise KazhpcError(
            f"{exc}: nothing was uploaded; fix or delete that line (its event is lost), then sync again"
        ) from None
    return Journal(path, events, lines=len(chunks), partial=bool(tail.strip()))


def read_journal(run_dir: Path) -> Iterator[dict[str, Any]]:
    """The events of a run directory's journal, in order (none if it has no journal)."""
    journal = run_dir / JOURNAL
    if journal.is_file():
        yield from (event for _, event in parse_journal(journal).events)
