"""The corpus job's reader: every source's files, one ordered list, split into contiguous ranges.

A source is files (a file, a folder) or a Hugging Face data set (a hub id, or a local copy of its
repository), whose files for a subset and split ``datasets`` resolves (:func:`dataset_files`);
each file is JSONL, Parquet, CSV or text, by ``format`` or by its name.

datatrove's own readers give task ``r`` the files ``r, r + n, r + 2n, ...`` of each source and log
and skip a malformed line. kazhpc needs two things they do not give:

* **the same result for any number of tasks**: task ``r`` reads a contiguous range of one list of
  all files (sources in config order, files sorted), so that the tasks' outputs, read in task
  order, are the documents in the order one task would read them. MinHash keeps the first
  document of a duplicate cluster by (task, position), so this also makes it keep the same one;
* **nothing lost**: a line that is not JSON, a row without the text field, a file that is not
  UTF-8 is a reject (counted by reason, written with its file and line), not a log line.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from datatrove.pipeline.writers.disk_base import DiskWriter

    from kazhpc.config.corpus import TextSourceConfig


def source_files(source: TextSourceConfig) -> list[tuple[str, str]]:
    """(folder, relative file) pairs of one source, sorted; a file is its own folder's one file."""
    import os

    if source.dataset is not None:
        return list(dataset_files(source.dataset, source.subset, source.split, source.revision, source.name))
    assert source.path is not None  # the config holds one of path and dataset
    if os.path.isfile(source.path):
        return [(os.path.dirname(source.path), os.path.basename(source.path))]
    folder = get_datafolder(source.path)
    return [(source.path, f) for f in sorted(folder.list_files(recursive=True, glob_pattern=source.glob))]


@functools.lru_cache(maxsize=32)
def dataset_files(dataset: str, subset: str | None, split: str, revision: str | None, name: str) -> tuple[tuple[str, str], ...]:
    """A Hugging Face data set's files for one subset and split, sorted, as ``datasets`` resolves
    them from the repository's card (its ``configs:``) or its default layout: local paths for a
    local copy, ``hf://datasets/<id>@<commit>/...`` for the hub (read through fsspec, pinned to the
    commit resolved). Nothing is downloaded here."""
    import posixpath

    import datasets

    key = f"corpus.sources[{name}].dataset"
    try:
        builder = datasets.load_dataset_builder(dataset, subset, revision=revision)
    except Exception as exc:  # datasets raises ValueError, FileNotFoundError, ConnectionError, hub errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        offline = " (offline: on a node without the hub, name a local copy of the data set)" if datasets.config.HF_HUB_OFFLINE else ""
        raise KazhpcError(f"{key}: {dataset}: {first[:300]}{offline}") from None
    files = dict(builder.config.data_files or {})
    if split not in files:
        raise KazhpcError(f"{key}: {dataset} ({subset or 'default'}) has no split {split!r}; its splits: {', '.join(files) or 'none'}")
    return tuple(sorted((posixpath.dirname(str(f)), posixpath.basename(str(f))) for f in files[split]))


#: File name endings → format, for sources without ``format`` (compression suffixes are read through).
_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv", ".txt": "text"}


def format_of(source: TextSourceConfig, name: str) -> str:
    """The source's format, or its file's from the name's extension (``x.jsonl.gz`` is jsonl)."""
    if source.format is not None:
        return source.format
    stem = name
    for compression in (".gz", ".zst", ".bz2", ".xz"):
        stem = stem.removesuffix(compression)
    for ending, fmt in _FORMATS.items():
        if stem.endswith(ending):
            return fmt
    raise KazhpcError(f"corpus.sources[{source.name}]: cannot tell the format of {name} from its name; set format "
                      f"(jsonl, parquet, csv or text)")


