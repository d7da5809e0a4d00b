"""Helpers shared by the benchmark scripts: running forgebuild, timing, tables.

forgebuild is always started as ``sys.executable -m forgebuild``: the
``forgebuild`` on PATH may be a pyenv shim (a bash script that adds ~50 ms),
and ``python3`` on PATH may be one too; sys.executable is the real interpreter.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

FORGE = [sys.executable, "-m", "forgebuild"]
FORGE_DESCRIPTION = f"{sys.executable} -m forgebuild  (the real interpreter, no pyenv shim)"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_env() -> tuple[dict, str]:
    """The environment for timed children: compiled bytecode allowed, kept in a temporary folder.

    With PYTHONDONTWRITEBYTECODE=1 (set on some machines) and an editable install,
    every run would compile forgebuild's modules from source (~20 ms), which an
    installed forgebuild never does. PYTHONPYCACHEPREFIX keeps the .pyc files out
    of the source tree. BENCH_RAW_ENV=1 measures the environment as it is instead.
    """
    env = dict(os.environ)
    if os.environ.get("BENCH_RAW_ENV") == "1":
        return env, "as inherited (BENCH_RAW_ENV=1)"
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    prefix = tempfile.mkdtemp(prefix="forge-bench-pyc-")
    atexit.register(shutil.rmtree, prefix, True)
    env["PYTHONPYCACHEPREFIX"] = prefix
    return env, "bytecode cached in a temporary PYTHONPYCACHEPREFIX (as an installed package has it)"


ENV, ENV_DESCRIPTION = _child_env()


# ------------------------------------------------------------------ running

def run(argv, cwd: str, env=None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=env or ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode} in {cwd}\n"
                           f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def timed(argv, cwd: str, env=None) -> tuple[float, subprocess.CompletedProcess]:
    """Wall-clock seconds of one command (start to exit), and its result."""
    start = time.perf_counter()
    proc = run(argv, cwd, env)
    return time.perf_counter() - start, proc


def forge(cwd: str, *args: str) -> tuple[float, dict]:
    """Run `forgebuild --json ARGS` in cwd; return (seconds, summary event)."""
    seconds, proc = timed([*FORGE, *args, "--json"], cwd)
    return seconds, summary_of(proc.stdout)


def summary_of(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("forgebuild printed no JSON")
    summary = json.loads(lines[-1])
    if summary.get("event") != "summary":
        raise RuntimeError(f"last line is not a summary: {lines[-1][:200]}")
    return summary


def actions(summary: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in summary.get("targets", []):
        what = t.get("action", t.get("state"))
        counts[what] = counts.get(what, 0) + 1
    return counts


def expect_actions(summary: dict, action: str, n: int, what: str) -> None:
    counts = actions(summary)
    if counts != {action: n}:
        raise RuntimeError(f"{what}: expected {n} {action}, got {counts}")


def median_time(fn, runs: int) -> float:
    return statistics.median(fn() for _ in range(runs))


def python_floor(runs: int = 11) -> float:
    """Median wall time of `sys.executable -c pass`: no Python program can start faster."""
    return median_time(lambda: timed([sys.executable, "-c", "pass"], ".")[0], runs)


def shim_python_floor(runs: int = 11) -> tuple[str, float] | None:
    """The same through pyenv's `python3` shim (a bash script), when there is one: what a shell gets."""
    shim = os.path.join(os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv")), "shims", "python3")
    if not os.path.exists(shim):
        return None
    return shim, median_time(lambda: timed([shim, "-c", "pass"], ".")[0], runs)


# ------------------------------------------------------------------ places

@contextlib.contextmanager
def scratch_dir(prefix: str):
    """A temporary folder, removed afterwards even where forgebuild made parts read-only."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        for dirpath, dirnames, _ in os.walk(path):
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if not os.path.islink(full):
                    os.chmod(full, 0o755)
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ reporting

def machine() -> str:
    try:
        import forgebuild

        version, where = forgebuild.__version__, os.path.dirname(os.path.dirname(os.path.abspath(forgebuild.__file__)))
    except ImportError:
        version, where = "?", REPO
    if where != REPO:
        state = f"from {where}"
    else:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "forgebuild"], cwd=REPO, capture_output=True, text=True)
        state = "at " + (commit.stdout.strip() or "unknown commit")
        state += " + uncommitted changes in forgebuild/" if dirty.stdout.strip() else ""
    return (f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()} {platform.release()}, "
            f"forgebuild {version} {state}")


def header(title: str) -> None:
    print(f"== {title}")
    print(f"machine:    {machine()}")
    print(f"forgebuild: {FORGE_DESCRIPTION}")
    print(f"bytecode:   {ENV_DESCRIPTION}")
    warm_up()


def warm_up() -> None:
    """Build a two-target project once, so every module forgebuild uses is compiled and in page cache."""
    with scratch_dir("forge-bench-warm-") as folder:
        with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
            f.write('[run.a]\ncmd = "printf a > {out}/o"\n\n[run.b]\ncmd = ["true"]\ninputs = { a = "run:a" }\n')
        for args in ([], [], ["status"]):
            run([*FORGE, *args, "-q"], folder)


def table(rows: list[list], headings: list[str]) -> str:
    cells = [[str(c) for c in row] for row in [headings, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headings))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(value: float, goal: float, higher_is_better: bool = False) -> str:
    ok = value >= goal if higher_is_better else value <= goal
    return "PASS" if ok else "MISS"
