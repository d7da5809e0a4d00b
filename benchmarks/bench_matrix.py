"""The overhead per cell of a 100-cell matrix of `run` targets against the same targets written by hand.

Two Forgefiles of the same 100 targets, each `printf AB > {out}/o` with params a and b:
  matrix    one table, `matrix = { "params.a" = [0..9], "params.b" = [0..9] }`: run:grid[a=0,b=0] ...
  by hand   100 tables, [run.grid-a0-b0] ... each with its own `params = { a = 0, b = 0 }`

For each, with the real CLI (`sys.executable -m forgebuild`), in a project under the temporary folder:
  planning     `forgebuild status` with no .forge at all (no plan cache: the Forgefile parsed,
               the matrix expanded, every target validated and keyed), median of 9
  cold build   `forgebuild -j 2` with no .forge, median of 5
  no-op        `forgebuild -j 2` with everything up to date and the plan cache written, median of 11
               after one warm-up no-op
  load         forgebuild.planning.forgefile.load in this process (parse, expand, validate: the part
               of planning a matrix changes, without a process start's noise), median of 21
The two Forgefiles are measured alternately, in turns that swap which goes first (matrix, by
hand, by hand, matrix, ...), so drift on a busy machine falls on both alike. Each figure is printed per cell (seconds / 100, in ms) with the
ratio matrix / by hand and the difference per cell; the matrix's own cost is that difference.

Run: python benchmarks/bench_matrix.py [--side 10] [-j 2]. About a minute on the reference machine.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

from _common import expect_actions, forge, header, scratch_dir, table

SHAPES = ("matrix", "by hand")
RUNS = {"planning": 9, "cold build": 5, "no-op": 11, "load": 21}
CMD = 'cmd = "printf {params.a}{params.b} > {out}/o"\n'


def forgefile(shape: str, side: int) -> str:
    values = list(range(side))
    if shape == "matrix":
        return f'[run.grid]\n{CMD}matrix = {{ "params.a" = {values}, "params.b" = {values} }}\n'
    return "\n".join(f'[run.grid-a{a}-b{b}]\n{CMD}params = {{ a = {a}, b = {b} }}\n' for a in values for b in values)


def fresh(folder: str) -> None:
    shutil.rmtree(os.path.join(folder, ".forge"), ignore_errors=True)


def planning(folder: str, n: int, jobs: list[str]) -> float:
    fresh(folder)
    seconds, summary = forge(folder, "status")
    expect_actions(summary, "missing", n, "cold status")
    return seconds


def cold_build(folder: str, n: int, jobs: list[str]) -> float:
    fresh(folder)
    seconds, summary = forge(folder, *jobs)
    expect_actions(summary, "built", n, "cold build")
    return seconds


def noop(folder: str, n: int, jobs: list[str]) -> float:
    seconds, summary = forge(folder, *jobs)
    expect_actions(summary, "cached", n, "no-op build")
    return seconds


def load(folder: str, n: int, jobs: list[str]) -> float:
    from forgebuild.planning import forgefile

    start = time.perf_counter()
    plan = forgefile.load(os.path.join(folder, "Forgefile.toml"))
    seconds = time.perf_counter() - start
    if len(plan.targets) != n:
        raise RuntimeError(f"load: expected {n} targets, got {len(plan.targets)}")
    return seconds


MEASURES = {"planning": planning, "cold build": cold_build, "no-op": noop, "load": load}


def measure(folders: dict[str, str], n: int, jobs: list[str]) -> dict[tuple[str, str], list[float]]:
    """(figure, shape) -> its seconds, each figure's runs alternating between the shapes (ABBA...)."""
    times: dict[tuple[str, str], list[float]] = {}
    for figure, runs in RUNS.items():
        if figure == "no-op":       # everything built and the plan cache written, then one warm-up
            for shape in SHAPES:
                noop(folders[shape], n, jobs)
        for i in range(runs):
            for shape in SHAPES if i % 2 == 0 else SHAPES[::-1]:
                times.setdefault((figure, shape), []).append(MEASURES[figure](folders[shape], n, jobs))
        print(f"  {figure}: " + ", ".join(f"{shape} {statistics.median(times[figure, shape]):.3f} s"
                                          for shape in SHAPES), flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--side", type=int, default=10, help="values per swept param: side x side cells (default 10)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="-j of the builds (default 2)")
    args = ap.parse_args()
    n, jobs = args.side ** 2, ["-j", str(args.jobs)]
    header(f"bench_matrix: a {args.side}x{args.side} matrix of run targets against {n} tables written by hand")
    with scratch_dir("forge-bench-matrix-") as root:
        folders = {shape: os.path.join(root, shape.replace(" ", "-")) for shape in SHAPES}
        for shape, folder in folders.items():
            os.makedirs(folder)
            with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
                f.write(forgefile(shape, args.side))
        sizes = {shape: os.path.getsize(os.path.join(folder, "Forgefile.toml")) for shape, folder in folders.items()}
        times = measure(folders, n, jobs)
    rows = []
    for figure in RUNS:
        m, h = (statistics.median(times[figure, shape]) for shape in SHAPES)
        rows.append([figure, f"{m:.3f}", f"{h:.3f}", f"{m / n * 1000:.2f}", f"{h / n * 1000:.2f}",
                     f"{(m - h) / n * 1000:+.2f}", f"{m / h:.2f}"])
    print()
    print(table(rows, ["figure", "matrix s", "by hand s", "matrix ms/cell", "by hand ms/cell",
                       "difference ms/cell", "matrix / by hand"]))
    print()
    print(f"{n} cells; Forgefile: matrix {sizes['matrix']} bytes, by hand {sizes['by hand']} bytes; "
          f"medians of {', '.join(f'{r} ({f})' for f, r in RUNS.items())} runs, -j {args.jobs} for the builds")


if __name__ == "__main__":
    main()
