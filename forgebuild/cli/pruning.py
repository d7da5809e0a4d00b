"""Pruning a search's trials as they train: Optuna's median rule on the curve the recipe logs.

With `prune = { metric = "loss" }` in a [search] table, a watcher follows the stage log of each
trial's target cell while it builds (the model recipes write `step N/M {...}` there every
`log_every` steps), and asks the search's judge (cli/search.py, `prune_judge`: Optuna's
MedianPruner in a study rebuilt from the finished trials' curves, their training_log.jsonl read by
`curve`) whether this trial's value at that step trails the median of theirs. A trial that does is killed (its processes, found by the build's marker)
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


class Watcher(threading.Thread):
    """Follows the stage logs of trials being built; kills and notes each one the pruner stops."""

    def __init__(self, session, metric: str, trails, trials: list[tuple[int, dict]]):
        """`trails(params, {step: value})`: the pruner's judgement (cli/search.py, prune_judge)."""
        super().__init__(daemon=True)
        from forgebuild.engine.launcher import marker

        self.metric, self.trails, self.stop_event = metric, trails, threading.Event()
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
                value = json.loads(m.group(2)).get(self.metric)
                if isinstance(value, (int, float)):
                    reported[int(m.group(1))] = float(value)
                    fresh = True
        if fresh and self.trails(params, reported):
            kill_leftovers(tag)
            step = max(reported)
            self.pruned[number] = {"step": step, "intermediate": {str(s): v for s, v in sorted(reported.items())}}
            del self.live[number]
