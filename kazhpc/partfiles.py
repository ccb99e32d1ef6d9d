"""The files of a job that splits into parts (SLURM array tasks): one protocol for every such job.

* **Folders**: part ``i`` of ``n`` writes only into ``<job folder>/parts/<i:05d>-of-<n:05d>``
  (:func:`part_dir`), so parts run side by side without touching each other.
* **Done marker**: a part starts by deleting its ``done.json`` (:func:`start_part`) and writes it
  last (:func:`finish_part`): a part with a marker is complete, one without it is missing or failed,
  whatever else its folder holds.
* **JSONL**: written to ``<name>.tmp`` and renamed (:func:`jsonl_writer`, :func:`write_jsonl`), so a
  reader never sees half a file; one JSON object per line, keys sorted, UTF-8 unescaped.
* **Merge**: a merge starts with :func:`check_parts_done`; a missing or failed part is named by
  index, with the command that reruns it alone and the one that merges after.

Which done parts are reused and which rerun (their recorded inputs), and running the missing ones
before a merge, is the pipeline's half: kazhpc.parts.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from kazhpc.errors import KazhpcError

PARTS = "parts"
DONE = "done.json"


def part_dir(job_dir: Path, index: int, count: int) -> Path:
    return job_dir / PARTS / f"{index:05d}-of-{count:05d}"


def check_part_count(section: str, index: int, count: int, configured: int) -> None:
    """A part of ``count`` where the run's config says ``<section>.shards=configured`` would be ignored."""
    if count != configured:
        raise KazhpcError(
            f"part {index}/{count}: the run's config says {section}.shards={configured}; "
            f"the merge would ignore these parts (create the run with {section}.shards={count})"
        )


def start_part(job_dir: Path, index: int, count: int) -> Path:
    """The part's folder, created, and no longer marked done (until :func:`finish_part`)."""
    folder = part_dir(job_dir, index, count)
    (folder / DONE).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def finish_part(folder: Path, record: Mapping[str, Any]) -> None:
    """Mark the part done, with what it did (``record``); call it after every output is written."""
    (folder / DONE).write_text(json.dumps(record, indent=1))


def missing_parts(job_dir: Path, count: int) -> list[int]:
    """The parts (indices) without a done marker: never run, still running, or failed."""
    return [i for i in range(count) if not (part_dir(job_dir, i, count) / DONE).is_file()]


def check_parts_done(job: str, job_dir: Path, count: int) -> None:
    """Raise, naming the missing parts and the commands that redo them, unless all are done."""
    missing = missing_parts(job_dir, count)
    if missing:
        run_dir = job_dir.parent
        stage = "" if job_dir.name == job else f" --stage {job_dir.name}"  # a stage not named as its job type
        raise KazhpcError(
            f"{job}: {len(missing)} of {count} shards missing or failed: {', '.join(str(i) for i in missing)}; "
            f"rerun one alone with `kazhpc {job} --run-dir {run_dir}{stage} --shard {missing[0]}/{count}`, then merge "
            f"with `kazhpc {job} --run-dir {run_dir}{stage}`"
        )


def done_records(job_dir: Path, count: int) -> list[dict[str, Any]]:
    """What each part recorded in its done marker, in part order."""
    return [json.loads((part_dir(job_dir, i, count) / DONE).read_text()) for i in range(count)]


class JsonlWriter:
    """Writes rows as JSON lines; ``count`` says how many so far."""

    def __init__(self, out: Any, default: Callable[[Any], Any] | None):
        self._out = out
        self._default = default
        self.count = 0

    def write(self, row: Mapping[str, Any]) -> None:
        self._out.write(json.dumps(row, ensure_ascii=False, sort_keys=True, default=self._default) + "\n")
        self.count += 1


@contextmanager
def jsonl_writer(path: Path, default: Callable[[Any], Any] | None = None) -> Iterator[JsonlWriter]:
    """A JSONL file written row by row, that appears at ``path`` only when the block ends without
    an error (``default`` as json.dumps' default: what to make of values JSON has no type for)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as out:
            yield JsonlWriter(out, default)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]], default: Callable[[Any], Any] | None = None) -> int:
    """Write ``rows`` to ``path`` atomically; return how many."""
    with jsonl_writer(path, default) as out:
        for row in rows:
            out.write(row)
    return out.count


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
