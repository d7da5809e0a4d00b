"""dataset: the records post-training reads (SFT, DPO/ODPO, RL prompts, evals), validated,
deduplicated, decontaminated and split, as JSONL files TRL's trainers load directly.

    [dataset.chat]
    source = "data/sft.jsonl"                      # a file, a folder, a glob, a list, or "dataset:raw"
    format = "prompt_completion"                   # or messages, preference, prompts (default: auto)
    fields = { prompt = "question", completion = "response" }   # record field = your column
    invalid = "drop"                               # default "error": a bad row fails the build (exit 2)
    dedup = "exact"                                # or "prompt", "none"
    decontaminate = ["bench/arith.jsonl"]          # drop rows sharing a word n-gram with these
    ngram = 8
    splits = { train = 0.9, test = 0.1 }

The artifact holds one `SPLIT.jsonl` per split (sorted keys, source order), `stats.json`
(rows in and out per source, invalid rows by reason, duplicates, decontaminated rows
per benchmark, rows per split) and `dataset.json` (format, columns, splits).
Every row's split is decided by a hash of its normalised content, so adding rows
never moves the others. See docs/rules/dataset.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgebuild import limits
from forgebuild.errors import did_you_mean
from forgebuild.rules.rows import json_kind as _kind
from forgebuild.rules.rows import parse_json
from forgebuild.rules import runtime

version = "1"

Format = Literal["auto", "prompt_completion", "messages", "preference", "prompts"]
# The columns of each format, as TRL's trainers name them: SFTTrainer reads
# prompt/completion or messages, DPOTrainer prompt/chosen/rejected, GRPOTrainer prompt.
REQUIRED = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "prompts": ("prompt",),
}
# Taken when a row has them; required in every row when `fields` names them.
OPTIONAL = {
    "prompt_completion": (),
    "messages": (),
    "preference": ("score_chosen", "score_rejected"),
    "prompts": ("answer",),
}
ALL_FIELDS = tuple(dict.fromkeys(f for fmt in REQUIRED for f in (*REQUIRED[fmt], *OPTIONAL[fmt])))
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# Extensions that can only hold JSONL, CSV or text: any other source may be Parquet.
NOT_PARQUET = (".jsonl", ".json", ".ndjson", ".csv", ".txt")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str | list[str] = Field(
        description="records to read: JSONL, Parquet or CSV files, folders, globs, or KIND:NAME targets "
                    "(another dataset, or a target whose output folder holds record files)")
    format: Format = Field(
        "auto", description="prompt_completion, messages, preference or prompts; auto: told by the fields present")
    fields: dict[str, str] = Field(
        default_factory=dict, description="record field -> the source's column name, e.g. { prompt = \"question\" }")
    conversational: bool | None = Field(
        None, description="prompt/completion/chosen/rejected are lists of messages rather than strings; "
                          "unset: as the first record that has a prompt")
    keep: list[str] = Field(
        default_factory=list, description="other source columns copied unchanged into every record (null when absent)")
    invalid: Literal["error", "drop"] = Field(
        "error", description="an invalid row fails the build (error) or is dropped and counted (drop)")
    dedup: Literal["none", "exact", "prompt"] = Field(
        "none", description="drop later rows equal to an earlier one: whole record (exact) or prompt only")
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 1.0}, description="split name -> fraction; fractions sum to 1")
    split_by: Literal["record", "prompt"] = Field(
        "record", description="what the split hash reads: the record, or its prompt (all answers to one prompt "
                              "land in one split)")
    split_seed: int = Field(0, description="salt of the split hash: change it to draw another partition")
    decontaminate: str | list[str] = Field(
        default_factory=list, description="benchmark files, folders, globs or targets; rows sharing a word n-gram "
                                          "with their text are removed")
    ngram: int = Field(13, ge=1, le=limits.TOKENS, description="words per n-gram for decontamination")
    decontaminate_fields: list[str] = Field(
        default_factory=list, description="benchmark fields whose text is read; empty: every string field")
    description: str = runtime("", description="a note for people, kept in the build record; not part of the key")


def as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def inputs(params: Params) -> dict:
    # The benchmarks are inputs too: editing one re-runs decontamination.
    return {"source": params.source, "decontaminate": params.decontaminate}


def environment(params: Params) -> dict:
    may_be_parquet = [spec for spec in [*as_list(params.source), *as_list(params.decontaminate)]
                      if not spec.startswith("dataset:") and not spec.lower().endswith(NOT_PARQUET)]
    return {"libraries": ["pyarrow"]} if may_be_parquet else {}


def requires(params: Params) -> dict[str, str]:
    """Parquet sources are read with pyarrow (the `data` extra); checked before a build starts."""
    return {"pyarrow": "data"} if environment(params) else {}


def check(params: Params) -> list[tuple[str, str]]:
    problems = []
    if not as_list(params.source):
        problems.append(("source", "names no source"))
    problems += _field_problems(params)
    problems += split_problems(params.splits)
    return problems


def _field_problems(params: Params) -> list[tuple[str, str]]:
    problems = []
    known = ALL_FIELDS if params.format == "auto" else (*REQUIRED[params.format], *OPTIONAL[params.format])
    for name, column in params.fields.items():
        if name not in known:
            where = "" if params.format == "auto" else f" of format {params.format}"
            problems.append((f"fields.{name}", f"unknown record field '{name}'{did_you_mean(name, known)}; "
                                               f"fields{where}: {', '.join(known)}"))
        elif not column:
            problems.append((f"fields.{name}", "names no column"))
    taken: dict[str, str] = {}
    for name, column in params.fields.items():
        if column in taken:
            problems.append((f"fields.{name}", f"column '{column}' is already mapped to {taken[column]}"))
        taken.setdefault(column, name)
    for i, column in enumerate(params.keep):
        if column in known:
            problems.append((f"keep.{i}", f"'{column}' is a record field, not an extra column"))
    return problems


def split_problems(splits: dict[str, float]) -> list[tuple[str, str]]:
    if not splits:
        return [("splits", "names no split")]
    problems = []
    for name, fraction in splits.items():
        if not SPLIT_NAME.match(name):
            problems.append((f"splits.{name}", "a split name is letters, digits, '_', '-' and '.' (it names a file)"))
        if not 0 < fraction <= 1:
            problems.append((f"splits.{name}", f"a fraction is > 0 and <= 1, got {fraction:g}"))
    total = sum(splits.values())
    if abs(total - 1) > 1e-9:
        problems.append(("splits", f"fractions must sum to 1, got {total:g}"))
    return problems


# ------------------------------------------------------------------ build
#
# Read every row of every source, tell the format, validate each row into a
# record with TRL's column names, drop duplicates, drop rows that overlap a
# benchmark, give each record a split by the hash of its content, write.

ROLES = ("system", "user", "assistant", "tool")
# What a record *is*, for exact dedup and the split hash: ids and scores do not count.
CONTENT = {
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "prompts": ("prompt", "answer"),
}
TRAINER = {"prompt_completion": "SFTTrainer", "messages": "SFTTrainer", "preference": "DPOTrainer",
           "prompts": "GRPOTrainer"}
READERS = {"parquet": "Parquet", "csv": "CSV"}
RECORD_FILES = (".jsonl", ".json", ".ndjson", ".parquet", ".csv")
LOG_LIMIT = 200  # rows listed in the log per kind of removal; the counts are always complete
EXAMPLES = 20  # invalid rows quoted in stats.json
WORD = re.compile(r"\w+")


@dataclass
class SourceFile:
    label: str  # as messages name it: "data/sft.jsonl", "dataset:raw/train.jsonl"
    path: str  # where it is read from
    source: str  # the stats entry it counts under: the file, or the target's address
    upstream: dict | None = None  # dataset.json of the dataset target it belongs to


@dataclass
class Row:
    file: SourceFile
    line: int
    data: dict | None
    unreadable: str | None = None  # why a line is not a record at all

    @property
    def where(self) -> str:
        return f"{self.file.label}:{self.line}"


@dataclass
class Record:
    row: Row
    data: dict


class RowError(Exception):
    """A row that is not a valid record: `path` starts with the record field's name."""

    def __init__(self, path: list, message: str):
        super().__init__(message)
        self.path = path
        self.message = message

    @property
    def counted(self) -> "RowError":
        """The error stats.json counts by reason (a subclass may leave out particulars)."""
        return self


