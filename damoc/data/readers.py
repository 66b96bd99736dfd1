"""Read raw rows from files: JSONL, JSON, CSV/TSV and Parquet, each optionally gzip-compressed.

Written against the standard library (and pyarrow for Parquet) rather than `datasets`' file
builders because a malformed row must be reported with its file and row number, and `on_bad_rows:
skip` must be able to step over a broken JSON line; the builders fail the whole file instead.
Each reader yields (row_number, row); row numbers are 1-based lines for line formats (so an editor
jumps to them) and 1-based positions otherwise.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from damoc.errors import DataError

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")


class BadRow(Exception):
    """A row that could not be parsed at all (as opposed to one that parsed but lacks a field)."""

    def __init__(self, row_number: int, message: str):
        super().__init__(message)
        self.row_number = row_number
        self.message = message


def file_kind(path: str | os.PathLike) -> Optional[str]:
    """'jsonl' | 'json' | 'csv' | 'tsv' | 'parquet' from the name (a trailing .gz is allowed)."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return "jsonl" if suffix == ".ndjson" else suffix[1:]
    return None


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_rows(path: str | os.PathLike, on_bad_row: Optional[Callable[[BadRow], None]] = None) -> Iterator[tuple[int, dict]]:
    """Yield (row_number, row dict). A row that cannot be parsed raises DataError, or is passed to
    `on_bad_row` when given (the `skip` policy)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    kind = file_kind(path)
    if kind is None:
        raise DataError(f"unsupported data file type: {path} (expected {', '.join(SUFFIXES)}, optionally .gz)")
    reader = {"jsonl": _jsonl, "json": _json, "csv": _csv, "tsv": _csv, "parquet": _parquet}[kind]
    try:
        for row_number, row in reader(path):
            if isinstance(row, BadRow):
                if on_bad_row is None:
                    raise DataError(f"{path}: row {row.row_number}: {row.message}")
                on_bad_row(row)
                continue
            yield row_number, row
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_text(path) as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield line_number, BadRow(line_number, f"invalid JSON: {e.msg} (column {e.colno})")
                continue
            if not isinstance(row, dict):
                yield line_number, BadRow(line_number, f"expected a JSON object, got {type(row).__name__}")
                continue
            yield line_number, row


def _json(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from e
    rows: Any
    if isinstance(data, list):
        rows = data
    elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        # An object keyed by id, as PubMedQA's own release ({"PMID": {...}}): the key becomes `_key`.
        rows = [{"_key": key, **value} for key, value in data.items()]
    elif isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON list of rows, an object of rows keyed by id, or an object with one list of rows")
        rows = data[lists[0]]
    else:
        raise DataError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    for i, row in enumerate(rows, start=1):
        yield i, row if isinstance(row, dict) else BadRow(i, f"expected a JSON object, got {type(row).__name__}")


def _csv(path: Path) -> Iterator[tuple[int, Any]]:
    delimiter = "\t" if file_kind(path) == "tsv" else ","
    with _open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            return
        for row in reader:
            line = reader.line_num
            if None in row:
                yield line, BadRow(line, f"{len(row[None]) + len(reader.fieldnames)} fields, header has {len(reader.fieldnames)}")
                continue
            yield line, row


def _parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for non-Parquet bytes
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e
    i = 0
    for batch in parquet.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            i += 1
            yield i, row
