"""The images rule on photographs: one process against a pool, the same artifact either way.

Decoding and resizing are the images rule's work when its pictures are camera photographs, and each
picture's result depends on its bytes alone, so the pictures no earlier build normalised are decoded
in a pool (`workers`, a batch of 64 a task). This script writes 128 JPEGs of 4000x3000 with random
shapes (about 43 MB), builds `[images.photos]` with `max_side = 224` cold with `workers = 1`, then
with `workers = 2` (and with one per CPU when the machine has more than 2), and prints each build's
wall clock, the ratio, and whether the artifacts are the same bytes. Goal: close to one CPU's worth
faster per CPU added (PASS at 1.6x or more on 2 CPUs), and the same artifact digest (must hold).

Run: python benchmarks/bench_images.py [--photos N]. About 40 s on the reference machine (2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time

from _common import FORGE, header, run, scratch_dir, summary_of, table

GOAL = 1.6  # of 2.0 on 2 CPUs: the parent's reading, hashing and storing is not in the pool


def photos(folder: str, n: int) -> None:
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    os.makedirs(os.path.join(folder, "data", "img"))
    rows = []
    for i in range(n):
        image = Image.new("RGB", (4000, 3000), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(40):
            x, y = rng.randrange(3800), rng.randrange(2800)
            draw.ellipse([x, y, x + rng.randrange(50, 600), y + rng.randrange(50, 600)], fill=(rng.randrange(256),) * 3)
        image.save(os.path.join(folder, "data", "img", f"{i:04d}.jpg"), quality=90)
        rows.append({"image": f"img/{i:04d}.jpg", "question": "What is drawn?", "answer": "shapes"})
    with open(os.path.join(folder, "data", "qa.jsonl"), "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(row) + "\n" for row in rows))


def cold_build(folder: str, workers: int) -> tuple[float, str]:
    """Wall seconds of a cold build with `workers`, and the artifact's digest."""
    run(["rm", "-rf", os.path.join(folder, ".forge")], folder)
    with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
        f.write(f'[images.photos]\nsource = "data/"\nformat = "vqa"\nmax_side = 224\nworkers = {workers}\n')
    start = time.perf_counter()
    proc = run([*FORGE, "images:photos", "--workers", "cold", "--json"], folder)
    seconds = time.perf_counter() - start
    digest = summary_of(proc.stdout)["targets"][0]["digest"]
    return seconds, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=128)
    args = parser.parse_args()
    header("bench_images: decoding photographs in a pool")
    counts = sorted({1, 2, os.cpu_count() or 1})
    with scratch_dir("forge-bench-images-") as folder:
        photos(folder, args.photos)
        results = {workers: cold_build(folder, workers) for workers in counts}
    one = results[1][0]
    rows = [[workers, f"{seconds:.1f}", f"{one / seconds:.2f}x", digest[:16]]
            for workers, (seconds, digest) in results.items()]
    print(f"{args.photos} JPEGs of 4000x3000, max_side = 224, cold, --workers cold")
    print(table(rows, ["workers", "wall s", "vs 1", "artifact digest"]))
    same = len({digest for _, digest in results.values()}) == 1
    print(f"same artifact with every worker count: {'yes' if same else 'NO'}")
    speedup = one / results[2][0]
    print(f"2 workers: {speedup:.2f}x of 1 (goal >= {GOAL}x): {'PASS' if speedup >= GOAL and same else 'MISS'}")


if __name__ == "__main__":
    main()