@dataclass
class Layout:
    """How rows are read into records: the resolved format and the user's mapping."""

    format: str
    conversational: bool
    fields: dict
    keep: list


def build(ctx) -> None:
    files = source_files(ctx, "source", RECORD_FILES)
    rows = [row for f in files for row in read_rows(ctx, f)]
    layout = _layout(ctx, rows, files)
    ctx.log(f"format {layout.format}{' (conversational)' if layout.conversational else ''}; "
            f"{count_of(len(rows), 'row')} from {count_of(len(files), 'file')}")
    stats = _new_stats(layout, files, rows)
    records = _valid_records(ctx, rows, layout, stats)
    records = _without_duplicates(ctx, records, layout.format, stats)
    records = _decontaminated(ctx, records, layout.format, stats)
    if not records:
        raise ctx.bad_input(_nothing_left(stats))
    _write(ctx, records, layout, stats)


# ------------------------------------------------------------------ sources

def source_files(ctx, key: str, extensions: tuple) -> list[SourceFile]:
    """The files an input key names, in the order written; folders and targets expanded."""
    owners: dict[str, str] = {}
    for address, digest in sorted(ctx.dep_digests.items()):
        owners.setdefault(digest, address)  # two targets with one output: either name will do
    found = []
    for path in as_list(ctx.inputs.get(key)):
        owner = owners.get(os.path.basename(os.path.normpath(path))) if os.path.isdir(path) else None
        if owner:
            found += _target_files(owner, path, extensions)
        elif os.path.isdir(path):
            norm = os.path.normpath(path).replace(os.sep, "/")
            prefix = "" if norm == "." else norm + "/"
            found += [SourceFile(rel, rel, rel) for rel in sorted(ctx.digests)
                      if rel.startswith(prefix) and rel.lower().endswith(extensions)]
        else:
            found.append(SourceFile(path, path, path))
    return found


