"""Benchmark contamination across the graph: each model's training data checked against the prompts
of the benchmarks that judge it.

Planning gives an eval, under `contamination.I`, every corpus, dataset, curate and images target that
`models[I]` is built from, directly or not (the rule's `upstream_inputs`). Here each such artifact's
texts are streamed once and held against the benchmarks' prompts (small): an example is contaminated
when its prompt shares a run of `ngram` words with a text (the dataset rule's word n-grams: casefolded
`\\w+` runs), or, for a prompt shorter than `ngram` words, when its normalised text (NFKC, whitespace
collapsed, casefolded) equals a whole text or one line of one. An example with images (an images
target's record) is contaminated when one of its pictures is a picture of an images target's record:
the same file name, which is the digest of the normalised PNG; its text is not checked. Each artifact's result is a memo keyed
by its digest, the prompts and `ngram`: a second model on the same corpus, or a rebuild after a
benchmark-free change, reads nothing again.

Standard library, and pyarrow inside functions: no torch, so planning may import the constants.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass

from forgebuild.rules.dataset import WORD, normal_content, strings_of, word_grams

KINDS = ("corpus", "dataset", "curate", "images")  # the targets a model may have learnt a benchmark from
CHECKED = ("generate", "choice")  # benchmarks with prompts; perplexity and lm-eval are left out (docs say why)
SHOWN = 20  # matches listed per benchmark in report.md and report.html; report.json keeps them all
METRIC = "contamination"


@dataclass(frozen=True)
class Example:
    bench: str
    line: int  # the benchmark file's line
    prompt: str
    images: tuple[str, ...] = ()  # an image benchmark's pictures: images/DIGEST.png, the digest of the content


def is_metric(name: str) -> bool:
    """`contamination` or `BENCH.contamination`: a count of this benchmark, with no interval."""
    return name == METRIC or name.endswith("." + METRIC)


def exact_key(text: str) -> str:
    return normal_content(text).casefold()


class Prompts:
    """The benchmarks' prompts as the checks read them: n-gram -> examples, and short prompt -> examples."""

    def __init__(self, examples: list[Example], ngram: int):
        self.examples, self.ngram = examples, ngram
        self.grams: dict[tuple, list[int]] = {}
        self.exact: dict[str, list[int]] = {}
        self.pictures: dict[str, list[int]] = {}
        for i, example in enumerate(examples):
            if example.images:
                # an image example is its picture: its question ("what colour?") repeats across the
                # whole benchmark and the training data by design, so its text would flag them all
                for rel in set(example.images):
                    self.pictures.setdefault(os.path.basename(rel), []).append(i)
            elif len(WORD.findall(example.prompt)) >= ngram:
                for gram in set(word_grams(example.prompt, ngram)):
                    self.grams.setdefault(gram, []).append(i)
            elif key := exact_key(example.prompt):
                self.exact.setdefault(key, []).append(i)

    @property
    def digest(self) -> str:
        text = json.dumps([[asdict(e) for e in self.examples], self.ngram], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def hits(self, text: str):
        """(example index, how) for each prompt this text holds."""
        if self.grams:
            for gram in word_grams(text, self.ngram):
                for i in self.grams.get(gram, ()):
                    yield i, f"{self.ngram}-gram"
        if self.exact:
            for piece in {text, *text.splitlines()}:
                for i in self.exact.get(exact_key(piece), ()):
                    yield i, "exact prompt"
        if self.pictures and text.startswith("images/"):  # an images record's picture, named by its digest
            for i in self.pictures.get(os.path.basename(text), ()):
                yield i, "same image"


# ------------------------------------------------------------------ one artifact's texts

def texts(folder: str, skip: str | None = None):
    """(file, where, text) for every text of a data artifact: a dataset's, curate's or images target's
    splits (as its dataset.json names them: each string of each record, a message's role left out; the
    split file `skip` left out), else a corpus's train and holdout Parquet shards (each document),
    streamed a batch at a time."""
    meta = os.path.join(folder, "dataset.json")
    if os.path.isfile(meta):
        yield from _record_texts(folder, meta, skip)
    else:
        yield from _corpus_texts(folder)


def _record_texts(folder: str, meta: str, skip: str | None):
    from forgebuild.rules.rows import read_records

    with open(meta, encoding="utf-8") as f:
        splits = json.load(f)["splits"]
    for _, split in sorted(splits.items()):
        if split["path"] == skip:
            continue
        for line, record in read_records(os.path.join(folder, split["path"])):
            for text in strings_of(record):
                yield split["path"], f"line {line}", text


def _corpus_texts(folder: str):
    import pyarrow.parquet as pq

    for part in ("train", "holdout"):
        shards = os.path.join(folder, part)
        for name in sorted(os.listdir(shards)) if os.path.isdir(shards) else []:
            if not name.endswith(".parquet"):
                continue
            for batch in pq.ParquetFile(os.path.join(shards, name)).iter_batches(columns=["text", "id"]):
                for text, doc in zip(batch.column("text").to_pylist(), batch.column("id").to_pylist()):
                    yield f"{part}/{name}", f"document {doc}", text or ""


def scan(folder: str, prompts: Prompts, skip: str | None = None) -> dict[int, dict]:
    """Example index -> where its first match in this artifact (but its split file `skip`) is: {file, where, how}."""
    found: dict[int, dict] = {}
    for file, where, text in texts(folder, skip):
        for i, how in prompts.hits(text):
            found.setdefault(i, {"file": file, "where": where, "how": how})
    return found


def scanned(ctx, folder: str, digest: str, prompts: Prompts, skip: str | None = None) -> dict[int, dict]:
    """scan(), as a memo keyed by the artifact's digest, the prompts' (so by `ngram` too) and `skip`."""
    def produce(out: str) -> None:
        with open(os.path.join(out, "matches.json"), "w", encoding="utf-8") as f:
            json.dump({str(i): m for i, m in sorted(scan(folder, prompts, skip).items())}, f, sort_keys=True)

    material = {"artifact": digest, "prompts": prompts.digest, **({"skip": skip} if skip else {})}
    memo = ctx.memo("contamination", material, produce)
    with open(os.path.join(memo, "matches.json"), encoding="utf-8") as f:
        return {int(i): m for i, m in json.load(f).items()}


# ------------------------------------------------------------------ per model

def check(ctx, examples: list[Example], ngram: int, benches: list[str], skipped: list[str],
          reads: dict[str, tuple] | None = None, trained: dict[str, set] | None = None) -> dict:
    """The report's `contamination` section: per listed model, the data targets of its closure, and per
    checked benchmark its examples, the contaminated ones and their rate, with every match.

    `reads`: benchmark -> (data target, split, split file) of a benchmark reading a split of a
    dataset-like target; `trained`: model -> the (data target, split) pairs its base chain trained on.
    The split a benchmark reads is left out of that target's texts unless the model trained on it:
    every example is in the split it is read from, which says nothing of what the model saw."""
    models = {}
    for i, address in enumerate(ctx.params.models):
        data = sorted((item["address"], item["digest"], os.path.join(ctx.project_dir, item["path"]))
                      for item in ctx.sources.get(f"{METRIC}.{i}", []))
        first: dict[int, dict] = {}
        for source, digest, folder in data:
            unseen = {bench: split_file for bench, (data, split, split_file) in (reads or {}).items()
                      if data == source and (data, split) not in (trained or {}).get(address, set())}
            for skip, indices in _by_split_read(examples, unseen).items():
                prompts = Prompts([examples[j] for j in indices], ngram)
                for j, match in scanned(ctx, folder, digest, prompts, skip).items():
                    first.setdefault(indices[j], {"address": source, **match})
        models[address] = {"data": [a for a, _, _ in data], "benchmarks": _per_benchmark(examples, first, benches)}
    return {"ngram": ngram, "kinds": list(KINDS), "skipped": skipped, "models": models}


def _by_split_read(examples: list[Example], unseen: dict[str, str]) -> dict:
    """The examples' indices grouped by the split file their benchmark reads and the model did not train
    on (None: none): each group is held against the artifact without that split."""
    groups: dict = {}
    for j, example in enumerate(examples):
        groups.setdefault(unseen.get(example.bench), []).append(j)
    return groups


def _per_benchmark(examples: list[Example], first: dict[int, dict], benches: list[str]) -> dict:
    found = {name: {"examples": 0, "contaminated": 0, "rate": 0.0, "matches": []} for name in benches}
    for i, example in enumerate(examples):
        entry = found[example.bench]
        entry["examples"] += 1
        if i in first:
            entry["contaminated"] += 1
            entry["matches"].append({"line": example.line, "prompt": example.prompt, **first[i]})
    for entry in found.values():
        entry["rate"] = entry["contaminated"] / entry["examples"] if entry["examples"] else 0.0
    return found


def results(section: dict) -> dict[str, dict[str, dict]]:
    """model -> {`contamination`, `BENCH.contamination`: {value, n}}: the share of the checked examples
    that are contaminated. A count of these examples, not an estimate of a larger population: no interval.
    A model whose build reads no corpus, dataset or curate target (an imported one) was checked against
    nothing: its values are None (not measured), never a 0 that would read as clean, and a gate on it fails."""
    found = {}
    for address, model in section.get("models", {}).items():
        benches = model["benchmarks"]
        if not model["data"]:
            found[address] = {METRIC: {"value": None, "n": 0},
                              **{f"{name}.{METRIC}": {"value": None, "n": 0} for name in benches}}
            continue
        total = sum(b["examples"] for b in benches.values())
        hit = sum(b["contaminated"] for b in benches.values())
        found[address] = {METRIC: {"value": hit / total if total else 0.0, "n": total},
                          **{f"{name}.{METRIC}": {"value": b["rate"], "n": b["examples"]} for name, b in benches.items()}}
    return found


def named(section: dict, address: str, limit: int = SHOWN) -> list[str]:
    """One line per contaminated example of a model (the first `limit` of each benchmark): what the
    log and the reports list."""
    lines = []
    for name, bench in section["models"].get(address, {}).get("benchmarks", {}).items():
        lines += [f"{name} line {m['line']} {m['prompt']!r}: {m['how']} in {m['address']} {m['file']} "
                  f"({m['where']})" for m in bench["matches"][:limit]]
        if len(bench["matches"]) > limit:
            lines.append(f"{name}: {len(bench['matches']) - limit} more in report.json")
    return lines
