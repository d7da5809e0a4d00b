"""The vision example (examples/vision): a cold build, stage by stage, then one picture redrawn.

The goal (issue 17): the example builds cold in a few minutes on 2 cores, and a redrawn picture costs
what reads it, not the pipeline. Three steps, in a copy of the example with the data make_shapes.py
writes (600 pictures):

  cold        `forgebuild` from an empty .forge/: each target's stage seconds (the `built` event's:
              process start, imports, work, saving), and the whole build's wall clock
  no-op       `forgebuild` again: every target cached
  redrawn     one pixel of data/images/0007.png changed, then only the three images targets built
              (`forgebuild images:captions images:vqa images:pairs`): the pictures each one
              processed against those its per-picture cache had (their `images_processed` / `images_cached`
              metrics), and what `status` then says is stale (what reads the picture) or fresh

It prints the held-out exact match of each VLM from the eval's report beside chance (0.31), so a
faster setting that stops learning shows here.

Run: python benchmarks/bench_vision.py. About four minutes on the reference machine (2 cores).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

from _common import FORGE, REPO, header, run, scratch_dir, summary_of, table

EXAMPLE = os.path.join(REPO, "examples", "vision")
CHANCE = (1 / 4 + 1 / 3 + 1 / 3) / 3  # a colour is 1 in 4, a count and a kind 1 in 3 each


def events(project: str, *args: str) -> list[dict]:
    proc = run([*FORGE, *args, "--json"], project)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def prepared(folder: str) -> str:
    project = os.path.join(folder, "vision")
    os.makedirs(project)
    for name in ("Forgefile.toml", "make_shapes.py"):
        shutil.copy(os.path.join(EXAMPLE, name), project)
    subprocess.run([sys.executable, "make_shapes.py"], cwd=project, check=True, capture_output=True)
    return project


def cold(project: str) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    found = events(project)
    return time.perf_counter() - start, [e for e in found if e["event"] == "built"]


def redrawn(project: str) -> tuple[list[dict], dict[str, str]]:
    from PIL import Image

    path = os.path.join(project, "data", "images", "0007.png")
    picture = Image.open(path).convert("RGB")
    picture.putpixel((0, 0), (0, 0, 0))
    picture.save(path)
    built = [e for e in events(project, "images:captions", "images:vqa", "images:pairs") if e["event"] == "built"]
    status = run([*FORGE, "status"], project).stdout.splitlines()
    return built, {line.split()[1]: line.split()[0] for line in status if line.strip()}


def main() -> None:
    header("bench_vision: the vision example cold, stage by stage, then one picture redrawn")
    with scratch_dir("forge-bench-vision-") as folder:
        project = prepared(folder)
        wall, built = cold(project)
        print(table([[e["target"], f"{e['seconds']:.1f}"] for e in built], ["target", "stage s"]))
        print(f"cold build: {len(built)} targets in {wall:.1f} s wall clock")
        summary = summary_of(run([*FORGE, "--json"], project).stdout)
        print(f"no-op: {sum(t['action'] == 'cached' for t in summary['targets'])} of {len(summary['targets'])} cached")
        report = json.load(open(os.path.join(project, ".forge/out/eval/shapes/report.json"), encoding="utf-8"))
        for model, results in report["results"].items():
            em = results["shapes.exact_match"]
            print(f"{model:<15} exact match {em['value']:.3f} [{em['low']:.3f}, {em['high']:.3f}] n={em['n']} "
                  f"(chance {CHANCE:.2f})")
        rebuilt, status = redrawn(project)
        print(table([[e["target"], f"{e['seconds']:.1f}", e.get("metrics", {}).get("images_processed", ""),
                      e.get("metrics", {}).get("images_cached", "")] for e in rebuilt],
                    ["redrawn: target", "stage s", "pictures processed", "from the cache"]))
        stale = sorted(t for t, state in status.items() if state != "fresh")
        print(f"after the redraw, stale: {', '.join(stale)}; fresh: "
              f"{', '.join(sorted(t for t, state in status.items() if state == 'fresh'))}")


if __name__ == "__main__":
    main()
