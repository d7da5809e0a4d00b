"""tokens: a corpus tokenized and packed for pretraining, cached as an artifact of its own.

    [tokens.pretrain]
    corpus = "corpus:mix"
    tokenizer = "tokenizer:bpe"
    seq_len = 256

Tokenizing a large corpus takes hours; as a target of its own it is keyed only by
the corpus's and the tokenizer's output digests and these settings, so changing
a training hyper-parameter, or a crashed training run, never tokenizes again.

The artifact: train.bin and holdout.bin (flat little-endian token ids, uint16
when every id fits, else uint32; `numpy.memmap(path, dtype, mode="r")` reads
them, `.reshape(-1, seq_len)` gives the sequences), meta.json (dtype, seq_len,
sizes, special token ids, the digests of the corpus and tokenizer it was made
from) and stats.json (documents, tokens, what packing dropped or padded).

Packing "concat" (nanoGPT style): every document is encoded, wrapped in
bos/eos as asked, and the documents are concatenated in corpus order and cut
into rows of seq_len tokens; the last, incomplete row of each split (fewer than
seq_len tokens) is dropped and counted as `remainder_tokens`. Packing "pad":
each document starts a new row; a document longer than seq_len continues on the
next rows, and its last row is filled with pad ids (no token is dropped).
"""
from __future__ import annotations

import json
import os
import sys
import time
from array import array
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgebuild import limits
from forgebuild.rules import runtime
from forgebuild.rules.tokenizer import corpus_parts, encode, log_metrics, reference_problems, text_batches, use_threads, write_json

version = "1"

SPLITS = ("train", "holdout")
UINT16_IDS = 1 << 16  # ids 0..65535 fit in two bytes: half the disk and memory of uint32
FLUSH_TOKENS = 1 << 20  # write to disk every ~1M tokens: memory stays flat however big the corpus


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    corpus: str = Field(description="the corpus target (KIND:NAME) to tokenize: its train and holdout splits")
    tokenizer: str = Field(description="the tokenizer target (KIND:NAME): a folder with tokenizer.json")
    seq_len: int = Field(ge=1, le=limits.TOKENS, description="tokens per row (training sequence)")
    add_bos: bool = Field(False, description="put the tokenizer's bos token before every document")
    add_eos: bool = Field(True, description="put the tokenizer's eos token after every document (the separator)")
    packing: Literal["concat", "pad"] = Field(
        "concat", description="concat: documents back to back, cut into rows; pad: each document starts a row, padded")
    threads: int = runtime(0, ge=0, le=limits.THREADS, description="threads for encoding; 0 means every core. Not in the key")
    batch_documents: int = runtime(1024, ge=1, le=limits.BATCH, description="documents per encode_batch call. Not in the key")


def inputs(params: Params) -> dict:
    return {"corpus": params.corpus, "tokenizer": params.tokenizer}


def environment(params: Params) -> dict:
    return {"libraries": ["tokenizers"]}


def requires(params: Params) -> dict[str, str]:
    """What the build imports, by the extra that installs it (checked before a build starts)."""
    return {"tokenizers": "data", "pyarrow": "data"}


def check(params: Params) -> list[tuple[str, str]]:
    problems = reference_problems(params, ("corpus", "tokenizer"))
    if params.packing == "concat" and not (params.add_bos or params.add_eos):
        problems.append(("add_eos", "with packing \"concat\" and neither add_bos nor add_eos, documents run into "
                                    "each other with nothing between them"))
    return problems


# ------------------------------------------------------------------ building

def build(ctx) -> None:
    tokenize(ctx, ctx.params, ctx.inputs["corpus"], ctx.inputs["tokenizer"], ctx.out)


def tokenize(ctx, p: Params, folder: str, tokenizer_folder: str, out: str) -> None:
    """Tokenize and pack a corpus folder into `out` (a pretraining recipe calls this too)."""
    threads = use_threads(p.threads)
    import pyarrow.parquet  # noqa: F401  (imported before the clock starts: the metrics time the work)

    tokenizer = load_tokenizer(ctx, p.tokenizer, tokenizer_folder)
    tokenizer.encode_special_tokens = True  # "<|eos|>" written in a document is text, not the token
    ids = special_ids(ctx, p, tokenizer, tokenizer_folder)
    vocab = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1  # ids may have gaps
    typecode, dtype = ("H", "uint16") if vocab <= UINT16_IDS else ("I", "uint32")

    parts = {split: corpus_parts(ctx, p.corpus, folder, split, required=split == "train") for split in SPLITS}
    splits, seconds = {}, {}
    for split in SPLITS:
        started = time.perf_counter()
        writer = SequenceWriter(os.path.join(out, f"{split}.bin"), typecode, p.seq_len, p.packing, ids["pad_id"])
        batches = text_batches(ctx, p.corpus, folder, parts[split], rows=p.batch_documents, threads=threads > 1)
        splits[split] = pack(batches, tokenizer, ids, p, writer)
        seconds[split] = time.perf_counter() - started

    write_json(os.path.join(out, "meta.json"), meta(ctx, p, dtype, vocab, ids, splits))
    write_json(os.path.join(out, "stats.json"), stats(p, splits))
    total = sum(s["document_tokens"] for s in splits.values())
    log_metrics(ctx, threads=threads, seconds={k: round(v, 3) for k, v in seconds.items()},
                tokens_per_second=round(total / max(sum(seconds.values()), 1e-9)))
    ctx.log(f"tokenized {sum(s['documents'] for s in splits.values())} documents into {total} tokens ({dtype})")


