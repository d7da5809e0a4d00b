"""corpus: documents from text files, record files and other corpora; curated, split and mixed.

    [corpus.code]
    sources = ["data/code/**/*.py"]      # one document per text file
    dedup = "exact"
    holdout = 0.02

    [corpus.docs]
    sources = ["data/docs/*.jsonl"]      # one document per record (JSONL, Parquet, CSV)
    text_field = "text"
    pii = true
    dedup = { near = { threshold = 0.8 } }

    [corpus.mix]
    mix = { "corpus:code" = 0.7, "corpus:docs" = 0.3 }
    size = { documents = 1000 }

A corpus of sources runs each document through: decode (declared encoding
policy; binary files are skipped and reported), Unicode normalisation, PII
scrubbing, then the filters min_chars, max_chars, include, exclude,
max_symbol_ratio, then exact and near-duplicate removal (MinHash LSH), then
the holdout split by document hash. The per-document work is cached per
source file (ctx.memo), so adding one file to a thousand processes that file
only; what is global (filters' thresholds, dedup, split, sharding) is cheap
and runs on cached ids, lengths and MinHash signatures.

A mix samples other corpora's train splits in declared proportions, to a
size in documents or characters (token budgets belong to the `tokens` target,
which has the tokenizer), with or without replacement, seeded.

The artifact: train/part-NNNNN.parquet and holdout/part-NNNNN.parquet
(columns text, id = BLAKE3-256 of the text, source), and stats.json. NNNNN is
a shard bucket, a stable hash of the document's source, so adding a file
rewrites one shard. Reference: docs/rules/corpus.md.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from forgebuild import limits
from forgebuild.planning.plan import classify
from forgebuild.rules import runtime
from forgebuild.rules.pool import in_order, worker_count

version = "1"

PII_KINDS = ("email", "ip", "secret")
# Keys that curate the documents of `sources`; a mix samples corpora already curated.
CURATION_KEYS = ("format", "text_field", "encoding_errors", "normalize", "min_chars", "max_chars", "include",
                 "exclude", "max_symbol_ratio", "pii", "dedup", "holdout")
MIX_KEYS = ("size", "replacement")


# ------------------------------------------------------------------ parameters

class Near(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.8, gt=0, le=1, description=(
        "estimated Jaccard similarity of word shingles at or above which a document is a near-duplicate "
        "of an earlier one and is removed"))
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations: more is more precise and slower")
    shingle: int = Field(5, ge=1, le=32, description="words per shingle")


class Dedup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exact: bool = Field(True, description="remove documents whose text (after normalisation and PII scrubbing) "
                                          "equals an earlier one's")
    near: Near | None = Field(None, description="near-duplicate removal with MinHash LSH: a table, or true for "
                                                "the defaults")

    @field_validator("near", mode="before")
    @classmethod
    def _near_shorthand(cls, value):
        if isinstance(value, bool):
            return {} if value else None
        if value is not None and not isinstance(value, dict):
            raise _expected("true, false or a table", value)
        return value


DEDUP_SHORTHANDS = {"none": {"exact": False}, "exact": {"exact": True}, "near": {"exact": True, "near": {}}}


def _expected(what: str, value):
    """A validation error the Forgefile loader prints as it is: `expected WHAT, got string "x"`."""
    from pydantic_core import PydanticCustomError

    kind = {str: "string", bool: "boolean", int: "integer", float: "float", list: "array", dict: "table"}
    shown = f' "{value}"' if isinstance(value, str) else (f" {value}" if isinstance(value, (int, float)) else "")
    message = f"expected {what}, got {kind.get(type(value), type(value).__name__)}{shown}"
    return PydanticCustomError("corpus_value", message.replace("{", "{{").replace("}", "}}"))


class Size(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: int | None = Field(None, gt=0, le=limits.AMOUNT, description="number of documents in the mix's train split")
    characters: int | None = Field(None, gt=0, le=limits.AMOUNT, description="number of characters in the mix's train split")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[str] = Field(default_factory=list, description=(
        "text files, record files (.jsonl, .parquet, .csv), folders, globs, corpus:NAME targets, and run:NAME "
        "targets (every file of their output); relative to the Forgefile"))
    format: Literal["auto", "text", "records"] = Field("auto", description=(
        "how source files are read: auto (by extension: .jsonl/.ndjson/.json, .parquet and .csv are records, "
        "anything else is one document per file), text, or records"))
    text_field: str = Field("text", description="the field of a record that holds the document's text")
    encoding_errors: Literal["error", "replace"] = Field("error", description=(
        "bytes that are not UTF-8: error (fail, naming file and byte offset) or replace (with U+FFFD, counted)"))
    normalize: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normalisation form")
    min_chars: int = Field(1, ge=0, le=limits.AMOUNT, description="drop documents shorter than this (characters)")
    max_chars: int | None = Field(None, gt=0, le=limits.AMOUNT, description="drop documents longer than this (characters)")
    include: list[str] = Field(default_factory=list, description="keep only documents matching one of these regexes")
    exclude: list[str] = Field(default_factory=list, description="drop documents matching one of these regexes")
    max_symbol_ratio: float | None = Field(None, gt=0, le=1, description=(
        "drop documents whose non-space characters are more than this fraction neither letters nor digits"))
    pii: list[Literal["email", "ip", "secret"]] = Field(False, validate_default=True, description=(
        "replace emails, IP addresses and secrets with <EMAIL>, <IP>, <SECRET>; true for all three"))
    dedup: Dedup = Field("none", validate_default=True, description=(
        "duplicate removal: none, exact, near (exact and near), or a table { exact, near = { threshold, "
        "num_perm, shingle } }"))
    holdout: float = Field(0.0, ge=0, lt=1, description="fraction of documents held out, decided by each document's hash")
    shards: int = Field(64, ge=1, le=100_000, description=(
        "shard buckets: a document's shard is a stable hash of its source, so adding a file rewrites one shard"))
    mix: dict[str, float] = Field(default_factory=dict, description=(
        "corpus:NAME -> weight: sample these corpora's train splits in these proportions (weights are relative)"))
    size: Size | None = Field(None, description=(
        "size of a mix's train split: { documents = N } or { characters = N }; default: as many documents as "
        "the proportions allow without repeating one"))
    replacement: bool = Field(False, description=(
        "mix: sample with replacement; without (the default), whole epochs then a seeded sample of the rest"))
    workers: int = runtime(0, ge=0, le=limits.THREADS, description="processes for the per-file work; 0: one per CPU (not part of the key)")

    @field_validator("pii", mode="before")
    @classmethod
    def _pii_shorthand(cls, value):
        if isinstance(value, bool):
            return list(PII_KINDS) if value else []
        if not isinstance(value, list):
            raise _expected("true, false or an array of 'email', 'ip', 'secret'", value)
        return value

    @field_validator("pii")
    @classmethod
    def _pii_sorted(cls, value):
        return sorted(set(value))

    @field_validator("dedup", mode="before")
    @classmethod
    def _dedup_shorthand(cls, value):
        if isinstance(value, str):
            if value not in DEDUP_SHORTHANDS:
                raise _expected("'none', 'exact', 'near' or a table", value)
            return DEDUP_SHORTHANDS[value]
        return value


def is_corpus_ref(spec: str) -> bool:
    return classify(spec) == "target" and spec.startswith("corpus:")


def is_files_ref(spec: str) -> bool:
    """A run target among the sources: its output files are read like the project's own (a generator
    script's data becomes a corpus without being committed)."""
    return classify(spec) == "target" and spec.startswith("run:")