def _target_files(address: str, folder: str, extensions: tuple) -> list[SourceFile]:
    """A dataset target's split files (its dataset.json says which), or any target's record files."""
    meta = os.path.join(folder, "dataset.json")
    if os.path.isfile(meta):
        with open(meta, encoding="utf-8") as f:
            info = json.load(f)
        return [SourceFile(f"{address}/{split['path']}", os.path.join(folder, split["path"]), address, info)
                for _, split in sorted(info["splits"].items())]
    from forgebuild.hashing import walk_files

    return [SourceFile(f"{address}/{rel}", path, address) for rel, path, _ in walk_files(folder)
            if rel.lower().endswith(extensions)]


def read_rows(ctx, f: SourceFile):
    from forgebuild.rules.rows import DataError, format_of, read_records

    try:
        kind = format_of(f.path)
        if kind == "jsonl":
            yield from _jsonl_rows(f)
        else:
            for line, data in read_records(f.path):
                yield Row(f, line, data)
    except DataError as e:  # the whole file is unreadable: no policy can drop part of it
        raise ctx.bad_input(str(e).replace(f.path, f.label, 1)) from None
    except Exception as e:
        if kind == "jsonl":
            raise
        # read_records lets pyarrow's and csv's own errors through (ArrowInvalid, csv.Error)
        raise ctx.bad_input(f"{f.label}: not a readable {READERS[kind]} file ({e})") from None


def _jsonl_rows(f: SourceFile):
    """Like records.read_records, but a bad line is a bad row, so invalid = "drop" can drop it."""
    from forgebuild.rules.rows import decode, jsonl_rows

    with open(f.path, "rb") as fh:
        text = decode(fh.read(), f.label)
    for number, data, problem in jsonl_rows(text):
        yield Row(f, number, data, problem)


# ------------------------------------------------------------------ format

def _column(layout_fields: dict, row: Row, name: str) -> str:
    """The source column holding a record field: a dataset target's rows already use TRL's names."""
    return name if row.file.upstream else layout_fields.get(name, name)


def _layout(ctx, rows: list[Row], files: list[SourceFile]) -> Layout:
    p = ctx.params
    upstream = [f for f in files if f.upstream]
    fmt = p.format
    if fmt == "auto":
        fmt = upstream[0].upstream["format"] if upstream else _detect_format(ctx, rows)
    conversational = p.conversational
    if fmt == "messages":
        conversational = True
    elif conversational is None:
        conversational = _detect_conversational(rows, fmt, p.fields)
    unused = [name for name in p.fields if name not in (*REQUIRED[fmt], *OPTIONAL[fmt])]
    if unused:  # only possible with format = "auto": check() knows the fields of a named format
        raise ctx.bad_input(f"fields maps {', '.join(unused)}, which format {fmt} (told from the data) does not have; "
                            f"set format to say which format you mean")
    for f in upstream:
        theirs = f.upstream
        if theirs["format"] != fmt:
            raise ctx.bad_input(f"{f.source} has format {theirs['format']}; this dataset's format is {fmt}")
        if bool(theirs.get("conversational")) != conversational:
            raise ctx.bad_input(f"{f.source} is {_style(theirs.get('conversational'))}; "
                                f"this dataset is {_style(conversational)}")
    return Layout(fmt, conversational, p.fields, p.keep)


