"""The eval rule's build: every model x benchmark scored (each a cached memo), then intervals,
comparisons, gates and the reports. Imported inside the build process only."""
from __future__ import annotations

import glob
import json
import math
import os

import torch  # this module runs inside an eval's build process only

from forgebuild.rules.eval.cells import cells_of
from forgebuild.rules.eval.gate import OPS, gate_conditions, judged_models, stated

# Lower is better for these: a comparison's "better" direction and the report's reading depend on it.
LOWER_IS_BETTER = ("perplexity", "loss")


def evaluate(ctx) -> None:
    from forgebuild.rules.model import tracking, training

    prepare(ctx)
    p = ctx.params
    per_model = {}
    for address in ctx.evaluated:
        per_model[address] = {bench.name: scored(ctx, address, bench) for bench in p.benchmarks}
    report = assemble(ctx, per_model, contamination_check(ctx))
    from forgebuild.rules.eval.report import training_trends, write_reports

    logs = {a: training_log(ctx.inputs_of(a)) for a in ctx.evaluated}
    # what each stage did while it trained (reward, margins, loss: first vs last tenth), beside what it scores
    report["training"] = {a: training_trends(rows) for a, rows in logs.items()}
    for address, benches in per_model.items():
        for name, folder in benches.items():
            ctx.place(os.path.join(folder, "samples.jsonl"), sample_path(address, name))
    place_images(ctx, per_model)
    training.write_json(os.path.join(ctx.out, "report.json"), report)
    write_reports(ctx.out, report, logs)
    ctx.metrics({f"{a} {m}": r["value"] for a, results in report["results"].items() for m, r in results.items()})
    tracking.log_eval(ctx, report)  # `track`: each model's metrics to MLflow, TensorBoard (runtime only)
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        named = contaminated(report, failed)
        ctx.log(gate_table(report["gates"]) + named)
        ctx.verdict(f"{len(failed)} of {len(report['gates'])} gates failed\n{gate_table(report['gates'])}{named}")


def prepare(ctx) -> None:
    """ctx.evaluated: the models in order (with `ancestors`, each listed model after the ancestors not
    already there, root first); ctx.inputs_of and ctx.digest_of: each one's folder and output digest."""
    from forgebuild.rules.model import training

    training.prepare(ctx)
    folders, digests = {}, {}
    for i, address in enumerate(ctx.params.models):
        chain = ancestors_of(ctx, address, ctx.inputs[f"models.{i}"]) if ctx.params.ancestors else []
        for above, digest, folder in [*chain, (address, ctx.dep_digests[address], ctx.inputs[f"models.{i}"])]:
            folders.setdefault(above, folder)
            digests.setdefault(above, digest)
    ctx.evaluated, ctx.inputs_of, ctx.digest_of = list(folders), folders.get, digests.get


def ancestors_of(ctx, address: str, folder: str) -> list[tuple[str, str, str]]:
    """(address, digest, folder) of each model below `address` in its `base` chain, root first, as its
    training_config.json records them: the base's address in its params and its digest in its inputs,
    so the eval's key (which holds `address`'s digest) holds theirs too. Every target the eval depends
    on, these included, was settled and materialised in the workspace before the eval builds."""
    chain = []
    while True:
        base, digest = recorded_base(folder)
        if not (isinstance(base, str) and digest):
            break
        folder = os.path.join(ctx.workspace_dir, "artifacts", digest)
        if not os.path.isdir(folder):
            raise ctx.failure(f"{base}, an ancestor of {address}, is not in the workspace ({digest}): "
                              f"build it with `forgebuild {base}`")
        chain.append((base, digest, folder))
    return chain[::-1]