def _mix_key(address: str) -> str:
    # check() key paths are dotted: a name with a dot cannot be addressed inside `mix`
    return f"mix.{address}" if "." not in address else "mix"


def inputs(params: Params) -> dict:
    found: dict = {}
    readable = [s for s in params.sources if classify(s) != "target" or is_corpus_ref(s) or is_files_ref(s)]
    if readable:
        found["sources"] = readable
    for address in params.mix:
        if is_corpus_ref(address):
            found[f"mix.{address}"] = address
    return found


def environment(params: Params) -> dict:
    near = not params.mix and params.dedup.near is not None
    return {"libraries": ["pyarrow", *(["datasketch", "numpy"] if near else [])]}


def requires(params: Params) -> dict[str, str]:
    """What the build imports, by the extra that installs it (checked before a build starts)."""
    return dict.fromkeys(environment(params)["libraries"], "data")


def check(params: Params) -> list[tuple[str, str]]:
    p = params
    problems = []
    if p.mix and p.sources:
        problems.append(("mix", "a corpus takes sources or a mix, not both"))
    if not p.mix and not p.sources:
        problems.append(("sources", "a corpus needs sources (files, globs, corpus targets) or a mix"))
    for i, spec in enumerate(p.sources):
        if classify(spec) == "target" and not (is_corpus_ref(spec) or is_files_ref(spec)):
            problems.append((f"sources.{i}", f"'{spec}' is neither a corpus nor a run target; sources are files, "
                                             f"globs, corpus:NAME and run:NAME"))
    problems += _mix_problems(p)
    given = p.model_fields_set
    if p.mix:
        problems += [(k, "applies to sources; a mix samples corpora that are already curated")
                     for k in CURATION_KEYS if k in given]
    else:
        problems += [(k, "applies only to a mix") for k in MIX_KEYS if k in given]
    if p.size is not None and (p.size.documents is None) == (p.size.characters is None):
        problems.append(("size", "give exactly one of documents or characters"))
    if p.mix and p.replacement and p.size is None:
        problems.append(("replacement", "sampling with replacement needs a size"))
    if p.max_chars is not None and p.max_chars < p.min_chars:
        problems.append(("max_chars", f"must be >= min_chars ({p.min_chars})"))
    for key in ("include", "exclude"):
        for i, pattern in enumerate(getattr(p, key)):
            try:
                re.compile(pattern)
            except re.error as e:
                problems.append((f"{key}.{i}", f"not a valid regular expression: {e}"))
    return problems


def _mix_problems(p: Params) -> list[tuple[str, str]]:
    problems = []
    for address, weight in p.mix.items():
        if not is_corpus_ref(address):
            problems.append((_mix_key(address), f"a mix takes corpus targets (corpus:NAME), not '{address}'"))
        if weight < 0:
            problems.append((_mix_key(address), f"expected a weight >= 0, got {weight:g}"))
    if p.mix and not any(w > 0 for w in p.mix.values()):
        zero = all(w == 0 for w in p.mix.values())
        problems.append(("mix", "all weights are 0: at least one must be > 0" if zero else "no weight is > 0"))
    return problems


# ------------------------------------------------------------------ the build

# A source is cut into chunks of this many documents, each placed in a shard by a
# hash of (source, chunk): a 10 GB JSONL file is spread over shards, a text file
# (one document) lands whole in one.
CHUNK_DOCS = 10_000
# Row groups of at most this much text or this many rows: 32 MiB groups read well
# in Arrow and keep a reader's memory bounded.
ROW_GROUP_BYTES = 32 << 20
ROW_GROUP_ROWS = 65_536
MINHASH_SEED = 1  # fixed, not the target's seed: signatures are cached per file across targets
WRITE_OPTIONS = {"compression": "zstd", "use_dictionary": ["source"], "write_statistics": ["id", "source"]}