def _style(conversational) -> str:
    return "conversational" if conversational else "not conversational (its texts are strings)"


def _detect_format(ctx, rows: list[Row]) -> str:
    """Told by the fields any row has, as TRL tells a dataset's type from its columns."""
    seen = set()
    for row in rows:
        if row.data is not None:
            seen.update(name for name in ALL_FIELDS if _column(ctx.params.fields, row, name) in row.data)
    if "messages" in seen:
        return "messages"
    if {"chosen", "rejected"} <= seen:
        return "preference"
    if "completion" in seen:
        return "prompt_completion"
    if "prompt" in seen:
        return "prompts"
    present = sorted({str(k) for row in rows if row.data for k in row.data})
    raise ctx.bad_input(f"cannot tell the format from the fields ({', '.join(present) or 'none'}): "
                        "set format = \"prompt_completion\", \"messages\", \"preference\" or \"prompts\", "
                        "and map your columns with fields = { prompt = \"...\", ... }")


def _detect_conversational(rows: list[Row], fmt: str, fields: dict) -> bool:
    """As the first row whose prompt is a string or a list (a list of messages: conversational)."""
    for row in rows:
        value = row.data.get(_column(fields, row, "prompt")) if row.data else None
        if isinstance(value, (str, list)):
            return isinstance(value, list)
    return False


# ------------------------------------------------------------------ validation

def _valid_records(ctx, rows: list[Row], layout: Layout, stats: dict) -> list[Record]:
    records, invalid = [], []
    for row in rows:
        try:
            records.append(Record(row, _record(row, layout)))
        except RowError as e:
            invalid.append((row, e))
    report_invalid(ctx, invalid, layout, stats)
    return records


def report_invalid(ctx, invalid: list[tuple[Row, RowError]], layout: Layout, stats: dict) -> None:
    """Log every invalid row; with `invalid = "error"` fail on the first, else count them by reason."""
    messages = [f"{row.where}: {say_row_error(e, row, layout)}" for row, e in invalid]
    log_rows(ctx, "invalid", messages)
    if invalid and ctx.params.invalid == "error":
        more = f" (and {count_of(len(invalid) - 1, 'more invalid row')}, listed in the log)" if len(invalid) > 1 else ""
        raise ctx.bad_input(messages[0] + more)
    by_reason: dict[str, int] = {}
    for row, e in invalid:
        reason = reason_of(e.counted)
        by_reason[reason] = by_reason.get(reason, 0) + 1
        stats["sources"][row.file.source]["invalid"] += 1
    stats["invalid"] = {"rows": len(invalid), "policy": ctx.params.invalid,
                        "by_reason": dict(sorted(by_reason.items())), "examples": messages[:EXAMPLES]}


def say_row_error(e: RowError, row: Row, layout: Layout) -> str:
    """`field 'response' (completion): expected a string, got null`, in the user's column names."""
    if not e.path:
        return e.message
    name, rest = e.path[0], e.path[1:]
    column = _column(layout.fields, row, name)
    shown = column + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in rest)
    alias = f" ({name})" if column != name else ""
    return f"field '{shown}'{alias}: {e.message}"


def reason_of(e: RowError) -> str:
    """The reason a row counts under in stats.json: the field path without row-specific indices."""
    if not e.path:
        return e.message.split(" (")[0]  # "no field 'x' (fields present: ...)" -> "no field 'x'"
    shown = e.path[0] + "".join("[]" if isinstance(p, int) else f".{p}" for p in e.path[1:])
    return f"{shown}: {e.message}"


