"""A generate target's build: the prompts, each sample's key, the cache, the batches still to make.

Torch-free: the engine (`sampling` for transformers, `vllm_engine`) is imported only when a sample is
missing, so a generation served from the cache loads no model. A sample's key is the digest of what
decides it: the generating model's output digest, the engine, the prompt as given, the chat-template
setting, the sampling settings, the seed and the sample's index. Nothing else (batch size, device,
the other prompts) enters it: adding prompts makes only their samples, raising `n` only the new
indices, and each finished batch is stored at once (`ctx.keep`), so a killed build loses at most
the batch it was making.
"""
from __future__ import annotations

import json
import os
import time

from forgebuild.hashing import bytes_digest
from forgebuild.rules.synth.prompts import PromptError, record_rows, target_files, template_rows

SAMPLES, INFO = "samples.jsonl", "generate.json"
STEP = "sample"  # the memo step each sample is kept under


def generate(ctx) -> None:
    p = ctx.params
    seed = p.seed if p.seed is not None else ctx.seed
    rows = prompt_rows(ctx, seed)
    wanted = [(j, i) for j in range(len(rows)) for i in range(p.n)]
    materials = [material(ctx, rows[j]["prompt"], i, seed) for j, i in wanted]
    keys = [sample_key(m) for m in materials]
    found = cached(ctx, materials, keys)
    missing = [k for k, (j, i) in enumerate(wanted) if keys[k] not in found]
    ctx.log(f"{len(wanted)} samples ({len(rows)} prompts x {p.n}): {len(wanted) - len(missing)} cached, "
            f"{len(missing)} to generate")
    calls, seconds = 0, 0.0
    if missing:
        engine = open_engine(ctx)
        started = time.monotonic()  # the model's loading is not generation: samples/s is the batches' rate
        for start in range(0, len(missing), p.batch_size):
            batch = missing[start:start + p.batch_size]
            made = make_batch(ctx, engine, [rows[wanted[k][0]] for k in batch], [wanted[k] for k in batch],
                              [materials[k] for k in batch], [keys[k] for k in batch])
            found.update(made)
            calls += 1
            ctx.log(f"batch {calls}/{-(-len(missing) // p.batch_size)}: {len(batch)} samples")
        seconds = time.monotonic() - started
    write_samples(ctx, [found[key] for key in keys])
    write_info(ctx, len(rows), seed)
    ctx.metrics({"samples": len(wanted), "generated": len(missing), "cached": len(wanted) - len(missing),
                 "model_calls": calls, "generate_seconds": round(seconds, 3),
                 **({"samples_per_s": round(len(missing) / seconds, 1)} if missing and seconds > 0 else {})})


def prompt_rows(ctx, seed: int) -> list[dict]:
    """{"prompt", "columns"} of every prompt, in order."""
    p = ctx.params
    try:
        if p.template is not None:
            return template_rows(p.template, seed)
        if ":" in p.prompts:  # a dataset or curate target: its splits
            rows = record_rows(target_files(p.prompts, ctx.inputs["prompts"], p.split), "prompt")
        else:
            rows = record_rows([(p.prompts, os.path.join(ctx.project_dir, ctx.inputs["prompts"]))], p.prompt_field)
    except PromptError as e:
        raise ctx.bad_input(str(e)) from None
    if not rows:
        raise ctx.bad_input(f"{p.prompts} holds no prompt")
    return rows


def material(ctx, prompt, index: int, seed: int) -> dict:
    """Everything that decides one sample (and nothing that does not)."""
    p = ctx.params
    return {"generator": ctx.dep_digests[p.model], "engine": p.engine, "prompt": prompt,
            "chat_template": p.chat_template, "sampling": p.sampling.model_dump(mode="json"), "seed": seed,
            "sample": index}


def sample_key(material: dict) -> str:
    return bytes_digest(json.dumps(material, sort_keys=True, ensure_ascii=False).encode())


def seed_of(key: str) -> int:
    """The seed of a sample's own generator: 60 bits of its key."""
    return int(key[:15], 16)


def cached(ctx, materials: list[dict], keys: list[str]) -> dict[str, dict]:
    """The samples an earlier build made, by key. A row is taken only from a result that holds its key
    (a result is a batch: read once, whatever number of samples it serves)."""
    found, read = {}, {}
    wanted = set(keys)
    for folder in ctx.recall(STEP, materials):
        if folder is not None and folder not in read:
            read[folder] = True
            for row in read_rows(os.path.join(folder, SAMPLES)):
                if row.get("key") in wanted:
                    found[row["key"]] = row
    return found


def make_batch(ctx, engine, rows: list[dict], places: list[tuple], materials: list[dict], keys: list[str]) -> dict:
    """Generate one batch and keep it in the cache before anything else: the unit a killed build resumes from."""
    prompts = [engine.render(row["prompt"]) for row in rows]
    outputs = engine.complete(prompts, [seed_of(k) for k in keys])
    made = {key: {"prompt": row["prompt"], "completion": text, "finish": finish, "sample": i, "prompt_index": j,
                  "columns": row["columns"], "key": key}
            for key, row, (j, i), (text, finish) in zip(keys, rows, places, outputs)}

    def produce(folder: str) -> None:
        write_rows(os.path.join(folder, SAMPLES), list(made.values()))

    ctx.keep(STEP, materials, produce)
    return made


def open_engine(ctx):
    if ctx.params.engine == "vllm":
        from forgebuild.rules.synth.vllm_engine import VllmEngine

        return VllmEngine(ctx)
    from forgebuild.rules.synth.sampling import TransformersEngine

    return TransformersEngine(ctx)


def read_rows(path: str) -> list[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []  # a result that cannot be read serves nothing: its samples are made again


def write_rows(path: str, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def write_samples(ctx, rows: list[dict]) -> None:
    write_rows(os.path.join(ctx.out, SAMPLES), rows)


def write_info(ctx, prompts: int, seed: int) -> None:
    p = ctx.params
    info = {"model": p.model, "engine": p.engine, "prompts": prompts, "n": p.n, "samples": prompts * p.n,
            "sampling": p.sampling.model_dump(mode="json"), "seed": seed, "chat_template": p.chat_template}
    with open(os.path.join(ctx.out, INFO), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
