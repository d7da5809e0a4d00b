"""Checkpoint-prefix reuse: a 3-point sweep over `train.steps` with a warmup-stable-decay schedule,
built with reuse (one project, the cells one after another) and without (each cell in a project of
its own, where no other cell's checkpoint exists).

The project: 40 files of the standard library as a corpus, a 512-token BPE tokenizer, and a pretrain
`model:base` (llama, --hidden 128, 2 layers, seq_len 64, batch 8, lr 3e-3, warmup 10) with
`schedule = "wsd"` and the default decay (the last fifth of the steps), as a matrix over the steps
(default 100, 200, 300: stable ends 80, 160, 240), one thread. The corpus and the tokenizer are
built once and the project copied for each arm and cell, so both arms time the model stages alone.

  with reuse     `forgebuild model:base -j 1`: each cell resumes from the longest stable-phase
                 checkpoint a cell before it kept
  without        each cell alone in a copy of the prepared project (a matrix of one value: the same
                 address, seed and key as in the sweep), trained from step 0

For each cell and in total: the steps trained (the record's `trained_steps`), the steps reused
(`prefix_reused_steps`), the seconds in the trainer (`train_seconds`) and of the whole model stage
(the `built` event's: process start, imports, tokens, saving too), and whether the two arms
made the same artifact (they must: reuse is bit for bit a cold run on CPU). The saving is
1 - with / without, for steps and for both seconds; for steps it is known in advance:
(sum of the stable ends but the last) / (sum of the steps).

Run: python benchmarks/bench_prefix.py [--steps 100,200,300] [--hidden 128]. About two minutes on
the reference machine (2 cores) at the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from _common import FORGE, header, run, scratch_dir, table

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import tinylab  # noqa: E402  (the tests' stdlib corpus: the same text as the test projects)

MODEL = """
[model.base]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
corpus = "corpus:stdlib"
seq_len = 64
arch = {{ family = "llama", hidden = {hidden}, layers = 2, heads = 4 }}
train = {{ lr = 3e-3, steps = {first}, batch_size = 8, warmup_steps = 10, schedule = "wsd" }}
threads = 1
log_every = 50
matrix = {{ "train.steps" = {steps} }}
"""


def prelude() -> str:
    return tinylab.BASE_FORGEFILE.split("[model.base]")[0]


def built(folder: str, *args: str) -> dict[str, dict]:
    """Build; {address: {"seconds", "metrics", "digest"}} of the model cells built."""
    proc = run([*FORGE, *args, "--json"], folder)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    if not events[-1].get("ok"):
        raise RuntimeError(f"build failed in {folder}: {events[-1]}")
    return {e["target"]: {"seconds": e["seconds"], "metrics": e.get("metrics", {}), "digest": e["digest"]}
            for e in events if e["event"] == "built" and e["target"].startswith("model:")}


def prepared(folder: str, steps: list[int], hidden: int) -> str:
    """A project with the corpus and tokenizer built and the model sweep declared."""
    project = os.path.join(folder, "prepared")
    tinylab.write_stdlib_text(project)
    with open(os.path.join(project, "Forgefile.toml"), "w", encoding="utf-8") as f:
        f.write(prelude() + MODEL.format(hidden=hidden, first=steps[0], steps=steps))
    run([*FORGE, "tokenizer:bpe", "-q"], project)
    return project


def copy_of(project: str, name: str, steps: list[int], hidden: int) -> str:
    folder = os.path.join(os.path.dirname(project), name)
    shutil.copytree(project, folder, symlinks=True)
    with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
        f.write(prelude() + MODEL.format(hidden=hidden, first=steps[0], steps=steps))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="100,200,300", help="the sweep's steps, ascending")
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    steps = sorted(int(s) for s in args.steps.split(","))
    header(f"bench_prefix: a sweep over train.steps = {steps} (wsd), with and without prefix reuse")
    with scratch_dir("forge-bench-prefix-") as folder:
        project = prepared(folder, steps, args.hidden)
        reuse = built(copy_of(project, "reuse", steps, args.hidden), "model:base", "-j", "1")
        cold = {}
        for n in steps:
            cold.update(built(copy_of(project, f"cold-{n}", [n], args.hidden), "model:base"))
    report(steps, reuse, cold)


def report(steps: list[int], reuse: dict, cold: dict) -> None:
    rows, totals = [], dict.fromkeys(("with", "without", "with train", "without train", "with s", "without s"), 0)
    for n in steps:
        address = f"model:base[steps={n}]"
        r, c = reuse[address], cold[address]
        figures = {"with": r["metrics"]["trained_steps"], "without": c["metrics"]["trained_steps"],
                   "with train": r["metrics"]["train_seconds"], "without train": c["metrics"]["train_seconds"],
                   "with s": r["seconds"], "without s": c["seconds"]}
        for name, value in figures.items():
            totals[name] += value
        rows.append(row(address, figures, r["metrics"].get("prefix_reused_steps"), r["digest"] == c["digest"]))
    rows.append(row("total", totals, "", None))
    print(table(rows, ["cell", "trained (reuse)", "reused", "trained (alone)", "train s (reuse)", "train s (alone)",
                       "stage s (reuse)", "stage s (alone)", "same digest"]))
    for what, key in (("steps", ""), ("training seconds", " train"), ("stage seconds", " s")):
        with_, without = totals["with" + key], totals["without" + key]
        print(f"{what} saved: {without - with_:.4g} of {without:.4g} ({1 - with_ / without:.1%})")


def row(name: str, figures: dict, reused, same: bool | None) -> list:
    return [name, figures["with"], reused, figures["without"], f"{figures['with train']:.1f}",
            f"{figures['without train']:.1f}", f"{figures['with s']:.1f}", f"{figures['without s']:.1f}",
            "" if same is None else "yes" if same else "NO"]


if __name__ == "__main__":
    main()
