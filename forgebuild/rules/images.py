"""images: image-text records (captions, visual questions, chats with images, preference pairs)
for vision-language models, every image validated, normalised and stored once by content.

    [images.shapes]
    source = "data/shapes/"                  # JSONL or Parquet files, folders, globs, or a run target
    format = "vqa"                           # caption, vqa, messages or preference
    fields = { image = "file", question = "q" }
    resize = { width = 32, height = 32 }
    splits = { train = 0.8, test = 0.2 }

The artifact: `images/<digest>.png` (each distinct image after normalisation, named by the digest of
its PNG bytes), one `SPLIT.jsonl` per split (records in TRL's multimodal form, their `images` paths
relative to the artifact), `dataset.json` and `stats.json`. See docs/rules/images.md.

Which image files are inputs. A JSONL row names its image by a path relative to the JSONL file, so
the files a build reads are known only after reading the rows; but a target's key is decided before
its build, from its declared inputs. So every image a row names must be a declared input: a file
below a `source` folder (a folder of JSONL and images, the common layout, needs nothing more), a
file of the `images` key (folders, globs or files of images, hashed like any source), or a file of a
`source` target's output (its digest covers them). The planner hashes those files, so a changed image
changes the key and rebuilds this target, and an unchanged one is a no-op. A row naming a file that
is not an input is a row error saying which key to add: reading it anyway would let the image change
without the target noticing.

Each image's decode and normalisation is cached, keyed by the digest of its bytes, the normalisation
and Pillow's version (ctx.recall / ctx.keep, as a corpus caches each source file with ctx.memo), so
adding one image to a thousand processes that image only; images with the same normalisation are
shared across targets.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgebuild import limits
from forgebuild.errors import did_you_mean
from forgebuild.planning.plan import classify
from forgebuild.rules import runtime
from forgebuild.rules.pool import in_order, worker_count
from forgebuild.rules.dataset import (ROLES, Layout, Record, Row, RowError, SourceFile, answer_text, as_list,
                                      canonical, count_of, first_of_each, normal_content, read_rows, report_invalid,
                                      source_files, split_of, split_problems, text_of, write_json)
from forgebuild.rules.rows import json_kind

version = "1"
preload = ("forgebuild.rules.picture",)

Format = Literal["caption", "vqa", "messages", "preference"]
# The source columns each format reads (renamed with `fields`), and those a row may leave out.
REQUIRED = {
    "caption": ("image", "caption"),
    "vqa": ("image", "question", "answer"),
    "messages": ("messages",),
    "preference": ("image", "prompt", "chosen", "rejected"),
}
OPTIONAL = {"caption": (), "vqa": ("choices",), "messages": ("images",), "preference": ()}
TRAINER = {"caption": "SFTTrainer", "vqa": "SFTTrainer", "messages": "SFTTrainer", "preference": "DPOTrainer"}
# Record fields that say what a record is (for dedup and the split hash); `answer` repeats the messages.
CONTENT = ("images", "messages", "prompt", "chosen", "rejected", "choices")
RECORD_FILES = (".jsonl", ".json", ".ndjson", ".parquet")
TARGET_KINDS_NOT_READ = ("dataset:", "images:")  # their records are not rows with image columns
IMAGE_FOLDER = "images"
MAX_SIDE = 65535  # JPEG's and WebP's largest side (16 bits): a larger one in a Forgefile is a typo
# Images normalised into one stored memo result. Each image's cache entry lists every file of its
# result, and recall reads entries whole: one result of 1,000 images made a rebuild after one changed
# image read 1,000 x 1,000 file entries (2.3 s here); batches of 64 keep recall linear in the images.
BATCH = 64


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # 20 MB holds a 12-megapixel camera JPEG; a larger file is more likely a mistake than a picture
    max_bytes: int = Field(20_000_000, ge=1, le=limits.AMOUNT,
                           description="largest image file accepted, in bytes, before decoding")
    # 4096 x 4096: 64 MiB of RGBA pixels while one image is normalised; far above what vision encoders read
    max_pixels: int = Field(4096 * 4096, ge=1, le=limits.AMOUNT,
                            description="largest width x height accepted, read from the header before decoding")
    min_side: int = Field(1, ge=1, le=MAX_SIDE, description="smallest width and height accepted, in pixels")


class Size(BaseModel):
    """A table, as Hugging Face image processors write a size ({"height": 224, "width": 224})."""

    model_config = ConfigDict(extra="forbid")
    width: int = Field(ge=1, le=MAX_SIDE, description="width in pixels")
    height: int = Field(ge=1, le=MAX_SIDE, description="height in pixels")


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str | list[str] = Field(
        description="records to read: JSONL or Parquet files, folders, globs, or KIND:NAME targets whose output "
                    "holds record files and their images")
    format: Format = Field(description="caption, vqa, messages or preference")
    fields: dict[str, str] = Field(
        default_factory=dict, description="record field -> the source's column name, e.g. { image = \"file\" }")
    images: str | list[str] = Field(
        default_factory=list, description="folders, globs or files holding the images rows name (besides those "
                                          "below a source folder): inputs, so a changed image rebuilds the target")
    prompt: str = Field("Describe the image.", min_length=1, description="the user's text of a caption record")
    keep: list[str] = Field(
        default_factory=list, description="other source columns copied unchanged into every record (null when absent)")
    invalid: Literal["error", "drop"] = Field(
        "error", description="an invalid row or image fails the build (error) or is dropped and counted (drop)")
    image: Limits = Field(default_factory=Limits, description="limits every image is checked against")
    mode: Literal["RGB", "L", "RGBA"] = Field(
        "RGB", description="colour mode every image is converted to (transparency composited on white for RGB, L)")
    resize: Size | None = Field(None, description="{ width, height } every image is resized to")
    max_side: int | None = Field(
        None, ge=1, le=MAX_SIDE, description="scale larger images down, keeping their aspect, to this longer side")
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = Field(
        "bicubic", description="the resampling filter of resize and max_side")
    dedup: Literal["exact", "image", "none"] = Field(
        "exact", description="drop later rows equal to an earlier one: images and text (exact), images only (image)")
    splits: dict[str, float] = Field(
        default_factory=lambda: {"train": 1.0}, description="split name -> fraction; fractions sum to 1")
    split_by: Literal["image", "record"] = Field(
        "image", description="what the split hash reads: the images (every record of one image lands in one "
                             "split) or the whole record")
    split_seed: int = Field(0, description="salt of the split hash: change it to draw another partition")
    workers: int = runtime(0, ge=0, le=limits.THREADS, description="processes decoding and normalising images; 0: "
                                                                    "one per CPU (not part of the key)")
    description: str = runtime("", description="a note for people, kept in the build record; not part of the key")


def inputs(params: Params) -> dict:
    return {"source": params.source, "images": params.images}


def environment(params: Params) -> dict:
    # The PNG bytes (so the images' names) come from Pillow's encoder: its version enters the key.
    parquet = [s for s in as_list(params.source) if ":" not in s and not s.lower().endswith((".jsonl", ".json",
                                                                                               ".ndjson"))]
    return {"libraries": ["pillow", *(["pyarrow"] if parquet else [])]}


def requires(params: Params) -> dict[str, str]:
    return {"PIL": "data", **({"pyarrow": "data"} if "pyarrow" in environment(params)["libraries"] else {})}


def check(params: Params) -> list[tuple[str, str]]:
    problems = []
    if not as_list(params.source):
        problems.append(("source", "names no source"))
    for i, spec in enumerate(as_list(params.source)):
        if classify(spec) == "target" and spec.startswith(TARGET_KINDS_NOT_READ):
            problems.append((_at("source", i, params.source), f"{spec} holds records, not rows with image columns: "
                                                              "read files or a run target's output"))
    for i, spec in enumerate(as_list(params.images)):
        if classify(spec) == "target":
            problems.append((_at("images", i, params.images), "names image files, folders or globs, not a target "
                                                              "(a source target's own images need no key)"))
    problems += _field_problems(params)
    if params.resize is not None and params.max_side is not None:
        problems.append(("max_side", "give resize or max_side, not both"))
    if "prompt" in params.model_fields_set and params.format != "caption":
        problems.append(("prompt", f"is the user's text of a caption record; format {params.format} reads its "
                                   "text from the rows"))
    return problems + split_problems(params.splits)


def _at(key: str, i: int, value) -> str:
    return f"{key}.{i}" if isinstance(value, list) else key


def _field_problems(params: Params) -> list[tuple[str, str]]:
    problems = []
    known = (*REQUIRED[params.format], *OPTIONAL[params.format])
    taken: dict[str, str] = {}
    for name, column in params.fields.items():
        if name not in known:
            problems.append((f"fields.{name}", f"unknown record field '{name}'{did_you_mean(name, known)}; "
                                               f"fields of format {params.format}: {', '.join(known)}"))
        elif not column:
            problems.append((f"fields.{name}", "names no column"))
        elif column in taken:
            problems.append((f"fields.{name}", f"column '{column}' is already mapped to {taken[column]}"))
        taken.setdefault(column, name)
    mapped = {column: name for name, column in params.fields.items()}
    for i, column in enumerate(params.keep):
        if column in mapped:
            problems.append((f"keep.{i}", f"'{column}' is the column of record field {mapped[column]}, "
                                          "not an extra one"))
        elif column in known:
            problems.append((f"keep.{i}", f"'{column}' is a record field, not an extra column"))
    return problems


# ------------------------------------------------------------------ build
#
# Read the rows; check each row's text and find the bytes of each image it names; decode and
# normalise every distinct image once (cached per image); drop invalid rows and duplicates;
# give each record a split by a hash of its images; write the images and the split files.

@dataclass
class Picture:
    """An image a row names, before decoding: what messages call it and where its bytes are."""

    name: str  # "'img/07.png'", or "of 1,234 bytes" for bytes held in a Parquet cell
    digest: str  # of the bytes as given: names the cached normalisation
    path: str | None = None  # the file to read, or
    data: bytes | None = None  # the bytes themselves


@dataclass
class Draft:
    """A row whose text is valid, waiting for its images: (where in the row, picture) in message order."""

    row: Row
    record: dict
    pictures: list[tuple[list, Picture]] = field(default_factory=list)


@dataclass
class Normalised:
    """What became of one distinct image: its PNG in the memo folder, or why it was refused."""

    png: str | None = None
    digest: str | None = None  # of the PNG bytes: its name in the artifact
    problem: str | None = None


class ImageRowError(RowError):
    """A row refused for one of its images: "image 'img/07.png' is not an image (cannot identify image file)"."""

    def __init__(self, path: list, name: str, reason: str, kind: str | None = None):
        super().__init__(path, f"image {name} {reason}")
        self.kind = kind or reason.split(" (")[0]  # what stats.json counts: no image's name or particulars

    @property
    def counted(self) -> RowError:
        return RowError(self.path, self.kind)


def build(ctx) -> None:
    files = source_files(ctx, "source", RECORD_FILES)
    for f in files:
        if not f.path.lower().endswith(RECORD_FILES):
            raise ctx.bad_input(f"{f.label}: images reads JSONL (.jsonl) or Parquet (.parquet) files")
    rows = [row for f in files for row in read_rows(ctx, f)]
    ctx.log(f"format {ctx.params.format}; {count_of(len(rows), 'row')} from {count_of(len(files), 'file')}")
    reader = Reader(ctx)
    outcomes = [reader.draft(row) for row in rows]
    normalised = _normalise(ctx, [d for d in outcomes if isinstance(d, Draft)])
    stats = _new_stats(ctx.params.format, files, rows)
    records = _valid_records(ctx, rows, outcomes, normalised, stats)
    records = _without_duplicates(ctx, records, stats)
    if not records:
        raise ctx.bad_input(f"no records left: {stats['rows_in']} rows read, {stats['invalid']['rows']} invalid, "
                            f"{stats['duplicates']['rows']} duplicates")
    _write(ctx, records, normalised, stats)


# ------------------------------------------------------------------ rows into drafts

class Reader:
    """Turns a row into a Draft (text checked, images located) or a RowError."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.p = ctx.params
        self.folders = _target_folders(ctx)
        self.file_digests: dict[str, str] = {}

    def draft(self, row: Row) -> Draft | RowError:
        try:
            return self._draft(row)
        except RowError as e:
            return e

    def _draft(self, row: Row) -> Draft:
        if row.unreadable:
            raise RowError([], row.unreadable)
        fmt = self.p.format
        for name in REQUIRED[fmt]:
            if self._column(name) not in row.data:
                present = ", ".join(sorted(map(str, row.data))) or "none"
                raise RowError([], f"no field '{self._column(name)}' (fields present: {present})")
        draft = Draft(row, {})
        if fmt == "messages":
            self._messages(draft)
        else:
            self._single_turn(draft)
        for column in self.p.keep:
            draft.record[column] = _kept(row.data.get(column), column)
        return draft

    def _column(self, name: str) -> str:
        return self.p.fields.get(name, name)

    def _value(self, row: Row, name: str):
        return row.data.get(self._column(name))

    def _single_turn(self, draft: Draft) -> None:
        """caption, vqa and preference: the row's image(s) then its text, in one user message."""
        row, fmt = draft.row, self.p.format
        value = self._value(row, "image")
        given = value if isinstance(value, list) else [value]
        if not given:
            raise RowError(["image"], "is an empty list")
        for i, item in enumerate(given):
            path = ["image", i] if isinstance(value, list) else ["image"]
            draft.pictures.append((path, self.picture(row, item, path)))
        asked = {"vqa": "question", "preference": "prompt"}.get(fmt)  # the column holding the user's text
        text = text_of(self._value(row, asked), [asked]) if asked else self.p.prompt
        user = {"role": "user", "content": [{"type": "image"} for _ in given] + [{"type": "text", "text": text}]}
        if fmt == "preference":
            draft.record.update(self._pair(row, user))
        elif fmt == "caption":
            caption = text_of(self._value(row, "caption"), ["caption"])
            draft.record.update(messages=[user, _assistant(caption)], answer=caption)
        else:
            answer = answer_text(self._value(row, "answer"), ["answer"])
            draft.record.update(messages=[user, _assistant(answer)], answer=answer,
                                choices=self._choices(row, answer))

    def _pair(self, row: Row, user: dict) -> dict:
        """TRL's conversational preference columns; the chosen text is the reference answer."""
        chosen, rejected = (text_of(self._value(row, k), [k]) for k in ("chosen", "rejected"))
        if normal_content(chosen) == normal_content(rejected):
            raise RowError(["rejected"], "is the same as chosen")
        return {"prompt": [user], "chosen": [_assistant(chosen)], "rejected": [_assistant(rejected)], "answer": chosen}

    def _choices(self, row: Row, answer: str) -> list[str] | None:
        value = self._value(row, "choices")
        if value is None and "choices" not in self.p.fields:
            return None
        if not isinstance(value, list) or len(value) < 2:
            raise RowError(["choices"], f"expected a list of two or more choices, got {json_kind(value)}"
                           + (f" of {len(value)}" if isinstance(value, list) else ""))
        for i, choice in enumerate(value):
            text_of(choice, ["choices", i])
        if len(set(value)) < len(value):
            raise RowError(["choices"], "holds the same choice twice")
        if answer not in value:
            raise RowError(["answer"], f"{json.dumps(answer, ensure_ascii=False)} is not one of the choices")
        return value

    def _messages(self, draft: Draft) -> None:
        """messages: TRL's conversational form; image parts carry their image, or the images column has them."""
        value = self._value(draft.row, "messages")
        if not isinstance(value, list) or not value:
            raise RowError(["messages"], f"expected a list of messages, got {json_kind(value)}"
                           if not isinstance(value, list) else "is an empty list")
        inline: list = []  # (where, picture) of each image part that names its image
        messages = [self._message(message, ["messages", i], inline, draft.row) for i, message in enumerate(value)]
        draft.pictures = self._conversation_images(draft.row, messages, inline)
        draft.record.update(messages=messages, answer=_last_answer(messages))

    def _conversation_images(self, row: Row, messages: list, inline: list) -> list:
        """One picture per image part, in order: those the parts name, or those the images column lists."""
        listed = self._value(row, "images")
        if listed is not None and not isinstance(listed, list):
            raise RowError(["images"], f"expected a list of images, got {json_kind(listed)}")
        parts = sum(part == {"type": "image"} for m in messages for part in m["content"])
        if parts == 0:
            raise RowError(["messages"], "has no image part ({\"type\": \"image\"})")
        if inline and listed:
            raise RowError(["images"], "images are given both here and in the image parts: give them in one place")
        if inline and len(inline) < parts:
            raise RowError(["messages"], f"{len(inline)} of {parts} image parts name their image: name it in "
                                         "every part, or list them all in the images column")
        pictures = inline or [(["images", i], self.picture(row, item, ["images", i]))
                              for i, item in enumerate(listed or [])]
        if len(pictures) != parts:
            raise RowError(["images"], f"{count_of(len(pictures), 'image')} given for {count_of(parts, 'image part')}")
        return pictures

    def _message(self, message, path: list, inline: list, row: Row) -> dict:
        if not isinstance(message, dict):
            raise RowError(path, f"expected a message {{role, content}}, got {json_kind(message)}")
        role = message.get("role")
        if role not in ROLES:
            shown = json.dumps(role) if isinstance(role, str) else json_kind(role)
            raise RowError([*path, "role"], f"expected one of {', '.join(ROLES)}, got {shown}")
        content = message.get("content")
        if isinstance(content, str):
            return {"role": role, "content": [{"type": "text", "text": content}]}
        if not isinstance(content, list):
            raise RowError([*path, "content"], f"expected a string or a list of parts, got {json_kind(content)}")
        parts = [self._part(part, [*path, "content", j], inline, row) for j, part in enumerate(content)]
        return {"role": role, "content": parts}

    def _part(self, part, path: list, inline: list, row: Row) -> dict:
        if not isinstance(part, dict):
            raise RowError(path, f"expected a part {{type, ...}}, got {json_kind(part)}")
        part = {k: v for k, v in part.items() if v is not None}  # Parquet gives every part every key, as nulls
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise RowError([*path, "text"], f"expected a string, got {json_kind(part.get('text'))}")
            return {"type": "text", "text": part["text"]}
        if kind == "image":
            if "image" in part:
                inline.append(([*path, "image"], self.picture(row, part["image"], [*path, "image"])))
            return {"type": "image"}
        shown = json.dumps(kind) if isinstance(kind, str) else json_kind(kind)
        raise RowError([*path, "type"], f"expected \"text\" or \"image\", got {shown}")

    # ---- where an image's bytes are

    def picture(self, row: Row, value, path: list) -> Picture:
        """An image value: a path (relative to the row's file), bytes, or {bytes, path} as HF datasets writes."""
        from forgebuild.hashing import bytes_digest

        if isinstance(value, dict) and set(value) <= {"bytes", "path"}:
            value = value.get("bytes") if value.get("bytes") is not None else value.get("path", value)
        if isinstance(value, (bytes, bytearray)):
            return Picture(f"of {len(value):,} bytes", bytes_digest(bytes(value)), data=bytes(value))
        if not isinstance(value, str):
            raise RowError(path, f"expected an image path or bytes, got {json_kind(value)}")
        if not value.strip():
            raise RowError(path, "is an empty string")
        return self._file(row.file, value, path)

    def _file(self, f: SourceFile, value: str, path: list) -> Picture:
        name = "'" + value + "'"
        if os.path.isabs(value) or value.startswith("~"):
            raise ImageRowError(path, name, f"is an absolute path: write it relative to {f.label}",
                                "is an absolute path")
        folder = self.folders.get(f.source)
        if folder is not None:  # a file of a target's output: the target's digest covers it
            full = os.path.abspath(os.path.join(os.path.dirname(f.path), value))
            if os.path.commonpath([full, folder]) != folder:
                raise ImageRowError(path, name, f"is outside {f.source}'s output", "is outside its target's output")
            if not os.path.isfile(full):
                raise ImageRowError(path, name, f"is not found (no file {os.path.relpath(full, folder)} in "
                                                f"{f.source}'s output)")
            if full not in self.file_digests:
                from forgebuild.hashing import file_digest

                self.file_digests[full] = file_digest(full)
            return Picture(name, self.file_digests[full], path=full)
        rel = os.path.normpath(os.path.join(os.path.dirname(f.path), value)).replace(os.sep, "/")
        if rel == ".." or rel.startswith("../"):
            raise ImageRowError(path, name, "is outside the project")
        if rel in self.ctx.digests:
            return Picture(name, self.ctx.digests[rel], path=rel)
        if not os.path.isfile(rel):
            raise ImageRowError(path, name, f"is not found (no file {rel})")
        raise ImageRowError(path, name, f"is not an input of this target ({rel}): name its folder in images, "
                                        f"e.g. images = \"{os.path.dirname(rel) or '.'}/\"")


