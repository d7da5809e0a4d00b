"""Warm workers (engine/warm.py): what forking stages from a server that imported the ML stack once saves.

  first step   a chain of small model stages (a corpus, a tokenizer, --models tiny pretrains), built
               with --workers cold and --workers run in fresh folders: each model stage's
               seconds_before_first_step (from its spawn, FORGE_STAGE_STARTED, to its first optimizer
               step). Goal: <= 1 s for the second and later model stages, warm.
  example      the example (Forgefile.example.toml) built from nothing with --workers cold and with
               --workers run (bench_example.py's copy and command). Goal: run >= 30% faster.
  reward edit  in the example's folder, examples/rewards.py edited and model:rl-v3 rebuilt with a
               resident worker (one edit to start it, then the measured one): the rebuild's wall time
               against the GRPO stage's own train_seconds + 1 s. Goal: under it.

Run: python benchmarks/bench_workers.py [--models 4] [--skip-example]
A few minutes on the reference machine (2 cores): the example is built twice.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

from _common import FORGE, REPO, header, run, scratch_dir, table, verdict
from bench_example import FORGEFILE, build, child_env, copy_example, report_failures, warm_libraries

sys.path.insert(0, os.path.join(REPO, "tests"))
from tinylab import BASE_FORGEFILE, write_stdlib_text  # noqa: E402

FIRST_STEP_GOAL = 1.0
EXAMPLE_GOAL = 0.30
REWARD_SLACK = 1.0


def chain_forgefile(models: int) -> str:
    """The tiny pretrain of tests/tinylab.py, and more like it with other seeds' worth of steps."""
    text = BASE_FORGEFILE.replace("steps = 30", "steps = 3")
    for i in range(1, models):
        text += BASE_FORGEFILE.split("[model.base]", 1)[1].replace("steps = 30", f"steps = {3 + i}").join(
            [f"\n[model.m{i}]", ""])
    return text


def first_steps(mode: str, models: int, env: dict) -> tuple[float, list[float]]:
    """(wall seconds, each model stage's seconds_before_first_step in build order) of one build from nothing."""
    with scratch_dir(f"forge-bench-workers-{mode}-") as folder:
        write_stdlib_text(folder, files=12, max_chars=3000)
        with open(os.path.join(folder, FORGEFILE), "w", encoding="utf-8") as f:  # the name bench_example's build uses
            f.write(chain_forgefile(models))
        result = build_in(folder, env, ["--workers", mode])
        steps = [e["metrics"]["seconds_before_first_step"] for e in result["events"]
                 if e.get("event") == "built" and e["target"].startswith("model:")]
        return result["wall"], steps


def build_in(folder: str, env: dict, args: list[str]) -> dict:
    result = build(folder, env, args)
    if result["code"] != 0:
        report_failures(result)
        raise SystemExit(f"forgebuild {' '.join(args)} failed in {folder}")
    return result


def section_first_step(models: int, env: dict) -> list[str]:
    rows, verdicts = [], []
    results = {mode: first_steps(mode, models, env) for mode in ("cold", "run")}
    for mode, (wall, steps) in results.items():
        rows.append([mode, f"{wall:.2f}", " ".join(f"{s:.2f}" for s in steps),
                     f"{statistics.median(steps[1:]):.2f}" if len(steps) > 1 else "-"])
    print(table(rows, ["workers", "wall s", "seconds_before_first_step (each model stage)", "median, 2nd on"]))
    later = results["run"][1][1:]
    worst = max(later) if later else float("nan")
    cold_median = statistics.median(results["cold"][1][1:] or results["cold"][1])
    verdicts.append(f"{verdict(worst, FIRST_STEP_GOAL)}  spawn-to-first-step, warm, 2nd and later stages: at most "
                    f"{worst:.2f} s (goal <= {FIRST_STEP_GOAL:g} s; cold median {cold_median:.2f} s, "
                    f"{cold_median / max(statistics.median(later), 1e-9):.1f}x)")
    return verdicts


def section_example(env: dict, folder_for_rewards: list[str]) -> list[str]:
    walls = {}
    for mode in ("cold", "run"):
        folder = os.path.join(folder_for_rewards[0], mode)
        os.makedirs(folder)
        copy_example(folder, os.path.join(REPO, FORGEFILE))
        walls[mode] = build_in(folder, env, ["--workers", mode])["wall"]
    saved = 1 - walls["run"] / walls["cold"]
    print(table([[m, f"{w:.2f}"] for m, w in walls.items()], ["workers", "example cold build, wall s"]))
    return [f"{verdict(saved, EXAMPLE_GOAL, higher_is_better=True)}  example cold build: --workers run "
            f"{walls['run']:.1f} s vs cold {walls['cold']:.1f} s: {saved:.0%} faster (goal >= {EXAMPLE_GOAL:.0%})"]


def section_reward_edit(folder: str, env: dict) -> list[str]:
    rewards = os.path.join(folder, "examples", "rewards.py")
    timings = []
    try:
        for edit in (1, 2):  # the first starts the resident worker, the second is measured
            with open(rewards, "a", encoding="utf-8") as f:
                f.write(f"\n# bench_workers edit {edit}\n")
            result = build_in(folder, env, ["--workers", "resident", "model:rl-v3"])
            [event] = [e for e in result["events"] if e.get("event") == "built" and e["target"] == "model:rl-v3"]
            timings.append((result["wall"], event["metrics"]["train_seconds"], event["seconds"]))
    finally:
        run([*FORGE, "-f", FORGEFILE, "worker", "stop", "-q"], folder, env=env, check=False)
    wall, train, stage = timings[-1]
    print(table([[i + 1, f"{w:.2f}", f"{s:.2f}", f"{t:.2f}"] for i, (w, t, s) in enumerate(timings)],
                ["edit", "rebuild wall s", "stage s", "GRPO train_seconds"]))
    return [f"{verdict(wall, train + REWARD_SLACK)}  reward edit rebuilt (resident worker) in {wall:.2f} s; GRPO "
            f"train_seconds {train:.2f} + {REWARD_SLACK:g} s = {train + REWARD_SLACK:.2f} s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4, help="model stages in the first-step chain (default 4)")
    parser.add_argument("--skip-example", action="store_true", help="only the first-step chain")
    args = parser.parse_args()
    header("warm workers: spawn-to-first-step, the example's cold build, a reward edit")
    env = child_env(path_as_is=False)
    print(f"libraries imported once beforehand (page cache, bytecode): {warm_libraries(env):.1f} s\n")
    verdicts = section_first_step(args.models, env)
    if not args.skip_example:
        with scratch_dir("forge-bench-workers-example-") as folder:
            print()
            verdicts += section_example(env, [folder])
            print()
            verdicts += section_reward_edit(os.path.join(folder, "run"), env)
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