def contiguous_range(count: int, rank: int, world_size: int) -> range:
    """Task ``rank``'s share of ``count`` items: a contiguous range, ranks in order."""
    return range(rank * count // world_size, (rank + 1) * count // world_size)


class CorpusSources(PipelineStep):
    """Reads every source's documents; task ``rank`` reads its contiguous range of the files."""

    name = "📖 kazhpc sources"
    type = "READER"

    def __init__(self, sources: list[TextSourceConfig], rejects: DiskWriter | None = None):
        super().__init__()
        self.sources = sources
        self.rejects = rejects

    def files(self) -> list[tuple[TextSourceConfig, str, str]]:
        return [(s, folder, f) for s in self.sources for folder, f in source_files(s)]

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files = self.files()
        import contextlib

        with self.rejects if self.rejects else contextlib.nullcontext() as rejects:
            for i in contiguous_range(len(files), rank, world_size):
                source, folder, name = files[i]
                with self.track_time():
                    for doc in self._read(source, folder, name):
                        self.stat_update("documents" if doc.text is not None else "dropped")
                        if doc.text is not None:
                            self.update_doc_stats(doc)
                            yield doc
                        else:
                            self.stat_update(f"dropped_{doc.metadata['filter_reason']}")
                            if rejects:
                                doc.text = ""
                                rejects.write(doc, rank)

    # -- one file --------------------------------------------------------------------------------

    def _read(self, source: TextSourceConfig, folder: str, name: str) -> Iterator[Document]:
        """The file's documents; a bad row is a Document whose text is None and whose metadata says why."""
        where = f"{folder.rstrip('/')}/{name}"
        reader = {"jsonl": _jsonl_rows, "parquet": _parquet_rows, "csv": _csv_rows, "text": _text_rows}[format_of(source, name)]
        for position, row, problem in reader(source, folder, name):
            meta: dict[str, Any] = {"source": source.name, "file": where, "row": position + 1}
            if problem is None and not isinstance(row.get(source.text_key) if isinstance(row, dict) else None, str):
                problem = f"no_text_field:{source.text_key}"
            if problem is not None:
                meta.update(filter_reason=problem.split(":")[0], detail=problem, raw=str(row)[:500])
                yield Document(text=None, id=f"{source.name}/{name}/{position}", metadata=meta)  # type: ignore[arg-type]
                continue
            yield Document(text=row[source.text_key], id=f"{source.name}/{name}/{position}", metadata=meta)


def _jsonl_rows(source: TextSourceConfig, folder: str, name: str) -> Iterator[tuple[int, Any, str | None]]:
    import io
    import json

    with get_datafolder(folder).open(name, "rb", compression="infer") as opened:
        # zstandard's reader (.jsonl.zst) reads blocks but not lines: buffered, every reader does both.
        f = opened if hasattr(opened, "peek") else io.BufferedReader(opened)
        for position, raw in enumerate(f):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield position, raw[:200], f"not_utf8:{exc.reason}"
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                yield position, line[:200], f"bad_json:{exc.msg}"
                continue
            yield position, row, None if isinstance(row, dict) else "not_an_object"


def _parquet_rows(source: TextSourceConfig, folder: str, name: str) -> Iterator[tuple[int, Any, str | None]]:
    import pyarrow.parquet as pq

    with get_datafolder(folder).open(name, "rb") as f:
        position = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=1000, columns=None):
            for row in batch.to_pylist():
                yield position, row, None
                position += 1


def _csv_rows(source: TextSourceConfig, folder: str, name: str) -> Iterator[tuple[int, Any, str | None]]:
    """A CSV file with a header row (kz-transformers/multidomain-kazakh-dataset's layout); a row
    with more or fewer fields than the header is a reject."""
    import csv
    import io
    import sys

    csv.field_size_limit(sys.maxsize)  # a document is one field, and a book is longer than csv's 128 KiB
    with get_datafolder(folder).open(name, "rb", compression="infer") as raw:
        reader = csv.reader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        try:
            header = next(reader)
            for position, fields in enumerate(reader):
                if len(fields) != len(header):
                    yield position, fields[:8], f"bad_csv_row:{len(fields)} fields, the header has {len(header)}"
                    continue
                yield position, dict(zip(header, fields)), None
        except StopIteration:
            return
        except UnicodeDecodeError as exc:
            yield 0, name, f"not_utf8:{exc.reason}"
        except csv.Error as exc:
            yield reader.line_num, name, f"bad_csv:{exc}"


def _text_rows(source: TextSourceConfig, folder: str, name: str) -> Iterator[tuple[int, Any, str | None]]:
    import re

    with get_datafolder(folder).open(name, "rb", compression="infer") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        yield 0, raw[:200], f"not_utf8:{exc.reason}"
        return
    if source.unit == "file":
        pieces = [text]
    elif source.unit == "line":
        pieces = text.splitlines()
    else:
        pieces = re.split(r"\n\s*\n", text)
    position = 0
    for piece in pieces:
        if piece.strip():
            yield position, {source.text_key: piece.strip()}, None
            position += 1


class RankFileReader(PipelineStep):
    """Task ``rank`` reads the file task ``rank`` of the filter stage wrote (``{rank:05d}.jsonl.gz``),
    or nothing if it kept no document: MinHash's removal lists are by task, so the two must agree
    (datatrove's reader would hand the files out by position and shift them past an empty task)."""

    name = "📖 kazhpc task file"
    type = "READER"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from datatrove.pipeline.readers import JsonlReader

        name = f"{rank:05d}.jsonl.gz"
        reader = JsonlReader(self.folder, compression="gzip")
        if not reader.data_folder.isfile(name):
            return
        for doc in reader.read_file(name):
            self.stat_update("documents")
            yield doc
