"""A search's record: the proposals it made, kept in the project, and the cells they stand for.

    [search.lr]
    target = "model:sft"                                   # a trial is a cell of this target
    objective = { target = "eval:sums", metric = "sums.exact_match", goal = "max" }
    space = { "train.lr" = { loguniform = [1e-4, 1e-2] } }
    budget = 6

Each proposal (an optimiser's or an agent's) is appended to `searches/lr.json` (the `record`)
before its trial is built. Planning reads the record and makes each trial two cells, as a matrix
does: `model:sft[lr=0.00123]` and the objective's cell that reads it, `eval:sums[lr=0.00123]`. So a trial
is an ordinary target (cached, resumable, diffable), a rebuild from scratch replays the recorded
proposals without asking again, and raising the budget asks only for the trials after them. The
record is the project's (commit it beside the Forgefile, like a lock file): it says what the search
tried, which the cache alone cannot.

The record's `study` is what the proposals were made for (target, space, objective, optimiser,
seed, agent): a record made for another study is a Forgefile problem, never silently replayed or
discarded. Standard library only.
"""
from __future__ import annotations

import json
import math
import os

from forgebuild.planning.plan import CELL_VALUE

RECORD_FORMAT = 1
STUDY_KEYS = ("target", "space", "objective", "optimizer", "seed", "agent", "prune")


def record_path(root: str, name: str, body: dict) -> str:
    """The record's path relative to the project: `record`, or searches/NAME.json."""
    given = body.get("record")
    return given if isinstance(given, str) and given else f"searches/{name}.json"


def study(body: dict) -> dict:
    """What a search's proposals depend on, from its raw table (the budget is not: raising it continues)."""
    return {k: body.get(k) for k in STUDY_KEYS}


def read(path: str) -> dict | None:
    """The record at `path`, or None when there is none yet; ValueError says what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"cannot read: {e.strerror}") from None
    try:
        found = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(found, dict) or found.get("format") != RECORD_FORMAT or not isinstance(found.get("trials"), list):
        raise ValueError(f"not a search record of format {RECORD_FORMAT}")
    for i, trial in enumerate(found["trials"]):
        if not isinstance(trial, dict) or not isinstance(trial.get("params"), dict) or not trial["params"]:
            raise ValueError(f"trial {i} has no params")
        for path, value in trial["params"].items():
            shaped = isinstance(value, (int, float)) or (isinstance(value, str) and CELL_VALUE.match(value))
            if not all(path.split(".")) or not shaped or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"trial {i}: {path!r} = {json.dumps(value)} is no param a cell can take")
        if trial.get("pruned") is not None and not (isinstance(trial["pruned"], dict)
                                                    and isinstance(trial["pruned"].get("step"), int)
                                                    and isinstance(trial["pruned"].get("intermediate"), dict)):
            raise ValueError(f"trial {i}: 'pruned' must be {{\"step\": N, \"intermediate\": {{...}}}}")
    return found


def write(path: str, record: dict) -> None:
    """Atomically: a killed proposer leaves the old record or the new one, never half of one."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=1, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mismatch(record: dict, body: dict) -> str | None:
    """Which study keys a record was made for differ from the table's now, said plainly; None if none."""
    made_for = record.get("study") or {}
    changed = [k for k in STUDY_KEYS if _plain(made_for.get(k)) != _plain(body.get(k))]
    return ", ".join(changed) or None


def _plain(value):
    return json.loads(json.dumps(value, sort_keys=True))


def searches(data: dict, root: str, problem) -> list[dict]:
    """Every [search.NAME] table's trials from its record:
    [{"search", "name", "target", "objective", "record", "trials": [{"params", "by", "rationale"}]}]."""
    found = []
    for name, body in (data.get("search") or {}).items():
        if not isinstance(body, dict):
            continue
        address = f"search:{name}"
        if "trials" in body:
            problem(("search", name, "trials"), "is written by forgebuild from the record: remove it",
                    address, "trials")
            continue
        target, objective = body.get("target"), body.get("objective")
        evaluated = objective.get("target") if isinstance(objective, dict) else None
        if not isinstance(target, str) or not isinstance(evaluated, str):
            found.append({"search": address, "name": name, "target": None, "objective": None, "trials": []})
            continue  # the rule's validation says what is missing
        rel = record_path(root, name, body)
        try:
            record = read(os.path.join(root, rel))
        except ValueError as e:
            problem(("search", name, "record"), f"{rel}: {e}", address, "record")
            record = None
        reason = mismatch(record, body) if record else None
        if reason:
            problem(("search", name), f"{rel} records trials of another study ({reason} changed): remove the "
                                      "file, or set `record` to a new one, to start a new search", address, None)
            record = None
        found.append({"search": address, "name": name, "target": target, "objective": evaluated, "record": rel,
                      "trials": (record or {}).get("trials", [])})
    return found
