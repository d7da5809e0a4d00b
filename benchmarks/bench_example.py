"""The example pipeline (Forgefile.example.toml): cold build, no-op rebuild, and where the cold time goes.

examples/ and Forgefile.example.toml are copied into a temporary folder, as
tests/test_example.py does (the example generates the rest of its data). Then:

  cold     `forgebuild -f Forgefile.example.toml -k --json` with no .forge: every
           stage runs (one at a time: the example sets no `jobs`). -k changes
           nothing when everything builds; when a stage fails it lets the
           independent ones finish, so there is still something to measure
  warm     the same command again, nothing to do: median of --warm runs (after one
           unmeasured no-op that writes the plan cache); every target must be
           `cached`. If the cold build failed, the warm runs name the targets that
           did build (a bare run would retry the failed one every time)
  stages   each `built` / `failed` event's seconds (the stage's own time, from the
           engine's start to storing its artifact), the arrival time of its event on
           the --json stream, and the training metrics of model stages from the
           event (train_seconds, seconds_before_first_step, tokens/s)
  engine   cold wall - the sum of the stage seconds: planning, hashing the
           sources, the cache look-ups and process start; with one job the stages
           do not overlap, so the difference is all forgebuild's

The example's `run` stages call `python3`. On a pyenv machine that is a bash shim
(+50-80 ms a call, see README.md), so by default the folder of sys.executable
goes first on PATH and `python3` is the real interpreter; --path-as-is keeps
PATH as it is. OMP_NUM_THREADS=1 (the model stages set threads = 1 too).

Run: python benchmarks/bench_example.py [--warm 5]
About a minute for the data stages and as long again for the four model stages
on the reference machine (2 cores).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _common import ENV, FORGE, REPO, header, scratch_dir, table

FORGEFILE = "Forgefile.example.toml"
COPIED = ("examples",)


def child_env(path_as_is: bool) -> dict:
    env = {**ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if not path_as_is:
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


# Imported once before anything is timed. ENV's PYTHONPYCACHEPREFIX is a fresh folder, so without this
# the first model stage would compile transformers' and trl's modules into it (+5 s for model:base
# here), which an installed library never does.
LIBRARIES = ("import torch, transformers, datasets, peft, trl; from transformers import Trainer; "
             "from trl import SFTTrainer, DPOTrainer, GRPOTrainer")


def warm_libraries(env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", LIBRARIES], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"(training libraries not importable, model stages will fail: {proc.stderr.strip().splitlines()[-1:]})")
    return time.perf_counter() - started


def copy_example(folder: str, forgefile: str) -> None:
    for name in COPIED:
        shutil.copytree(os.path.join(REPO, name), os.path.join(folder, name),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(forgefile, os.path.join(folder, FORGEFILE))


def build(folder: str, env: dict, targets: list[str]) -> dict:
    """One `forgebuild -f ... -k --json [TARGETS]`: wall time, the exit code, every event with its arrival time."""
    events = []
    with tempfile.TemporaryFile() as err:
        launched = time.perf_counter()
        proc = subprocess.Popen([*FORGE, "-f", FORGEFILE, "-k", "--json", *targets], cwd=folder, env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True)
        for line in proc.stdout:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = {"event": "text", "text": line.rstrip()}
            event["_at"] = time.perf_counter() - launched
            events.append(event)
        code = proc.wait()
        wall = time.perf_counter() - launched
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    summary = events[-1] if events and events[-1].get("event") == "summary" else {}
    return {"wall": wall, "code": code, "events": events, "summary": summary, "stderr": stderr}


def actions(result: dict) -> dict[str, str]:
    return {t["target"]: t.get("action", t.get("state")) for t in result["summary"].get("targets", [])}


def stage_rows(result: dict) -> tuple[list[list], float]:
    rows, total = [], 0.0
    for e in result["events"]:
        if e.get("event") not in ("built", "failed", "skipped"):
            continue
        seconds = e.get("seconds")
        total += seconds or 0.0
        m = e.get("metrics") or {}
        tps = m.get("tokens_per_second")
        rows.append([e["target"], e["event"], f"{seconds:.2f}" if seconds is not None else "-", f"{e['_at']:.2f}",
                     f"{m['train_seconds']:.2f}" if "train_seconds" in m else "-",
                     f"{m['seconds_before_first_step']:.2f}" if m.get("seconds_before_first_step") is not None else "-",
                     f"{tps:,.0f}" if isinstance(tps, (int, float)) else "-"])
    return rows, total


def report_failures(result: dict) -> list[str]:
    failed = [e for e in result["events"] if e.get("event") == "failed"]
    for e in failed:
        print(f"FAILED {e['target']} after {e.get('seconds', 0):.1f} s: {e.get('message', e.get('reason', ''))}")
        tail = (e.get("log_tail") or "").strip().splitlines()[-15:]
        for line in tail:
            print(f"    | {line}")
        if e.get("log"):
            print(f"    (log: {e['log']}, removed with the temporary folder)")
    skipped = [e["target"] for e in result["events"] if e.get("event") == "skipped"]
    if skipped:
        print(f"not built because a dependency failed: {', '.join(skipped)}")
    if not result["summary"]:
        print(f"forgebuild printed no summary (exit {result['code']}); stderr:\n{result['stderr'][-2000:]}")
    elif result["code"] != 0 and not failed:
        print(f"forgebuild exited {result['code']}; stderr:\n{result['stderr'][-2000:]}")
    return [e["target"] for e in failed]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--warm", type=int, default=5, help="measured no-op runs (median)")
    ap.add_argument("--path-as-is", action="store_true", help="keep PATH: `python3` may be a pyenv shim")
    ap.add_argument("--forgefile", default=os.path.join(REPO, FORGEFILE),
                    help="another Forgefile to copy in as the example's (to try a changed pipeline)")
    ap.add_argument("targets", nargs="*", help="build these instead of the example's defaults")
    args = ap.parse_args()
    env = child_env(args.path_as_is)
    header(f"bench_example: cold and no-op builds of {FORGEFILE}")
    python3 = shutil.which("python3", path=env["PATH"])
    print(f"load:       {os.getloadavg()[0]:.2f} (1-min load average at start, {os.cpu_count()} CPUs)")
    print(f"python3:    {python3} ({'as on PATH' if args.path_as_is else 'the folder of sys.executable first on PATH'})")
    first, again = warm_libraries(env), warm_libraries(env)
    print(f"libraries: torch, transformers, datasets, peft, trl imported in {again:.2f} s "
          f"({first:.2f} s the first time, compiling into the bytecode folder)")
    with scratch_dir("forge-bench-example-") as folder:
        copy_example(folder, args.forgefile)
        cold = build(folder, env, args.targets)
        load_after_cold = os.getloadavg()[0]
        ok = cold["code"] == 0 and cold["summary"].get("ok", True)
        print()
        print(f"cold: {cold['wall']:.2f} s, exit {cold['code']} ({'ok' if ok else 'FAILED'}), "
              f"load average {load_after_cold:.2f} after it")
        failed = report_failures(cold)
        rows, stage_total = stage_rows(cold)
        if rows:
            print()
            print(table(rows, ["target", "event", "stage s", "event at s", "train s", "before 1st step s", "tok/s"]))
            print(f"sum of stage seconds {stage_total:.2f}; engine (cold wall - stages) {cold['wall'] - stage_total:.2f} s "
                  f"over {len(rows)} stages")
        counts = {}
        for what in actions(cold).values():
            counts[what] = counts.get(what, 0) + 1
        print(f"cold actions: {counts or 'none reported'}")

        built = sorted(t for t, what in actions(cold).items() if what in ("built", "cached"))
        warm_targets = args.targets if ok else built
        if not warm_targets and not ok:
            print("nothing built, so there is no no-op to time")
            return
        if not ok:
            print(f"warm runs name the {len(warm_targets)} targets that built (the default would retry {', '.join(failed)})")
        build(folder, env, warm_targets)  # writes the plan cache; not measured
        walls, surprises = [], []
        for _ in range(args.warm):
            result = build(folder, env, warm_targets)
            walls.append(result["wall"])
            acted = {t: what for t, what in actions(result).items() if what != "cached"}
            if result["code"] != 0 or acted:
                surprises.append(acted or f"exit {result['code']}")
        print()
        print(f"warm (no-op, {len(actions(result))} targets): median {statistics.median(walls):.3f} s of {args.warm} "
              f"(each: {' '.join(f'{w:.3f}' for w in walls)}), load average {os.getloadavg()[0]:.2f}")
        if surprises:
            print(f"NOT a no-op: {surprises}")
        else:
            print("every warm run: all cached, exit 0")
        print(f"cold / warm: {cold['wall'] / statistics.median(walls):.0f}x")


if __name__ == "__main__":
    main()
