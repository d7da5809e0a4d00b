"""Rows of a tokens artifact as a torch Dataset, with the fill-in-the-middle transform.

Fill-in-the-middle (Bavarian et al. 2022, "Efficient Training of Language Models to
Fill in the Middle"), applied to tokens as Megatron and StarCoder do: each document
of a row (documents are separated by eos) is, with probability `fim_rate`, cut at two
random points into prefix, middle and suffix and rearranged as
    PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
    SPM: <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle
so the model learns to write the middle from both sides. The row is then cut back to
seq_len (three tokens per transformed document fall off its end). The cut points
come from a generator seeded by the target's seed and the row's index: the same row
is transformed the same way in every run, a resumed one included.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")


def fim_spec(ctx, p, tokenizer, meta: dict) -> dict:
    ids = [tokenizer.convert_tokens_to_ids(t) for t in FIM_TOKENS]
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ctx.bad_input(f"fim_rate = {p.fim_rate} needs the tokens {', '.join(FIM_TOKENS)} in the tokenizer "
                            f"(set fim = true on the tokenizer target)")
    if meta.get("eos_id") is None:
        raise ctx.bad_input("fill-in-the-middle finds documents by their eos token: make the tokens with add_eos = true")
    prefix, middle, suffix = ids
    return {"rate": p.fim_rate, "format": p.fim_format, "prefix": prefix, "middle": middle, "suffix": suffix,
            "eos": meta["eos_id"]}


class PackedRows(torch.utils.data.Dataset):
    def __init__(self, folder: str, split: str, meta: dict, fim: dict | None = None, seed: int = 0,
                 limit: int | None = None):
        path = os.path.join(folder, meta["splits"][split]["file"]) if split in meta["splits"] else None
        self.seq_len = meta["seq_len"]
        self.pad_id = meta.get("pad_id") if meta.get("packing") == "pad" else None
        self.fim, self.seed = fim, seed
        if path and os.path.getsize(path):
            self.rows = np.memmap(path, dtype=np.dtype(meta["dtype"]).newbyteorder("<"), mode="r")
            self.rows = self.rows.reshape(-1, self.seq_len)
        else:
            self.rows = np.zeros((0, self.seq_len), dtype=np.uint16)
        self.count = len(self.rows) if limit is None else min(limit, len(self.rows))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        ids = self.rows[index].astype(np.int64)
        if self.fim:
            ids = np.asarray(fim_row(ids.tolist(), self.fim, random.Random(self.seed * 1_000_003 + index)), np.int64)
        input_ids = torch.from_numpy(ids)
        labels = input_ids.clone()
        if self.pad_id is not None:
            labels[input_ids == self.pad_id] = -100  # padding is not a token to learn
        return {"input_ids": input_ids, "labels": labels}


def fim_row(ids: list[int], fim: dict, rng: random.Random) -> list[int]:
    out = []
    for document, separator in documents(ids, fim["eos"]):
        if len(document) >= 2 and rng.random() < fim["rate"]:
            document = rearranged(document, fim, rng)
        out += document + separator
    return out[:len(ids)]


def documents(ids: list[int], eos: int):
    start = 0
    for i, token in enumerate(ids):
        if token == eos:
            yield ids[start:i], [eos]
            start = i + 1
    if start < len(ids):
        yield ids[start:], []


def rearranged(document: list[int], fim: dict, rng: random.Random) -> list[int]:
    a, b = sorted(rng.randint(0, len(document)) for _ in range(2))
    prefix, middle, suffix = document[:a], document[a:b], document[b:]
    if fim["format"] == "psm":
        return [fim["prefix"], *prefix, fim["suffix"], *suffix, fim["middle"], *middle]
    return [fim["prefix"], fim["suffix"], *suffix, fim["middle"], *prefix, *middle]
