"""curate: verify, filter and shape generated samples into training data (issue 15).

    [curate.sums]
    samples = "generate:sums"          # a generate target, or a JSONL file in samples.jsonl's shape
    verify = [{ kind = "answer", match = "numeric" }, "verifiers.py:balanced"]
    shape = "prompt_completion"        # or preference, prompts, samples
    score = "balanced"                 # the verifier whose number ranks samples (default: share passed)
    splits = { train = 0.9, test = 0.1 }

Verifiers are outside the generation's key by construction: this is its own target, so changing a
verifier rebuilds only this one, the samples being a cache hit. The artifact has a dataset's layout
(SPLIT.jsonl, dataset.json, stats.json) so every recipe that trains on a dataset trains on it, plus
rejected.jsonl (each rejected sample with its reasons and scores) and report.html.
See docs/rules/curate.md.
"""
from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from forgebuild import limits
from forgebuild.errors import did_you_mean
from forgebuild.rules import runtime
from forgebuild.rules.dataset import TRAINER, canonical, normal_content, split_of, split_problems, write_json
from forgebuild.rules.synth.verifiers import SCORED, Verifier, file_problems, name_problems

version = "1"
Shape = Literal["prompt_completion", "preference", "prompts", "samples"]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: str = Field(description="a generate target, or a JSONL file of the project in samples.jsonl's shape")
    verify: list[Verifier] = Field(default_factory=list, description="the verifiers every sample is run through; a "
                                                                     "sample passes when all pass")
    shape: Shape = Field("prompt_completion", description="prompt_completion (best passing sample per prompt), "
                                                          "preference, prompts (RL prompts) or samples (every "
                                                          "distinct passing sample)")
    score: str | None = Field(None, description="the verifier (code or reward_model) whose number ranks samples; "
                                                "unset: the share of verifiers a sample passes")
    splits: dict[str, float] = Field(default_factory=lambda: {"train": 1.0},
                                     description="split name -> fraction, drawn by prompt; fractions sum to 1")
    split_seed: int = Field(0, description="salt of the split hash: change it to draw another partition")
    pass_rate: tuple[float, float] | None = Field(None, description="shape prompts: keep the prompts whose share "
                                                                    "of passing samples is in [lo, hi]")
    workers: int = runtime(4, ge=1, le=limits.THREADS, description="python verifiers run at once. Not in the key")
    description: str = runtime("", description="a note for people, kept in the build record; not part of the key")


def inputs(params: Params) -> dict:
    found = {"samples": params.samples}
    found.update({f"verify.{i}": v.input for i, v in enumerate(params.verify) if v.input})
    return found


def requires(params: Params) -> dict[str, str]:
    """numpy for the stats' bootstrap, and jsonschema when a json verifier is used (the `synth` extra)."""
    json_schema = {"jsonschema": "synth"} if any(v.kind == "json" for v in params.verify) else {}
    return {"numpy": "synth", **json_schema}


def environment(params: Params) -> dict:
    libraries = ["numpy"] + (["jsonschema"] if any(v.kind == "json" for v in params.verify) else [])
    if any(v.kind == "reward_model" for v in params.verify):
        libraries += ["torch", "transformers", "safetensors"]
    return {"libraries": libraries}


def check(params: Params) -> list[tuple[str, str]]:
    problems = name_problems(params.verify)
    problems += _score_problems(params)
    if params.pass_rate is not None:
        low, high = params.pass_rate
        if not 0 <= low <= high <= 1:
            problems.append(("pass_rate", f"expected [lo, hi] with 0 <= lo <= hi <= 1, got [{low:g}, {high:g}]"))
        if params.shape != "prompts":
            problems.append(("pass_rate", f"applies to shape \"prompts\" only (this shape is \"{params.shape}\")"))
    return problems + split_problems(params.splits)


def _score_problems(params: Params) -> list[tuple[str, str]]:
    if params.score is None:
        return []
    named = {v.label: v for v in params.verify}
    if params.score not in named:
        return [("score", f"'{params.score}' names no verifier{did_you_mean(params.score, named)}; "
                          f"verifiers: {', '.join(named) or 'none'}")]
    kind = named[params.score].kind
    if kind not in SCORED:
        return [("score", f"verifier '{params.score}' ({kind}) gives no number, only pass or fail; "
                          f"score by a code or reward_model verifier")]
    return []


def check_deps(params: Params, deps: dict) -> list[tuple[str, str]]:
    problems = []
    dep = deps.get(params.samples)
    if dep is not None and dep["kind"] != "generate":
        problems.append(("samples", f"{params.samples} is a {dep['kind']} target; 'samples' takes a generate "
                                    f"target or a JSONL file"))
    elif dep is not None and params.shape == "preference" and getattr(dep["params"], "n", None) == 1:
        problems.append(("shape", f"a preference pair needs two samples of a prompt, and {params.samples} "
                                  f"makes one (n = 1); raise its n"))
    for i, v in enumerate(params.verify):
        model = deps.get(v.model) if v.kind == "reward_model" else None
        if model is None:
            continue
        if model["kind"] != "model":
            problems.append((f"verify.{i}", f"{v.model} is a {model['kind']} target; a reward model is a model target"))
        elif getattr(model["params"], "recipe", None) != "reward":
            problems.append((f"verify.{i}", f"{v.model} is not a reward model (its recipe is "
                                            f"\"{model['params'].recipe}\"): build one with recipe = \"reward\""))
    return problems


def check_inputs(params: Params, files: dict) -> list[tuple[str, str]]:
    return file_problems(params.verify, files)


# ------------------------------------------------------------------ build

