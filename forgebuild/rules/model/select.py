"""select: one model out of several (a sweep's cells), picked by an eval metric with a noise-aware
rule, standing for the winner downstream.

    [model.sft-best]
    recipe = "select"
    candidates = ["model:sft-v1[lr=0.01]", "model:sft-v1[lr=0.001]"]
    evals = ["eval:sweep"]           # eval targets that together scored every candidate
    metric = "arith.exact_match"     # BENCH.METRIC, as the eval's report names it
    tie_break = "cheapest"           # refuse (default), first, cheapest

The rule: B is the candidate with the best point estimate (the eval's value; ties: the first). Each
other candidate C is within noise of B when the one-sided paired-bootstrap lower bound, at
`confidence`, of B's advantage over C on the examples both scored is not above 0. With none within
noise B wins; otherwise `tie_break` decides among B and those within noise: refuse (the build fails
with a verdict that names them), first (in `candidates` order) or cheapest (the least training
compute: parameters x examples seen). The artifact is the winner's files, unchanged (so it is that
model to every rule that reads one), and selection.json, which says why. See docs/rules/model.md.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgebuild import limits
from forgebuild.planning.plan import ADDRESS
from forgebuild.rules.eval import adapter_only, metric_names
from forgebuild.rules.model.common import Deps

version = "1"
METRIC = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*\.[A-Za-z0-9_][A-Za-z0-9_.,-]*$")
SELECTION = "selection.json"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recipe: Literal["select"]
    candidates: list[str] = Field(description="the model targets to choose from (a matrix's "
                                                           "address: all its cells)")
    evals: list[str] = Field(min_length=1, description="eval targets that together scored every candidate")
    metric: str = Field(description="BENCH.METRIC as the eval's report names it, e.g. \"arith.exact_match\"")
    goal: Literal["max", "min"] | None = Field(None, description="max or min; default: min for a perplexity or "
                                                                 "a loss, else max")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="of the one-sided paired bound that tells a "
                                                              "candidate apart from the best")
    tie_break: Literal["refuse", "first", "cheapest"] = Field(
        "refuse", description="among candidates within noise of the best: refuse (the build fails and says "
                              "which), first (in candidates order), cheapest (least parameters x examples seen)")
    bootstrap: int = Field(1000, ge=100, le=limits.RESAMPLES, description="bootstrap resamples of each paired bound")


def inputs(params: Params) -> dict:
    # what is no KIND:NAME is check's to say (read as a file, it would also be "no such file")
    return {f"{key}.{i}": address for key in ("candidates", "evals")
            for i, address in enumerate(getattr(params, key)) if ADDRESS.match(address)}


def environment(params: Params) -> dict:
    return {"libraries": ["numpy"]}  # its random streams draw the bootstrap's resamples


def check(params: Params) -> list[tuple[str, str]]:
    problems = []
    if len(params.candidates) < 2:
        problems.append(("candidates", f"a selection needs two candidates or more, got {len(params.candidates)}"))
    for key in ("candidates", "evals"):
        seen = set()
        for i, address in enumerate(getattr(params, key)):
            if not ADDRESS.match(address):
                problems.append((f"{key}.{i}", f"'{address}' is not a target reference: write KIND:NAME"))
            elif address in seen:
                problems.append((f"{key}.{i}", f"{address} is listed twice"))
            seen.add(address)
    if not METRIC.match(params.metric):
        problems.append(("metric", f"'{params.metric}' is not a metric: write BENCH.METRIC as the eval's report "
                                   f"names it, e.g. \"arith.exact_match\""))
    return problems


def dependency_problems(params: Params, deps: dict) -> list[tuple[str, str]]:
    """Candidates are models with weights, evals are evals, and the evals produce the metric (from a
    benchmark with per-example scores, defined alike in each) for every candidate they list."""
    problems = []
    for i, address in enumerate(params.candidates):
        found = deps.get(address)
        if found and found["kind"] != "model":
            problems.append((f"candidates.{i}", f"{address} is a {found['kind']} target, not a model"))
        elif adapter_only(found):
            problems.append((f"candidates.{i}", f"{address} emits a LoRA adapter only (lora.merge = false): "
                                                f"no eval scores it; set merge = true there"))
    evals = {}
    for i, address in enumerate(params.evals):
        found = deps.get(address)
        if found and found["kind"] != "eval":
            problems.append((f"evals.{i}", f"{address} is a {found['kind']} target, not an eval"))
        elif found:
            evals[address] = found["params"]
    if len(evals) < len(params.evals) or problems or not METRIC.match(params.metric):
        return problems  # an invalid eval or metric says so itself; the rest is unknown
    found = metric_problems(params, evals)
    return problems + (found or coverage_problems(params, evals, deps))


def metric_problems(params: Params, evals: dict) -> list[tuple[str, str]]:
    bench_name = params.metric.split(".", 1)[0]
    produced = {name: e for e, p in evals.items() for name in metric_names(p)}
    if params.metric not in produced:
        lm_eval = [e for e, p in evals.items() for b in p.benchmarks if b.name == bench_name and b.kind == "lm-eval"]
        if lm_eval:
            return [("metric", f"{bench_name} is an lm-eval benchmark of {lm_eval[0]}: select compares the "
                               f"per-example scores of generate, choice and perplexity benchmarks")]
        return [("metric", f"no eval in evals produces '{params.metric}'; they produce {', '.join(produced)}")]
    problems, first = [], None
    for i, (address, p) in enumerate(evals.items()):
        bench = next((b for b in p.benchmarks if b.name == bench_name), None)
        if bench is None:
            continue
        scored_as = (bench.model_dump(mode="json"), p.generation.model_dump(mode="json") if bench.kind == "generate"
                     else None)
        if first is None:
            first = (address, scored_as)
        elif scored_as != first[1]:
            problems.append((f"evals.{i}", f"{address} scores benchmark '{bench_name}' differently from {first[0]} "
                                           f"(its definition or generation settings): select pairs the same "
                                           f"examples scored the same way"))
    return problems


def coverage_problems(params: Params, evals: dict, deps: dict) -> list[tuple[str, str]]:
    """A candidate that no eval producing the metric lists: known here unless an eval with `ancestors`
    may reach it through a chain (then the build tells)."""
    producing = [p for p in evals.values() if params.metric in metric_names(p)]
    if any(p.ancestors for p in producing):
        return []
    listed = {m for p in producing for m in p.models}
    return [(f"candidates.{i}", f"no eval in evals scores {address} on {params.metric}: add it to the models "
                                f"of {params.evals[0]}")
            for i, address in enumerate(params.candidates)
            if address in deps and address not in listed and address not in params.candidates[:i]]


DEPS = Deps({}, checks=(dependency_problems,))


# ------------------------------------------------------------------ the rule, on plain lists

class SelectError(ValueError):
    """Scores the rule cannot choose from; the build reports it as bad input."""


def choose(scores: dict[str, list], metric: str, goal: str, confidence: float, tie_break: str,
           values: dict | None = None, compute: dict | None = None, samples: int = 1000, seed: int = 0) -> dict:
    """The selection among `scores` (candidate -> per-example scores, aligned: position i is one example
    for all, None where a candidate has no score), in candidates order.

    `values`: each candidate's point estimate (default: the mean of its scores); `compute`: each one's
    training compute (tie_break "cheapest"). Returns {best, tied, winner (None: refused), rows, reason};
    a row's diff_vs_best is how much better the best is than it (in the metric's units, positive: better)
    on the examples both scored, and bound the one-sided lower bound of that at `confidence`."""
    from forgebuild.rules.eval.evaluate import present, present_pairs
    from forgebuild.rules.eval.scoring import paired_bound

    order = list(scores)
    if values is None:
        values = {a: mean([v for v in s if present(v)]) for a, s in scores.items()}
    for address in order:
        if values[address] is None:
            raise SelectError(f"{address} has no score on {metric}: nothing to compare")
    sign = 1 if goal == "max" else -1
    best = max(order, key=lambda a: sign * values[a])  # equal values: the first in candidates order
    rows = {best: {"address": best, "diff_vs_best": 0.0, "bound": None, "pairs": None, "within_noise": None}}
    for address in order:
        if address == best:
            continue
        worse, better = (scores[address], scores[best]) if goal == "max" else (scores[best], scores[address])
        pair = paired_bound(*present_pairs(worse, better), confidence * 100, "lower", samples, seed)
        if not pair["n"]:
            raise SelectError(f"{best} and {address} have no example both scored on {metric}: nothing to compare")
        rows[address] = {"address": address, "diff_vs_best": pair["diff"], "bound": pair["bound"],
                         "pairs": pair["n"], "within_noise": pair["bound"] <= 0}
    tied = [a for a in order if a == best or rows[a]["within_noise"]]
    winner = best if len(tied) == 1 else tie_winner(tied, tie_break, compute or {})
    found = {"best": best, "tied": tied, "winner": winner, "rows": [rows[a] for a in order]}
    return {**found, "reason": reason(found, metric, goal, confidence, values, tie_break, compute or {})}


def mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def tie_winner(tied: list[str], tie_break: str, compute: dict) -> str | None:
    if tie_break == "refuse":
        return None
    if tie_break == "first":
        return tied[0]
    unknown = [a for a in tied if compute.get(a) is None]
    if unknown:
        raise SelectError(f"tie_break = \"cheapest\": the training compute of {unknown[0]} is unknown (it needs "
                          f"training_config.json, metrics.json and safetensors weights in its folder)")
    return min(tied, key=lambda a: (compute[a], tied.index(a)))


def reason(found: dict, metric: str, goal: str, confidence: float, values: dict, tie_break: str,
           compute: dict) -> str:
    """One sentence: why the winner (or why none)."""
    best, tied, winner = found["best"], found["tied"], found["winner"]
    level = f"{confidence * 100:g}%"
    head = f"{best} has the {'highest' if goal == 'max' else 'lowest'} {metric} ({values[best]:.4g})"
    if len(tied) == 1:
        closest = min((r for r in found["rows"] if r["address"] != best), key=lambda r: r["bound"])
        return (f"{head} and beats every other candidate beyond noise: the {level} lower bound of its paired "
                f"advantage is above 0 against each (the smallest: {closest['bound']:+.4g} against "
                f"{closest['address']})")
    others = ", ".join(a for a in tied if a != best)
    head += f", but {others} {'is' if len(tied) == 2 else 'are'} within noise of it at {level}"
    if winner is None:
        return f"{head}; tie_break = \"refuse\": none chosen"
    if tie_break == "first":
        return f"{head}; tie_break = \"first\" takes the first of them in candidates order: {winner}"
    return (f"{head}; tie_break = \"cheapest\" takes the one with the least training compute (parameters x "
            f"examples seen): {winner} ({compute[winner]:.4g})")


def refusal(found: dict, metric: str, goal: str, confidence: float, stats: dict) -> str:
    """The verdict of a refused tie: each tied candidate with its value, the best's advantage and its bound."""
    level = f"{confidence * 100:g}%"
    best = found["best"]
    lines = [f"{len(found['tied'])} candidates are within noise on {metric} ({goal}) at {level}; none chosen:"]
    for row in found["rows"]:
        if row["address"] not in found["tied"]:
            continue
        lines.append(f"  {row['address']}  {interval(stats[row['address']])}" + (
            "  best" if row["address"] == best else
            f"  {best} better by {row['diff_vs_best']:+.4g}, {level} lower bound {row['bound']:+.4g} "
            f"on {row['pairs']} paired examples"))
    lines.append("set tie_break = \"first\" or \"cheapest\" to choose among them")
    return "\n".join(lines)


