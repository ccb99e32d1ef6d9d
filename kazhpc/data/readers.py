"""Reading a source's rows: local JSONL / JSON / CSV / Parquet files and ``datasets`` sources.

``iter_rows(source)`` yields a `RawRow` for every row it can read and a `BadRow` for every row it
cannot (a line that is not a JSON object, a CSV record with the wrong number of fields), so that
one broken line costs one counted reject rather than the whole job. Problems with the input as a
whole raise `KazhpcError` with a one-line message that names the file: missing file, unsupported
extension, not UTF-8, no rows at all, a required column missing.

Origins, i.e. where each row came from, as they appear in rejects and records:

=====================  ============================================  ===========================
input                  origin                                        index
=====================  ============================================  ===========================
``.jsonl``             ``path:LINE`` (1-based; blank lines skipped)  n-th non-blank line
``.json`` array        ``path#I`` (0-based element)                  I
``.json`` lines        as ``.jsonl``                                 as ``.jsonl``
``.csv``               ``path:LINE`` of the record's first line      n-th record (header not counted)
``.parquet``           ``path#ROW`` (0-based)                        ROW
``hub:``               ``hub:<id>[/<config>]/<split>#ROW``           ROW
=====================  ============================================  ===========================

Index counts good and bad rows alike, so ``order`` keys do not move when a row turns bad.

`iter_file` reads any local data file the same way (the evaluate job's task files and overrides);
`preview_source` is what ``kazhpc validate`` reads of a source: its header and first few rows, so
that an empty file or a wrong column fails before a job is queued, at the cost of a few rows.

**Label names.** A ``ClassLabel`` column (KazNERD's ``ner_tags``) keeps its integer ids in the row;
the names are attached to every row as ``row.data[LABEL_NAMES_KEY]`` = ``{column: [name, ...]}``
(one shared dict per source, not a copy per row). They come from the dataset's features, for hub
sources and for local Parquet files written by ``datasets`` (which store the features in the
schema metadata). `label_names_of` reads them for any row. Keys that start with ``_`` are never
data columns.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kazhpc.config import SourceConfig, suggest
from kazhpc.data.adapters import LABEL_NAMES_KEY, adapt, required_columns
from kazhpc.data.records import RawRow, Reject
from kazhpc.errors import KazhpcError

#: File extensions read by `iter_rows`, and the reader for each.
EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
#: Rows `preview_source` reads (the header, or the first object's keys, comes with the first).
PREVIEW_ROWS = 5

_BATCH_ROWS = 1024

#: Called with a file's columns before its first row is yielded; raises when one is missing.
ColumnCheck = Callable[[list[str]], None]


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read; counted as a reject with ``reason``, the job goes on."""

    origin: str  # as for RawRow
    index: int  # 0-based position within its source, as for RawRow
    reason: str  # "malformed_json" | "malformed_csv"
    detail: str  # what is wrong, for the rejects file
    raw: str  # the offending text (a line, or a CSV record re-joined), cut to 2,000 characters

    def to_reject(self) -> Reject:
        return Reject(self.reason, self.detail)


def iter_rows(source: SourceConfig, *, check: bool = True) -> Iterator[RawRow | BadRow]:
    """Every row of ``source`` in order: a `RawRow`, or a `BadRow` for a row that cannot be read.

    With ``check`` (the default) the columns the source's kind needs are checked before the first
    row is yielded (the CSV header, the Parquet / dataset schema, or the first good JSON row), and a
    missing one raises `KazhpcError` naming the column and the file.
    """
    if source.hub is not None:
        yield from _hub_rows(source, check)
        return
    assert source.path is not None  # SourceConfig guarantees exactly one of path / hub

    def columns(names: list[str]) -> None:
        check_columns(source, names, required_columns(source, names))

    if Path(source.path).is_dir():
        raise KazhpcError(f"{source.path}: is a directory; for a dataset folder write 'hub: {source.path}'")
    yield from iter_file(source.path, columns if check else None, owner=f"source '{source.name}'")


