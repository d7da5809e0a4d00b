"""Tokenization throughput: a `tokens` target build against the tokenizers library called directly.

One project holds ~8 MB of Python's standard library as a corpus (a `run`
target writes the corpus layout: train/ and holdout/ Parquet parts), a
byte-level BPE tokenizer (vocab 8192) and `[tokens.x]` (seq_len 1024, eos after
every document). The corpus and tokenizer are built once; then, for 1 and 2
threads, a copy of the project builds tokens:x alone (median of --repeats).

For each thread count it prints:
  target wall      wall time of `forgebuild tokens:x` (CLI, planning, the child
                   process and its imports, reading Parquet, encoding, packing,
                   writing, hashing and storing the artifact)
  target tok/s     document tokens / target wall
  in-rule tok/s    the rule's own figure (the build record's `metrics`): reading,
                   encoding, packing and writing, without process start-up
  direct tok/s     Tokenizer.encode_batch_fast on the same texts, already in
                   memory, in batches of 1024 documents: the library's ceiling
  direct (offsets) the same with encode_batch, which also computes offsets
and checks that the artifact's digest is the same for every thread count.

Run: python benchmarks/bench_tokenize.py [--mb 8] [--repeats 3]
Takes about a minute on the reference machine (2 cores).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile

from _common import ENV, FORGE, header, run, scratch_dir, summary_of, table, timed

THREADS = (1, 2)
VOCAB, SEQ_LEN = 8192, 1024

MAKE_CORPUS = '''
import os, sys
import pyarrow as pa, pyarrow.parquet as pq
out, paths = sys.argv[1], sorted(sys.argv[2:])
documents = [open(p, encoding="utf-8", errors="replace").read() for p in paths]
for split, rows in (("train", documents[:-len(documents) // 20]), ("holdout", documents[-len(documents) // 20:])):
    os.makedirs(os.path.join(out, split))
    for part, start in enumerate(range(0, len(rows), 1000)):
        chunk = rows[start:start + 1000]
        table = pa.table({"text": chunk, "id": [str(start + i) for i in range(len(chunk))], "source": ["stdlib"] * len(chunk)})
        pq.write_table(table, os.path.join(out, split, f"part-{part:05d}.parquet"))
'''

FORGEFILE = f'''
[run.stdlib]
cmd = ["{sys.executable}", "{{in.script}}", "{{out}}", "{{in.src}}"]
inputs = {{ script = "make_corpus.py", src = "src/**/*.py" }}

[tokenizer.bpe]
corpus = "run:stdlib"
vocab_size = {VOCAB}

[tokens.x]
corpus = "run:stdlib"
tokenizer = "tokenizer:bpe"
seq_len = {SEQ_LEN}
threads = THREADS
'''

DIRECT = '''
import glob, json, sys, time
import pyarrow.parquet as pq
from tokenizers import Tokenizer
corpus, tokenizer, method = sys.argv[1:4]
texts = []
for split in ("train", "holdout"):
    for path in sorted(glob.glob(f"{corpus}/{split}/*.parquet")):
        texts += pq.read_table(path, columns=["text"])["text"].to_pylist()
t = Tokenizer.from_file(tokenizer)
t.encode_special_tokens = True
encode = getattr(t, method)
start = time.perf_counter()
tokens = 0
for i in range(0, len(texts), 1024):
    tokens += sum(len(e.ids) for e in encode(texts[i:i + 1024], add_special_tokens=False))
print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - start}))
'''


def registration_env() -> dict:
    """PYTHONPATH with a shim registering the data kinds if the installed entry points lack them."""
    from importlib.metadata import entry_points

    if {"tokenizer", "tokens"} <= {ep.name for ep in entry_points(group="forgebuild.rules")}:
        return dict(ENV)
    site = tempfile.mkdtemp(prefix="forge-bench-shim-")
    dist = os.path.join(site, "forgebuild_shim-0.1.dist-info")
    os.makedirs(dist)
    with open(os.path.join(dist, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\nName: forgebuild-shim\nVersion: 0.1\n")
    with open(os.path.join(dist, "entry_points.txt"), "w") as f:
        f.write("[forgebuild.rules]\ntokenizer = forgebuild.rules.tokenizer\ntokens = forgebuild.rules.tokens\n")
    return {**ENV, "PYTHONPATH": os.pathsep.join([site, ENV.get("PYTHONPATH", "")])}


def copy_sources(folder: str, megabytes: float) -> int:
    """Standard-library modules (all folders, name order) up to the size asked; returns bytes."""
    stdlib = sysconfig.get_paths()["stdlib"]
    total = 0
    for path in sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)):
        if "site-packages" in path:
            continue
        target = os.path.join(folder, "src", os.path.relpath(path, stdlib))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
        total += os.path.getsize(path)
        if total >= megabytes * 1e6:
            break
    return total


def write_forgefile(folder: str, threads: int) -> None:
    with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
        f.write(FORGEFILE.replace("THREADS", str(threads)))


def build_tokens(base: str, threads: int, env: dict) -> dict:
    """tokens:x built alone in a copy of the project (corpus and tokenizer cached)."""
    with scratch_dir("forge-bench-tok-run-") as folder:
        shutil.copytree(base, folder, dirs_exist_ok=True, symlinks=True)
        write_forgefile(folder, threads)
        seconds, proc = timed([*FORGE, "tokens:x", "--json"], folder, env)
        summary = summary_of(proc.stdout)
        actions = {t["target"]: t["action"] for t in summary["targets"]}
        if actions != {"run:stdlib": "cached", "tokenizer:bpe": "cached", "tokens:x": "built"}:
            raise RuntimeError(f"expected only tokens:x to build, got {actions}")
        with open(os.path.join(folder, ".forge", "logs", "tokens", "x.log"), encoding="utf-8") as f:
            metrics = json.loads(f.read().split("metrics: ", 1)[1].splitlines()[0])
        with open(os.path.join(folder, ".forge", "out", "tokens", "x", "stats.json"), encoding="utf-8") as f:
            stats = json.load(f)
        tokens = sum(s["document_tokens"] for s in stats.values())
        digest = next(t["digest"] for t in summary["targets"] if t["target"] == "tokens:x")
        return {"wall": seconds, "tokens": tokens, "rule_tps": metrics["tokens_per_second"], "digest": digest}


def direct(base: str, threads: int, method: str, env: dict) -> dict:
    corpus = os.path.join(base, ".forge", "out", "run", "stdlib")
    tokenizer = os.path.join(base, ".forge", "out", "tokenizer", "bpe", "tokenizer.json")
    child = {**env, "RAYON_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "true" if threads > 1 else "false"}
    proc = run([sys.executable, "-c", DIRECT, corpus, tokenizer, method], base, child)
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=8.0, help="megabytes of standard-library source to tokenize")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    header("bench_tokenize: tokens/s through a `tokens` target and through the tokenizers library")
    env = registration_env()
    rows, digests = [], set()
    with scratch_dir("forge-bench-tok-") as base:
        size = copy_sources(base, args.mb)
        with open(os.path.join(base, "make_corpus.py"), "w", encoding="utf-8") as f:
            f.write(MAKE_CORPUS)
        write_forgefile(base, 1)
        seconds, _ = timed([*FORGE, "tokenizer:bpe", "-q"], base, env)
        print(f"corpus: {size / 1e6:.1f} MB of {sys.version.split()[0]} standard library; corpus + tokenizer "
              f"(BPE, vocab {VOCAB}) built in {seconds:.1f} s")
        for threads in THREADS:
            builds = [build_tokens(base, threads, env) for _ in range(args.repeats)]
            digests |= {b["digest"] for b in builds}
            tokens = builds[0]["tokens"]
            wall = statistics.median(b["wall"] for b in builds)
            fast = statistics.median(direct(base, threads, "encode_batch_fast", env)["seconds"] for _ in range(args.repeats))
            full = statistics.median(direct(base, threads, "encode_batch", env)["seconds"] for _ in range(args.repeats))
            rows.append([threads, f"{tokens:,}", f"{wall:.2f}", f"{tokens / wall:,.0f}",
                         f"{statistics.median(b['rule_tps'] for b in builds):,.0f}",
                         f"{tokens / fast:,.0f}", f"{tokens / full:,.0f}"])
            print(f"  threads={threads}: done", flush=True)
    print()
    print(table(rows, ["threads", "tokens", "target wall s", "target tok/s", "in-rule tok/s", "direct tok/s",
                       "direct (offsets) tok/s"]))
    print()
    print(f"artifact digest identical across thread counts: {'yes' if len(digests) == 1 else 'NO: ' + str(digests)}")


if __name__ == "__main__":
    main()
