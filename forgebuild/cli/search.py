"""Running a search: ask for proposals, record them, build each trial, until the budget is spent.

`forgebuild search:lr` (or any build whose closure holds a search) first brings each search's
record up to its budget: the optimiser (Optuna's TPE or random sampler, seeded) or the agent
command proposes the next params from the history of finished trials, the proposal is appended
to the record (planning/trials.py) and the plan re-read, and the trial's eval cell is built, its
model cell with it. Then the build goes on as any other, the search target reading every trial's
eval. Recorded proposals are never asked for again: a rebuild replays them from the record.

The agent protocol: the command (argv, run in the project folder) reads one JSON object on stdin,

    {"search": "search:lr", "metric": "sums.exact_match", "goal": "max", "budget": 6,
     "space": {"train.lr": {"loguniform": [0.0001, 0.01]}},
     "trials": [{"number": 0, "params": {"train.lr": 0.00123}, "status": "complete",
                 "value": 0.41, "low": 0.37, "high": 0.45, "n": 500, "by": "agent", "rationale": "..."}]}

and writes one on stdout: {"params": {"train.lr": 0.003}, "rationale": "why"}. Each param of the
space must be given, inside its domain; anything else stops the build with exit 2.
"""
from __future__ import annotations

import json
import math
import os
import subprocess

from forgebuild.errors import UsageError
from forgebuild.planning import trials as recordlib

SIGNIFICANT = 3  # proposed floats keep 3 significant digits: readable addresses, no loss a sweep can measure
STARTUP = 3  # TPE's random trials before it models the history (Optuna's 10 would leave a budget of 6 random)
AGENT_TIMEOUT = 600.0


class ProposalError(UsageError):
    """An agent that failed or proposed what the space does not hold: exit 2, the build not started."""


def search_targets(session, addresses) -> list[str]:
    plan = session.plan
    return [a for a in plan.closure(addresses) if plan.targets[a].kind == "search"]


def fill(args, session, report, addresses, execute) -> None:
    """Bring every search in the closure of `addresses` up to its budget, building each new trial."""
    for address in search_targets(session, addresses):
        while True:
            values = session.plan.targets[address].values
            done = len(values["trials"])
            if done >= values["budget"]:
                break
            count = min(args.jobs or session.plan.settings.get("jobs") or 1, values["budget"] - done)
            history = history_of(session, values)
            proposals = propose(values, history, count, address, session.plan.root)
            record(session, address, proposals)
            report({"event": "proposed", "target": address,
                    "trials": [{"number": done + i, **p} for i, p in enumerate(proposals)]})
            session.replan()
            values = session.plan.targets[address].values
            failed, pruned = built_watched(session, values, history, done, execute)
            if pruned:
                record(session, address, [], pruned)
                report({"event": "pruned", "target": address,
                        "trials": [{"number": n, "step": p["step"]} for n, p in sorted(pruned.items())]})
                session.replan()
            stopped = {values["trials"][n][cell] for n in pruned for cell in ("target", "objective")}
            if set(failed) - stopped and not args.keep_going:
                break  # a trial failed: the search's own build reports it; -k goes on proposing


def built_watched(session, values: dict, history: list[dict], done: int, execute) -> tuple[list, dict]:
    """Build the trials from number `done` on: (the targets that failed, {number: pruned} when a
    `prune` watcher stopped some)."""
    new = list(enumerate(values["trials"]))[done:]
    watcher = None
    if values.get("prune"):
        from forgebuild.cli.pruning import Watcher

        watcher = Watcher(session, values["prune"]["metric"], prune_judge(values, history), new)
        watcher.start()
    try:
        failed = execute([t["objective"] for _, t in new])
    finally:
        pruned = watcher.finish() if watcher else {}
    return failed, pruned


