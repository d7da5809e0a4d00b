"""The corpus rule on real text: ingest + curation throughput, and the cost of adding one file.

The corpus is N source files (default 1000) of the running Python's standard
library (`sysconfig.get_paths()["stdlib"]`, recursively, site-packages left
out, sorted), copied into a temporary project; about 15 MB for N = 1000. If
the library has fewer files than asked, copies are made, each with a first
line of its own so they stay distinct documents.

Two curation profiles, each a `[corpus.std]` target over `data/**/*.py`:
  light   NFC, min_chars = 1, exact dedup, encoding_errors = "replace"
  full    light + PII scrubbing (emails, IPs, secrets), max_symbol_ratio = 0.5,
          near-dedup (MinHash LSH, 128 permutations, 5-word shingles), holdout = 0.02

For each profile it measures:
  cold build     `forgebuild` in a fresh project (no .forge): wall time, and
                 the stage's own seconds from the --json summary
  MB/s           source bytes / cold build wall time (what a user waits for)
  add one file   a new, distinct stdlib file is added and `forgebuild` run
                 again; median of 3 (a different file each time). Its log
                 must say that 1 source unit was processed.
  ratio          add one file / cold build
  no-op          median of 5 `forgebuild` runs with everything up to date
  no file        a rebuild after changing min_chars, so that every file's
  processed      work comes from the cache (median of 3): the fixed cost of
                 any rebuild (CLI, planning, worker process, imports, global
                 dedup and split, shard assembly, hashing the output)
  marginal       add one file - no file processed

Goals: adding one file to a 1000-file corpus costs under 5% of a cold build.
There is no throughput goal; the figure is printed for comparison across
machines and versions.

Run: python benchmarks/bench_corpus.py [--files 1000] [--profiles light,full] [--workers N]
(--workers sets the rule's runtime-only `workers`; default 0, one per CPU).
Takes about a minute on the reference machine (2 cores).
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import statistics
import sys
import sysconfig

from _common import forge, header, scratch_dir, table, verdict

RATIO_GOAL = 0.05
PROFILES = {
    "light": 'dedup = "exact"\n',
    "full": 'dedup = "near"\npii = true\nmax_symbol_ratio = 0.5\nholdout = 0.02\n',
}
INCREMENTAL_RUNS, NOOP_RUNS = 3, 5


def stdlib_sources() -> list[str]:
    root = sysconfig.get_paths()["stdlib"]
    found = [p for p in glob.glob(os.path.join(root, "**", "*.py"), recursive=True)
             if "site-packages" not in p and os.path.getsize(p) > 0]
    return sorted(found)


def write_corpus(folder: str, sources: list[str], n: int, per_file: int = 1) -> int:
    """Write n files, each `per_file` library files joined (a distinct first line keeps every
    file a distinct document when the library runs out); return bytes."""
    total = 0
    for i in range(n):
        dst = os.path.join(folder, "data", f"{i // 100:03d}", f"f{i:05d}.py")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        data = f"# file {i}\n".encode() if n * per_file > len(sources) else b""
        for j in range(per_file):
            with open(sources[(i * per_file + j) % len(sources)], "rb") as f:
                data += f.read()
        with open(dst, "wb") as f:
            f.write(data)
        total += len(data)
    return total


def forgefile(profile: str, workers: int | None) -> str:
    text = '[corpus.std]\nsources = ["data/**/*.py"]\nencoding_errors = "replace"\n' + PROFILES[profile]
    return text + (f"workers = {workers}\n" if workers is not None else "")


def build(folder: str, expect: str) -> tuple[float, float]:
    """(wall seconds, stage seconds) of one `forgebuild` run."""
    seconds, summary = forge(folder)
    [target] = summary["targets"]
    if target["action"] != expect:
        raise RuntimeError(f"expected {expect}, got {target}")
    return seconds, target.get("seconds", 0.0)


def processed_line(folder: str) -> str:
    with open(os.path.join(folder, ".forge", "logs", "corpus", "std.log"), encoding="utf-8") as f:
        found = re.search(r"corpus: \d+ source units: .*", f.read())
    return found.group(0) if found else "?"


def measure(profile: str, n: int, workers: int | None, sources: list[str], per_file: int = 1) -> dict:
    with scratch_dir(f"forge-bench-corpus-{profile}-") as folder:
        size = write_corpus(folder, sources, n, per_file)
        with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
            f.write(forgefile(profile, workers))
        cold, cold_stage = build(folder, "built")
        adds, lines = [], []
        for k in range(INCREMENTAL_RUNS):
            data = f"# added {k}\n".encode()
            for j in range(per_file):  # a new file the size of the others
                with open(sources[(n * per_file + k * per_file + j) % len(sources)], "rb") as f:
                    data += f.read()
            with open(os.path.join(folder, "data", f"added{k}.py"), "wb") as f:
                f.write(data)
            adds.append(build(folder, "built"))
            lines.append(processed_line(folder))
        noops = [build(folder, "cached")[0] for _ in range(NOOP_RUNS)]
        globals_only = []
        for k in range(INCREMENTAL_RUNS):  # a filter threshold: every file's work comes from the cache
            with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
                f.write(forgefile(profile, workers) + f"min_chars = {k + 2}\n")
            globals_only.append(build(folder, "built")[0])
            lines.append(processed_line(folder))
    add = statistics.median(a[0] for a in adds)
    return {"profile": profile, "files": n, "mb": size / 1e6, "cold": cold, "cold_stage": cold_stage,
            "add": add, "add_stage": statistics.median(a[1] for a in adds), "noop": statistics.median(noops),
            "global": statistics.median(globals_only), "lines": lines}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--profiles", default="light,full")
    ap.add_argument("--workers", type=int, default=None, help="the rule's `workers` (default: its default, 0)")
    ap.add_argument("--per-file", type=int, default=1,
                    help="library files joined into each corpus file (default 1: ~15 KB files, ~15 MB in all; "
                         "10 gives ~150 KB files, closer to real corpus shards)")
    args = ap.parse_args()
    header("bench_corpus: corpus ingest + curation, and adding one file")
    sources = stdlib_sources()
    print(f"corpus:     {args.files} files from {sysconfig.get_paths()['stdlib']} ({len(sources)} available)")
    results = []
    for profile in args.profiles.split(","):
        r = measure(profile, args.files, args.workers, sources, args.per_file)
        print(f"  {profile:5} cold {r['cold']:.2f} s ({r['mb'] / r['cold']:.2f} MB/s), add one file "
              f"{r['add']:.2f} s, no-op {r['noop']:.3f} s; {r['lines'][-1]}", flush=True)
        expected = [": 1 processed"] * INCREMENTAL_RUNS + [": 0 processed"] * INCREMENTAL_RUNS
        if not all(want in line for want, line in zip(expected, r["lines"])):
            print(f"    unexpected: {r['lines']}", file=sys.stderr)
        results.append(r)
    rows = []
    for r in results:
        ratio = r["add"] / r["cold"]
        rows.append([r["profile"], r["files"], f"{r['mb']:.1f}", f"{r['cold']:.2f}", f"{r['cold_stage']:.2f}",
                     f"{r['mb'] / r['cold']:.2f}", f"{r['add']:.2f}", f"{r['add_stage']:.2f}",
                     f"{100 * ratio:.1f}%", verdict(ratio, RATIO_GOAL), f"{r['global']:.2f}",
                     f"{r['add'] - r['global']:.2f}", f"{r['noop']:.3f}"])
    print()
    print(table(rows, ["profile", "files", "MB", "cold s", "(stage s)", "MB/s", "add 1 file s", "(stage s)",
                       "add / cold", "< 5%", "no file processed s", "marginal s", "no-op s"]))
    print("\nno file processed: a rebuild after changing min_chars (every file's work from the cache): the fixed")
    print("cost of any rebuild (CLI, planning, worker process, imports, global dedup, shards, hashing the output).")
    print("marginal: add 1 file - no file processed, the cost of the new file itself.")


if __name__ == "__main__":
    main()