def interval(stat: dict) -> str:
    """0.75 [0.62, 0.88] n=40, as the eval's reports write a value."""
    if stat.get("low") is None:
        return f"{stat['value']:.4g} n={stat.get('n')}"
    return f"{stat['value']:.4g} [{stat['low']:.4g}, {stat['high']:.4g}] n={stat['n']}"


# ------------------------------------------------------------------ building

def build(ctx) -> None:
    from forgebuild.rules.eval.evaluate import LOWER_IS_BETTER

    p = ctx.params
    goal = p.goal or ("min" if p.metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER else "max")
    reports = {e: read_json(os.path.join(ctx.inputs[f"evals.{i}"], "report.json")) for i, e in enumerate(p.evals)}
    found = {c: candidate_scores(ctx, c, reports) for c in p.candidates}
    keys = sorted({k for _, _, per_example in found.values() for k in per_example})
    scores = {c: [per_example.get(k) for k in keys] for c, (_, _, per_example) in found.items()}
    stats = {c: stat for c, (_, stat, _) in found.items()}
    compute = {c: training_compute(ctx.inputs[f"candidates.{i}"]) for i, c in enumerate(p.candidates)}
    try:
        chosen = choose(scores, p.metric, goal, p.confidence, p.tie_break, values={c: s["value"] for c, s in
                        stats.items()}, compute=compute, samples=p.bootstrap, seed=ctx.seed)
    except SelectError as e:
        raise ctx.bad_input(str(e)) from None
    write_selection(ctx, chosen, goal, found, compute)
    ctx.log(chosen["reason"])
    if chosen["winner"] is None:
        ctx.verdict(refusal(chosen, p.metric, goal, p.confidence, stats))
        return
    folder = ctx.inputs[f"candidates.{p.candidates.index(chosen['winner'])}"]
    for parent, _, files in os.walk(folder):
        for name in files:
            src = os.path.join(parent, name)
            if os.path.relpath(src, folder) != SELECTION:  # a selection's winner: ours says why this time
                ctx.place(src, os.path.relpath(src, folder))
    ctx.metrics({p.metric: stats[chosen["winner"]]["value"], "selected": chosen["winner"],
                 "reason": chosen["reason"]})


