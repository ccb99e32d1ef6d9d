"""How each local file format is parsed into rows: JSONL, JSON (array or lines), CSV and Parquet.

Every parser yields a `RawRow` for each row it can read and a `BadRow` for each it cannot, with
the row's origin (``path:LINE`` for text files, ``path#I`` for JSON arrays and Parquet; the table
in :mod:`kazhpc.data.readers`), and calls its ``columns`` check with the file's columns before the
first row. Text is decoded as strict UTF-8 a line at a time, so an undecodable byte is named by
line; a UTF-8 BOM is dropped. JSON arrays are decoded an element at a time, so a preview costs a
few rows. :mod:`kazhpc.data.readers` chooses the parser by extension and is the reading API; the
parsers and `BadRow` live here, apart from sources and previews.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kazhpc.data.adapters import LABEL_NAMES_KEY
from kazhpc.data.records import RawRow, Reject
from kazhpc.errors import KazhpcError

#: Rows per batch read from a Parquet file or a ``datasets`` source.
BATCH_ROWS = 1024

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


# --------------------------------------------------------------------------------------------
# Text files.


def text_lines(shown: str, path: Path) -> Iterator[tuple[int, str]]:
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


def jsonl_rows(shown: str, lines: Iterable[tuple[int, str]], columns: ColumnCheck | None) -> Iterator[RawRow | BadRow]:
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


def json_rows(shown: str, path: Path, columns: ColumnCheck | None) -> Iterator[RawRow | BadRow]:
    """A JSON array of objects, or JSON Lines content in a .json file (told apart by the first character).

    Both are decoded lazily, an element or a line at a time, so a preview costs a few rows."""
    lines = text_lines(shown, path)
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
    yield from jsonl_rows(shown, itertools.chain(head, lines), columns)


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


def csv_rows(shown: str, path: Path, columns: ColumnCheck | None) -> Iterator[RawRow | BadRow]:
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


def label_names(features: Any) -> dict[str, list[str]]:
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

        return label_names(Features.from_arrow_schema(schema))
    except Exception:  # metadata from another datasets version: ids stay ids, defaults apply
        return {}


def parquet_rows(shown: str, path: Path, columns: ColumnCheck | None) -> Iterator[RawRow]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise KazhpcError(f"{shown}: not a readable Parquet file ({first_line(exc)})") from None
    schema = parquet.schema_arrow
    if columns is not None:
        columns(list(schema.names))
    names = _parquet_label_names(schema)
    index = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
        for data in batch.to_pylist():
            if names:
                data[LABEL_NAMES_KEY] = names
            yield RawRow(data=data, origin=f"{shown}#{index}", index=index)
            index += 1


def first_line(exc: BaseException) -> str:
    """An exception's message for a one-line error: its first line, or its type when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