def history_of(session, values: dict) -> list[dict]:
    """Each recorded trial with its status and, when its objective is built, the metric."""
    from forgebuild.rules import load_rule

    metric_of = load_rule("search").metric_of
    metric = values["objective"]["metric"]
    pruning = values.get("prune")
    wanted = [t["objective"] for t in values["trials"] if not t.get("pruned")]
    wanted += [t["target"] for t in values["trials"]] if pruning else []  # the curves the pruner compares
    decisions = session.decide(wanted) if wanted else {}
    rows = []
    for number, trial in enumerate(values["trials"]):
        row = {"number": number, "params": trial["params"], "status": "missing", "value": None,
               "by": trial.get("by"), "rationale": trial.get("rationale")}
        if trial.get("pruned"):
            rows.append({**row, "status": "pruned", "step": trial["pruned"]["step"],
                         "intermediate": trial["pruned"]["intermediate"]})
            continue
        built = decisions.get(trial["target"]) if pruning else None
        if built is not None and built.state == "fresh":  # the curve the pruner compares against
            from forgebuild.cli.pruning import curve

            row["intermediate"] = curve(session.workspace.artifact_dir(built.digest), pruning["metric"])
        decision = decisions.get(trial["objective"])
        if decision is not None and decision.state == "fresh":
            found = metric_of(session.workspace.artifact_dir(decision.digest), trial["target"], metric)
            if found is None:  # every trial would be judged by nothing: stop at the first
                whose = "" if trial["objective"] == trial["target"] else f" for {trial['target']}"
                raise ProposalError(f"{trial['objective']} has no number {metric}{whose}: name one of its metrics "
                                    "in the search's objective.metric (and remove the record to start again)")
            row.update(status="complete", value=found["value"], low=found.get("low"), high=found.get("high"),
                       n=found.get("n"))
        rows.append(row)
    return rows


def record(session, address: str, proposals: list[dict], pruned: dict | None = None) -> None:
    """Append the proposals to the search's record (made with the study it belongs to, first time),
    and mark the trials numbered in `pruned` as stopped early."""
    from forgebuild.planning.forgefile import read_toml

    name = address.split(":", 1)[1]
    _, data = read_toml(session.plan.forgefile)
    body = data["search"][name]
    path = os.path.join(session.plan.root, recordlib.record_path(session.plan.root, name, body))
    found = recordlib.read(path) or {"format": recordlib.RECORD_FORMAT, "search": address,
                                     "study": recordlib.study(body), "trials": []}
    found["trials"].extend(proposals)
    for number, stopped in (pruned or {}).items():
        found["trials"][number]["pruned"] = stopped
    recordlib.write(path, found)


# ------------------------------------------------------------------ proposers

def propose(values: dict, history: list[dict], count: int, address: str, root: str) -> list[dict]:
    if values["optimizer"] == "agent":
        found = []
        for _ in range(count):  # each call sees the proposals made before it as pending trials
            pending = [{"number": len(history) + i, "params": p["params"], "status": "pending", "value": None,
                        "by": "agent", "rationale": p["rationale"]} for i, p in enumerate(found)]
            found.append(ask_agent(values, history + pending, address, root))
        return found
    return [ask_optuna(values, history, len(history) + i) for i in range(count)]


def distributions(space: dict) -> dict:
    import optuna.distributions as d

    found = {}
    for path, domain in space.items():
        if domain.get("loguniform"):
            found[path] = d.FloatDistribution(*domain["loguniform"], log=True)
        elif domain.get("uniform"):
            found[path] = d.FloatDistribution(*domain["uniform"])
        elif domain.get("int"):
            found[path] = d.IntDistribution(*domain["int"])
        else:
            found[path] = d.CategoricalDistribution(domain["choice"])
    return found


def rounded(value, distribution):
    """A float to SIGNIFICANT digits, kept inside its distribution's bounds."""
    if not isinstance(value, float):
        return value
    value = float(f"{value:.{SIGNIFICANT}g}")
    return min(max(value, distribution.low), distribution.high)


def ask_optuna(values: dict, history: list[dict], number: int) -> dict:
    """Trial `number`'s proposal: a study rebuilt from the history, its sampler seeded with the search's
    seed and the trial's number, so a proposal depends on the history alone, never on when it is asked."""
    optuna = _optuna(values)
    seed = values["seed"] + number
    sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP) if values["optimizer"] == "tpe"
               else optuna.samplers.RandomSampler(seed=seed))
    dists = distributions(values["space"])
    trial = rebuilt_study(values, history, dists, sampler=sampler).ask(dists)
    return {"params": {p: rounded(trial.params[p], dists[p]) for p in dists}, "by": values["optimizer"],
            "rationale": None}


def prune_judge(values: dict, history: list[dict]):
    """`trails(params, reported)`: whether a trial of `params` whose curve so far is `reported`
    ({step: value}) trails the finished trials' curves at the same step, by Optuna's MedianPruner."""
    prune, dists, sign = values["prune"], distributions(values["space"]), curve_sign(values)
    curves = [r for r in history if r["status"] in ("complete", "pruned") and r.get("intermediate")]

    def trails(params: dict, reported: dict[int, float]) -> bool:
        pruner = _optuna(values).pruners.MedianPruner(n_startup_trials=prune["startup"], n_warmup_steps=prune["warmup"])
        study = rebuilt_study(values, curves, dists, pruner=pruner)
        study.enqueue_trial(params)
        trial = study.ask(dists)
        for step, value in sorted(reported.items()):
            trial.report(sign * value, step)
        return trial.should_prune()

    return trails


