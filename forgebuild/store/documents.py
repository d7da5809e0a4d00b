"""Strict schemas of every document a remote serves: action entries, build records, provenance
statements. A remote is written by others, so nothing read from it is used before it passes
here: unknown fields, wrong types, unsafe names and out-of-range numbers are refused with one
line naming the document and the field (pydantic models with `extra="forbid"`).

Names that become paths are checked at the mechanism too (`store.put_record_as` refuses an
unsafe record id whoever calls it); here they are refused before anything is written.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from forgebuild.errors import StoreError
from forgebuild.store.provenance import PREDICATE_TYPE, STATEMENT_TYPE
from forgebuild.store.local import HEX, RECORD_ID, safe_path

HexDigest = Annotated[str, StringConstraints(pattern=HEX.pattern)]
TEXT = 1 << 20  # a verdict or a record's free text: a gate's message is a line, never megabytes


class Untrusted(StoreError):
    """A remote document or blob that is malformed, oversized, unsigned or signed by an untrusted key:
    one warning, and the target is built here."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ------------------------------------------------------------------ action entries

class FileItem(Strict):
    path: str = Field(min_length=1, max_length=4096)
    digest: HexDigest
    size: int = Field(ge=0)
    x: bool = False

    @field_validator("path")
    @classmethod
    def _safe(cls, path: str) -> str:
        if not safe_path(path):  # the materialised folder is assembled from these
            raise ValueError("unsafe path")
        return path


class Signature(Strict):
    key: str = Field(max_length=512)
    record: HexDigest | None
    sig: str = Field(max_length=128)


class Entry(Strict):
    target: str | None = Field(None, max_length=512)
    key: HexDigest | None = None
    digest: HexDigest
    files: list[FileItem]
    record: str | None = Field(None, pattern=RECORD_ID.pattern)
    provenance: HexDigest
    verdict: str | None = Field(None, max_length=TEXT)
    memos: list[str] = Field(default_factory=list)
    signature: Signature | None = None

    @field_validator("memos")
    @classmethod
    def _memo_keys(cls, memos: list[str]) -> list[str]:
        if not all(HEX.match(m) for m in memos):
            raise ValueError("not an action key")
        return memos

    @model_validator(mode="after")
    def _one_file_per_path(self):
        """Two files at one path, or a file where another needs a folder, cannot be materialised."""
        paths = {f.path for f in self.files}
        if len(paths) != len(self.files):
            raise ValueError("two files at one path")
        for path in paths:
            parts = path.split("/")
            if any("/".join(parts[:i]) in paths for i in range(1, len(parts))):
                raise ValueError(f"{path!r} lies below a file")
        return self


# ------------------------------------------------------------------ build records

class Record(Strict):
    """The record `executor._record` writes (and `_build_on_worker` adds `worker` to)."""

    model_config = ConfigDict(extra="forbid", strict=False)  # `seconds` may arrive as an int
    id: str = Field(pattern=RECORD_ID.pattern)
    target: str = Field(max_length=512)
    key: HexDigest
    digest: HexDigest
    log: HexDigest
    material: dict
    runtime: dict
    files: int = Field(ge=0)
    bytes: int = Field(ge=0)
    started: str = Field(max_length=64)
    seconds: float = Field(ge=0)
    host: str = Field(max_length=512)
    platform: str = Field(max_length=512)
    python: str = Field(max_length=64)
    forgebuild: str = Field(max_length=64)
    forgefile: str = Field(max_length=512)
    git_commit: str | None = Field(None, max_length=64)
    sources_text: dict[str, str] = Field(default_factory=dict)
    metrics: dict = Field(default_factory=dict)
    verdict: str | None = Field(None, max_length=TEXT)
    worker: dict | None = None


# ------------------------------------------------------------------ provenance statements

class DigestSet(Strict):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    blake3: HexDigest


class Subject(Strict):
    name: str
    digest: DigestSet


class Material(Strict):
    name: str
    digest: DigestSet
    annotations: dict[str, str]


class BuildDefinition(Strict):
    buildType: str
    externalParameters: dict
    internalParameters: dict
    resolvedDependencies: list[Material]


class Predicate(Strict):
    buildDefinition: BuildDefinition
    runDetails: dict


class Statement(Strict):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    type_: Literal[STATEMENT_TYPE] = Field(alias="_type")
    subject: list[Subject]
    predicateType: Literal[PREDICATE_TYPE]
    predicate: Predicate


# ------------------------------------------------------------------ reading

def parse(model: type[BaseModel], data: bytes, where: str) -> dict:
    """The JSON object in `data` once it passes `model` (as received: a signature covers those bytes'
    content, not a re-serialisation with defaults filled in), or Untrusted naming the first bad field."""
    import json

    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: a document nested 100,000 deep
        raise Untrusted(f"{where} is not JSON") from None
    try:
        model.model_validate(obj)
    except ValidationError as e:
        error = e.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "(the document)"
        raise Untrusted(f"{where} is malformed: {field}: {error['msg']}") from None
    return obj
