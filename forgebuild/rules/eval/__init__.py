"""eval: models scored on benchmarks, with 95% intervals, comparisons between models, and gates.

    [eval.release]
    models = ["model:sft-v1", "model:rl-v3"]
    benchmarks = [
        "bench/arith.jsonl",                                        # generation, exact match
        { name = "sums", data = "bench/sums.jsonl", metrics = ["exact_match", "numeric"], tolerance = 0.5 },
        { name = "mc", kind = "choice", data = "bench/mc.jsonl" },   # multiple choice by log-likelihood
        { name = "holdout", kind = "perplexity", corpus = "corpus:repo" },
        { name = "harness", kind = "lm-eval", path = "eval/tasks", tasks = ["arith_gen"] },
    ]
    generation = { max_new_tokens = 16, stop = ["\\n"] }
    gate = { "arith.exact_match" = ">= 0.6", "holdout.perplexity" = "<= 40", contamination = "<= 0.1%" }
    contamination = { check = true, ngram = 13 }                    # the default

Each model x benchmark evaluation is cached on its own (a memo keyed by the model's
digest, the benchmark's files and settings): adding a model to `models` evaluates
that model only. The artifact: report.json, report.md, report.html and
samples/MODEL/BENCHMARK.jsonl (prompt, output, reference, score per example). A
failed gate fails the build (exit 1) but the report is kept and cached: asking
again answers from the cache. Every corpus, dataset, curate and images target each model is
built from is checked against the generate and choice benchmarks' prompts
(contamination.py): `contamination` and `BENCH.contamination` are results a gate may
hold. See docs/rules/eval.md.
"""
from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from forgebuild import limits
from forgebuild.rules.eval.contamination import CHECKED, KINDS, METRIC, is_metric
from forgebuild.rules.eval.gate import UNSIGNED, conditions, gate_conditions, judged_models, tail_problem
from forgebuild.planning.plan import ADDRESS
from forgebuild.rules import runtime
from forgebuild.rules.model.common import Track

version = "1"
preload = ("forgebuild.rules.eval.evaluate",)  # what a warm worker imports for it (engine/warm.py)

NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
CODE = re.compile(r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$")
GENERATE_METRICS = ("exact_match", "contains", "regex", "numeric")
FIXED_METRICS = {"choice": ("accuracy", "accuracy_norm"), "perplexity": ("perplexity", "loss")}


class Benchmark(BaseModel):
    """One benchmark: a string "bench/arith.jsonl" is { data = "bench/arith.jsonl" } named "arith"."""
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the metric prefix: NAME.METRIC (default: the data file's name)")
    kind: Literal["generate", "choice", "perplexity", "lm-eval"] = Field(
        "generate", description="generate: answers scored against `answer`; choice: log-likelihood of `choices`; "
                                "perplexity: on a corpus's holdout; lm-eval: lm-evaluation-harness tasks")
    data: str | None = Field(None, description="generate, choice: a JSONL file of the project, a target whose "
                                                "output holds one .jsonl file (e.g. run:bench, a generator), or a "
                                                "dataset-like target (images:NAME, dataset:NAME) read by `split`")
    split: str | None = Field(None, description=(
        "generate, choice: the split of a dataset-like `data` target (one with a dataset.json) to read; "
        "default: test"))
    corpus: str | None = Field(None, description="perplexity: the corpus target whose holdout split is scored")
    metrics: list[Literal["exact_match", "contains", "regex", "numeric"]] = Field(
        default_factory=lambda: ["exact_match"], description="generate: how outputs are scored")
    pattern: str | None = Field(None, description="metric regex: the regular expression an output must match")
    tolerance: float = Field(0.0, ge=0, description="metric numeric: the largest absolute error that counts as right")
    scorers: list[str] = Field(default_factory=list, description=(
        "generate: code references FILE.py:FUNCTION called as f(prompts=, completions=, **columns) returning one "
        "number per example; each is a metric named after the function"))
    prompt_field: str = Field("prompt", description="generate, choice: the prompt's column")
    answer_field: str = Field("answer", description="generate, choice: the reference's column")
    choices_field: str = Field("choices", description="choice: the column holding the list of choices")
    seq_len: int = Field(256, ge=8, le=limits.TOKENS, description="perplexity: tokens per window")
    path: str | None = Field(None, description="lm-eval: the folder of task YAML files (and their data)")
    tasks: list[str] = Field(default_factory=list, description="lm-eval: task names in that folder")
    limit: int | None = Field(None, ge=1, le=limits.AMOUNT, description="examples (documents, lm-eval samples) at most; "
                                                      "default: the eval's `limit`")

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value):
        if isinstance(value, str):  # "bench/arith.jsonl": a generation benchmark named after the file
            stem = os.path.splitext(os.path.basename(value))[0]
            return {"name": re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "bench", "data": value}
        return value


class Generation(BaseModel):
    """`generation = { max_new_tokens = 32, stop = ["\\n"], temperature = 0.0 }`"""
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(32, ge=1, le=limits.TOKENS, description="tokens generated per example at most")
    stop: list[str] = Field(default_factory=lambda: ["\n"], description="an output ends at the first of these")
    temperature: float = Field(0.0, ge=0, description="0: greedy (the default); above 0: sampling, seeded")


class Contamination(BaseModel):
    """`contamination = { check = true, ngram = 13 }`: each model's upstream data against the prompts."""
    model_config = ConfigDict(extra="forbid")
    check: bool = Field(True, description="check every corpus, dataset, curate and images target each model is "
                                          "built from against the generate and choice benchmarks' prompts (an image "
                                          "benchmark's examples by their images); false: no check")
    ngram: int = Field(13, ge=1, le=limits.TOKENS, description=(
        "words in a shared run that makes a prompt contaminated; a prompt shorter than this is contaminated "
        "when a text (or a line of one) equals it"))


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=1, description="the model targets to evaluate")
    benchmarks: list[Benchmark] = Field(min_length=1, description="what they are evaluated on")
    generation: Generation = Field(default_factory=Generation, description="settings of generation benchmarks")
    limit: int | None = Field(None, ge=1, le=limits.AMOUNT, description="examples per benchmark at most (the first N)")
    gate: dict[str, str | list[str]] = Field(default_factory=dict, description=(
        "NAME.METRIC -> a condition or a list of them: \">= 0.6\", \"<= 0.1 * vocab\", "
        "\">= model:base + 0.2 @ 95%\", \">= parent - 0.02 @ 95%\"; every one must hold or the build fails"))
    gate_models: list[str] | None = Field(None, description="the models the gates judge; default: the last of models")
    ancestors: bool = Field(False, description=(
        "also evaluate every ancestor of the models (their `base` chain), each before the first model built on it"))
    contamination: Contamination = Field(default_factory=Contamination, description=(
        "the check of each model's training data against the benchmarks: results `contamination` and "
        "`BENCH.contamination`"))
    bootstrap: int = Field(1000, ge=100, le=limits.RESAMPLES, description="bootstrap resamples for the 95% intervals")
    batch_size: int = runtime(8, ge=1, le=limits.BATCH, description="examples per forward pass. Not in the key")
    threads: int = runtime(0, ge=0, le=limits.THREADS, description="CPU threads for torch; 0 means every core. Not in the key")
    device: Literal["auto", "cpu", "cuda"] = runtime("auto", description="where to evaluate. Not in the key")
    track: Track | None = runtime(None, description=(
        "log each model's metrics (value, low, high) to MLflow and/or TensorBoard, one run per eval key and "
        "model. Not in the key"))


def forge_defaults() -> dict:
    """`[forge] track`: the tracking of every eval that sets none, as for the training stages."""
    return {"track": Track}