def iter_file(path: str, columns: ColumnCheck | None = None, *, owner: str = "") -> Iterator[RawRow | BadRow]:
    """Every row of a local JSONL / JSON / CSV / Parquet file, as `iter_rows` reads a source's.

    ``columns`` is called with the file's columns (the CSV header, the Parquet schema, the first
    JSON object's keys) before the first row is yielded. ``owner`` (``source 'x'``, a config key)
    is named in the errors about the file as a whole: missing, a folder, an unknown type, no rows.
    """
    of = f" ({owner})" if owner else ""
    file = Path(path)
    ext = file.suffix.lower()
    if ext not in EXTENSIONS:
        raise KazhpcError(
            f"{path}: unsupported file type '{file.suffix or '(none)'}'{of}; use .jsonl, .json, .csv or .parquet"
        )
    if file.is_dir():
        raise KazhpcError(f"{path}: is a directory, expected a file{of}")
    if not file.is_file():
        raise KazhpcError(f"{path}: file not found{of}")
    if ext == ".parquet":
        rows = _parquet_rows(path, file, columns)
    elif ext == ".csv":
        rows = _csv_rows(path, file, columns)
    elif ext == ".json":
        rows = _json_rows(path, file, columns)
    else:
        rows = _jsonl_rows(path, _text_lines(path, file), columns)
    empty = True
    for row in rows:
        empty = False
        yield row
    if empty:
        raise KazhpcError(f"{path}: empty input, no rows{of}")


def preview_source(source: SourceConfig, rows: int = PREVIEW_ROWS) -> list[str]:
    """Read a local source's header and first ``rows`` rows and adapt them, as the job will.

    A missing, empty, undecodable or unreadable file, or a missing column, raises `KazhpcError`
    (what would stop the job). Rows among the first that the job would reject (malformed, or
    refused by the adapter) are not errors, the job goes on past them: they come back as one
    warning naming the first of them by ``file:line``.
    """
    bad: list[tuple[str, str, str]] = []
    read = 0
    for item in itertools.islice(iter_rows(source), rows):
        read += 1
        if isinstance(item, BadRow):
            bad.append((item.origin, item.reason, item.detail))
            continue
        try:
            adapt(source, 0, item)
        except Reject as rej:
            bad.append((item.origin, rej.reason, rej.detail))
    if not bad:
        return []
    origin, reason, detail = bad[0]
    return [f"source '{source.name}': {len(bad)} of the first {read} rows would be rejected; first: {origin}: {reason} ({detail})"]


def check_columns(source: SourceConfig, first_row_keys: Iterable[str], required: set[str]) -> None:
    """Raise `KazhpcError` naming the file and the missing columns (each with the closest present one)."""
    problem = missing_columns(first_row_keys, required)
    if problem:
        raise KazhpcError(f"{_where(source)}: source '{source.name}' ({source.kind}): {problem}")


def missing_columns(present: Iterable[str], required: Iterable[str]) -> str | None:
    """What is missing from ``present``, for an error line: ``missing column 'X' (did you mean 'x'?)
    (columns: ...)``; None when nothing is. A lone header cell holding ';' or a tab is named as a
    CSV written with another delimiter."""
    present = [str(k) for k in present if not str(k).startswith("_")]
    missing = sorted(set(required) - set(present))
    if not missing:
        return None
    delimiter = next((d for d in (";", "\t", "|") if len(present) == 1 and d in present[0]), None)
    if delimiter is not None:
        hint = f"; the header is one column: is the file {delimiter!r}-separated? CSV files are read comma-separated"
        named = ", ".join(f"'{m}'" for m in missing)
    else:
        hint = ""
        named = ", ".join(f"'{m}'{suggest(m, present)}" for m in missing)
    what = f"column {named}" if len(missing) == 1 else f"columns {named}"
    return f"missing {what} (columns: {', '.join(present) or 'none'}){hint}"


def label_names_of(row: RawRow, column: str) -> list[str] | None:
    """The ClassLabel names of ``column`` attached by the reader, or None when there are none."""
    names = row.data.get(LABEL_NAMES_KEY)
    return names.get(column) if isinstance(names, dict) else None


# --------------------------------------------------------------------------------------------
# Text files.


def _where(source: SourceConfig) -> str:
    if source.path is not None:
        return source.path
    return _hub_name(source)


def _hub_name(source: SourceConfig) -> str:
    return f"hub:{source.hub}" + (f"/{source.hub_config}" if source.hub_config else "")


def _text_lines(shown: str, path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its end) for a UTF-8 file; a UTF-8 BOM is dropped."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError as exc:
                raise KazhpcError(
                    f"{shown}:{number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"
                ) from None
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield number, text.rstrip("\r\n")


def _clip(text: str) -> str:
    return text if len(text) <= 2000 else text[:2000] + "…"


