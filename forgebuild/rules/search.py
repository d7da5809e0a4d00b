"""search: trials of a target over a space, proposed by Optuna or by an agent, judged by an eval.

    [search.lr]
    target = "model:sft"                                   # each trial is a cell of it
    objective = { target = "eval:sums", metric = "sums.exact_match", goal = "max" }
    space = { "train.lr" = { loguniform = [1e-4, 1e-2] }, "train.steps" = { int = [100, 400] },
              "train.batch_size" = { choice = [16, 32] } }
    budget = 6
    optimizer = "tpe"                                      # or "random", or "agent" with agent = [...]

`forgebuild search:lr` asks the optimiser for a proposal, appends it to the record
(searches/lr.json, planning/trials.py), builds the trial's cells (`model:sft[lr=0.00123]` and
`eval:sums[lr=0.00123]`), tells the optimiser the eval's metric, and so on to the budget
(cli/search.py). This rule's artifact is the outcome: trials.json with every trial's params, the
proposer and its rationale, the metric with its interval, and the best trial. Its inputs are the
trials' evals, so it is fresh exactly when every recorded trial's eval is.
"""
from __future__ import annotations

import json
import math
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from forgebuild import limits
from forgebuild.planning.plan import ADDRESS, CELL_VALUE, outside_root

version = "1"
isolate = False  # reads a few report.json files: a child Python would cost more than the build


Int = int  # inside Domain, `int` is a field's name


class Domain(BaseModel):
    """One param's values: exactly one of loguniform, uniform, int (each [low, high]) or choice."""
    model_config = ConfigDict(extra="forbid")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], low > 0: sampled on a log scale")
    uniform: tuple[float, float] | None = Field(None, description="[low, high]")
    int: tuple[Int, Int] | None = Field(None, description="[low, high], both included")
    choice: list[str | Int | float | bool] | None = Field(None, min_length=1, description="the values to pick from")

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("loguniform", "uniform", "int", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of loguniform, uniform, int, choice")
        bounds = getattr(self, given[0]) if given[0] != "choice" else None
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"{given[0]}: low must be below high")
        if given[0] == "loguniform" and bounds[0] <= 0:
            raise ValueError("loguniform: low must be above 0")
        if self.choice is not None:
            if any(isinstance(v, str) and not CELL_VALUE.match(v) for v in self.choice):
                raise ValueError("choice: a name holds only letters, digits and '_.+-'")
            if len({(type(v), v) for v in self.choice}) != len(self.choice):
                raise ValueError("choice: a value is listed twice")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("loguniform", "uniform", "int", "choice") if getattr(self, k) is not None)


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(description=(
        "what judges a trial: an eval target whose `models` names the search's target, or any target that "
        "reads it (or is it) and writes metrics.json; each trial gets a cell of it"))
    metric: str = Field(description="an eval's BENCH.METRIC, or a key of the target's metrics.json")
    goal: Literal["max", "min"] = Field("max", description="whether a higher or a lower metric is better")

    @field_validator("target")
    @classmethod
    def _address(cls, value):
        if not ADDRESS.match(value) or "[" in value:
            raise ValueError("expected a target's address, e.g. \"eval:sums\"")
        return value


class Prune(BaseModel):
    """`prune = { metric = "loss" }`: stop a trial whose training curve trails the others' (Optuna's
    median rule: below the median of the finished trials at the same step)."""
    model_config = ConfigDict(extra="forbid")
    metric: str = Field(description="a quantity the target's recipe logs as it trains, e.g. loss or eval_loss "
                                    "(model recipes log every step; eval_loss with eval_split)")
    goal: Literal["max", "min"] = Field("min", description="which way the intermediate quantity is better")
    startup: int = Field(2, ge=0, le=limits.AMOUNT, description="trials finished before any is pruned")
    warmup: int = Field(0, ge=0, le=limits.STEPS, description="steps of a trial before it may be pruned")