def inputs(params: Params) -> dict:
    found = {f"models.{i}": m for i, m in enumerate(params.models)}
    for i, bench in enumerate(params.benchmarks):
        for key in ("data", "corpus", "path"):
            if getattr(bench, key):
                found[f"benchmarks.{i}.{key}"] = getattr(bench, key)
        for j, ref in enumerate(bench.scorers):
            if CODE.match(ref):
                found[f"benchmarks.{i}.scorers.{j}"] = ref.rsplit(":", 1)[0]
    return found


def upstream_inputs(params: Params) -> dict:
    """contamination.I: every corpus, dataset and curate target models[I] is built from (planning finds them)."""
    if not params.contamination.check:
        return {}
    return {f"{METRIC}.{i}": ([address], KINDS) for i, address in enumerate(params.models)}


def environment(params: Params) -> dict:
    libraries = ["torch", "transformers"]
    if any(b.kind == "lm-eval" for b in params.benchmarks):
        libraries.append("lm_eval")
    return {"libraries": libraries}


def requires(params: Params) -> dict[str, str]:
    """The modules the build imports, by the extra that installs them (checked before a build starts)."""
    modules = {"torch": "eval", "transformers": "eval", "pyarrow": "eval", "matplotlib": "eval"}
    if any(b.kind == "lm-eval" for b in params.benchmarks):
        modules.update(lm_eval="eval", yaml="eval")
    if any((b.data or "").startswith("images:") for b in params.benchmarks):
        modules["PIL"] = "eval"  # a benchmark of pictures opens them
    if params.track is not None:
        modules.update(params.track.modules())
    return modules


# ------------------------------------------------------------------ checks

def metric_names(params: Params) -> list[str]:
    """Every NAME.METRIC the eval reports (lm-eval: NAME.TASK.* until its YAML is read at build time)."""
    names = []
    for bench in params.benchmarks:
        if bench.kind == "generate":
            found = [*bench.metrics, *(ref.rsplit(":", 1)[-1] for ref in bench.scorers)]
        elif bench.kind == "lm-eval":
            found = [f"{task}.*" for task in bench.tasks]
        else:
            found = FIXED_METRICS[bench.kind]
        names += [f"{bench.name}.{metric}" for metric in found]
    return names


def contamination_names(params: Params) -> list[str]:
    """BENCH.contamination per generate or choice benchmark, and contamination: results a gate may hold (a
    count, with no interval to pair: no select or comparison reads them)."""
    checked = [b.name for b in params.benchmarks if b.kind in CHECKED] if params.contamination.check else []
    return [f"{name}.{METRIC}" for name in checked] + ([METRIC] if checked else [])


def check(params: Params) -> list[tuple]:
    problems = []
    for key in ("models", "gate_models"):
        for i, address in enumerate(getattr(params, key) or []):
            if not ADDRESS.match(address):
                problems.append((f"{key}.{i}", f"'{address}' is not a target reference: write model:NAME"))
    for gated in params.gate_models or []:
        if gated not in params.models:
            problems.append(("gate_models", f"{gated} is not among models"))
    seen = set()
    for i, bench in enumerate(params.benchmarks):
        problems += [(f"benchmarks.{i}.{key}", message) for key, message in benchmark_problems(bench)]
        if bench.name in seen:
            problems.append((f"benchmarks.{i}.name", f"two benchmarks are named '{bench.name}'"))
        seen.add(bench.name)
    problems += gate_problems(params)
    return problems