def _record(row: Row, layout: Layout) -> dict:
    """The row as a record with TRL's column names, or RowError."""
    if row.unreadable:
        raise RowError([], row.unreadable)
    csv = row.file.path.lower().endswith(".csv")
    record = {}
    for name in REQUIRED[layout.format]:
        column = _column(layout.fields, row, name)
        if column not in row.data:
            present = ", ".join(sorted(map(str, row.data))) or "none"
            raise RowError([], f"no field '{column}' (fields present: {present})")
        record[name] = _checked(name, row.data[column], layout, csv)
    for name in OPTIONAL[layout.format]:
        column = _column(layout.fields, row, name)
        value = row.data.get(column)
        if _given(value, csv):
            record[name] = _checked(name, value, layout, csv)
        elif name in layout.fields and not row.file.upstream:  # named in `fields`: every row must have it
            raise RowError([name], "missing" if column not in row.data else f"expected a value, got {_kind(value)}")
    _check_pair(record, layout.format)
    extras = [c for c in row.file.upstream["columns"] if c not in ALL_FIELDS] if row.file.upstream else layout.keep
    for column in extras:
        value = row.data.get(column)
        record[column] = value if _given(value, csv) else None
    return record


def _given(value, csv: bool) -> bool:
    return value is not None and not (csv and value == "")  # CSV cannot tell an empty cell from a missing one


def _checked(name: str, value, layout: Layout, csv: bool):
    if name == "messages":
        messages = _messages(value, [name], csv)
        if not any(m["role"] == "assistant" for m in messages):
            raise RowError([name], "has no assistant message")
        return messages
    if name in ("score_chosen", "score_rejected"):
        return _number(value, [name], csv)
    if name == "answer":
        return answer_text(value, [name])
    if layout.conversational:  # prompt, completion, chosen, rejected
        return _messages(value, [name], csv)
    return text_of(value, [name])


def text_of(value, path: list) -> str:
    if not isinstance(value, str):
        raise RowError(path, f"expected a string, got {_kind(value)}")
    if not value.strip():
        raise RowError(path, "is empty")
    return value


def _messages(value, path: list, csv: bool) -> list:
    if csv and isinstance(value, str):  # a CSV cell holds a list as JSON text
        value, problem = parse_json(value)
        if problem:
            raise RowError(path, f"expected a list of messages as JSON, got text that is {problem}")
    if not isinstance(value, list):
        raise RowError(path, f"expected a list of messages, got {_kind(value)}")
    if not value:
        raise RowError(path, "is an empty list")
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise RowError([*path, i], f"expected a message {{role, content}}, got {_kind(message)}")
        role = message.get("role")
        if role not in ROLES:
            raise RowError([*path, i, "role"], f"expected one of {', '.join(ROLES)}, got {_show(role)}")
        content = message.get("content")
        # an assistant turn that only calls tools may have no text (transformers' chat templates allow it)
        if not isinstance(content, str) and not (content is None and role == "assistant" and message.get("tool_calls")):
            raise RowError([*path, i, "content"], f"expected a string, got {_kind(content)}")
    return value


