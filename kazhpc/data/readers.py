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

How each format is parsed (line numbers, malformed rows, BOMs, lazy JSON arrays), and `BadRow`,
are :mod:`kazhpc.data.formats`; this module is the reading API over them, and reads ``datasets``
sources. `BadRow` is part of that API (`iter_rows` yields it): import it from here.

**Label names.** A ``ClassLabel`` column (KazNERD's ``ner_tags``) keeps its integer ids in the row;
the names are attached to every row as ``row.data[LABEL_NAMES_KEY]`` = ``{column: [name, ...]}``
(one shared dict per source, not a copy per row). They come from the dataset's features, for hub
sources and for local Parquet files written by ``datasets`` (which store the features in the
schema metadata). `label_names_of` reads them for any row. Keys that start with ``_`` are never
data columns.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kazhpc.config import SourceConfig, suggest
from kazhpc.data.adapters import LABEL_NAMES_KEY, adapt, required_columns
from kazhpc.data.formats import (
    BATCH_ROWS, BadRow, ColumnCheck, csv_rows, first_line, json_rows, jsonl_rows, label_names, parquet_rows,
    text_lines,
)  # fmt: skip
from kazhpc.data.records import RawRow, Reject
from kazhpc.errors import KazhpcError

#: File extensions read by `iter_rows`, and the reader for each.
EXTENSIONS = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
#: Rows `preview_source` reads (the header, or the first object's keys, comes with the first).
PREVIEW_ROWS = 5


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
        rows = parquet_rows(path, file, columns)
    elif ext == ".csv":
        rows = csv_rows(path, file, columns)
    elif ext == ".json":
        rows = json_rows(path, file, columns)
    else:
        rows = jsonl_rows(path, text_lines(path, file), columns)
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
# Datasets sources.


def _where(source: SourceConfig) -> str:
    if source.path is not None:
        return source.path
    return _hub_name(source)


def _hub_name(source: SourceConfig) -> str:
    return f"hub:{source.hub}" + (f"/{source.hub_config}" if source.hub_config else "")


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
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from exc


def _hub_rows(source: SourceConfig, check: bool) -> Iterator[RawRow]:
    dataset = _load_hub(source)
    name = f"{_hub_name(source)}/{source.split}"
    if check:
        check_columns(source, dataset.column_names, required_columns(source, dataset.column_names))
    if len(dataset) == 0:
        raise KazhpcError(f"{name}: empty input (source '{source.name}')")
    names = label_names(dataset.features)
    index = 0
    for batch in dataset.iter(batch_size=BATCH_ROWS):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            data = dict(zip(columns, values))
            if names:
                data[LABEL_NAMES_KEY] = names
            yield RawRow(data=data, origin=f"{name}#{index}", index=index)
            index += 1