def build(ctx) -> None:
    stats = build_mix(ctx) if ctx.params.mix else build_sources(ctx)
    with open(os.path.join(ctx.out, "stats.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(f"the corpus rule needs {module.split('.')[0]}: pip install 'forgebuild[data]'") from None


@dataclass
class Unit:
    """One thing read as a whole: a source file, or one shard file of another corpus."""

    label: str  # the `source` column: project-relative path, or the corpus's address
    path: str  # what to read, relative to the project folder
    fmt: str  # text | jsonl | csv | parquet | corpus
    digest: str
    held: bool  # documents from another corpus's holdout stay held out
    bucket_key: str  # with the chunk number, decides the shard


def source_units(ctx) -> list[Unit]:
    from forgebuild.hashing import file_digest
    from forgebuild.rules.rows import FORMATS

    p = ctx.params
    units = []
    files = [(rel, rel, digest) for rel, digest in sorted(ctx.digests.items())]
    for address in sorted({s for s in p.sources if is_files_ref(s)}):
        files += output_files(dependency_folder(ctx, address), address)
    for label, path, digest in files:
        fmt = "text" if p.format == "text" else FORMATS.get(os.path.splitext(path)[1].lower())
        if fmt is None and p.format == "records":
            raise ctx.bad_input(f"{label}: unknown record format (use .jsonl, .parquet or .csv, or format = \"text\")")
        units.append(Unit(label, path, fmt or "text", digest, False, label))
    for address in sorted({s for s in p.sources if is_corpus_ref(s)}):
        folder = dependency_folder(ctx, address)
        for split in ("train", "holdout"):
            for name in sorted(os.listdir(os.path.join(folder, split))) if os.path.isdir(os.path.join(folder, split)) else []:
                path = os.path.join(folder, split, name)
                units.append(Unit(address, path, "corpus", file_digest(path), split == "holdout",
                                  f"{address}/{split}/{name}"))
    return units


def output_files(folder: str, address: str) -> list[tuple[str, str, str]]:
    """(label ADDRESS/PATH, path, digest) of every file of a run target's output, in path order."""
    from forgebuild.hashing import file_digest, walk_files

    return [(f"{address}/{rel}", path, file_digest(path)) for rel, path, _ in walk_files(folder)]


def dependency_folder(ctx, address: str) -> str:
    """The artifact folder of a target named in `sources` (ctx.inputs lists folders, not addresses)."""
    digest = ctx.dep_digests[address]
    given = ctx.inputs.get("sources", [])
    for path in [given] if isinstance(given, str) else given:
        if os.path.basename(os.path.normpath(path)) == digest and os.path.isdir(path):
            return path
    raise ctx.failure(f"the output of {address} is not among the inputs")


# ------------------------------------------------------------------ per-unit work (cached)

def unit_material(unit: Unit, p: Params) -> dict:
    """Everything the per-document work of one unit depends on (memo adds the rule version)."""
    near = p.dedup.near
    curation = {"normalize": p.normalize, "pii": p.pii, "include": p.include, "exclude": p.exclude,
                "minhash": {"num_perm": near.num_perm, "shingle": near.shingle} if near else None}
    if unit.fmt in ("text", "jsonl", "csv"):
        curation["encoding_errors"] = p.encoding_errors
    if unit.fmt in ("jsonl", "csv", "parquet"):
        curation["text_field"] = p.text_field
    return {"data": unit.digest, "format": unit.fmt, "curation": curation}


def cached_unit(ctx, unit: Unit) -> str | None:
    """The memo folder of a unit processed by an earlier build, or None (a probe: produces nothing)."""
    return ctx.memo("corpus-unit", unit_material(unit, ctx.params))


def process_unit(ctx, unit: Unit) -> tuple[str, str, bool]:
    """(status, memo folder or error message, whether it was processed now rather than taken from the cache).

    Runs in a pool process too, where exceptions do not pickle well: a data error comes back as a value.
    """
    from forgebuild.rules.rows import DataError

    produced = []

    def produce(folder):
        produced.append(True)
        curate_unit(folder, unit, ctx.params)

    try:
        return "ok", ctx.memo("corpus-unit", unit_material(unit, ctx.params), produce), bool(produced)
    except DataError as e:
        return "error", str(e), True


def _process_job(job):
    return process_unit(*job)


def process_units(ctx, units: list[Unit]) -> list[str]:
    """The memo folder of each unit. With several workers, the units no earlier build processed
    (found by probing the memo) run in a process pool; identical files are processed once."""
    if worker_count(ctx.params.workers, len(units)) <= 1:
        results = [process_unit(ctx, unit) for unit in units]
        _raise_first_error(ctx, results)
        ctx.log(f"corpus: {len(units)} source units: {sum(r[2] for r in results)} processed, "
                f"{sum(not r[2] for r in results)} from the cache")
        return [r[1] for r in results]
    folders = [cached_unit(ctx, u) for u in units]
    todo: dict[str, int] = {}
    for i, folder in enumerate(folders):
        if folder is None:
            todo.setdefault(json.dumps(unit_material(units[i], ctx.params), sort_keys=True), i)
    results = _run_jobs(ctx, [(ctx, units[i]) for i in todo.values()])
    _raise_first_error(ctx, results)
    cached = sum(f is not None for f in folders)
    ctx.log(f"corpus: {len(units)} source units: {len(todo)} processed, {cached} from the cache"
            + (f", {len(units) - cached - len(todo)} identical to another" if len(units) - cached - len(todo) else ""))
    done = {i: folder for i, (_, folder, _) in zip(todo.values(), results)}
    for i, folder in enumerate(folders):
        if folder is None:  # processed now, or identical to one that was: the memo has it
            folders[i] = done.get(i) or ctx.memo("corpus-unit", unit_material(units[i], ctx.params))
    return folders


def _raise_first_error(ctx, results) -> None:
    for status, value, _ in results:
        if status == "error":
            raise ctx.bad_input(value)


def _run_jobs(ctx, jobs: list) -> list:
    workers = worker_count(ctx.params.workers, len(jobs))
    return list(in_order(_process_job, jobs, workers, chunksize=max(1, len(jobs) // (workers * 8 or 1))))


def curate_unit(folder: str, unit: Unit, p: Params) -> None:
    """Read one unit and do every per-document step; write texts, per-document facts and signatures."""
    texts, report = read_unit(unit, p)
    meta = {"report": report, "id": [], "chars": [], "symbols": [], "nonspace": [], "include": [], "exclude": []}
    pii = {kind: 0 for kind in ("EMAIL", "IP", "SECRET")}
    cleaned = []
    for text in texts:
        text = clean_text(text, p, pii)
        cleaned.append(text)
        describe(text, p, meta)
    report["pii"] = pii
    pa, pq = _require("pyarrow"), _require("pyarrow.parquet")
    pq.write_table(pa.table({"text": pa.array(cleaned, pa.string())}), os.path.join(folder, "texts.parquet"),
                   compression="zstd")
    if p.dedup.near is not None:
        signatures(cleaned, p.dedup.near, os.path.join(folder, "minhash.npy"))
    with open(os.path.join(folder, "meta.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, separators=(",", ":"))


def read_unit(unit: Unit, p: Params) -> tuple[list[str], dict]:
    from forgebuild.rules.rows import looks_binary

    report = {"binary": False, "replacements": 0}
    if unit.fmt == "corpus":
        pq = _require("pyarrow.parquet")
        return pq.read_table(unit.path, columns=["text"]).column("text").to_pylist(), report
    if unit.fmt == "parquet":
        return record_texts(unit, p, report), report
    with open(unit.path, "rb") as f:
        data = f.read()
    if unit.fmt == "text" and looks_binary(data):
        report["binary"] = True
        return [], report
    text, report["replacements"] = decode_counted(data, unit.path, p.encoding_errors)
    if unit.fmt == "text":
        return [text[1:] if text.startswith("\ufeff") else text], report  # a BOM is not content
    return record_texts(unit, p, report), report  # records.read_records decodes again (a second ~1 GB/s pass)


def decode_counted(data: bytes, path: str, policy: str) -> tuple[str, int]:
    """The text, and how many U+FFFD the policy put in; under "error", a DataError naming the byte offset."""
    from forgebuild.rules.rows import decode

    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = decode(data, path, policy)  # raises with file, line and byte offset unless "replace"
        return text, text.count("\ufffd") - data.count("\ufffd".encode())


SURROGATE = re.compile(r"[\ud800-\udfff]")


def record_texts(unit: Unit, p: Params, report: dict) -> list[str]:
    from forgebuild.rules.rows import DataError, field, read_records

    texts = []
    for number, row in read_records(unit.path, p.encoding_errors, surrogates=True):  # replaced below, by policy
        value = field(row, p.text_field, unit.path, number)
        if value is None:  # a null text is an empty document: min_chars drops it
            value = ""
        if not isinstance(value, str):
            raise DataError(f"{unit.path}:{number}: field '{p.text_field}' is {type(value).__name__}, not text")
        if SURROGATE.search(value):  # JSON "\\ud800" escapes: not encodable as UTF-8
            if p.encoding_errors == "error":
                raise DataError(f"{unit.path}:{number}: field '{p.text_field}' holds a lone surrogate "
                                f"(set encoding_errors = \"replace\" to replace it)")
            value, n = SURROGATE.subn("\ufffd", value)
            report["replacements"] += n
        texts.append(value)
    return texts


def clean_text(text: str, p: Params, pii_counts: dict) -> str:
    import unicodedata

    if p.normalize != "none":
        text = unicodedata.normalize(p.normalize, text)
    if p.pii:
        text = scrub(text, p.pii, pii_counts)
    return text


def describe(text: str, p: Params, meta: dict) -> None:
    """The facts the global step filters and deduplicates on, so changing a threshold reprocesses nothing."""
    from forgebuild.hashing import bytes_digest

    data = text.encode("utf-8")
    meta["id"].append(bytes_digest(data))
    meta["chars"].append(len(text))
    symbols, spaces = count_symbols_and_spaces(text, data)
    meta["symbols"].append(symbols)
    meta["nonspace"].append(len(text) - spaces)
    meta["include"].append(any(re.search(x, text) for x in p.include))
    meta["exclude"].append(any(re.search(x, text) for x in p.exclude))


# For ASCII text, bytes.translate counts classes at ~1 GB/s, 20x a regex's findall.
ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())
ASCII_WORD_OR_SPACE = bytes(c for c in range(128) if chr(c).isspace() or chr(c).isalnum())
SPACE = re.compile(r"\s")
SYMBOL = re.compile(r"[^\w\s]|_")  # neither a letter nor a digit nor space (\w counts "_" as a letter)


def count_symbols_and_spaces(text: str, data: bytes) -> tuple[int, int]:
    """(characters that are neither letters, digits nor space; space characters)."""
    if len(data) == len(text):  # ASCII
        return len(data.translate(None, ASCII_WORD_OR_SPACE)), len(data) - len(data.translate(None, ASCII_SPACE))
    return len(SYMBOL.findall(text)), len(SPACE.findall(text))


SHINGLE_BATCH = 16_384  # shingles per MinHash update: 16k x 128 permutations x 4 bytes = 8 MiB


def signatures(texts: list[str], near: Near, path: str) -> None:
    """MinHash (datasketch, seed fixed) of each text's set of word shingles, as uint32 rows."""
    np = _require("numpy")
    MinHash = _require("datasketch").MinHash
    rows = np.full((len(texts), near.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    empty = MinHash(num_perm=near.num_perm, seed=MINHASH_SEED, hashfunc=int)  # copies skip making permutations
    for i, text in enumerate(texts):
        hashes = shingle_hashes(text, near.shingle, np)
        if hashes is None:
            continue  # no words: left at the empty signature, and out of near-dedup
        m = empty.copy()
        for start in range(0, len(hashes), SHINGLE_BATCH):
            m.update_batch(hashes[start:start + SHINGLE_BATCH].tolist())
        rows[i] = m.hashvalues
    np.save(path, rows)


def shingle_hashes(text: str, size: int, np):
    """32-bit hashes of the distinct runs of `size` words (lower-cased, split on spaces); fewer words: one shingle."""
    import xxhash

    words = text.lower().split()
    if not words:
        return None
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    vocab_hashes = np.fromiter((xxhash.xxh32_intdigest(w.encode()) for w in vocab), dtype=np.uint32, count=len(vocab))
    word_hashes = vocab_hashes[np.fromiter(map(vocab.__getitem__, words), dtype=np.int64, count=len(words))]
    k = min(size, len(words))
    n = len(words) - k + 1
    acc = np.zeros(n, dtype=np.uint32)
    for j in range(k):  # polynomial in the FNV prime, wrapping at 2^32: order matters; datasketch mixes after
        acc = acc * np.uint32(0x01000193) + word_hashes[j:j + n]
    return np.unique(acc)


# ------------------------------------------------------------------ PII
#
# Python's re tries a pattern at every position unless it starts with a literal:
# a pattern like `[\w.]+@...` runs at 15 MB/s, `@...` at 900 MB/s (measured on
# 15 MB of stdlib sources). So each detector finds a literal anchor (`@`, `.`,
# `:`, `=`, a token prefix) and then looks around it.

OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"


@lru_cache(maxsize=1)
def _pii_patterns() -> dict:
    return {
        "tokens": [re.compile(p, re.S) for p in (
            r"A[KS]IA[0-9A-Z]{16}(?![0-9A-Za-z])",  # AWS access key id
            r"gh[pousr]_[A-Za-z0-9]{36,255}(?![0-9A-Za-z])", r"github_pat_[A-Za-z0-9_]{22,255}",  # GitHub
            r"xox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
            r"-----BEGIN[A-Z ]*PRIVATE KEY-----.*?-----END[A-Z ]*PRIVATE KEY-----")],
        "assigned": re.compile(r"[:=][ \t]*[\"']?([A-Za-z0-9+/_\-.=]{16,})"),
        "secret_name": re.compile(r"(?i)(?:key|token|secret|passw(?:or)?d|pwd)[\"']?[ \t]*$"),
        "hex": re.compile(r"[0-9A-Fa-f]{32,}"),
        "base64": re.compile(r"[A-Za-z0-9+/_\-]{20,}={0,2}"),
        "email_domain": re.compile(r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])"),
        "ipv4_tail": re.compile(r"\.\d{1,3}\.\d{1,3}\.\d{1,3}(?!\d)"),
        "ipv4": re.compile(rf"{OCTET}(?:\.{OCTET}){{3}}"),
        "ipv6_anchor": re.compile(r":[0-9A-Fa-f]{0,4}:"),
    }


def _is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _token_spans(text: str):
    spans = []
    for pattern in _pii_patterns()["tokens"]:
        spans += [m.span() for m in pattern.finditer(text) if m.start() == 0 or not _is_word_char(text[m.start() - 1])]
    return _disjoint(spans)


def _looks_random(value: str) -> bool:
    """A long hex string (>= 32), or >= 20 base64 characters mixing upper case, lower case and digits;
    either with 8 distinct characters or more (a random 32-digit hex string has ~15; "aaaa..." has 1)."""
    patterns = _pii_patterns()
    if len(set(value)) < 8:
        return False
    if patterns["hex"].fullmatch(value):
        return True
    return bool(patterns["base64"].fullmatch(value)) and all(
        any(test(c) for c in value) for test in (str.isupper, str.islower, str.isdigit))


def _assigned_spans(text: str):
    """The value in `api_key = "..."`, `token: ...`, `SECRET=...` when it looks random."""
    patterns = _pii_patterns()
    for m in patterns["assigned"].finditer(text):
        value = m.group(1).rstrip(".")
        if _looks_random(value) and patterns["secret_name"].search(text, max(0, m.start() - 40), m.start()):
            yield m.start(1), m.start(1) + len(value)


def _email_spans(text: str):
    last = 0
    for m in _pii_patterns()["email_domain"].finditer(text):
        start = m.start()
        while start > last and (_is_word_char(text[start - 1]) or text[start - 1] in ".%+-"):
            start -= 1
        if start < m.start() and text[start] != ".":
            yield start, m.end()
            last = m.end()


def _ipv4_spans(text: str):
    patterns = _pii_patterns()
    for m in patterns["ipv4_tail"].finditer(text):  # ".168.1.20": the first octet is just before
        start = m.start()
        while start > m.start() - 3 and start > 0 and text[start - 1].isdigit():
            start -= 1
        before = text[start - 1] if start else " "
        after = text[m.end():m.end() + 2]
        if (start < m.start() and not _is_word_char(before) and before != "."
                and not (after[:1] and _is_word_char(after[0])) and not (after[:1] == "." and after[1:2].isdigit())
                and patterns["ipv4"].fullmatch(text, start, m.end())):
            yield start, m.end()


HEX_OR_COLON = set("0123456789abcdefABCDEF:")


def _ipv6_spans(text: str):
    last = 0
    for m in _pii_patterns()["ipv6_anchor"].finditer(text):
        if m.start() < last:
            continue
        start, end = m.start(), m.end()
        while start > max(last, m.start() - 40) and text[start - 1] in HEX_OR_COLON:
            start -= 1
        while end < min(len(text), m.end() + 40) and text[end] in HEX_OR_COLON:
            end += 1
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not (_is_word_char(before) or before == ".") and not _is_word_char(after) and _is_ipv6(text[start:end]):
            yield start, end
            last = end


def _is_ipv6(candidate: str) -> bool:
    """A valid address with two groups or more, one of them 4 hex digits: `x[1::2]` and `12:30:00` are not."""
    import ipaddress

    groups = [g for g in candidate.split(":") if g]
    if len(groups) < 2 or not (len(groups) == 8 or any(len(g) == 4 for g in groups)):
        return False
    try:
        ipaddress.IPv6Address(candidate)
        return True
    except ValueError:
        return False


def _disjoint(spans):
    kept, last = [], -1
    for start, end in sorted(spans):
        if start >= last:
            kept.append((start, end))
            last = end
    return kept


# (placeholder, PII kind that enables it, span finder), in the order they run: secrets first, so a
# token that contains an `@` or digits is one <SECRET>, not pieces of other things.
DETECTORS = (("SECRET", "secret", _token_spans), ("SECRET", "secret", _assigned_spans),
             ("EMAIL", "email", _email_spans), ("IP", "ip", _ipv4_spans), ("IP", "ip", _ipv6_spans))


def scrub(text: str, kinds: list[str], counts: dict) -> str:
    """Replace PII with <EMAIL>, <IP>, <SECRET>, adding to counts by placeholder."""
    for placeholder, kind, find in DETECTORS:
        if kind not in kinds:
            continue
        spans = list(find(text))
        if spans:
            counts[placeholder] += len(spans)
            pieces, last = [], 0
            for start, end in spans:
                pieces += [text[last:start], f"<{placeholder}>"]
                last = end
            text = "".join(pieces) + text[last:]
    return text


# ------------------------------------------------------------------ global curation

@dataclass
class Step:
    name: str
    documents_in: int = 0
    characters_in: int = 0
    documents_out: int = 0
    characters_out: int = 0

    def as_dict(self) -> dict:
        return {"filter": self.name, "documents_in": self.documents_in, "characters_in": self.characters_in,
                "documents_out": self.documents_out, "characters_out": self.characters_out}


def document_filters(p: Params) -> list[tuple[str, object]]:
    """(name, keep(meta, i)) for each active filter, in the order they apply."""
    found = []
    if p.min_chars > 0:
        found.append(("min_chars", lambda m, i: m["chars"][i] >= p.min_chars))
    if p.max_chars is not None:
        found.append(("max_chars", lambda m, i: m["chars"][i] <= p.max_chars))
    if p.include:
        found.append(("include", lambda m, i: m["include"][i]))
    if p.exclude:
        found.append(("exclude", lambda m, i: not m["exclude"][i]))
    if p.max_symbol_ratio is not None:
        found.append(("max_symbol_ratio", lambda m, i: m["symbols"][i] <= p.max_symbol_ratio * m["nonspace"][i]))
    return found


def curate(ctx, units: list[Unit], folders: list[str], metas: list[dict]) -> tuple[list[tuple[int, int]], list[Step]]:
    """(unit, position) of every document kept, in canonical order (units sorted, positions in order)."""
    p = ctx.params
    filters = document_filters(p)
    steps = [Step(name) for name, _ in filters]
    kept = []
    for u, meta in enumerate(metas):
        for i, chars in enumerate(meta["chars"]):
            for step, (_, keep) in zip(steps, filters):
                step.documents_in += 1
                step.characters_in += chars
                if not keep(meta, i):
                    break
                step.documents_out += 1
                step.characters_out += chars
            else:
                kept.append((u, i))
    if p.dedup.exact:
        kept = _counted(steps, "dedup_exact", kept, metas, lambda docs: exact_dedup(docs, metas))
    if p.dedup.near is not None:
        kept = _counted(steps, "dedup_near", kept, metas, lambda docs: near_dedup(ctx, docs, folders, p.dedup.near))
    return kept, steps


def _counted(steps: list[Step], name: str, docs, metas, step_fn):
    step = Step(name, len(docs), sum(metas[u]["chars"][i] for u, i in docs))
    docs = step_fn(docs)
    step.documents_out, step.characters_out = len(docs), sum(metas[u]["chars"][i] for u, i in docs)
    steps.append(step)
    return docs


def exact_dedup(docs, metas):
    seen: set[str] = set()
    kept = []
    for u, i in docs:
        doc_id = metas[u]["id"][i]
        if doc_id not in seen:
            seen.add(doc_id)
            kept.append((u, i))
    return kept


def near_dedup(ctx, docs, folders: list[str], near: Near):
    """Keep a document unless an earlier kept one shares an LSH band and its estimated Jaccard is >= threshold."""
    np = _require("numpy")
    datasketch = _require("datasketch")
    sigs = {}
    for u in sorted({u for u, _ in docs}):
        sigs[u] = np.load(os.path.join(folders[u], "minhash.npy"))
    empty = np.iinfo(np.uint32).max
    try:
        lsh = datasketch.MinHashLSH(threshold=near.threshold, num_perm=near.num_perm)
    except ValueError as e:
        # datasketch picks the LSH banding; near 1 it finds none with 2 bands or more (threshold 1.0 never,
        # 0.99 only from num_perm 512, 0.9 not at 16). Checked here: importing it to plan costs ~0.9 s.
        raise ctx.bad_input(f"dedup.near: datasketch finds no LSH banding for threshold {near.threshold:g} with "
                            f"num_perm {near.num_perm} ({e}); lower the threshold or raise num_perm") from None
    kept, index = [], {}
    for u, i in docs:
        row = sigs[u][i]
        if (row == empty).all():  # no words to shingle
            kept.append((u, i))
            continue
        m = _lean_minhash(datasketch, row)
        similar = (np.count_nonzero(index[key] == row) / near.num_perm for key in lsh.query(m))
        if any(j >= near.threshold for j in similar):
            continue
        key = len(index)
        index[key] = row
        lsh.insert(key, m)
        kept.append((u, i))
    return kept


def _lean_minhash(datasketch, row):
    try:
        return datasketch.LeanMinHash(seed=MINHASH_SEED, hashvalues=row, scheme="affine32")  # datasketch >= 2.0
    except TypeError:  # datasketch 1.x has one scheme and no `scheme` keyword
        return datasketch.LeanMinHash(seed=MINHASH_SEED, hashvalues=row)


def is_held_out(doc_id: str, fraction: float) -> bool:
    """By the document's hash: adding documents never moves one across the split."""
    return int(doc_id[:16], 16) < fraction * 2**64


# ------------------------------------------------------------------ writing

def shard_of(key: str, chunk: int, shards: int) -> int:
    import xxhash

    return xxhash.xxh3_64_intdigest(f"{key}#{chunk}".encode()) % shards


def write_part(path: str, texts: list[str], ids: list[str], sources: list[str]) -> None:
    """A Parquet file that is byte-identical for the same rows: fixed codec and row groups, no timestamps."""
    pa, pq = _require("pyarrow"), _require("pyarrow.parquet")
    schema = pa.schema([("text", pa.string()), ("id", pa.string()), ("source", pa.string())])
    table = pa.table([pa.array(texts, pa.string()), pa.array(ids, pa.string()), pa.array(sources, pa.string())],
                     schema=schema)
    with pq.ParquetWriter(path, schema, **WRITE_OPTIONS) as writer:
        for start, stop in _row_groups(texts):
            writer.write_table(table.slice(start, stop - start), row_group_size=stop - start)


def _row_groups(texts: list[str]):
    start, size = 0, 0
    for i, text in enumerate(texts):
        size += len(text)
        if size >= ROW_GROUP_BYTES or i + 1 - start >= ROW_GROUP_ROWS:
            yield start, i + 1
            start, size = i + 1, 0
    if start < len(texts) or not texts:
        yield start, len(texts)


def write_source_shards(ctx, units, folders, metas, docs, held) -> dict:
    """Group kept documents by (split, shard); each shard is a memo keyed by its rows, so an unchanged
    shard is copied from the cache instead of read and encoded again. Returns shards per split."""
    from forgebuild.hashing import bytes_digest

    groups: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for (u, i), is_held in zip(docs, held):
        shard = shard_of(units[u].bucket_key, i // CHUNK_DOCS, ctx.params.shards)
        groups.setdefault(("holdout" if is_held else "train", shard), []).append((u, i))
    written = {"train": 0, "holdout": 0}
    for (split, shard), rows in sorted(groups.items()):
        listing = "\n".join(f"{units[u].label}\0{os.path.basename(folders[u])}\0{i}" for u, i in rows)
        material = {"rows": bytes_digest(listing.encode()), "layout": WRITE_OPTIONS,
                    "row_group": [ROW_GROUP_BYTES, ROW_GROUP_ROWS]}
        done = ctx.memo("corpus-shard", material, lambda f, rows=rows: write_shard(f, rows, units, folders, metas))
        ctx.place(os.path.join(done, "part.parquet"), f"{split}/part-{shard:05d}.parquet")
        written[split] += 1
    return written


def write_shard(folder: str, rows, units, folders, metas) -> None:
    pq = _require("pyarrow.parquet")
    texts_of = {}
    for u in sorted({u for u, _ in rows}):
        texts_of[u] = pq.read_table(os.path.join(folders[u], "texts.parquet")).column("text").to_pylist()
    write_part(os.path.join(folder, "part.parquet"), [texts_of[u][i] for u, i in rows],
               [metas[u]["id"][i] for u, i in rows], [units[u].label for u, _ in rows])


# ------------------------------------------------------------------ sources: the whole build

def build_sources(ctx) -> dict:
    import time

    p = ctx.params
    started = time.perf_counter()
    units = source_units(ctx)
    folders = process_units(ctx, units)
    per_unit = time.perf_counter() - started
    metas = []
    for folder in folders:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            metas.append(json.load(f))
    report = merge_reports(units, metas)
    log_warnings(ctx, report)
    docs, steps = curate(ctx, units, folders, metas)
    if not docs:
        raise ctx.bad_input(empty_message(units, metas, report, steps))
    held = [units[u].held or is_held_out(metas[u]["id"][i], p.holdout) for u, i in docs]
    if all(held):
        raise ctx.bad_input(f"no training documents: all {len(docs)} documents kept fall in the holdout "
                            f"(holdout = {p.holdout:g})")
    shards = write_source_shards(ctx, units, folders, metas, docs, held)
    output = {split: {"documents": 0, "characters": 0, "shards": shards[split]} for split in ("train", "holdout")}
    for (u, i), is_held in zip(docs, held):
        output["holdout" if is_held else "train"]["documents"] += 1
        output["holdout" if is_held else "train"]["characters"] += metas[u]["chars"][i]
    ctx.log(f"corpus: {output['train']['documents']} train and {output['holdout']['documents']} holdout documents "
            f"in {shards['train'] + shards['holdout']} shards")
    # timings go to the log, never into stats.json: the artifact must not change from run to run
    ctx.log("metrics: " + json.dumps({"per_file_seconds": round(per_unit, 3),
                                      "global_seconds": round(time.perf_counter() - started - per_unit, 3)}))
    from_corpora = sum(units[u].held for u, _ in docs)
    return sources_stats(units, metas, report, steps, output, from_corpora, p)


def merge_reports(units: list[Unit], metas: list[dict]) -> dict:
    report = {"binary": [], "replacements": {}, "pii": {"EMAIL": 0, "IP": 0, "SECRET": 0}}
    for unit, meta in zip(units, metas):
        r = meta["report"]
        if r["binary"]:
            report["binary"].append(unit.label)
        if r["replacements"]:
            report["replacements"][unit.label] = report["replacements"].get(unit.label, 0) + r["replacements"]
        for kind, n in r["pii"].items():
            report["pii"][kind] += n
    return report


def log_warnings(ctx, report: dict) -> None:
    for path in report["binary"]:
        ctx.log(f"warning: {path}: binary file (a NUL byte in its first 8192 bytes), skipped")
    for path, n in report["replacements"].items():
        ctx.log(f"warning: {path}: {n} invalid UTF-8 sequence{'s' * (n != 1)} replaced with U+FFFD")


def empty_message(units, metas, report, steps: list[Step]) -> str:
    files = len({u.label for u in units})
    read = sum(len(m["chars"]) for m in metas)
    parts = [f"{read} document{'s' * (read != 1)} read from {files} source{'s' * (files != 1)}"]
    if report["binary"]:
        n = len(report["binary"])
        parts[0] += f" ({n} binary file{'s' * (n != 1)} skipped)"
    parts += [f"{s.name} {s.documents_in} -> {s.documents_out}" for s in steps]
    return "no documents left after curation: " + "; ".join(parts)


def sources_stats(units, metas, report, steps, split, from_sources: int, p: Params) -> dict:
    read_docs = sum(len(m["chars"]) for m in metas)
    read_chars = sum(sum(m["chars"]) for m in metas)
    files = [u for u in units if u.fmt != "corpus"]
    return {
        "sources": {"files": len(files), "text_files": sum(u.fmt == "text" for u in files),
                    "record_files": sum(u.fmt != "text" for u in files),
                    "corpora": sorted({u.label for u in units if u.fmt == "corpus"})},
        "read": {"documents": read_docs, "characters": read_chars},
        "binary_files": {"count": len(report["binary"]), "files": report["binary"]},
        "encoding": {"policy": p.encoding_errors, "replacements": sum(report["replacements"].values()),
                     "files": report["replacements"]},
        "pii": report["pii"],
        "filters": [s.as_dict() for s in steps],
        "duplicates": {"exact": _removed(steps, "dedup_exact"), "near": _removed(steps, "dedup_near")},
        "holdout": {"fraction": p.holdout, "from_source_corpora": from_sources},
        "output": split,
    }


def _removed(steps: list[Step], name: str) -> int:
    return sum(s.documents_in - s.documents_out for s in steps if s.name == name)


# ------------------------------------------------------------------ mix

@dataclass
class Component:
    address: str
    share: float  # normalised weight
    train: dict  # {"text": [...], "id": [...]}
    holdout: dict


def read_corpus(folder: str) -> tuple[dict, dict]:
    pq = _require("pyarrow.parquet")
    found = []
    for split in ("train", "holdout"):
        docs = {"text": [], "id": []}
        where = os.path.join(folder, split)
        for name in sorted(os.listdir(where)) if os.path.isdir(where) else []:
            table = pq.read_table(os.path.join(where, name), columns=["text", "id"])
            docs["text"] += table.column("text").to_pylist()
            docs["id"] += table.column("id").to_pylist()
        found.append(docs)
    return found[0], found[1]


def build_mix(ctx) -> dict:
    import random

    p = ctx.params
    total = sum(p.mix.values())
    components = []
    for address in sorted(p.mix):
        train, holdout = read_corpus(ctx.inputs[f"mix.{address}"])
        components.append(Component(address, p.mix[address] / total, train, holdout))
    unit = "characters" if p.size is not None and p.size.characters else "documents"
    rng = {c.address: random.Random(f"{ctx.seed}/{c.address}") for c in components}
    train = sample_train(ctx, components, unit, rng)
    holdout = sample_holdout(components, unit, rng)
    shards = {}
    for split, picks in (("train", train), ("holdout", holdout)):
        shards[split] = write_mix_split(ctx, components, picks, split)
    stats = mix_stats(components, unit, train, holdout, shards, p)
    realised = stats["mix"]["realised"]
    ctx.log("corpus: mix by " + unit + ": " + ", ".join(
        f"{c.address} {realised[c.address]:.4f} (asked {c.share:.4f})" for c in components))
    return stats


def _lengths(docs: dict) -> list[int]:
    return [len(t) for t in docs["text"]]


def largest_remainder(shares: list[float], total: int) -> list[int]:
    """Integers proportional to shares that add up to total exactly."""
    raw = [s * total for s in shares]
    counts = [int(r) for r in raw]
    by_remainder = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def sample_train(ctx, components: list[Component], unit: str, rng: dict) -> dict[str, list[int]]:
    """Indices into each component's train split (repeats are upsampling), in a seeded order."""
    p = ctx.params
    for c in components:
        if c.share > 0 and not c.train["text"]:
            raise ctx.bad_input(f"{c.address} has no training documents to mix")
    active = [c for c in components if c.share > 0]
    picks = {c.address: [] for c in components}
    if unit == "documents":
        size = p.size.documents if p.size else int(min(len(c.train["text"]) / c.share for c in active))
        for c, k in zip(active, largest_remainder([c.share for c in active], size)):
            picks[c.address] = draw_documents(len(c.train["text"]), k, p.replacement, rng[c.address])
    else:
        for c in active:
            picks[c.address] = draw_characters(_lengths(c.train), c.share * p.size.characters, p.replacement,
                                               rng[c.address])
    return picks


def draw_documents(n: int, k: int, replacement: bool, rng) -> list[int]:
    if replacement:
        return [rng.randrange(n) for _ in range(k)]
    epochs, rest = divmod(k, n)
    picks = list(range(n)) * epochs + rng.sample(range(n), rest)
    rng.shuffle(picks)
    return picks


def draw_characters(lengths: list[int], budget: float, replacement: bool, rng) -> list[int]:
    """Documents until the next one would overshoot the budget by more than it falls short."""
    n, total = len(lengths), sum(lengths)
    if replacement:
        order = iter(lambda: rng.randrange(n), None)
        picks = []
    else:
        epochs = int(budget // total) if total else 0
        picks = list(range(n)) * epochs
        budget -= epochs * total
        order = iter(rng.sample(range(n), n))
    taken = 0
    for i in order:
        if taken + lengths[i] / 2 > budget:
            break
        picks.append(i)
        taken += lengths[i]
    rng.shuffle(picks)
    return picks


def sample_holdout(components: list[Component], unit: str, rng: dict) -> dict[str, list[int]]:
    """The components' holdouts in the same proportions, as large as the smallest allows, no repeats."""
    active = [c for c in components if c.share > 0]
    picks = {c.address: [] for c in components}
    if unit == "documents":
        size = int(min(len(c.holdout["text"]) / c.share for c in active))
        for c, k in zip(active, largest_remainder([c.share for c in active], size)):
            picks[c.address] = sorted(rng[c.address].sample(range(len(c.holdout["text"])), k))
    else:
        budget = min(sum(_lengths(c.holdout)) / c.share for c in active)
        for c in active:
            picks[c.address] = sorted(draw_characters(_lengths(c.holdout), c.share * budget, False, rng[c.address]))
    return picks


def write_mix_split(ctx, components: list[Component], picks: dict, split: str) -> int:
    groups: dict[int, tuple[list, list, list]] = {}
    for c in components:
        docs = c.train if split == "train" else c.holdout
        for n, i in enumerate(picks[c.address]):
            texts, ids, sources = groups.setdefault(shard_of(c.address, n // CHUNK_DOCS, ctx.params.shards), ([], [], []))
            texts.append(docs["text"][i])
            ids.append(docs["id"][i])
            sources.append(c.address)
    if groups:
        os.makedirs(os.path.join(ctx.out, split))
    for shard, (texts, ids, sources) in sorted(groups.items()):
        write_part(os.path.join(ctx.out, split, f"part-{shard:05d}.parquet"), texts, ids, sources)
    return len(groups)


def mix_stats(components, unit, train, holdout, shards, p: Params) -> dict:
    def amount(c, picks, docs):
        lengths = _lengths(docs)
        return {"documents": len(picks), "characters": sum(lengths[i] for i in picks)}

    per = {c.address: {"weight": p.mix[c.address],
                       "available": {"train": {"documents": len(c.train["text"]), "characters": sum(_lengths(c.train))},
                                     "holdout": {"documents": len(c.holdout["text"]),
                                                 "characters": sum(_lengths(c.holdout))}},
                       "train": amount(c, train[c.address], c.train),
                       "holdout": amount(c, holdout[c.address], c.holdout)} for c in components}
    for c in components:
        n = len(c.train["text"])
        per[c.address]["train"]["epochs"] = round(len(train[c.address]) / n, 4) if n else 0
    totals = {split: {k: sum(per[a][split][k] for a in per) for k in ("documents", "characters")}
              for split in ("train", "holdout")}
    realised = {a: round(per[a]["train"][unit] / totals["train"][unit], 6) if totals["train"][unit] else 0.0
                for a in per}
    for split in totals:
        totals[split]["shards"] = shards[split]
    return {
        "mix": {"unit": unit, "size": p.size.model_dump(exclude_none=True) if p.size else None,
                "replacement": p.replacement,
                "requested": {c.address: round(c.share, 6) for c in components},
                "realised": realised, "components": per},
        "output": totals,
    }