def benchmark_problems(bench: Benchmark) -> list[tuple[str, str]]:
    needs = {"generate": "data", "choice": "data", "perplexity": "corpus", "lm-eval": "path"}[bench.kind]
    problems = []
    if not NAME.match(bench.name):
        problems.append(("name", f"'{bench.name}' is not a benchmark name: letters, digits, '_' and '-'"))
    if getattr(bench, needs) is None:
        problems.append((needs, f"a {bench.kind} benchmark needs '{needs}'"))
    for key in ("data", "corpus", "path"):
        if key != needs and getattr(bench, key) is not None:
            problems.append((key, f"'{key}' is not used by a {bench.kind} benchmark (it takes '{needs}')"))
    if bench.split is not None and bench.kind not in ("generate", "choice"):
        problems.append(("split", f"'split' is not used by a {bench.kind} benchmark (it names a split of a "
                                  f"generate or choice benchmark's data)"))
    elif bench.split is not None and bench.data and not ADDRESS.match(bench.data):
        problems.append(("split", f"'split' names a split of a dataset-like target (images:NAME, dataset:NAME); "
                                  f"{bench.data} is a file"))
    if bench.kind == "lm-eval" and not bench.tasks:
        problems.append(("tasks", "an lm-eval benchmark needs the names of its tasks"))
    if bench.kind != "generate" and (bench.scorers or bench.metrics != ["exact_match"]):
        problems.append(("metrics", f"metrics and scorers are for generate benchmarks; a {bench.kind} benchmark "
                                    f"reports {', '.join(FIXED_METRICS.get(bench.kind, ('its tasks metrics',)))}"))
    if "regex" in bench.metrics and not bench.pattern:
        problems.append(("pattern", "metric regex needs a pattern"))
    if bench.pattern:
        try:
            re.compile(bench.pattern)
        except re.error as e:
            problems.append(("pattern", f"not a regular expression: {e}"))
    for j, ref in enumerate(bench.scorers):
        if not CODE.match(ref):
            problems.append((f"scorers.{j}", f"'{ref}' is not a code reference: write FILE.py:FUNCTION"))
    return problems


def check_inputs(params: Params, files: dict) -> list[tuple[str, str]]:
    """Each scorer's function looked up in its file (parsed, not imported)."""
    from forgebuild.rules.model.reward_functions import code_problem

    problems = []
    for i, bench in enumerate(params.benchmarks):
        for j, ref in enumerate(bench.scorers):
            key = f"benchmarks.{i}.scorers.{j}"
            message = code_problem(ref, files[key][0][1]) if files.get(key) else None
            if message:
                problems.append((key, message))
    return problems


def gate_problems(params: Params) -> list[tuple]:
    """Each gate's metric and conditions; a model a condition names must be evaluated (its parent and the
    ancestors are known from the other targets: see check_deps)."""
    produced = metric_names(params)
    gated = produced + contamination_names(params)
    problems = []
    for metric, value in params.gate.items():
        if not any(metric == name or (name.endswith(".*") and metric.startswith(name[:-1])) for name in gated):
            # the benchmarks' own metrics: every eval with a generate or choice benchmark also has contamination
            problems.append((("gate", metric), f"the eval produces no metric '{metric}'; it produces "
                                               f"{', '.join(produced)}"))
        if not conditions(value):
            problems.append((("gate", metric), "an empty list: write one condition or more"))
        for key, condition in gate_conditions(metric, value):
            if isinstance(condition, str):
                problems.append((key, condition))
            elif message := condition_problem(params, metric, condition):
                problems.append((key, message))
    return problems


def condition_problem(params: Params, metric: str, condition) -> str | None:
    """What is wrong with a condition that parses, seen from this eval alone (the first thing)."""
    against = condition.against
    if condition.relative and is_metric(metric):
        return (f"'{condition.text}': contamination is a count of this benchmark's examples, not an estimate: "
                f"hold it against a number (\"<= 0.1%\")")
    if condition.relative and against != "parent" and against in judged_models(params):
        return f"'{condition.text}' judges {against} against itself: gate_models names it"
    if condition.relative and against != "parent" and not params.ancestors and against not in params.models:
        return (f"'{condition.text}' compares with {against}, which is not evaluated: add it to models "
                f"(or set ancestors = true if it is an ancestor of one of them){spacing_hint(params, against)}")
    if against == "vocab" and metric.rsplit(".", 1)[-1] != "perplexity":
        return (f"'{condition.text}': a multiple of the vocabulary size is a perplexity's scale (a uniform "
                f"guess scores the vocabulary size); {metric} is not a perplexity")
    return tail_problem(condition, params.bootstrap) if condition.relative else None