def training_config(folder: str) -> dict:
    """The model folder's training_config.json ({} without one: an imported model)."""
    path = os.path.join(folder, "training_config.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def recorded_base(folder: str) -> tuple[str | None, str | None]:
    """(address, output digest) of the model the model in `folder` was trained from, as its
    training_config.json records them: (None, None) without one."""
    config = training_config(folder)
    base = config.get("params", {}).get("base")
    return base, config.get("inputs", {}).get(base)


def sample_path(address: str, bench: str) -> str:
    return f"samples/{address.replace(':', '-')}/{bench}.jsonl"


def place_images(ctx, per_model: dict) -> None:
    """A copy of every image the samples show, at the path they name (samples/images/DIGEST.png, once
    each: the name is the content's digest), so the artifact and its report.html stand alone."""
    placed = set()
    for i, bench in enumerate(ctx.params.benchmarks):
        if not image_benchmark(ctx, i):
            continue
        for benches in per_model.values():
            with open(os.path.join(benches[bench.name], "samples.jsonl"), encoding="utf-8") as f:
                shown = {rel for line in f for rel in json.loads(line).get("images", [])}
            for rel in sorted(shown - placed):
                ctx.place(os.path.join(ctx.inputs[f"benchmarks.{i}.data"], rel.removeprefix(SAMPLES)), rel)
            placed |= shown


def contamination_check(ctx) -> dict:
    """The report's `contamination` section ({} when `contamination.check` is false or no benchmark has
    prompts): each listed model's upstream data against the prompts of the generate and choice benchmarks,
    as many of them as are scored (`limit`)."""
    from forgebuild.rules.eval import contamination

    p = ctx.params
    checked = [(i, b) for i, b in enumerate(p.benchmarks) if b.kind in contamination.CHECKED]
    if not p.contamination.check or not checked:
        return {}
    examples = [contamination.Example(b.name, r["line"], r["prompt"], tuple(r.get("images", ())))
                for i, b in checked for r in read(ctx, b, i, b.kind, b.limit or p.limit)]
    reads = {b.name: (b.data, b.split or "test", os.path.basename(bench_file(ctx, i, "data"))) for i, b in checked
             if dataset_meta(ctx, i) is not None}
    trained = {address: trained_splits(ctx, address) for address in p.models}
    section = contamination.check(ctx, examples, p.contamination.ngram, [b.name for _, b in checked],
                                  [b.name for b in p.benchmarks if b.kind not in contamination.CHECKED], reads,
                                  trained)
    for address, model in section["models"].items():
        hit = sum(b["contaminated"] for b in model["benchmarks"].values())
        ctx.log(f"contamination of {address}: {hit} of {len(examples)} examples share a {p.contamination.ngram}-word "
                f"run with (or, if shorter, equal) a text of {', '.join(model['data']) or 'no data target'}")
    return section


def trained_splits(ctx, address: str) -> set[tuple[str, str]]:
    """(data target, split) of every split the model and the models below it in its `base` chain trained
    (or measured their eval loss) on, as their training_config.json record them; the walk stops at an
    ancestor not in the workspace."""
    found, folder = set(), ctx.inputs_of(address)
    while folder and os.path.isdir(folder):
        params = training_config(folder).get("params", {})
        if isinstance(params.get("data"), str):
            found |= {(params["data"], params[k]) for k in ("split", "eval_split") if isinstance(params.get(k), str)}
        base, digest = recorded_base(folder)
        folder = os.path.join(ctx.workspace_dir, "artifacts", digest) if isinstance(base, str) and digest else None
    return found


def contaminated(report: dict, failed: list[dict]) -> str:
    """The contaminated examples of each model a failed contamination gate judged, for the log and the
    verdict ("" when no such gate failed)."""
    from forgebuild.rules.eval.contamination import is_metric, named

    return "".join(f"\ncontaminated examples of {address}:\n" + "\n".join(named(report["contamination"], address))
                   for address in sorted({g["model"] for g in failed if is_metric(g["metric"])}))


def training_log(folder: str) -> list[dict]:
    path = os.path.join(folder, "training_log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------ one model x one benchmark

def scored(ctx, address: str, bench) -> str:
    """The folder of a memo holding scores.json (per-example values per metric) and samples.jsonl."""
    import importlib.metadata as md

    p = ctx.params
    index = p.benchmarks.index(bench)
    material = {
        "model": ctx.digest_of(address),
        "benchmark": bench.model_dump(mode="json"),
        "files": {rel: d for rel, d in sorted(ctx.digests.items()) if rel in source_files(ctx, index)},
        "corpus": ctx.dep_digests.get(bench.corpus), "data": ctx.dep_digests.get(bench.data),
        "generation": p.generation.model_dump(mode="json"), "limit": bench.limit or p.limit, "seed": ctx.seed,
        "libraries": {n: md.version(n) for n in ("torch", "transformers") + (("lm_eval",) if bench.kind == "lm-eval" else ())},
    }
    return ctx.memo(f"{bench.kind} {bench.name} {address}", material,
                    lambda folder: run_benchmark(ctx, address, bench, index, folder))


def source_files(ctx, index: int) -> set[str]:
    files = set()
    for key, items in ctx.sources.items():
        if key.startswith(f"benchmarks.{index}."):
            for item in items:
                files.update(item["files"])
    return files


def run_benchmark(ctx, address: str, bench, index: int, folder: str) -> None:
    ctx.log(f"evaluating {address} on {bench.name} ({bench.kind})")
    limit = bench.limit or ctx.params.limit
    if bench.kind == "lm-eval":
        scores, samples = lm_eval_scores(ctx, address, bench, index, limit)
    elif image_benchmark(ctx, index):
        scores, samples = image_scores(ctx, address, bench, index, limit)
    else:
        model, tokenizer = load(ctx, address)
        run = {"generate": generation_scores, "choice": choice_scores, "perplexity": perplexity_scores}[bench.kind]
        scores, samples = run(ctx, model, tokenizer, bench, index, limit)
    with open(os.path.join(folder, "scores.json"), "w", encoding="utf-8") as f:
        json.dump(scores, f, sort_keys=True)
    with open(os.path.join(folder, "samples.jsonl"), "w", encoding="utf-8") as f:
        for row in samples:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def load(ctx, address: str):
    """(model, tokenizer): a vision-language model is read through its tokenizer, its language model
    answering a text benchmark as any causal model does."""
    import torch

    from forgebuild.rules.eval import vision
    from forgebuild.rules.model import training
    from forgebuild.rules.model.vision import is_vlm

    folder = ctx.inputs_of(address)
    model = vision.load_model(folder) if is_vlm(folder) else training.load_model(ctx, folder, address)
    if training.is_moe(model.config):  # no router loss under generate(): see training.inference_config
        model.config.output_router_logits = False
    if not training.on_cpu(ctx):
        model = model.to("cuda")
    model.eval()
    torch.manual_seed(ctx.seed)
    return model, training.load_tokenizer(ctx.inputs_of(address))


def bench_file(ctx, index: int, key: str) -> str:
    """The benchmark's file: a file of the project, the file of the split a dataset-like target's
    dataset.json names, or the one .jsonl file of a target's output."""
    path = os.path.join(ctx.project_dir, ctx.inputs[f"benchmarks.{index}.{key}"])
    bench = ctx.params.benchmarks[index]
    address = getattr(bench, key)
    if address not in ctx.dep_digests:  # a file (or lm-eval's task folder) of the project
        return path
    if (meta := dataset_meta(ctx, index)) is not None and key == "data":
        split = bench.split or "test"
        if split not in meta.get("splits", {}):
            raise ctx.bad_input(f"benchmark {bench.name}: {address} has no split '{split}'; its splits: "
                                f"{', '.join(sorted(meta.get('splits', {})))}")
        return os.path.join(path, meta["splits"][split]["path"])
    if bench.split is not None and key == "data":
        raise ctx.bad_input(f"benchmark {bench.name}: {address} has no dataset.json to read split "
                            f"'{bench.split}' from: leave split out to read its one .jsonl file")
    found = sorted(glob.glob(os.path.join(path, "**", "*.jsonl"), recursive=True))
    if len(found) != 1:
        raise ctx.bad_input(f"benchmark {ctx.params.benchmarks[index].name}: {address} must hold one .jsonl file "
                            f"to read as the benchmark; it holds {len(found)}")
    return found[0]


def dataset_meta(ctx, index: int) -> dict | None:
    """The dataset.json of the benchmark's data target (a dataset-like one: images, dataset), else None."""
    address = ctx.params.benchmarks[index].data
    if address not in ctx.dep_digests:
        return None
    path = os.path.join(ctx.project_dir, ctx.inputs[f"benchmarks.{index}.data"], "dataset.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def image_benchmark(ctx, index: int) -> bool:
    """The benchmark reads an images target's records (a generate or choice benchmark)."""
    bench = ctx.params.benchmarks[index]
    return bench.kind in ("generate", "choice") and (dataset_meta(ctx, index) or {}).get("kind") == "images"


def read(ctx, bench, index: int, kind: str, limit):
    from forgebuild.rules.eval.scoring import BenchmarkError, read_rows

    if image_benchmark(ctx, index):
        return read_image_rows(ctx, bench, index, kind, limit)
    try:
        rows = read_rows(bench_file(ctx, index, "data"), kind, label=bench.data, prompt_field=bench.prompt_field,
                         answer_field=bench.answer_field, choices_field=bench.choices_field)
    except BenchmarkError as e:
        raise ctx.bad_input(str(e)) from None
    return rows[:limit] if limit else rows


def read_image_rows(ctx, bench, index: int, kind: str, limit) -> list[dict]:
    from forgebuild.rules.eval.scoring import BenchmarkError
    from forgebuild.rules.eval.vision import read_records

    path = bench_file(ctx, index, "data")
    try:
        rows = read_records(path, ctx.inputs[f"benchmarks.{index}.data"], kind,
                            f"{bench.data} {os.path.basename(path)}", answer_field=bench.answer_field,
                            choices_field=bench.choices_field)
    except BenchmarkError as e:
        raise ctx.bad_input(str(e)) from None
    return rows[:limit] if limit else rows


# an image's path in the eval's artifact: the images target's own path (images/DIGEST.png) under samples/
SAMPLES = "samples/"


def image_scores(ctx, address: str, bench, index: int, limit):
    """A vision-language model on an images target's split: generated answers scored like text ones,
    or each choice's log-likelihood after the image and the prompt. A text-only model is an error."""
    from forgebuild.rules.eval import vision
    from forgebuild.rules.model import training
    from forgebuild.rules.model.vision import is_vlm, read_config

    folder = ctx.inputs_of(address)
    if not is_vlm(folder):
        kind = read_config(folder).get("model_type")
        raise ctx.bad_input(f"{address} is a text-only model (model_type {kind}) and "
                            f"benchmark {bench.name} reads images ({bench.data}): evaluate a vision-language "
                            f"model on it")
    rows = read(ctx, bench, index, bench.kind, limit)
    model, processor = vision.load(folder)
    if not training.on_cpu(ctx):
        model = model.to("cuda")
    data, g = ctx.inputs[f"benchmarks.{index}.data"], ctx.params.generation
    if bench.kind == "choice":
        scores, samples = choice_results(rows, vision.choice_scores(model, processor, data, rows))
    else:
        outputs = vision.generate(model, processor, data, rows, g.max_new_tokens, tuple(g.stop),
                                  ctx.params.batch_size, g.temperature, ctx.seed)
        scores, samples = generated_results(ctx, bench, rows, outputs)
    return scores, [{**sample, "images": [SAMPLES + rel for rel in row["images"]]}
                    for sample, row in zip(samples, rows)]


def generation_scores(ctx, model, tokenizer, bench, index, limit):
    from forgebuild.rules.eval.scoring import generate

    rows = read(ctx, bench, index, "generate", limit)
    g = ctx.params.generation
    prompts = [r["prompt"] for r in rows]
    with torch.no_grad():
        outputs = generate(model, tokenizer, prompts, max_new_tokens=g.max_new_tokens, stop=tuple(g.stop),
                           batch_size=ctx.params.batch_size, temperature=g.temperature, seed=ctx.seed)
    return generated_results(ctx, bench, rows, outputs)


def generated_results(ctx, bench, rows: list[dict], outputs: list[str]):
    """(per-metric scores, per-example samples) of generated outputs against the rows' answers."""
    from forgebuild.rules.eval.scoring import score_output

    scores = {m: [score_output(o, r["answer"], m, pattern=bench.pattern, tolerance=bench.tolerance)
                  for o, r in zip(outputs, rows)] for m in bench.metrics}
    for ref in bench.scorers:
        scores[ref.rsplit(":", 1)[-1]] = code_scores(ctx, ref, [r["prompt"] for r in rows], outputs, rows)
    samples = [{"line": r["line"], "prompt": r["prompt"], "output": o, "reference": r["answer"],
                "scores": {m: s[i] for m, s in scores.items()}} for i, (o, r) in enumerate(zip(outputs, rows))]
    return scores, samples


def code_scores(ctx, reference: str, prompts, outputs, rows) -> list[float]:
    from forgebuild.rules.model.reward_functions import RewardError, load_code

    try:
        found = load_code(reference, ctx.project_dir, log=ctx.log)(prompts=prompts, completions=outputs,
                                                                    answer=[r["answer"] for r in rows])
    except RewardError as e:
        raise ctx.failure(str(e).replace("reward ", "scorer ", 1)) from None
    return [math.nan if v is None else float(v) for v in found]


def choice_scores(ctx, model, tokenizer, bench, index, limit):
    from forgebuild.rules.eval.scoring import choice_scores as score

    rows = read(ctx, bench, index, "choice", limit)
    with torch.no_grad():
        found = score(model, tokenizer, rows, batch_size=ctx.params.batch_size)
    return choice_results(rows, found)


def choice_results(rows: list[dict], found: list[dict]):
    """(per-metric scores, per-example samples) of each row's choice log-likelihoods."""
    scores = {"accuracy": [f["correct"] for f in found], "accuracy_norm": [f["correct_norm"] for f in found]}
    samples = [{"line": r["line"], "prompt": r["prompt"], "output": r["choices"][f["pred"]],
                "reference": r["choices"][r["answer"]], "loglikelihoods": f["loglikelihoods"],
                "scores": {"accuracy": f["correct"], "accuracy_norm": f["correct_norm"]}} for r, f in zip(rows, found)]
    return scores, samples


def perplexity_scores(ctx, model, tokenizer, bench, index, limit):
    from forgebuild.rules.eval.scoring import perplexity

    texts = holdout_texts(ctx, bench, index)
    if not texts:
        raise ctx.bad_input(f"{bench.corpus} has no holdout documents to measure perplexity on")
    with torch.no_grad():
        docs = perplexity(model, tokenizer, texts, seq_len=bench.seq_len, batch_size=ctx.params.batch_size,
                          max_documents=limit)
    scores = {"nll": [d["nll"] for d in docs], "tokens": [d["tokens"] for d in docs]}
    samples = [{"document": i, "tokens": d["tokens"], "nll": d["nll"],
                "scores": {"loss": d["nll"] / max(d["tokens"], 1)}} for i, d in enumerate(docs)]
    return scores, samples


def holdout_texts(ctx, bench, index) -> list[str]:
    import pyarrow.parquet as pq

    folder = os.path.join(ctx.inputs[f"benchmarks.{index}.corpus"], "holdout")
    texts = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if name.endswith(".parquet"):
            texts += pq.read_table(os.path.join(folder, name), columns=["text"]).column("text").to_pylist()
    return texts


def lm_eval_scores(ctx, address, bench, index, limit):
    from forgebuild.rules.eval.harness import HarnessError, run_tasks

    try:
        found = run_tasks(ctx.inputs_of(address), bench_file(ctx, index, "path"), bench.tasks, limit,
                          ctx.params.batch_size, ctx.seed, log=ctx.log)
    except HarnessError as e:
        raise ctx.bad_input(f"benchmark {bench.name}: {e}") from None
    samples = [{"task": task, **row} for task, rows in sorted(found["samples"].items()) for row in rows]
    # Means of per-example scores (acc, exact_match) are bootstrapped like every other metric; lm-eval's
    # other aggregations (perplexity from log-likelihood pairs, bleu) have no per-example mean to resample.
    scores = {metric: values for metric, values in found["per_example"].items()
              if found["metrics"][metric]["aggregation"] == "mean"}
    skipped = sorted(set(found["per_example"]) - set(scores))
    if skipped:
        ctx.log(f"benchmark {bench.name}: not reported (not a mean of per-example scores): {', '.join(skipped)}")
    return scores, samples


# ------------------------------------------------------------------ the report

def assemble(ctx, per_model: dict, contamination: dict) -> dict:
    from forgebuild.rules.eval.contamination import results as contamination_results

    p = ctx.params
    results, values, gated = {}, {}, {}
    for address, benches in per_model.items():
        results[address], values[address], gated[address] = {}, {}, {}
        for bench in p.benchmarks:
            with open(os.path.join(benches[bench.name], "scores.json"), encoding="utf-8") as f:
                found = json.load(f)
            for metric, (stat, per_example) in statistics(bench, found, p.bootstrap, ctx.seed).items():
                results[address][f"{bench.name}.{metric}"] = stat
                values[address][f"{bench.name}.{metric}"] = per_example
                # a gate compares a perplexity (and its loss) as a ratio of sums over the same documents
                ratio = (found["nll"], found["tokens"]) if bench.kind == "perplexity" else None
                gated[address][f"{bench.name}.{metric}"] = ratio or per_example
    for address, found in contamination_results(contamination).items():  # counts: no interval, never paired
        results[address].update(found)
    produced = sorted({m for r in results.values() for m in r})
    models = ctx.evaluated
    report = {
        "title": ctx.target, "models": list(models),
        "model_digests": {a: ctx.digest_of(a) for a in models},
        "ancestors": [a for a in models if a not in p.models],
        "benchmarks": [{"name": b.name, "kind": b.kind,
                        "examples": max((r[m]["n"] for r in results.values() for m in r
                                         if m.startswith(b.name + ".")), default=0),
                        "metrics": [m.split(".", 1)[1] for m in produced if m.startswith(b.name + ".")],
                        **({"images": True} if image_benchmark(ctx, i) else {})}
                       for i, b in enumerate(p.benchmarks)],
        "results": results,
        "comparisons": comparisons(models, values, p.bootstrap, ctx.seed),
        "gates": gates(ctx, results, gated, produced),
        "generation": p.generation.model_dump(mode="json"),
        "samples": {a: {b.name: sample_path(a, b.name) for b in p.benchmarks} for a in models},
        "cells": cells_of(models),  # each matrix cell's swept values, read from its address
        **({"contamination": contamination} if contamination else {}),
    }
    report["passed"] = all(g["passed"] for g in report["gates"])
    return report


def present(value) -> bool:
    """A per-example score that counts: a scorer's None or NaN is an example it could not judge."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def present_pairs(a: list, b: list) -> tuple[list, list]:
    """The examples both scored (in order), as two lists: what a paired comparison or gate resamples."""
    pairs = [(x, y) for x, y in zip(a, b) if present(x) and present(y)]
    return [x for x, _ in pairs], [y for _, y in pairs]


def statistics(bench, found: dict, samples: int, seed: int) -> dict:
    """metric -> (value with its 95% interval, per-example values for paired comparisons)."""
    from forgebuild.rules.eval.scoring import bootstrap_mean, bootstrap_ratio

    if bench.kind == "perplexity":
        nll, tokens = found["nll"], found["tokens"]
        losses = [n / max(t, 1) for n, t in zip(nll, tokens)]
        # compared through each document's loss only: a difference of perplexities is no mean of
        # per-document differences
        return {"perplexity": (bootstrap_ratio(nll, tokens, samples, seed, transform=math.exp), None),
                "loss": (bootstrap_ratio(nll, tokens, samples, seed), losses)}
    return {metric: (bootstrap_mean([v for v in per_example if present(v)], samples, seed), per_example)
            for metric, per_example in sorted(found.items())}


def comparisons(models: list[str], values: dict, samples: int, seed: int) -> list[dict]:
    """Each model against the first, on the same examples (a paired bootstrap)."""
    from forgebuild.rules.eval.scoring import paired_difference

    found = []
    baseline = models[0]
    for other in models[1:]:
        for metric in sorted(values[baseline]):
            a, b = values[baseline][metric], values[other].get(metric)
            if a is None or b is None or len(a) != len(b) or not a:
                continue
            kept_a, kept_b = present_pairs(a, b)
            if not kept_a:
                continue
            diff = paired_difference(kept_a, kept_b, samples, seed)
            found.append({"metric": metric, "a": baseline, "b": other, **diff,
                          "lower_is_better": metric.rsplit(".", 1)[-1] in LOWER_IS_BETTER})
    return found


# ------------------------------------------------------------------ gates

def gates(ctx, results: dict, scores: dict, produced: list[str]) -> list[dict]:
    """One row per gate condition and judged model; `scores`: model -> metric -> per-example values,
    or (nll, tokens) per document for a perplexity benchmark's metrics."""
    p = ctx.params
    found = []
    for metric, value in sorted(p.gate.items()):
        if metric not in produced:  # an lm-eval metric, known only now that its tasks have run
            raise ctx.bad_input(f"gate '{metric}': the eval produces no such metric; it produces "
                                f"{', '.join(produced)}")
        for _, condition in gate_conditions(metric, value):
            for address in judged_models(p):
                against = parent_of(ctx, address) if condition.against == "parent" else condition.against
                vocab = vocab_size(ctx.inputs_of(address)) if condition.against == "vocab" else None
                try:
                    found.append(judge(condition, metric, address, results, scores, p.bootstrap, ctx.seed,
                                       against=against, vocab=vocab))
                except ValueError as e:  # paired scores of different lengths: not the same examples
                    raise ctx.failure(f"gate '{metric}' = '{condition.text}' on {address}: {e}") from None
    return found


def judge(condition, metric: str, judged: str, results: dict, scores: dict, samples: int, seed: int,
          against: str | None = None, vocab: int | None = None) -> dict:
    """The gate row of one condition on one model. A number (or a multiple of `vocab`) is held against the
    measured value; a model `against` by the one-sided bound of the paired difference judged - against:
    `>= X + m @ c%` passes when the c% lower bound is >= m, `<= X + m @ c%` when the c% upper bound is <= m."""
    stat = results[judged][metric]
    row = {"metric": metric, "model": judged, "condition": condition.text, "op": condition.op,
           "value": stat["value"], "low": stat.get("low"), "high": stat.get("high"), "n": stat.get("n")}
    if not condition.relative:
        threshold = condition.number * vocab if condition.against == "vocab" else condition.number
        extra = {"vocab_size": vocab} if condition.against == "vocab" else {}
        return {**row, "threshold": threshold, **extra,
                "passed": stat["value"] is not None and OPS[condition.op](stat["value"], threshold)}
    side = "lower" if condition.op == ">=" else "upper"
    found = difference(metric, scores[against][metric], scores[judged][metric], condition.confidence, side,
                       samples, seed)
    baseline = results[against][metric]["value"]
    return {**row, "threshold": None if baseline is None else baseline + condition.number,
            "against": against, "against_value": baseline, "margin": condition.number,
            "confidence": condition.confidence, "side": side, "diff": found["diff"], "bound": found["bound"],
            "pairs": found["n"],
            "passed": found["bound"] is not None and OPS[condition.op](found["bound"], condition.number)}


def difference(metric: str, a, b, confidence: float, side: str, samples: int, seed: int) -> dict:
    """b - a with its one-sided bound: paired examples, or a ratio of sums over the same documents."""
    from forgebuild.rules.eval.scoring import paired_bound, ratio_difference_bound

    if isinstance(a, tuple):
        transform = math.exp if metric.endswith(".perplexity") else None
        return ratio_difference_bound(a, b, confidence, side, samples, seed, transform=transform)
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same examples: {len(a)} against {len(b)}")
    return paired_bound(*present_pairs(a, b), confidence, side, samples, seed)


def parent_of(ctx, address: str) -> str:
    """The model `address` was built on, as its training_config.json records it (the Forgefile check
    made sure it is evaluated)."""
    parent, _ = recorded_base(ctx.inputs_of(address))
    if parent not in ctx.evaluated:
        raise ctx.failure(f"the parent of {address} ({parent}) is not evaluated: add it to models, or set "
                          f"ancestors = true")
    return parent


def vocab_size(folder: str) -> int:
    """The width of the model's output layer: a uniform guess over it has exactly this perplexity."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(folder).get_text_config().vocab_size)


def gate_table(rows: list[dict]) -> str:
    """The gates as aligned text columns; a relative condition's row shows the paired difference and its
    one-sided bound."""
    table = [["gate", "model", "condition", "measured [95% interval]", "difference (bound)", "result"]]
    for g in rows:
        measured = "none" if g["value"] is None else f"{g['value']:.4g}" + (
            "" if g["low"] is None else f" [{g['low']:.4g}, {g['high']:.4g}]")  # contamination: a count
        condition = stated(g)
        paired = "" if "bound" not in g else "none" if g["bound"] is None else f"{g['diff']:+.4g} ({g['bound']:+.4g})"
        table.append([g["metric"], g["model"], condition, measured, paired, "pass" if g["passed"] else "FAIL"])
    widths = [max(len(row[i]) for row in table) + 2 for i in range(5)]
    return "\n".join("".join(cell.ljust(w) for cell, w in zip(row, widths)) + row[5] for row in table)