class Trial(BaseModel):
    """A recorded proposal, as planning read it from the record (never written in a Forgefile)."""
    model_config = ConfigDict(extra="forbid")
    params: dict[str, str | Int | float | bool]
    by: str | None = None
    rationale: str | None = None
    pruned: dict | None = None  # {"step", "intermediate": {step: value}}: stopped early, never judged
    target: str  # the trial's cell of the search's target
    objective: str  # the trial's cell of the objective (the same, when the objective is the target)


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str = Field(description="the target each trial is a cell of (a plain target, not a matrix)")
    objective: Objective = Field(description="{ target, metric, goal }: what a trial is judged by")
    space: dict[str, Domain] = Field(min_length=1, description="dotted param path -> its domain "
                                                               "({ loguniform | uniform | int = [low, high] } or { choice = [...] })")
    budget: int = Field(ge=1, le=limits.AMOUNT, description="trials in all; raising it continues the search")
    optimizer: Literal["tpe", "random", "agent"] = Field(
        "tpe", description="tpe, random: Optuna's samplers, seeded; agent: the `agent` command proposes")
    agent: list[str] | None = Field(None, min_length=1, description=(
        "optimizer = \"agent\": a command (argv) that reads the history as JSON on stdin and writes "
        "{\"params\": {...}, \"rationale\": \"...\"} on stdout"))
    seed: int = Field(0, ge=0, le=2**31 - 1, description="the optimiser's seed (with the trial's number)")
    prune: Prune | None = Field(None, description="{ metric, goal, startup, warmup }: stop trials whose "
                                                  "training curve trails the finished ones' (unset: none)")
    record: str | None = Field(None, description="the record of proposals, relative to the Forgefile "
                                                 "(default searches/NAME.json); commit it")
    trials: list[Trial] = Field(default_factory=list, description="the recorded trials: written by forgebuild "
                                                                  "from the record, never by hand")

    @field_validator("target")
    @classmethod
    def _target(cls, value):
        if not ADDRESS.match(value) or "[" in value:
            raise ValueError("expected a target's address, e.g. \"model:sft\"")
        return value


def check(params: Params) -> list:
    problems = []
    if params.optimizer == "agent" and not params.agent:
        problems.append(("agent", "optimizer = \"agent\" needs the agent's command"))
    if params.optimizer != "agent" and params.agent:
        problems.append(("agent", f"is used only with optimizer = \"agent\" (optimizer is \"{params.optimizer}\")"))
    if params.record is not None and (outside_root(params.record) or not params.record.strip()):
        problems.append(("record", "must be a path inside the project"))
    return problems


def inputs(params: Params) -> dict:
    # the trials' evals alone: the target and the eval as written are templates, never built for a search
    judged = [t.objective for t in params.trials if not t.pruned]
    return {"trials": judged} if judged else {}


def metric_of(folder: str, cell: str, metric: str) -> dict | None:
    """{value, low?, high?, n?} of `metric` in an objective's artifact: an eval's report.json (for the
    trial's cell), else metrics.json ({"name": number} or {"name": {"value": ...}}); None if absent."""
    report, metrics = os.path.join(folder, "report.json"), os.path.join(folder, "metrics.json")
    try:
        if os.path.exists(report):
            with open(report, encoding="utf-8") as f:
                found = (json.load(f).get("results") or {}).get(cell, {}).get(metric)
        else:
            with open(metrics, encoding="utf-8") as f:
                found = json.load(f).get(metric)
    except (OSError, ValueError, AttributeError):
        return None
    found = {"value": found} if isinstance(found, (int, float)) and not isinstance(found, bool) else found
    value = found.get("value") if isinstance(found, dict) else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return found if ok else None


def best_of(values: list, goal: str) -> int | None:
    """The index of the best value by the goal (None: unjudged), the earliest of equals."""
    sign = 1 if goal == "max" else -1
    judged = [(sign * v, -i) for i, v in enumerate(values) if v is not None]
    return -max(judged)[1] if judged else None


def outcome(params: Params, folders: list[str]) -> dict:
    """trials.json: each trial with its metric (value, low, high, n) and the best by the goal."""
    rows = []
    for number, (trial, folder) in enumerate(zip(params.trials, folders)):
        rows.append({"number": number, "params": trial.params, "by": trial.by, "rationale": trial.rationale,
                     "target": trial.target, "objective": trial.objective, "pruned": trial.pruned,
                     "metric": metric_of(folder, trial.target, params.objective.metric) if folder else None})
    best = best_of([r["metric"]["value"] if r["metric"] else None for r in rows], params.objective.goal)
    return {"metric": params.objective.metric, "goal": params.objective.goal, "budget": params.budget,
            "trials": rows, "best": rows[best] if best is not None else None}


def build(ctx) -> None:
    p = ctx.params
    by_address = dict(zip([t.objective for t in p.trials], ctx.inputs.get("trials", [])))
    found = {"search": ctx.target, **outcome(p, [by_address.get(t.objective) for t in p.trials])}
    missing = [r["objective"] for r in found["trials"] if r["metric"] is None and not r["pruned"]]
    if missing:
        raise ctx.bad_input(f"{p.objective.metric} is not a number in the artifact of {', '.join(missing)}")
    with open(os.path.join(ctx.out, "trials.json"), "w", encoding="utf-8") as f:
        json.dump(found, f, indent=1, sort_keys=True)
        f.write("\n")
    best = found["best"]
    ctx.metrics({"trials": len(found["trials"]), **({"best": best["metric"]["value"]} if best else {})})