def pack(batches, tokenizer, ids: dict, p: Params, writer: "SequenceWriter") -> dict:
    """Encode every document of a split (batched, parallel) and write it as rows; its counts."""
    documents = 0
    with writer:
        for texts in batches:
            for encoding in encode(tokenizer, texts):
                writer.add(wrapped(encoding.ids, ids, p))
            documents += len(texts)
    return {"documents": documents, **writer.counts()}


def load_tokenizer(ctx, address: str, folder: str):
    from tokenizers import Tokenizer

    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        present = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        raise ctx.bad_input(f"{address} has no tokenizer.json (its artifact holds: {', '.join(present) or 'nothing'}); "
                            f"a tokenizer artifact is a Hugging Face tokenizer folder")
    return Tokenizer.from_file(path)


def special_ids(ctx, p: Params, tokenizer, folder: str) -> dict:
    """bos/eos/pad ids, from the folder's special_tokens_map.json (or tokenizer_config.json)."""
    named = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not named:
            with open(path, encoding="utf-8") as f:
                named = json.load(f)
    ids = {}
    for key in ("bos", "eos", "pad"):
        token = named.get(f"{key}_token")
        token = token.get("content") if isinstance(token, dict) else token  # transformers 4 may write {"content": ...}
        ids[f"{key}_id"] = tokenizer.token_to_id(token) if token else None
    needed = {"bos_id": p.add_bos and "add_bos = true", "eos_id": p.add_eos and "add_eos = true",
              "pad_id": p.packing == "pad" and "packing = \"pad\""}
    for key, why in needed.items():
        if why and ids[key] is None:
            name = key[:-3]
            raise ctx.bad_input(f"{why} needs the tokenizer's {name} token, and {p.tokenizer} has none (no {name}_token "
                                f"of its vocabulary in special_tokens_map.json or tokenizer_config.json)")
    return ids


def wrapped(document: list[int], ids: dict, p: Params) -> list[int]:
    if p.add_bos:
        document = [ids["bos_id"], *document]
    if p.add_eos:
        document.append(ids["eos_id"])
    return document


class SequenceWriter:
    """Appends documents to a flat file of fixed-length rows, in bounded memory."""

    def __init__(self, path: str, typecode: str, seq_len: int, packing: str, pad_id: int | None):
        self.path, self.typecode, self.seq_len, self.packing, self.pad_id = path, typecode, seq_len, packing, pad_id
        self.buffer = array(typecode)
        self.rows = self.document_tokens = self.remainder = self.padding = self.split_documents = 0

    def __enter__(self):
        self.file = open(self.path, "wb")
        return self

    def add(self, document: list[int]) -> None:
        self.document_tokens += len(document)
        self.buffer.extend(document)
        if self.packing == "pad":
            self._pad_document(len(document))
        if len(self.buffer) >= FLUSH_TOKENS:
            self._flush()

    def _pad_document(self, length: int) -> None:
        if length > self.seq_len:
            self.split_documents += 1
        short = -length % self.seq_len
        self.buffer.extend([self.pad_id] * short)
        self.padding += short

    def _flush(self) -> None:
        whole = len(self.buffer) - len(self.buffer) % self.seq_len
        chunk = self.buffer[:whole]
        if sys.byteorder == "big":  # the file is little-endian on every machine
            chunk.byteswap()
        chunk.tofile(self.file)
        self.rows += whole // self.seq_len
        del self.buffer[:whole]

    def __exit__(self, kind, *rest):
        if kind is None:
            self._flush()
            self.remainder = len(self.buffer)  # concat only: the last, incomplete row is dropped
        self.file.close()

    def counts(self) -> dict:
        return {"sequences": self.rows, "tokens": self.rows * self.seq_len, "document_tokens": self.document_tokens,
                "remainder_tokens": self.remainder, "padding_tokens": self.padding,
                "split_documents": self.split_documents}


def meta(ctx, p: Params, dtype: str, vocab: int, ids: dict, splits: dict) -> dict:
    return {
        "format": "forgebuild.tokens", "format_version": 1,
        "dtype": dtype, "byteorder": "little", "seq_len": p.seq_len, "packing": p.packing,
        "add_bos": p.add_bos, "add_eos": p.add_eos, "vocab_size": vocab, **ids,
        "splits": {name: {"file": f"{name}.bin", "sequences": s["sequences"], "tokens": s["tokens"]}
                   for name, s in splits.items()},
        "tokenizer": {"target": p.tokenizer, "digest": ctx.dep_digests.get(p.tokenizer)},
        "corpus": {"target": p.corpus, "digest": ctx.dep_digests.get(p.corpus)},
    }


def stats(p: Params, splits: dict) -> dict:
    out = {}
    for name, s in splits.items():
        out[name] = dict(s)
        out[name]["tokens_per_document"] = round(s["document_tokens"] / s["documents"], 2) if s["documents"] else None
    return out