def _number(value, path: list, csv: bool) -> float:
    """A score, always a float: a split whose scores happen to be whole numbers must not
    get an integer column that the other splits' float columns cannot be loaded beside."""
    if csv and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RowError(path, f"expected a number, got {_show(value)}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(path, f"expected a number, got {_kind(value)}")
    if not math.isfinite(value):
        raise RowError(path, f"expected a finite number, got {value}")
    return float(value)


def answer_text(value, path: list) -> str:
    """Reference answers are text (numbers written as text), so the column has one type."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(path, f"expected a string or a number, got {_kind(value)}")
    text = value if isinstance(value, str) else repr(value)
    if not text.strip():
        raise RowError(path, "is empty")
    return text


def _check_pair(record: dict, fmt: str) -> None:
    if fmt != "preference":
        return
    has_chosen, has_rejected = "score_chosen" in record, "score_rejected" in record
    if has_chosen != has_rejected:
        given, lacking = ("score_chosen", "score_rejected") if has_chosen else ("score_rejected", "score_chosen")
        raise RowError([lacking], f"missing while {given} is given (give both scores or neither)")
    if normal_content(record["chosen"]) == normal_content(record["rejected"]):
        raise RowError(["rejected"], "is the same as chosen")


def _show(value) -> str:
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else value[:37] + "...", ensure_ascii=False)
    return _kind(value)


# ------------------------------------------------------------------ dedup, decontamination, splits

def normal_content(value):
    """Content as compared and hashed: NFKC, whitespace runs collapsed, nulls in messages dropped."""
    if isinstance(value, str):
        return " ".join(unicodedata.normalize("NFKC", value).split())
    if isinstance(value, list):
        return [normal_content(v) for v in value]
    if isinstance(value, dict):
        return {k: normal_content(v) for k, v in value.items() if v is not None}
    return value


def canonical(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _content_key(record: dict, fmt: str) -> str:
    return canonical(normal_content({name: record.get(name) for name in CONTENT[fmt]}))


def _prompt_key(record: dict, fmt: str) -> str:
    if fmt == "messages":  # the prompt of a conversation: everything before its last assistant turn
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return canonical(normal_content(messages[:last]))
    return canonical(normal_content(record["prompt"]))


def _without_duplicates(ctx, records: list[Record], fmt: str, stats: dict) -> list[Record]:
    key_of = _content_key if ctx.params.dedup == "exact" else _prompt_key
    return first_of_each(ctx, records, lambda data: key_of(data, fmt), stats)


def first_of_each(ctx, records: list[Record], key_of, stats: dict) -> list[Record]:
    """The records whose key no earlier record had (`dedup = "none"`: all), the others logged and counted."""
    mode = ctx.params.dedup
    stats["duplicates"] = {"rows": 0, "by": mode}
    if mode == "none":
        return records
    first: dict[str, str] = {}
    kept, removed = [], []
    for record in records:
        key = key_of(record.data)
        if key in first:
            removed.append(f"{record.row.where}: duplicate of {first[key]}")
            stats["sources"][record.row.file.source]["duplicates"] += 1
        else:
            first[key] = record.row.where
            kept.append(record)
    stats["duplicates"]["rows"] = len(removed)
    log_rows(ctx, "duplicate", removed)
    return kept


def word_grams(text: str, n: int):
    words = WORD.findall(text.casefold())
    return (tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def strings_of(value):
    """Every string inside a value; a message's role is a label, not text."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_of(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key != "role":
                yield from strings_of(item)


def _benchmark_index(ctx) -> tuple[dict, list[str]]:
    """n-gram -> names of the benchmarks that contain it, and every benchmark's name."""
    from forgebuild.rules.rows import DataError, read_text

    p = ctx.params
    index: dict[tuple, set] = {}
    longest: dict[str, int] = {}
    for f in source_files(ctx, "decontaminate", (*RECORD_FILES, ".txt")):
        if f.path.lower().endswith(RECORD_FILES):
            texts = [text for row in read_rows(ctx, f) for text in _benchmark_texts(ctx, row)]
        else:
            try:
                texts = [read_text(f.path)]
            except DataError as e:
                raise ctx.bad_input(str(e).replace(f.path, f.label, 1)) from None
        longest[f.source] = max([longest.get(f.source, 0), *(len(WORD.findall(t)) for t in texts)])
        for text in texts:
            for gram in word_grams(text, p.ngram):
                index.setdefault(gram, set()).add(f.source)
    for name, words in longest.items():  # a benchmark target, which check_inputs could not read
        if 0 < words < p.ngram:
            raise ctx.bad_input(too_long_ngram(p.ngram, name, words))
    return index, list(longest)


def too_long_ngram(ngram: int, benchmark: str, longest: int) -> str:
    return (f"ngram = {ngram} is longer than every text of {benchmark} (the longest has {longest} words): "
            f"decontamination could remove no copy of it; set ngram = {longest} or less")


def check_inputs(params: Params, files: dict) -> list[tuple[str, str]]:
    """A benchmark whose every text is shorter than `ngram` words can match no row (ngram = 13
    against 6-word prompts removed 0 of 41 exact copies): an error before the build starts."""
    from forgebuild.rules.rows import read_records, read_text

    problems = []
    for rel, path in files.get("decontaminate", []):
        wanted = params.decontaminate_fields
        try:
            if rel.lower().endswith(RECORD_FILES):
                texts = [t for _, row in read_records(path) for t in strings_of([row.get(k) for k in wanted]
                                                                                 if wanted else row)]
            else:
                texts = [read_text(path)]
        except Exception:  # noqa: BLE001 - an unreadable benchmark is the build's to report, with its line
            continue
        longest = max((len(WORD.findall(t)) for t in texts), default=0)
        if 0 < longest < params.ngram:
            problems.append(("ngram", too_long_ngram(params.ngram, rel, longest)))
    return problems


def _benchmark_texts(ctx, row: Row):
    if row.unreadable:  # a benchmark is not ours to drop lines from
        raise ctx.bad_input(f"{row.where}: {row.unreadable}")
    wanted = ctx.params.decontaminate_fields
    return strings_of([row.data.get(k) for k in wanted] if wanted else row.data)


def _record_texts(record: dict, fmt: str):
    for name in CONTENT[fmt]:
        yield from strings_of(record.get(name))


def _decontaminated(ctx, records: list[Record], fmt: str, stats: dict) -> list[Record]:
    p = ctx.params
    stats["decontaminated"] = {"rows": 0, "ngram": p.ngram, "by_benchmark": {}}
    if not as_list(p.decontaminate):
        return records
    index, names = _benchmark_index(ctx)
    by_benchmark = dict.fromkeys(names, 0)  # a benchmark that removed nothing is reported as 0
    kept, removed = [], []
    for record in records:
        hits: set = set()
        for text in _record_texts(record.data, fmt):
            for gram in word_grams(text, p.ngram):
                hits |= index.get(gram, set())
        if not hits:
            kept.append(record)
            continue
        which = sorted(hits)
        for name in which:
            by_benchmark[name] += 1
        stats["sources"][record.row.file.source]["decontaminated"] += 1
        removed.append(f"{record.row.where}: shares a {p.ngram}-word sequence with {', '.join(which)}")
    stats["decontaminated"].update(rows=len(removed), by_benchmark=by_benchmark)
    log_rows(ctx, "decontaminated", removed)
    return kept


def split_of(key: str, fractions: list[tuple[str, float]], salt: int) -> str:
    """A record's split from its content alone: adding or removing other rows never moves it."""
    digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64
    total = 0.0
    for name, fraction in fractions:
        total += fraction
        if point < total:
            return name
    return fractions[-1][0]  # the fractions' sum fell a rounding error short of 1


# ------------------------------------------------------------------ output

def _write(ctx, records: list[Record], layout: Layout, stats: dict) -> None:
    p = ctx.params
    # Sorted, not as written: the key's canonical JSON does not keep the table's order.
    fractions = sorted(p.splits.items())
    key_of = _content_key if p.split_by == "record" else _prompt_key
    columns = sorted({c for record in records for c in record.data})
    by_split: dict[str, list[str]] = {name: [] for name, _ in fractions}
    for record in records:
        split = split_of(key_of(record.data, layout.format), fractions, p.split_seed)
        row = {c: record.data.get(c) for c in columns}  # every record has every column
        by_split[split].append(json.dumps(row, sort_keys=True, ensure_ascii=False, allow_nan=False))
        stats["sources"][record.row.file.source]["rows_out"] += 1
    for name, lines in by_split.items():
        with open(os.path.join(ctx.out, f"{name}.jsonl"), "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
        if not lines:
            ctx.log(f"warning: split {name} is empty")
    stats["rows_out"] = len(records)
    stats["splits"] = {name: len(lines) for name, lines in by_split.items()}
    info = {
        "format": layout.format,
        "conversational": layout.conversational,
        "columns": columns,
        "trainer": TRAINER[layout.format],
        "splits": {name: {"path": f"{name}.jsonl", "rows": len(by_split[name]), "fraction": fraction}
                   for name, fraction in fractions},
    }
    write_json(os.path.join(ctx.out, "dataset.json"), info)
    write_json(os.path.join(ctx.out, "stats.json"), stats)
    ctx.log(f"{stats['rows_in']} rows in, {len(records)} out: "
            + ", ".join(f"{name} {n}" for name, n in stats["splits"].items()))


def write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(data, sort_keys=True, ensure_ascii=False, indent=2) + "\n")


def _new_stats(layout: Layout, files: list[SourceFile], rows: list[Row]) -> dict:
    sources = {f.source: {"rows_in": 0, "invalid": 0, "duplicates": 0, "decontaminated": 0, "rows_out": 0}
               for f in files}
    for row in rows:
        sources[row.file.source]["rows_in"] += 1
    return {"format": layout.format, "rows_in": len(rows), "rows_out": 0, "sources": sources}


def _nothing_left(stats: dict) -> str:
    return (f"no records left: {stats['rows_in']} rows read, {stats['invalid']['rows']} invalid, "
            f"{stats['duplicates']['rows']} duplicates, {stats['decontaminated']['rows']} decontaminated")


def count_of(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def log_rows(ctx, what: str, lines: list[str]) -> None:
    for line in lines[:LOG_LIMIT]:
        ctx.log(f"{what}: {line}")
    if len(lines) > LOG_LIMIT:
        ctx.log(f"{what}: ... and {len(lines) - LOG_LIMIT} more")
