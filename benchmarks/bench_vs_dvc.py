"""forgebuild against DVC on the same pipelines of trivially cheap stages.

Pipelines (the same in a Forgefile and in dvc.yaml + params.yaml):
  chain-20   s00 reads data/in.txt; s01..s19 each read the previous stage's
             output; every stage copies its input and appends its name and its
             param p, so a change flows all the way down
  fan-100    root reads data/in.txt; 99 leaves each read root's output
Each stage has one param (p = 1) that enters its identity (forgebuild
`params`, DVC `params:` with ${...} templating in cmd).

Measured for both tools, each in its own temporary project (git init + dvc
init for DVC, analytics off, autostage off, DVC's site cache inside the
temporary folder):
  first run    full build from nothing (`forgebuild` / `dvc repro`)
  no-op        median of 5 runs with everything up to date
  edit         set p = 2 on one stage in the middle (chain: s10, so s10..s19
               rerun; fan: one leaf, so one stage reruns), then one run
Ratios are DVC time / forgebuild time (above 1: forgebuild is faster).
Both tools run one stage at a time (forgebuild's default -j 1; `dvc repro`
is sequential). Both are started as `sys.executable -m ...`.

Skips with a message if DVC is not importable (`pip install dvc`; it is not a
dependency of forgebuild). About two minutes on the reference machine.
Run: python benchmarks/bench_vs_dvc.py
"""
from __future__ import annotations

import os
import statistics
import sys

from _common import expect_actions, forge, header, run, scratch_dir, table, timed

DVC = [sys.executable, "-m", "dvc"]
NOOP_RUNS = 5
PIPELINES = [("chain", 20, 10), ("fan", 100, 50)]  # shape, stages, index of the stage whose param is edited


# ------------------------------------------------------------------ the pipeline

def stage_name(shape: str, i: int) -> str:
    return f"s{i:02d}" if shape == "chain" else ("root" if i == 0 else f"leaf{i:02d}")


def upstream(shape: str, i: int) -> str | None:
    if i == 0:
        return None
    return stage_name(shape, i - 1 if shape == "chain" else 0)


def stages(shape: str, n: int):
    """(name, upstream stage or None) for every stage, in order."""
    return [(stage_name(shape, i), upstream(shape, i)) for i in range(n)]


def write_data(folder: str) -> None:
    os.makedirs(os.path.join(folder, "data"), exist_ok=True)
    with open(os.path.join(folder, "data", "in.txt"), "w", encoding="utf-8") as f:
        f.write("input\n")


# ------------------------------------------------------------------ forgebuild

def forgefile(shape: str, n: int, edited: str | None = None) -> str:
    blocks = []
    for name, up in stages(shape, n):
        source = "{in.up}/o" if up else "{in.data}"
        inputs = f'{{ up = "run:{up}" }}' if up else '{ data = "data/in.txt" }'
        p = 2 if name == edited else 1
        cmd = f"cat {source} > {{out}}/o && printf ' {name} {{params.p}}' >> {{out}}/o"
        blocks.append(f'[run.{name}]\ncmd = "{cmd}"\ninputs = {inputs}\nparams = {{ p = {p} }}\n')
    return "\n".join(blocks)


def forge_project(folder: str, shape: str, n: int, edited: str | None = None) -> None:
    with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
        f.write(forgefile(shape, n, edited))


def bench_forge(folder: str, shape: str, n: int, edit_at: int) -> dict:
    write_data(folder)
    forge_project(folder, shape, n)
    first, summary = forge(folder)
    expect_actions(summary, "built", n, "forgebuild first run")
    forge(folder)  # warm-up no-op
    noops = [forge(folder)[0] for _ in range(NOOP_RUNS)]
    forge_project(folder, shape, n, edited=stage_name(shape, edit_at))
    edit, summary = forge(folder)
    rebuilt = sum(1 for t in summary["targets"] if t["action"] == "built")
    last = os.path.join(folder, ".forge", "out", "run", stage_name(shape, n - 1 if shape == "chain" else edit_at), "o")
    return {"first": first, "noop": statistics.median(noops), "edit": edit, "rebuilt": rebuilt,
            "result": open(last, encoding="utf-8").read()}


# ------------------------------------------------------------------ DVC

def dvc_yaml(shape: str, n: int) -> str:
    lines = ["stages:"]
    for name, up in stages(shape, n):
        source = f"out/{up}" if up else "data/in.txt"
        lines += [f"  {name}:",
                  f"    cmd: cat {source} > out/{name} && printf ' {name} ${{{name}.p}}' >> out/{name}",
                  f"    deps: [{source}]",
                  f"    params: [{name}.p]",
                  f"    outs: [out/{name}]"]
    return "\n".join(lines) + "\n"


