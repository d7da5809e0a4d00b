"""Reading data files the data rules share: text with an encoding policy, and records
(JSONL, Parquet, CSV) with the line or row each came from, so a bad one can be named.

Imported only inside builds (pyarrow is loaded only for Parquet).
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import sys

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


def read_records(path: str, errors: str = "error", bad_lines: str = "raise", surrogates: bool = False):
    """Yield (line or row number, record dict) from a JSONL, Parquet or CSV file.

    JSONL lines and CSV rows are numbered as an editor shows them (CSV counts
    its header as line 1); Parquet rows from 1. A JSONL line that is not a JSON
    object raises DataError, or with bad_lines="yield" comes out as
    (number, None, message) so a drop policy can count it and go on. A file the
    format's own library cannot read at all is a DataError too. A JSONL string with a
    lone surrogate is a bad line unless `surrogates` (the caller replaces them by policy).
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
    for number, row, problem in jsonl_rows(text, surrogates):
        if problem is None:
            yield number, row
        elif bad_lines == "yield":
            yield number, None, problem
        else:
            raise DataError(f"{path}:{number}: {problem}")


def jsonl_rows(text: str, surrogates: bool = False):
    """Yield (line number, value, None) or (line number, None, what is wrong) for each non-blank line.

    Lines end at "\n" only: JSON strings may hold U+2028, U+0085 and the other characters
    str.splitlines() also breaks at. A lone surrogate (JSON "\\ud800") cannot be written as
    UTF-8 later, so it is a bad line unless `surrogates` (the caller replaces them).
    """
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield number, *parse_line(line, surrogates)


def parse_line(line: str, surrogates: bool = False):
    """(object, None) or (None, what is wrong) for one JSON Lines line."""
    row, problem = parse_json(line)
    if problem:
        return None, problem
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {json_kind(row)}"
    if not surrogates and "\\u" in line and LONE_SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(row):
        return None, "a string holds a lone surrogate (a \\uD800-\\uDFFF escape without its pair): not valid Unicode"
    return row, None


class NotJSON(ValueError):
    pass


def _no_constant(name: str):
    # Python reads NaN and Infinity, which JSON has not: a row holding one could not be written back
    raise NotJSON(f"{name} is not a JSON value")


# One decoder: json.loads with a keyword argument builds a new one per call (+40% on 200k rows)
DECODER = json.JSONDecoder(parse_constant=_no_constant)


def parse_json(text: str):
    """(value, None) or (None, "not valid JSON (why)"): every way json.loads fails, said in one form."""
    try:
        return DECODER.decode(text), None
    except NotJSON as e:
        return None, f"not valid JSON ({e})"
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg}{'' if e.msg.endswith(' at') else ' at'} column {e.colno})"
    except ValueError as e:  # Python's 4300-digit limit on int(): not a JSONDecodeError, no position
        digits = re.search(r"value has (\d+) digits", str(e))
        size = f"{digits.group(1)} digits" if digits else "too many digits"
        return None, f"not valid JSON (a number of {size}; at most {sys.get_int_max_str_digits()} are read)"
    except RecursionError:  # ~1,000 levels of [ or { exhaust the decoder's recursion
        return None, "not valid JSON (arrays or objects nested too deep)"


# Only a line with such an escape can hold a lone surrogate: the full check (encoding the row) runs only then,
# and the regex only on lines holding a backslash-u at all (200k rows: 0.50 s read, as before this check).
LONE_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(row) -> bool:
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def json_kind(value) -> str:
    """What a JSON value is, in the words of a message: "a number", "an empty string", "null"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


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