def _jsonl_rows(shown: str, lines: Iterable[tuple[int, str]], columns: ColumnCheck | None) -> Iterator[RawRow | BadRow]:
    index = 0
    for number, line in lines:
        if not line.strip():
            continue
        origin = f"{shown}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            detail = f"{exc.msg.removesuffix(' at')} at column {exc.colno}"  # "Unterminated string starting at"
            yield BadRow(origin, index, "malformed_json", detail, _clip(line))
        else:
            if isinstance(data, dict):
                if columns is not None:
                    columns(list(data.keys()))
                    columns = None
                yield RawRow(data=data, origin=origin, index=index)
            else:
                detail = f"a JSON {_json_type(data)}, expected an object"
                yield BadRow(origin, index, "malformed_json", detail, _clip(line))
        index += 1


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _json_rows(shown: str, path: Path, columns: ColumnCheck | None) -> Iterator[RawRow | BadRow]:
    """A JSON array of objects, or JSON Lines content in a .json file (told apart by the first character).

    Both are decoded lazily, an element or a line at a time, so a preview costs a few rows."""
    lines = _text_lines(shown, path)
    head: list[tuple[int, str]] = []
    for number, line in lines:
        head.append((number, line))
        if line.strip():
            break
    else:
        return  # no content: the caller reports the empty file
    first = head[-1][1].strip()
    if first.startswith("["):
        text = "\n".join(line for _, line in itertools.chain(head, lines))
        yield from _json_array_rows(shown, text, columns)
        return
    if first.startswith("{") and not _parses(first):
        # Not JSON Lines after all? A pretty-printed object is a wrong layout, not bad rows.
        head += list(lines)
        if _parses("\n".join(line for _, line in head)):
            raise KazhpcError(f"{shown}: a single JSON object at the top; expected an array of objects or JSON Lines")
    yield from _jsonl_rows(shown, itertools.chain(head, lines), columns)


_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _json_array_rows(shown: str, text: str, columns: ColumnCheck | None) -> Iterator[RawRow | BadRow]:
    """The elements of the JSON array ``text`` as rows, decoded one at a time; malformed JSON
    anywhere stops the file (its line is named), since no element after it can be placed."""
    decoder = json.JSONDecoder()
    pos = _JSON_SPACE.match(text, text.index("[") + 1).end()
    index = 0
    while not text.startswith("]", pos):
        if index:
            if not text.startswith(",", pos):
                raise _malformed_json(shown, text, pos, "Expecting ',' delimiter")
            pos = _JSON_SPACE.match(text, pos + 1).end()
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _malformed_json(shown, text, exc.pos, exc.msg.removesuffix(" at")) from None
        pos = _JSON_SPACE.match(text, pos).end()
        origin = f"{shown}#{index}"
        if not isinstance(item, dict):
            detail = f"a JSON {_json_type(item)}, expected an object"
            yield BadRow(origin, index, "malformed_json", detail, _clip(json.dumps(item, ensure_ascii=False)))
        else:
            if columns is not None:
                columns(list(item.keys()))
                columns = None
            yield RawRow(data=item, origin=origin, index=index)
        index += 1
    end = _JSON_SPACE.match(text, pos + 1).end()
    if end < len(text):
        raise _malformed_json(shown, text, end, "Extra data")


def _malformed_json(shown: str, text: str, pos: int, message: str) -> KazhpcError:
    line = text.count("\n", 0, pos) + 1
    column = pos - text.rfind("\n", 0, pos)
    return KazhpcError(f"{shown}:{line}: malformed JSON: {message} at column {column}")


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


class _LineCounter:
    """Feeds csv.reader decoded lines (ends kept, for quoted newlines) and reports decoding errors by line."""

    def __init__(self, shown: str, handle: io.BufferedReader):
        self.shown = shown
        self.handle = handle
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.number = 0

    def __iter__(self) -> _LineCounter:
        return self

    def __next__(self) -> str:
        raw = self.handle.readline()
        if not raw:
            raise StopIteration
        self.number += 1
        try:
            text = self.decoder.decode(raw)
        except UnicodeDecodeError as exc:
            raise KazhpcError(
                f"{self.shown}:{self.number}: not UTF-8 text ({exc.reason} at byte {exc.start} of the line)"
            ) from None
        return text.removeprefix("\ufeff") if self.number == 1 else text