def build(ctx) -> None:
    from forgebuild.rules.synth import curate_report
    from forgebuild.rules.synth.shapes import FORMATS, Judged, shape
    from forgebuild.rules.synth.verifiers import Env, VerifierError, run

    p = ctx.params
    samples = read_samples(ctx)
    try:
        outcomes = [run(v, samples, Env(ctx, ctx.inputs.get(f"verify.{i}"), p.workers))
                    for i, v in enumerate(p.verify)]
    except VerifierError as e:
        raise ctx.failure(str(e)) from None
    judged = [Judged(s, all(o.passed[i] for o in outcomes), _score(p, outcomes, i)) for i, s in enumerate(samples)]
    rows, kept = shape(p.shape, judged, p.pass_rate)
    if not rows:
        raise ctx.bad_input(f"no records left: {len(samples)} samples of {len({s['prompt_index'] for s in samples})} "
                            f"prompts, {sum(j.passed for j in judged)} passed; shape {p.shape} kept none")
    split_counts = _write_splits(ctx, rows, FORMATS[p.shape])
    rejected = _write_rejected(ctx, judged, outcomes)
    stats = curate_report.statistics(judged, outcomes, kept, split_counts, ctx.seed)
    stats["shape"] = p.shape
    write_json(os.path.join(ctx.out, "stats.json"), stats)
    with open(os.path.join(ctx.out, "report.html"), "w", encoding="utf-8", newline="\n") as f:
        f.write(curate_report.render_html(ctx.target, stats, rejected))
    ctx.log(f"{stats['passed']} of {stats['samples']} samples passed; {len(rows)} records: "
            + ", ".join(f"{name} {n}" for name, n in split_counts.items()))


def _score(p: Params, outcomes: list, i: int) -> float:
    if p.score is None:
        return sum(o.passed[i] for o in outcomes) / len(outcomes) if outcomes else 1.0
    found = next(o for o in outcomes if o.name == p.score)
    value = found.scores[i]
    return float(found.passed[i]) if value is None else value  # a code verifier that said pass or fail


SAMPLE_KEYS = ("prompt", "completion")


def read_samples(ctx) -> list[dict]:
    """samples.jsonl of a generate target, or a project's JSONL file in its shape; a row without a
    prompt or a completion is bad input naming the file and line."""
    from forgebuild.rules.rows import DataError, decode, jsonl_rows

    path = ctx.inputs["samples"]
    label = ctx.params.samples
    if os.path.isdir(path):
        path, label = os.path.join(path, "samples.jsonl"), f"{label}/samples.jsonl"
        if not os.path.isfile(path):
            raise ctx.bad_input(f"{ctx.params.samples} has no samples.jsonl: it is not a generate target's output")
    try:
        with open(path, "rb") as f:
            text = decode(f.read(), label)
    except DataError as e:
        raise ctx.bad_input(str(e)) from None
    samples, seen, counts = [], {}, {}
    for number, row, problem in jsonl_rows(text):
        if problem:
            raise ctx.bad_input(f"{label}:{number}: {problem}")
        missing = [k for k in SAMPLE_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise ctx.bad_input(f"{label}:{number}: a sample needs {' and '.join(missing)}")
        # a file of the project may leave out prompt_index and sample: told by the prompt and the order
        index = row.get("prompt_index", seen.setdefault(json.dumps(row["prompt"], sort_keys=True), len(seen)))
        counts[index] = counts.get(index, 0) + 1
        samples.append({"prompt": row["prompt"], "completion": row["completion"], "prompt_index": index,
                        "sample": row.get("sample", counts[index] - 1), "columns": row.get("columns") or {},
                        "key": row.get("key")})
    if not samples:
        raise ctx.bad_input(f"{label}: no samples")
    return samples


def _write_splits(ctx, rows: list[dict], fmt: str) -> dict[str, int]:
    p = ctx.params
    fractions = sorted(p.splits.items())
    columns = sorted({c for row in rows for c in row})
    by_split: dict[str, list[str]] = {name: [] for name, _ in fractions}
    for row in rows:  # drawn by prompt: every record of one prompt lands in one split
        split = split_of(canonical(normal_content(row["prompt"])), fractions, p.split_seed)
        by_split[split].append(json.dumps({c: row.get(c) for c in columns}, sort_keys=True, ensure_ascii=False))
    for name, lines in by_split.items():
        with open(os.path.join(ctx.out, f"{name}.jsonl"), "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
        if not lines:
            ctx.log(f"warning: split {name} is empty")
    write_json(os.path.join(ctx.out, "dataset.json"), {
        "format": fmt, "shape": p.shape, "conversational": isinstance(rows[0]["prompt"], list), "columns": columns,
        "trainer": TRAINER[fmt],
        "splits": {name: {"path": f"{name}.jsonl", "rows": len(by_split[name]), "fraction": fraction}
                   for name, fraction in fractions}})
    return {name: len(lines) for name, lines in by_split.items()}


def _write_rejected(ctx, judged: list, outcomes: list) -> list[dict]:
    rejected = []
    for i, j in enumerate(judged):
        if j.passed:
            continue
        s = j.sample
        rejected.append({"prompt": s["prompt"], "completion": s["completion"], "prompt_index": s["prompt_index"],
                         "sample": s["sample"], "key": s["key"], "columns": s["columns"],
                         "reasons": [o.reasons[i] for o in outcomes if o.reasons[i]],
                         "scores": {o.name: o.scores[i] for o in outcomes if o.scores[i] is not None}})
    with open(os.path.join(ctx.out, "rejected.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rejected))
    return rejected