def _last_answer(messages: list) -> str:
    """The text of the last assistant message: what an eval compares a model's answer with."""
    said = [m for m in messages if m["role"] == "assistant"]
    if not said:
        raise RowError(["messages"], "has no assistant message")
    answer = "".join(part["text"] for part in said[-1]["content"] if part["type"] == "text")
    if not answer.strip():
        raise RowError(["messages"], "the last assistant message has no text")
    return answer


def _kept(value, column: str):
    """A `keep` column's value, which the record's JSON line must hold (Parquet has bytes, dates, NaN)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        shown = type(value).__name__ if not isinstance(value, float) else str(value)
        raise RowError([column], f"holds {shown}, which a JSON record cannot keep") from None
    return value


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def _target_folders(ctx) -> dict[str, str]:
    """address -> the output folder of each target named in `source` (ctx.inputs lists folders)."""
    by_digest = {os.path.basename(os.path.normpath(p)): p for p in as_list(ctx.inputs.get("source"))
                 if os.path.isdir(p)}
    return {address: os.path.abspath(by_digest[digest]) for address, digest in ctx.dep_digests.items()
            if digest in by_digest}


# ------------------------------------------------------------------ images (cached per image)

def _normalise(ctx, drafts: list[Draft]) -> dict[str, Normalised]:
    """source digest -> what its image became, for every distinct image the drafts name."""
    import PIL

    from forgebuild.rules.picture import Normalisation

    p = ctx.params
    how = Normalisation(p.mode, (p.resize.width, p.resize.height) if p.resize else None, p.max_side, p.resample,
                        p.image.max_bytes, p.image.max_pixels, p.image.min_side)
    pictures = {pic.digest: pic for d in drafts for _, pic in d.pictures}
    digests = sorted(pictures)

    def material(digest: str) -> dict:
        return {"image": digest, "normalise": asdict(how), "pillow": PIL.__version__}

    folders = dict(zip(digests, ctx.recall("image", [material(d) for d in digests])))
    todo = [d for d in digests if folders[d] is None]
    batches = [todo[start:start + BATCH] for start in range(0, len(todo), BATCH)]
    workers = worker_count(ctx.params.workers, len(batches))
    if workers > 1:
        ctx.log(f"images: {count_of(len(todo), 'image')} to normalise in {len(batches)} batches, {workers} processes")
    # Decoding and resizing are all the work (a 12-megapixel JPEG: 0.16 s here), and each picture's result
    # depends on its bytes alone, so the pool changes no byte of the artifact. The parent stores each batch
    # as it comes, faster than the pool decodes the next, so few normalised batches wait in memory.
    files = in_order(partial(_normalise_batch, how=how), [[pictures[d] for d in batch] for batch in batches], workers)
    for batch, made in zip(batches, files):
        kept = ctx.keep("image", [material(d) for d in batch], lambda folder, made=made: _write_files(folder, made))
        folders.update(dict.fromkeys(batch, kept))
    ctx.log(f"images: {count_of(len(digests), 'distinct image')}: {len(todo)} processed, "
            f"{len(digests) - len(todo)} from the cache")
    ctx.metrics({"images_processed": len(todo), "images_cached": len(digests) - len(todo)})
    return {d: _result(folders[d], d) for d in digests}


def _normalise_batch(pictures: list[Picture], how) -> dict[str, bytes]:
    """Each picture as DIGEST.png, or DIGEST.txt saying why it was refused (a refusal is cached too:
    the same bytes under the same normalisation are refused again)."""
    from forgebuild.rules.picture import BadImage, normalised_png

    files = {}
    for pic in pictures:
        try:
            data = pic.data
            if data is None:
                with open(pic.path, "rb") as f:
                    data = f.read()
            files[pic.digest + ".png"] = normalised_png(data, how)
        except BadImage as e:
            files[pic.digest + ".txt"] = str(e).encode()
    return files


def _write_files(folder: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


def _result(folder: str, digest: str) -> Normalised:
    from forgebuild.hashing import file_digest

    png = os.path.join(folder, digest + ".png")
    if os.path.exists(png):
        return Normalised(png=png, digest=file_digest(png))
    with open(os.path.join(folder, digest + ".txt"), encoding="utf-8") as f:
        return Normalised(problem=f.read())


# ------------------------------------------------------------------ validation, dedup

def _valid_records(ctx, rows: list[Row], outcomes: list, normalised: dict, stats: dict) -> list[Record]:
    records, invalid = [], []
    for row, outcome in zip(rows, outcomes):
        if isinstance(outcome, Draft):
            outcome = _with_images(outcome, normalised)
        if isinstance(outcome, RowError):
            invalid.append((row, outcome))
        else:
            records.append(outcome)
    report_invalid(ctx, invalid, Layout(ctx.params.format, True, ctx.params.fields, ctx.params.keep), stats)
    return records


def _with_images(draft: Draft, normalised: dict) -> Record | RowError:
    paths = []
    for path, pic in draft.pictures:
        result = normalised[pic.digest]
        if result.problem:
            return ImageRowError(path, pic.name, result.problem)
        paths.append(f"{IMAGE_FOLDER}/{result.digest}.png")
    return Record(draft.row, {"images": paths, **draft.record})


def _content_key(record: dict) -> str:
    return canonical(normal_content({name: record.get(name) for name in CONTENT}))


def _image_key(record: dict) -> str:
    return canonical(sorted(set(record["images"])))


def _without_duplicates(ctx, records: list[Record], stats: dict) -> list[Record]:
    return first_of_each(ctx, records, _content_key if ctx.params.dedup == "exact" else _image_key, stats)


# ------------------------------------------------------------------ output

def _write(ctx, records: list[Record], normalised: dict, stats: dict) -> None:
    p = ctx.params
    fractions = sorted(p.splits.items())  # sorted: the key's canonical JSON does not keep the table's order
    columns = sorted({c for record in records for c in record.data})
    by_split, images = _split(ctx, records, fractions, columns, stats)
    pngs = {f"{IMAGE_FOLDER}/{n.digest}.png": n.png for n in normalised.values() if n.png}
    used = sorted(set().union(*images.values()))
    for rel in used:
        ctx.place(pngs[rel], rel)
    for name, lines in by_split.items():
        with open(os.path.join(ctx.out, f"{name}.jsonl"), "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
        if not lines:
            ctx.log(f"warning: split {name} is empty")
    stats.update(rows_out=len(records), splits={name: len(lines) for name, lines in by_split.items()},
                 images={"distinct": len(used), "by_split": {name: len(s) for name, s in images.items()},
                         "sizes": _sizes([pngs[rel] for rel in used]), "mode": p.mode})
    write_json(os.path.join(ctx.out, "dataset.json"), {
        "kind": "images", "format": p.format, "columns": columns, "trainer": TRAINER[p.format],
        "images": len(used), "mode": p.mode,
        "splits": {name: {"path": f"{name}.jsonl", "rows": len(by_split[name]), "fraction": fraction}
                   for name, fraction in fractions}})
    write_json(os.path.join(ctx.out, "stats.json"), stats)
    ctx.log(f"{stats['rows_in']} rows in, {len(records)} out, {count_of(len(used), 'image')}: "
            + ", ".join(f"{name} {n}" for name, n in stats["splits"].items()))


def _split(ctx, records: list[Record], fractions: list, columns: list, stats: dict) -> tuple[dict, dict]:
    """Each split's JSON lines, in reading order, and the images its records use."""
    key_of = _image_key if ctx.params.split_by == "image" else _content_key
    by_split: dict[str, list[str]] = {name: [] for name, _ in fractions}
    images: dict[str, set] = {name: set() for name, _ in fractions}
    for record in records:
        split = split_of(key_of(record.data), fractions, ctx.params.split_seed)
        row = {c: record.data.get(c) for c in columns}  # every record has every column
        by_split[split].append(json.dumps(row, sort_keys=True, ensure_ascii=False, allow_nan=False))
        images[split].update(record.data["images"])
        stats["sources"][record.row.file.source]["rows_out"] += 1
    return by_split, images


def _sizes(pngs: list[str]) -> dict[str, int]:
    """"WIDTHxHEIGHT" -> images of that size, read from the PNG headers."""
    from PIL import Image

    found: dict[str, int] = {}
    for path in pngs:
        with Image.open(path) as image:
            size = f"{image.width}x{image.height}"
        found[size] = found.get(size, 0) + 1
    return dict(sorted(found.items()))


def _new_stats(fmt: str, files: list[SourceFile], rows: list[Row]) -> dict:
    sources = {f.source: {"rows_in": 0, "invalid": 0, "duplicates": 0, "rows_out": 0} for f in files}
    for row in rows:
        sources[row.file.source]["rows_in"] += 1
    return {"format": fmt, "rows_in": len(rows), "rows_out": 0, "sources": sources}