def _csv_rows(shown: str, path: Path, columns: ColumnCheck | None) -> Iterator[RawRow | BadRow]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long answers; the default is 128 KiB
    with path.open("rb") as handle:
        lines = _LineCounter(shown, handle)
        reader = csv.reader(lines)
        header: list[str] | None = None
        index = 0
        last_line = 0
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                if header is None:
                    raise KazhpcError(f"{shown}:{last_line + 1}: malformed CSV header: {exc}") from None
                origin = f"{shown}:{last_line + 1}"
                yield BadRow(origin, index, "malformed_csv", str(exc), "")
                index += 1
                last_line = lines.number
                continue
            start, last_line = last_line + 1, lines.number
            if not fields:
                continue  # a blank line
            if header is None:
                header = [h.strip() for h in fields]
                duplicates = sorted({h for h in header if header.count(h) > 1})
                if duplicates:
                    raise KazhpcError(f"{shown}:{start}: duplicate column '{duplicates[0]}' in the CSV header")
                if columns is not None:
                    columns(header)
                continue
            origin = f"{shown}:{start}"
            if len(fields) != len(header):
                detail = f"{len(fields)} fields, the header has {len(header)}"
                yield BadRow(origin, index, "malformed_csv", detail, _clip(_join_csv(fields)))
            else:
                yield RawRow(data=dict(zip(header, fields)), origin=origin, index=index)
            index += 1


def _join_csv(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# Parquet and datasets.


def _label_names(features: Any) -> dict[str, list[str]]:
    """{column: names} for every ClassLabel column, or list-of-ClassLabel column, of ``features``."""
    from datasets import ClassLabel

    names: dict[str, list[str]] = {}
    for column, feature in features.items():
        inner = getattr(feature, "feature", feature)  # List(ClassLabel) / Sequence(ClassLabel)
        if isinstance(inner, ClassLabel):
            names[column] = list(inner.names)
    return names


def _parquet_label_names(schema: Any) -> dict[str, list[str]]:
    """Label names from the ``datasets`` features a Parquet file may carry in its schema metadata."""
    metadata = schema.metadata or {}
    if b"huggingface" not in metadata:
        return {}
    try:
        from datasets import Features

        return _label_names(Features.from_arrow_schema(schema))
    except Exception:  # metadata from another datasets version: ids stay ids, defaults apply
        return {}


def _parquet_rows(shown: str, path: Path, columns: ColumnCheck | None) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise KazhpcError(f"{shown}: not a readable Parquet file ({_first_line(exc)})") from None
    schema = parquet.schema_arrow
    if columns is not None:
        columns(list(schema.names))
    names = _parquet_label_names(schema)
    index = 0
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
        for data in batch.to_pylist():
            if names:
                data[LABEL_NAMES_KEY] = names
            yield RawRow(data=data, origin=f"{shown}#{index}", index=index)
            index += 1


def _looks_local(hub: str) -> bool:
    return hub.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(hub))


def _load_hub(source: SourceConfig) -> Any:
    import datasets

    assert source.hub is not None
    name = _hub_name(source)
    local = os.path.expanduser(source.hub)
    if _looks_local(source.hub):
        if not os.path.isdir(local):
            raise KazhpcError(f"{name}: no such dataset folder (source '{source.name}')")
        if os.path.isfile(os.path.join(local, "state.json")) or os.path.isfile(
            os.path.join(local, "dataset_dict.json")
        ):
            # Written by save_to_disk, which load_dataset refuses: read it the matching way.
            loaded = datasets.load_from_disk(local)
            if isinstance(loaded, datasets.DatasetDict):
                if source.split not in loaded:
                    raise KazhpcError(
                        f"{name}: no split '{source.split}' (splits: {', '.join(loaded)}) (source '{source.name}')"
                    )
                return loaded[source.split]
            return loaded
    try:
        return datasets.load_dataset(source.hub, source.hub_config, split=source.split)
    except KazhpcError:
        raise
    except Exception as exc:  # not found, offline, gated, unknown config or split: all the user's to fix
        raise KazhpcError(
            f"{name}/{source.split}: cannot load dataset for source '{source.name}' "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hub_rows(source: SourceConfig, check: bool) -> Iterator[RawRow]:
    dataset = _load_hub(source)
    name = f"{_hub_name(source)}/{source.split}"
    if check:
        check_columns(source, dataset.column_names, required_columns(source, dataset.column_names))
    if len(dataset) == 0:
        raise KazhpcError(f"{name}: empty input (source '{source.name}')")
    names = _label_names(dataset.features)
    index = 0
    for batch in dataset.iter(batch_size=_BATCH_ROWS):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            data = dict(zip(columns, values))
            if names:
                data[LABEL_NAMES_KEY] = names
            yield RawRow(data=data, origin=f"{name}#{index}", index=index)
            index += 1
