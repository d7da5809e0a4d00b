"""Pruning a search's trials as they train: Optuna's median rule on the curve the recipe logs.

With `prune = { metric = "loss" }` in a [search] table, a watcher follows the stage log of each
trial's target cell while it builds (the model recipes write `step N/M {...}` there every
`log_every` steps), and asks Optuna's MedianPruner, in a study rebuilt from the finished trials'
curves (their training_log.jsonl, every step), whether this trial's value at that step trails
the median of theirs. A trial that does is killed (its processes, found by the build's marker)
and recorded as pruned at that step with the curve it had; the search never builds it again,
never judges it, and tells the optimiser it was pruned. Nothing stored changes: a pruned trial
leaves no artifact, only its resumable work folder (gc's to drop).
"""
from __future__ import annotations

import json
import os
import re
import threading

STEP = re.compile(r"^step (\d+)/\d+ (\{.*\})$")
POLL = 0.2  # seconds between looks at the logs: a tiny CPU model logs a step every ~50 ms


def curve(folder: str, metric: str) -> dict[int, float]:
    """step -> value of `metric` in a built model's training_log.jsonl (empty when it has none)."""
    found = {}
    try:
        with open(os.path.join(folder, "training_log.jsonl"), encoding="utf-8") as f:
            for row in map(json.loads, f):
                if isinstance(row.get(metric), (int, float)) and "step" in row:
                    found[int(row["step"])] = float(row[metric])
    except (OSError, ValueError):
        pass
    return found


def should_prune(values: dict, dists: dict, history: list[dict], params: dict, reported: dict[int, float]) -> bool:
    """Whether a trial of `params` with the curve `reported` so far trails the finished trials
    (history rows with "intermediate": {step: value}), by Optuna's MedianPruner; `dists`: the
    space as Optuna's distributions."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prune, goal = values["prune"], values["objective"]["goal"]
    sign = 1.0 if prune["goal"] == goal else -1.0  # Optuna reads a curve in the objective's direction
    study = optuna.create_study(direction="maximize" if goal == "max" else "minimize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=prune["startup"],
                                                                   n_warmup_steps=prune["warmup"]))
    for row in history:
        if row["status"] not in ("complete", "pruned") or not row.get("intermediate"):
            continue
        complete = row["status"] == "complete"
        study.add_trial(optuna.trial.create_trial(
            params=row["params"], distributions=dists, value=row["value"] if complete else None,
            intermediate_values={int(s): sign * v for s, v in row["intermediate"].items()},
            state=optuna.trial.TrialState.COMPLETE if complete else optuna.trial.TrialState.PRUNED))
    study.enqueue_trial(params)
    trial = study.ask(dists)
    for step, value in sorted(reported.items()):
        trial.report(sign * value, step)
    return trial.should_prune()


class Watcher(threading.Thread):
    """Follows the stage logs of trials being built; kills and notes each one the pruner stops."""

    def __init__(self, session, values: dict, dists: dict, history: list[dict], trials: list[tuple[int, dict]]):
        super().__init__(daemon=True)
        from forgebuild.engine.launcher import marker

        self.values, self.dists, self.history, self.stop_event = values, dists, history, threading.Event()
        self.pruned: dict[int, dict] = {}
        decisions = session.decide([t["target"] for _, t in trials])
        ws = session.workspace
        self.live = {}  # number -> [params, log path, offset, marker, {step: value}]
        for number, trial in trials:
            key = decisions[trial["target"]].key
            if key is None or decisions[trial["target"]].state == "fresh":
                continue  # built already, or behind a dependency: nothing to watch
            path = ws.log_path(trial["target"])
            offset = os.path.getsize(path) if os.path.exists(path) else 0
            self.live[number] = [trial["params"], path, offset, marker(key, ws.dir), {}]

    def run(self) -> None:
        while not self.stop_event.wait(POLL):
            for number in list(self.live):
                self._look(number)

    def finish(self) -> dict[int, dict]:
        self.stop_event.set()
        self.join()
        return self.pruned

    def _look(self, number: int) -> None:
        from forgebuild.engine.launcher import kill_leftovers

        params, path, offset, tag, reported = self.live[number]
        metric = self.values["prune"]["metric"]
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                text = f.read()
        except OSError:
            return
        whole = text[: text.rfind(b"\n") + 1]  # a line still being written waits for the next look
        self.live[number][2] = offset + len(whole)
        fresh = False
        for line in whole.decode("utf-8", "replace").splitlines():
            m = STEP.match(line)
            if m:
                value = json.loads(m.group(2)).get(metric)
                if isinstance(value, (int, float)):
                    reported[int(m.group(1))] = float(value)
                    fresh = True
        if fresh and should_prune(self.values, self.dists, self.history, params, reported):
            kill_leftovers(tag)
            step = max(reported)
            self.pruned[number] = {"step": step, "intermediate": {str(s): v for s, v in sorted(reported.items())}}
            del self.live[number]