def curve_sign(values: dict) -> float:
    """Optuna reads a trial's curve in the objective's direction: -1 when `prune.goal` is the other one."""
    prune = values.get("prune")
    return -1.0 if prune and prune["goal"] != values["objective"]["goal"] else 1.0


def rebuilt_study(values: dict, history: list[dict], dists: dict, sampler=None, pruner=None):
    """A study holding the history: complete trials with their value, pruned ones as pruned, the rest
    failed; each with the curve it has ("intermediate"), in the objective's direction."""
    optuna = _optuna(values)
    goal, sign, states = values["objective"]["goal"], curve_sign(values), optuna.trial.TrialState
    study = optuna.create_study(direction="maximize" if goal == "max" else "minimize", sampler=sampler, pruner=pruner)
    for row in history:
        finished = row["status"] == "complete" and isinstance(row["value"], (int, float)) and math.isfinite(row["value"])
        state = states.COMPLETE if finished else states.PRUNED if row["status"] == "pruned" else states.FAIL
        curve = {int(step): sign * v for step, v in (row.get("intermediate") or {}).items()}
        study.add_trial(optuna.trial.create_trial(
            params=row["params"], distributions=dists, value=row["value"] if finished else None, state=state,
            intermediate_values=curve or None))
    return study


def _optuna(values: dict):
    try:
        import optuna
    except ImportError:
        from forgebuild.engine.preflight import install_command

        raise ProposalError(f"not installed: optuna (for optimizer = \"{values['optimizer']}\"); run: "
                            f"{install_command(['search'])}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def ask_agent(values: dict, history: list[dict], address: str, root: str) -> dict:
    argv = values["agent"]
    said = " ".join(argv)
    payload = {"search": address, "metric": values["objective"]["metric"], "goal": values["objective"]["goal"],
               "budget": values["budget"], "space": {p: {k: v for k, v in d.items() if v is not None}
                                                     for p, d in values["space"].items()},
               "trials": history}
    try:
        proc = subprocess.run(argv, input=json.dumps(payload), capture_output=True, text=True, cwd=root,
                              timeout=AGENT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ProposalError(f"{address}: the agent `{said}` could not run: {e}") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [""]
        raise ProposalError(f"{address}: the agent `{said}` exited {proc.returncode}: {tail[0]}".rstrip(": "))
    try:
        answer = json.loads(proc.stdout)
        params, rationale = answer["params"], answer.get("rationale")
        if not isinstance(params, dict) or not (rationale is None or isinstance(rationale, str)):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ProposalError(f"{address}: the agent `{said}` must write {{\"params\": {{...}}, \"rationale\": "
                            f"\"...\"}} on stdout, wrote {proc.stdout.strip()[:200]!r}") from None
    return {"params": checked(values["space"], params, address, said), "by": "agent", "rationale": rationale}


def checked(space: dict, params: dict, address: str, said: str) -> dict:
    """The agent's params, each inside its domain (a whole float for an int param becomes an int)."""
    extra = sorted(set(params) - set(space))
    missing = sorted(set(space) - set(params))
    if extra or missing:
        what = "; ".join([f"not in the space: {', '.join(extra)}"] * bool(extra) + [f"missing: {', '.join(missing)}"] * bool(missing))
        raise ProposalError(f"{address}: the agent `{said}` proposed other params than the space's ({what})")
    found = {}
    for path, domain in space.items():
        value = params[path]
        if domain.get("choice") is not None:
            ok = any(type(value) is type(c) and value == c for c in domain["choice"])
            bounds = f"one of {domain['choice']}"
        else:
            kind = next(k for k in ("loguniform", "uniform", "int") if domain.get(k))
            if kind == "int" and isinstance(value, float) and value.is_integer():
                value = int(value)
            number = isinstance(value, int if kind == "int" else (int, float)) and not isinstance(value, bool)
            low, high = domain[kind]
            ok = number and low <= value <= high
            value = float(value) if ok and kind != "int" else value
            bounds = f"{'an integer' if kind == 'int' else 'a number'} in [{low}, {high}]"
        if not ok:
            raise ProposalError(f"{address}: the agent `{said}` proposed {path} = {json.dumps(value)}: expected {bounds}")
        found[path] = value
    return found
