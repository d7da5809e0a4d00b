"""Reading data files the data rules share: text with an encoding policy, and records
(JSONL, Parquet, CSV) with the line or row each came from, so a bad one can be named.

Imported only inside builds (pyarrow is loaded only for Parquet).
"""
from __future__ import annotations

import csv
import io
import json
import os

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv"}
BINARY_PROBE = 8192  # bytes looked at to tell binary from text, as git and grep do


class DataError(ValueError):
    """A file that cannot be read as declared; the message names file, line and field."""


def format_of(path: str) -> str:
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise DataError(f"{path}: unknown record format (use .jsonl, .parquet or .csv)")
    return fmt


def looks_binary(data: bytes) -> bool:
    return b"\0" in data[:BINARY_PROBE]


def decode(data: bytes, path: str, errors: str = "error") -> str:
    """UTF-8 text; `errors` is the declared policy: "error" (name the byte offset) or "replace".

    A leading byte-order mark (Windows tools write one) is not text: it is dropped.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if errors == "replace":
            return data.decode("utf-8", errors="replace")
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 at byte offset {e.start} "
                        f"(set encoding_errors = \"replace\" to replace bad bytes)") from None


def read_text(path: str, errors: str = "error") -> str:
    with open(path, "rb") as f:
        data = f.read()
    if looks_binary(data):
        raise DataError(f"{path}: binary file (a NUL byte in the first {BINARY_PROBE} bytes)")
    return decode(data, path, errors)


def read_records(path: str, errors: str = "error", bad_lines: str = "raise"):
    """Yield (line or row number, record dict) from a JSONL, Parquet or CSV file.

    JSONL lines and CSV rows are numbered as an editor shows them (CSV counts
    its header as line 1); Parquet rows from 1. A JSONL line that is not a JSON
    object raises DataError, or with bad_lines="yield" comes out as
    (number, None, message) so a drop policy can count it and go on. A file the
    format's own library cannot read at all is a DataError too.
    """
    fmt = format_of(path)
    if fmt == "parquet":
        yield from _parquet(path)
        return
    with open(path, "rb") as f:
        text = decode(f.read(), path, errors)
    if fmt == "csv":
        yield from _csv(text, path)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problem = None if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"
        except ValueError as e:
            problem = f"not valid JSON ({e.msg} at column {e.colno})"
        if problem is None:
            yield number, row
        elif bad_lines == "yield":
            yield number, None, problem
        else:
            raise DataError(f"{path}:{number}: {problem}")


def _parquet(path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    yield from enumerate(rows, 1)


def _csv(text: str, path: str):
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None


def field(row: dict, name: str, path: str, number: int):
    """row[name], or a DataError that lists the fields the row has."""
    if name in row:
        return row[name]
    present = ", ".join(sorted(map(str, row))) or "none"
    raise DataError(f"{path}:{number}: no field '{name}' (fields present: {present})")