def params_yaml(shape: str, n: int, edited: str | None = None) -> str:
    return "".join(f"{name}:\n  p: {2 if name == edited else 1}\n" for name, _ in stages(shape, n))


def dvc_env(folder: str) -> dict:
    """No analytics; DVC's site cache (by default /var/tmp/dvc) inside the temporary project."""
    return dict(os.environ, DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=os.path.join(folder, ".dvc-site-cache"),
                GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
                GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid")


def dvc_project(folder: str, shape: str, n: int) -> dict:
    env = dvc_env(folder)
    write_data(folder)
    os.makedirs(os.path.join(folder, "out"))
    run(["git", "init", "-q"], folder, env)
    run([*DVC, "init", "-q"], folder, env)
    for key, value in (("core.analytics", "false"), ("core.autostage", "false")):
        run([*DVC, "config", "--local", key, value], folder, env)
    with open(os.path.join(folder, "dvc.yaml"), "w", encoding="utf-8") as f:
        f.write(dvc_yaml(shape, n))
    with open(os.path.join(folder, "params.yaml"), "w", encoding="utf-8") as f:
        f.write(params_yaml(shape, n))
    with open(os.path.join(folder, ".gitignore"), "w", encoding="utf-8") as f:
        f.write(".dvc-site-cache/\n")
    run(["git", "add", "-A"], folder, env)
    run(["git", "commit", "-q", "-m", "pipeline"], folder, env)
    return env


def bench_dvc(folder: str, shape: str, n: int, edit_at: int) -> dict:
    env = dvc_project(folder, shape, n)
    repro = [*DVC, "repro"]
    first = timed(repro, folder, env)[0]
    timed(repro, folder, env)  # warm-up no-op
    noops = [timed(repro, folder, env)[0] for _ in range(NOOP_RUNS)]
    with open(os.path.join(folder, "params.yaml"), "w", encoding="utf-8") as f:
        f.write(params_yaml(shape, n, edited=stage_name(shape, edit_at)))
    edit, proc = timed(repro, folder, env)
    rebuilt = proc.stdout.count("Running stage")
    last = os.path.join(folder, "out", stage_name(shape, n - 1 if shape == "chain" else edit_at))
    return {"first": first, "noop": statistics.median(noops), "edit": edit, "rebuilt": rebuilt,
            "result": open(last, encoding="utf-8").read()}


# ------------------------------------------------------------------ report

def dvc_version() -> str | None:
    try:
        from dvc.version import __version__
    except ImportError:
        return None
    return __version__


def compare(shape: str, n: int, edit_at: int) -> tuple[dict, dict]:
    with scratch_dir(f"forge-vs-dvc-{shape}-f-") as folder:
        f = bench_forge(folder, shape, n, edit_at)
    with scratch_dir(f"forge-vs-dvc-{shape}-d-") as folder:
        d = bench_dvc(folder, shape, n, edit_at)
    if f["result"] != d["result"]:
        raise RuntimeError(f"{shape}: the tools disagree on the result: {f['result']!r} vs {d['result']!r}")
    return f, d


def print_results(results) -> None:
    rows = []
    for (shape, n, edit_at), f, d in results:
        label = f"{shape}-{n}"
        for what, note in (("first", "full run"), ("noop", f"no-op (median of {NOOP_RUNS})"),
                           ("edit", f"edit p of {stage_name(shape, edit_at)}: "
                                    f"{f['rebuilt']} / {d['rebuilt']} stages rerun")):
            rows.append([label, note, f"{f[what]:.3f}", f"{d[what]:.3f}", f"{d[what] / f[what]:.1f}x"])
    print()
    print(table(rows, ["pipeline", "run", "forgebuild s", "dvc s", "dvc / forgebuild"]))


def main() -> int:
    version = dvc_version()
    if version is None:
        print("bench_vs_dvc: SKIPPED: dvc is not importable here (pip install dvc); it is not a forgebuild dependency")
        return 0
    header("bench_vs_dvc: forgebuild vs DVC on the same pipelines")
    print(f"dvc:        {version}, run as {' '.join(DVC)} (analytics off, autostage off)")
    results = []
    for shape, n, edit_at in PIPELINES:
        f, d = compare(shape, n, edit_at)
        print(f"  {shape}-{n}: forgebuild first {f['first']:.3f} s no-op {f['noop']:.3f} s edit {f['edit']:.3f} s; "
              f"dvc first {d['first']:.3f} s no-op {d['noop']:.3f} s edit {d['edit']:.3f} s", flush=True)
        results.append(((shape, n, edit_at), f, d))
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