def spacing_hint(params: Params, against: str) -> str:
    """"model:base-0.1" names the model base-0.1; when model:base is evaluated, that was meant."""
    meant = re.match(rf"^(.+?)-({UNSIGNED})$", against)
    if meant and meant.group(1) in params.models:
        return f"; for {meant.group(1)} less a margin, put spaces around the sign: {meant.group(1)} - {meant.group(2)}"
    return ""


def ancestry(params: Params, deps: dict) -> dict[str, str | None]:
    """model -> the `base` it is built on (None: none), for the models and, with `ancestors`, every model
    target above them; a chain stops at a target that is not valid (reported where it is declared)."""
    parents, todo = {}, [(address, deps.get(address)) for address in params.models]
    while todo:
        address, found = todo.pop()
        if address in parents or not found or found["kind"] != "model":
            continue
        base = getattr(found["params"], "base", None)
        parents[address] = base
        if params.ancestors and base:
            todo.append((base, found["deps"].get(base)))
    return parents


def check_deps(params: Params, deps: dict) -> list[tuple[str, str]]:
    problems = []
    for i, address in enumerate(params.models):
        if address in deps and deps[address]["kind"] != "model":
            problems.append((f"models.{i}", f"{address} is a {deps[address]['kind']} target, not a model"))
        if adapter_only(deps.get(address)):
            problems.append((f"models.{i}", f"{address} emits a LoRA adapter only (lora.merge = false); "
                                            f"set merge = true there to evaluate it"))
    problems += ancestor_problems(params, deps) + modality_problems(params, deps)
    for i, bench in enumerate(params.benchmarks):
        problems += data_problems(i, bench, deps)
        corpus = deps.get(bench.corpus)
        if corpus and corpus["kind"] != "corpus":
            problems.append((f"benchmarks.{i}.corpus", f"{bench.corpus} is a {corpus['kind']} target, not a corpus"))
        elif corpus and (gap := holdout_gap(bench.corpus, corpus)):
            problems.append((f"benchmarks.{i}.corpus", no_holdout_message(bench.corpus, gap)))
    return problems


def data_problems(index: int, bench: Benchmark, deps: dict) -> list[tuple[str, str]]:
    """A dataset-like data target (images, dataset) has the split the benchmark reads."""
    data = deps.get(bench.data) if bench.kind in ("generate", "choice") else None
    splits = getattr((data or {}).get("params"), "splits", None)
    if not data or not isinstance(splits, dict):
        return []
    split = bench.split or "test"
    if split in splits:
        return []
    return [(f"benchmarks.{index}.{'split' if bench.split else 'data'}",
             f"{bench.data} has no split '{split}'; its splits: {', '.join(sorted(splits))}"
             + ("" if bench.split else " (set split)"))]


def modality_problems(params: Params, deps: dict) -> list[tuple[str, str]]:
    """A model known to be text-only, with the first benchmark that reads an images target (one message
    per model)."""
    images = [b for b in params.benchmarks
              if b.kind in ("generate", "choice") and (deps.get(b.data) or {}).get("kind") == "images"]
    if not images:
        return []
    return [(f"models.{j}", f"{address} is a text-only model ({why}) and benchmark {images[0].name} reads images "
                            f"({images[0].data}): evaluate a vision-language model on it")
            for j, address in enumerate(params.models) if (why := text_only(deps.get(address)))]