def write_selection(ctx, chosen: dict, goal: str, found: dict, compute: dict) -> None:
    p = ctx.params
    rows = [{**row, "digest": ctx.dep_digests[row["address"]], "eval": found[row["address"]][0],
             **{k: found[row["address"]][1].get(k) for k in ("value", "low", "high", "n")},
             "compute": compute[row["address"]]} for row in chosen["rows"]]
    rule = (f"the best {p.metric} by point estimate ({goal}) wins unless another candidate is within noise of it "
            f"(the one-sided {p.confidence * 100:g}% paired-bootstrap lower bound of the best's advantage over "
            f"it, on the examples both scored, is not above 0); a tie goes to tie_break = \"{p.tie_break}\"")
    with open(os.path.join(ctx.out, SELECTION), "w", encoding="utf-8") as f:
        json.dump({"winner": chosen["winner"], "metric": p.metric, "goal": goal, "confidence": p.confidence,
                   "tie_break": p.tie_break, "rule": rule, "reason": chosen["reason"], "best": chosen["best"],
                   "tied": chosen["tied"], "candidates": rows}, f, indent=2, sort_keys=True)
        f.write("\n")


def candidate_scores(ctx, address: str, reports: dict) -> tuple[str, dict, dict]:
    """(the eval that scored it, its value with interval, example key -> score) from the first eval in
    `evals` whose report has `address` on the metric, checked to be the model this build reads."""
    metric = ctx.params.metric
    for eval_address, report in reports.items():
        stat = report.get("results", {}).get(address, {}).get(metric)
        if stat is None:
            continue
        scored_at, reading = report.get("model_digests", {}).get(address), ctx.dep_digests[address]
        if scored_at != reading:
            raise ctx.bad_input(f"{eval_address} scored {address} at {str(scored_at)[:12]}, not the {address} this "
                                f"build reads ({reading[:12]}): build {eval_address} again")
        folder = ctx.inputs[f"evals.{ctx.params.evals.index(eval_address)}"]
        return eval_address, stat, example_scores(ctx, folder, report, address)
    raise ctx.bad_input(f"no eval in evals ({', '.join(reports)}) scored {address} on {metric}: add it to the "
                        f"models of {ctx.params.evals[0]}")


