"""Source hashing: how fast forgebuild digests a large input, and what a touched input costs.

One 1 GiB file of random bytes in a temporary folder (removed afterwards),
read once first so every figure is from page cache, its mtime set an hour back
(an old corpus, outside the stat cache's 2 s "racy" window). A Forgefile with
one `run` target, cmd = ["true"], whose input is that file.

Measured:
  cat              `cat FILE > /dev/null`, median of 3: the page-cache read floor
  file_digest      forgebuild.hashing.file_digest(FILE) in this process, median of 3
  first build      `forgebuild` in a fresh project (hashes the file, runs `true`)
  first build, 1 B the same with a 1-byte input: everything but the hashing
                   (5 of each, interleaved in pairs)
  no-op            no-op builds
  re-hash only     a build after deleting .forge/statcache.json: nothing to run,
                   the file is hashed again, the key is found in the cache
                   (5, each paired with a no-op)
  after touch      os.utime(FILE) (same bytes, new mtime), then `forgebuild --json`:
                   the summary must say "cached"

Throughput (GB = 10^9 bytes):
  as specified     size / (first build - no-op)
  in a build       size / median(first build - first build with a 1-byte input)
  re-hash only     size / median(re-hash build - no-op)

Goals: hashing >= 2 GB/s from page cache; a build after a touch <= 0.5 s, nothing rebuilt.
Run: python benchmarks/bench_hashing.py [--size-mb 1024]   (about half a minute; needs 1 GiB of disk)
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _common import (actions, expect_actions, forge, header, scratch_dir, table, timed, verdict)

HASH_GOAL_GBS = 2.0
TOUCH_GOAL_S = 0.5
CHUNK = 16 << 20
FORGEFILE = '[run.use]\ncmd = ["true"]\ninputs = { big = "big.bin" }\n'


def make_file(path: str, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(CHUNK, left)
            f.write(os.urandom(n))
            left -= n
    age(path)


def age(path: str) -> None:
    old = time.time() - 3600
    os.utime(path, (old, old))


def make_project(folder: str, size: int) -> str:
    os.makedirs(folder)
    with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
        f.write(FORGEFILE)
    path = os.path.join(folder, "big.bin")
    make_file(path, size)
    return path


def cat_time(path: str) -> float:
    return statistics.median(timed(["sh", "-c", f"cat '{path}' > /dev/null"], ".")[0] for _ in range(3))


def digest_time(path: str) -> float:
    from forgebuild.hashing import file_digest

    times = []
    for _ in range(3):
        start = time.perf_counter()
        file_digest(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fresh_build(folder: str) -> float:
    subprocess.run(["rm", "-rf", os.path.join(folder, ".forge")], check=True)
    seconds, summary = forge(folder)
    expect_actions(summary, "built", 1, "first build")
    return seconds


def cached_build(folder: str, what: str) -> float:
    seconds, summary = forge(folder)
    expect_actions(summary, "cached", 1, what)
    return seconds


def rehash_build(folder: str) -> float:
    os.remove(os.path.join(folder, ".forge", "statcache.json"))
    return cached_build(folder, "build after dropping the stat cache")


def touch_builds(folder: str, path: str) -> dict:
    """Touch the file, then build three times: at once, at once again, and after the 2 s racy window."""
    os.utime(path)
    seconds, summary = forge(folder)
    if actions(summary) != {"cached": 1}:
        raise RuntimeError(f"a touched but unchanged input was rebuilt: {actions(summary)}")
    again = cached_build(folder, "second build after touch")
    time.sleep(2.5)
    late = [cached_build(folder, "build after the racy window") for _ in range(2)]
    age(path)  # leave it old again
    return {"touch": seconds, "again": again, "late1": late[0], "late2": late[1]}


def paired(first, second, runs: int = 5) -> tuple[float, float, float]:
    """Median of each, and median of the differences of interleaved pairs.

    Pairs taken back to back share whatever else the machine was doing at the
    time, so their difference is steadier than a difference of medians.
    """
    a, b = [], []
    for _ in range(runs):
        a.append(first())
        b.append(second())
    return statistics.median(a), statistics.median(b), statistics.median(x - y for x, y in zip(a, b))


def measure(root: str, size: int) -> dict:
    big_dir, tiny_dir = os.path.join(root, "big"), os.path.join(root, "tiny")
    path = make_project(big_dir, size)
    make_project(tiny_dir, 1)
    r = {"size": size, "cat": cat_time(path), "digest": digest_time(path)}
    r["first"], r["first_tiny"], r["first_diff"] = paired(lambda: fresh_build(big_dir), lambda: fresh_build(tiny_dir))
    cached_build(big_dir, "warm-up no-op")
    r["rehash"], r["noop"], r["rehash_diff"] = paired(lambda: rehash_build(big_dir),
                                                      lambda: cached_build(big_dir, "no-op"))
    r.update(touch_builds(big_dir, path))
    return r


def gbs(size: int, seconds: float) -> float | None:
    return size / 1e9 / seconds if seconds > 0 else None


def throughput_row(what: str, size: int, seconds: float, goal: bool = True) -> list[str]:
    rate = gbs(size, seconds)
    if rate is None:
        return [what, f"{seconds:.3f}", "n/a", "n/a (lost in noise)"]
    return [what, f"{seconds:.3f}", f"{rate:.2f}", verdict(rate, HASH_GOAL_GBS, True) if goal else "-"]


def print_results(r: dict) -> None:
    size = r["size"]
    rows = [
        throughput_row("cat FILE > /dev/null", size, r["cat"], goal=False),
        throughput_row("file_digest (in process)", size, r["digest"]),
        throughput_row("first build - no-op (as specified)", size, r["first"] - r["noop"]),
        throughput_row("first build - first build of 1 B (paired)", size, r["first_diff"]),
        throughput_row("re-hash build - no-op (paired)", size, r["rehash_diff"]),
    ]
    print()
    print(f"input: {size} bytes ({size / 1e9:.3f} GB) of random data, from page cache")
    print(table(rows, ["what", "seconds", "GB/s", f">= {HASH_GOAL_GBS} GB/s"]))
    print()
    rows = [
        [f"first build ({size >> 20} MiB input)", f"{r['first']:.3f}", "median of 5"],
        ["first build (1-byte input)", f"{r['first_tiny']:.3f}", "median of 5"],
        ["no-op build", f"{r['noop']:.3f}", "median of 5"],
        ["re-hash build (stat cache dropped)", f"{r['rehash']:.3f}", "median of 5"],
        ["build right after os.utime (touch)", f"{r['touch']:.3f}",
         f"{verdict(r['touch'], TOUCH_GOAL_S)} (<= {TOUCH_GOAL_S} s, cached)"],
        ["  the next build, at once", f"{r['again']:.3f}", "re-hashes: mtime within the 2 s racy window"],
        ["  builds after 2.5 s: 1st, 2nd", f"{r['late1']:.3f}, {r['late2']:.3f}", ""],
    ]
    print(table(rows, ["build", "seconds", "goal / note"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="input size in MiB (default 1024)")
    args = ap.parse_args()
    header("bench_hashing: source hashing throughput and touched inputs")
    with scratch_dir("forge-bench-hash-") as root:
        r = measure(root, args.size_mb << 20)
    print_results(r)


if __name__ == "__main__":
    sys.exit(main())
