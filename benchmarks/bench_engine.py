"""Engine overhead of forgebuild on generated Forgefiles of trivially cheap `run` targets.

Shapes: "chain" (t0001 depends on t0000, t0002 on t0001, ...) and "fan" (one
root, N-1 leaves that each depend on it); N = 8, 100, 1000. Every target runs
`printf tNNNN > {out}/o`, so the engine's own work dominates.

For each (shape, N) it measures:
  first build      wall time of `forgebuild` in a fresh project (median of 3 for
                   N <= 100, one run for N = 1000)
  commands         the same N shell commands run directly by a Python loop with
                   subprocess.run(shell=True): the commands' own time
  overhead/stage   (first build - commands) / N: Python startup, imports,
                   planning, hashing, storing, materialising, bookkeeping
  no-op            median of 7 `forgebuild` runs with everything up to date,
                   after one warm-up no-op (the plan cache exists)
  status           median of 5 `forgebuild status` runs
  fit              least squares over the sizes of each shape:
                   first build - commands = fixed + per-stage x N

Goals on the reference machine (2 cores):
  no-op            N=8 <= 0.15 s, N=100 <= 0.3 s, N=1000 <= 1.5 s
  overhead/stage   <= 30 ms, and linear in N: the marginal cost of a stage
                   between N=100 and N=1000 at most 1.5x the one between
                   N=8 and N=100

Also prints `python -c pass` (the floor any Python CLI starts from).
Run: python benchmarks/bench_engine.py [--sizes 8,100,1000] [--shapes chain,fan] [-j N]
Takes about a minute and a half on the reference machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _common import (expect_actions, forge, header, shim_python_floor, python_floor, scratch_dir, table, verdict)

NOOP_GOALS = {8: 0.15, 100: 0.3, 1000: 1.5}
OVERHEAD_GOAL_MS = 30.0
LINEARITY_FACTOR = 1.5
NOOP_RUNS, STATUS_RUNS = 7, 5


# ------------------------------------------------------------------ projects

def name(i: int) -> str:
    return f"t{i:04d}"


def parent(shape: str, i: int) -> int | None:
    if i == 0:
        return None
    return i - 1 if shape == "chain" else 0


def forgefile(shape: str, n: int) -> str:
    blocks = []
    for i in range(n):
        block = f'[run.{name(i)}]\ncmd = "printf {name(i)} > {{out}}/o"\n'
        p = parent(shape, i)
        if p is not None:
            block += f'inputs = {{ up = "run:{name(p)}" }}\n'
        blocks.append(block)
    return "\n".join(blocks)


def write_project(folder: str, shape: str, n: int) -> None:
    with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
        f.write(forgefile(shape, n))


# ------------------------------------------------------------------ measurements

def commands_time(folder: str, n: int) -> float:
    """The N commands run directly, one after another, each into its own folder."""
    outs = os.path.join(folder, "direct")
    for i in range(n):
        os.makedirs(os.path.join(outs, name(i)))
    start = time.perf_counter()
    for i in range(n):
        subprocess.run(f"printf {name(i)} > direct/{name(i)}/o", shell=True, cwd=folder, check=True)
    return time.perf_counter() - start


def first_build(folder: str, n: int, jobs: list[str]) -> float:
    subprocess.run(["rm", "-rf", os.path.join(folder, ".forge")], check=True)
    seconds, summary = forge(folder, *jobs)
    expect_actions(summary, "built", n, "first build")
    return seconds


def noop(folder: str, n: int) -> float:
    seconds, summary = forge(folder)
    expect_actions(summary, "cached", n, "no-op build")
    return seconds


def status(folder: str, n: int) -> float:
    seconds, summary = forge(folder, "status")
    expect_actions(summary, "fresh", n, "status")
    return seconds


def measure(shape: str, n: int, jobs: list[str]) -> dict:
    repeats = 3 if n <= 100 else 1
    with scratch_dir(f"forge-bench-{shape}-{n}-") as folder:
        write_project(folder, shape, n)
        builds = [first_build(folder, n, jobs) for _ in range(repeats)]
        cmds = []
        for _ in range(repeats):
            subprocess.run(["rm", "-rf", os.path.join(folder, "direct")], check=True)
            cmds.append(commands_time(folder, n))
        noop(folder, n)  # warm-up
        noops = [noop(folder, n) for _ in range(NOOP_RUNS)]
        statuses = [status(folder, n) for _ in range(STATUS_RUNS)]
    build, cmd = statistics.median(builds), statistics.median(cmds)
    return {"shape": shape, "n": n, "build": build, "cmds": cmd, "overhead": (build - cmd) / n,
            "noop": statistics.median(noops), "noop_min": min(noops), "status": statistics.median(statuses)}


# ------------------------------------------------------------------ report

def marginal_ms(a: dict, b: dict) -> float:
    """Engine cost of one more stage between two sizes of the same shape, in ms."""
    return ((b["build"] - b["cmds"]) - (a["build"] - a["cmds"])) / (b["n"] - a["n"]) * 1000


def print_results(results: list[dict], floor: float) -> None:
    rows = []
    for r in results:
        goal = NOOP_GOALS.get(r["n"])
        noop_verdict = f"{verdict(r['noop'], goal)} (<= {goal})" if goal else "-"
        over_ms = r["overhead"] * 1000
        rows.append([r["shape"], r["n"], f"{r['build']:.3f}", f"{r['cmds']:.3f}", f"{over_ms:.1f}",
                     verdict(over_ms, OVERHEAD_GOAL_MS), f"{r['noop']:.3f}", noop_verdict, f"{r['status']:.3f}"])
    print()
    print(table(rows, ["shape", "N", "first build s", "commands s", "overhead/stage ms", "<= 30 ms",
                       "no-op s (median)", "no-op goal", "status s (median)"]))
    print()
    print(f"floor: `{sys.executable} -c pass` = {floor:.3f} s (median of 11)")
    shim = shim_python_floor()
    if shim:
        print(f"       `{shim[0]} -c pass` (pyenv shim, not used here) = {shim[1]:.3f} s")
    print_linearity(results)


def fit(rs: list[dict]) -> tuple[float, float]:
    """Least squares: engine time (first build - commands) = fixed s + per_stage s * N."""
    xs, ys = [r["n"] for r in rs], [r["build"] - r["cmds"] for r in rs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def print_linearity(results: list[dict]) -> None:
    for shape in dict.fromkeys(r["shape"] for r in results):
        rs = sorted((r for r in results if r["shape"] == shape), key=lambda r: r["n"])
        if len(rs) < 2:
            continue
        fixed, per_stage = fit(rs)
        print(f"fit ({shape}): engine time = {fixed:.3f} s fixed + {per_stage * 1000:.1f} ms per stage")
        if len(rs) < 3:
            continue
        small, large = marginal_ms(rs[0], rs[1]), marginal_ms(rs[1], rs[2])
        ok = verdict(large, LINEARITY_FACTOR * small)
        print(f"linearity ({shape}): marginal engine cost per stage {rs[0]['n']}->{rs[1]['n']}: {small:.1f} ms, "
              f"{rs[1]['n']}->{rs[2]['n']}: {large:.1f} ms  -> {ok} (goal: at most {LINEARITY_FACTOR}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="8,100,1000")
    ap.add_argument("--shapes", default="chain,fan")
    ap.add_argument("-j", "--jobs", type=int, default=None, help="pass -j to forgebuild (default: its own default, 1)")
    args = ap.parse_args()
    jobs = ["-j", str(args.jobs)] if args.jobs else []
    header("bench_engine: engine overhead, no-op and status on trivial targets")
    floor = python_floor()
    results = []
    for shape in args.shapes.split(","):
        for n in map(int, args.sizes.split(",")):
            r = measure(shape, n, jobs)
            print(f"  {shape:5} N={n:<5} first build {r['build']:.3f} s, commands {r['cmds']:.3f} s, "
                  f"no-op {r['noop']:.3f} s (min {r['noop_min']:.3f}), status {r['status']:.3f} s", flush=True)
            results.append(r)
    print_results(results, floor)


if __name__ == "__main__":
    main()