def text_only(found: dict | None, seen: int = 0) -> str | None:
    """Why the model target is known to be text-only (its base chain starts with a pretrain), or None:
    a vision-language recipe, an import (its folder says, at build time), or not known here."""
    params = (found or {}).get("params")
    recipe = getattr(params, "recipe", None)
    if recipe == "pretrain":
        return "recipe pretrain"
    base = getattr(params, "base", None)
    if recipe == "vlm" or not base or seen > 100:  # a cycle is reported where it is declared
        return None
    inherited = text_only(found["deps"].get(base), seen + 1)
    return inherited and (inherited if " on " in inherited else f"built on {base}, {inherited}")


def adapter_only(found: dict | None) -> bool:
    lora = getattr((found or {}).get("params"), "lora", None)
    return lora is not None and not lora.merge


def ancestor_problems(params: Params, deps: dict) -> list[tuple]:
    """Every model a relative gate compares with is evaluated: listed, or an ancestor with `ancestors`."""
    # (an ancestor is never a LoRA adapter only: the model rule refuses to build on one)
    parents = ancestry(params, deps)
    evaluated = set(params.models) | (set(parents) if params.ancestors else set())
    # a chain that stops at an invalid target has unknown ancestors above it: that target's own error
    # is the one message, not a cascade of "not an ancestor" here
    known = not params.ancestors or all(base is None or base in parents for base in parents.values())
    problems = []
    for metric, value in params.gate.items():
        for key, condition in gate_conditions(metric, value):
            if isinstance(condition, str) or not condition.relative:
                continue
            for judged in judged_models(params):
                if judged not in parents:  # not a valid model target: said where it is declared
                    continue
                message = compared_problem(condition, judged, parents, evaluated, params.ancestors, known)
                if message and (key, message) not in problems:
                    problems.append((key, message))
    return problems


def compared_problem(condition, judged: str, parents: dict, evaluated: set, ancestors: bool,
                     known: bool) -> str | None:
    if ancestors and not known:  # said where the chain breaks
        return None
    if condition.against != "parent":
        if ancestors and condition.against not in evaluated:
            return (f"'{condition.text}' compares with {condition.against}, which is neither among models nor "
                    f"an ancestor of them")
        return None  # without ancestors it must be listed: gate_problems says so
    parent = parents[judged]
    if parent is None:
        return f"'{condition.text}': {judged} has no parent (it is built on no base model)"
    if parent not in evaluated:
        return (f"'{condition.text}': the parent of {judged} is {parent}, which is not evaluated: add it to "
                f"models, or set ancestors = true")
    return None


def holdout_gap(address: str, corpus: dict, seen: tuple = ()) -> str | None:
    """None when this corpus target will have a holdout split, else the corpus that leaves it empty.

    A corpus of sources holds out `holdout` of its documents, and keeps held out those of the
    corpora among its sources; a mix's holdout is drawn from each part (weight > 0) in proportion,
    so it is as large as its smallest part's allows: empty when one part has none."""
    p, deps = corpus["params"], corpus.get("deps", {})
    if address in seen:  # a cycle: reported as one elsewhere
        return None
    parts = [a for a, w in sorted(p.mix.items()) if w > 0 and deps.get(a, {}).get("kind") == "corpus"]
    if p.mix:
        return next((gap for a in parts if (gap := holdout_gap(a, deps[a], (*seen, address)))), None)
    if p.holdout > 0:
        return None
    sources = [a for a in p.sources if deps.get(a, {}).get("kind") == "corpus"]
    if any(holdout_gap(a, deps[a], (*seen, address)) is None for a in sources):
        return None
    return address


def no_holdout_message(address: str, gap: str) -> str:
    if gap == address:
        return f"{address} has no holdout to measure perplexity on: set holdout (a fraction, e.g. 0.05) in {address}"
    return (f"{address} has no holdout to measure perplexity on: it mixes {gap}, which has none (a mix holds out "
            f"from every part in proportion); set holdout in {gap}")


# ------------------------------------------------------------------ building

def build(ctx) -> None:
    from forgebuild.rules.eval.evaluate import evaluate

    evaluate(ctx)