def example_scores(ctx, folder: str, report: dict, address: str) -> dict:
    """Example key (the benchmark line, or a perplexity holdout's document) -> this model's score on the
    metric; a perplexity (or loss) by each document's loss, as the eval's comparisons pair them."""
    bench, name = ctx.params.metric.split(".", 1)
    kind = next((b["kind"] for b in report.get("benchmarks", []) if b["name"] == bench), None)
    if kind not in ("generate", "choice", "perplexity"):
        raise ctx.bad_input(f"{ctx.params.metric}: select compares the per-example scores of generate, choice and "
                            f"perplexity benchmarks; '{bench}' is {kind or 'not a benchmark of the report'}")
    key, name = ("document", "loss") if kind == "perplexity" else ("line", name)
    path = os.path.join(folder, report["samples"][address][bench])
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {row[key]: row["scores"].get(name) for row in rows}


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def training_compute(folder: str) -> float | None:
    """Parameters (every tensor's elements in the safetensors weights) x examples seen (the steps
    metrics.json records x train.batch_size x train.grad_accum from training_config.json): None for a
    folder that records no training (an imported model)."""
    from safetensors import safe_open

    config_path, metrics_path = (os.path.join(folder, n) for n in ("training_config.json", "metrics.json"))
    weights = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if not (weights and os.path.exists(config_path) and os.path.exists(metrics_path)):
        return None
    train = read_json(config_path).get("params", {}).get("train") or {}
    steps = read_json(metrics_path).get("steps")
    if not (steps and train.get("batch_size")):
        return None
    parameters = 0
    for path in weights:
        with safe_open(path, framework="numpy") as f:
            for name in f.keys():
                parameters += math.prod(f.get_slice(name).get_shape())
    return float(parameters) * steps * train["batch_size"] * train.get("grad_accum", 1)

