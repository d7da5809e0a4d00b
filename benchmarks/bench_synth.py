"""Synthetic data: generation through forgebuild's cache against a plain `model.generate` loop, and what
changing only a filter costs.

One project under the temporary folder: a tiny llama pretrained for 2 steps on standard-library text
(its weights do not matter to a speed) and, per model size, an imported copy of it.

  generation   a `generate` target: 128 template prompts x n = 4 = 512 samples, batches of 64,
               temperature 1, top_p 0.95, 32 new tokens, one thread; its build record's samples_per_s
               (the batches: generate(), each sample's own generator, decoding, each batch stored in
               the cache; the model's loading excluded), against the same prompts through
               `model.generate(do_sample=True, temperature=1, top_p=0.95)` in batches of 64 in a child
               process on one thread, decoding included. A new seed each round, so every sample is
               generated. Median of 3 rounds, alternating which goes first. Goal: ratio >= 0.95.
  filter-only  a generate target of 10,000 samples (2,500 prompts x 4, 8 new tokens), built once; then
               a curate target reading it with a regex verifier, the pattern changed before each run:
               the wall time of `forgebuild curate:NAME` (planning, the curate stage, storing), the
               generate target a cache hit. Median of 5. Goal: under 2 s.

Run: python benchmarks/bench_synth.py [--sizes tiny,small]. About 3 minutes on the reference machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import textwrap

from _common import FORGE, forge, header, run, scratch_dir, table, verdict

SIZES = {"tiny": {"hidden": 64, "layers": 2, "heads": 4}, "small": {"hidden": 256, "layers": 4, "heads": 4}}
PROMPTS, N, BATCH, NEW = 128, 4, 64, 32
FILTER_PROMPTS, FILTER_PATTERNS = 2500, ["^ ", "e", "[aeiou]{2}", "^[a-z]", "\\d"]

PLAIN = textwrap.dedent('''
    import json, sys, time
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, prompts, batch, new, seed = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    torch.manual_seed(seed)
    start = time.perf_counter()
    texts = []
    with torch.inference_mode():
        for i in range(0, len(prompts), batch):
            enc = tok.pad({"input_ids": [tok(p).input_ids for p in prompts[i:i + batch]]}, return_tensors="pt")
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=0.95, max_new_tokens=new,
                                 pad_token_id=pad)
            texts += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    print(json.dumps({"samples_per_s": len(texts) / (time.perf_counter() - start)}))
''')


def base_forgefile(sizes: list[str]) -> str:
    text = '[forge]\nseed = 3\n\n[corpus.text]\nsources = ["text/*.txt"]\n\n[tokenizer.bpe]\ncorpus = "corpus:text"\nvocab_size = 512\n'
    for size in sizes:
        arch = SIZES[size]
        text += (f'\n[model.{size}]\nrecipe = "pretrain"\ntokenizer = "tokenizer:bpe"\ncorpus = "corpus:text"\nseq_len = 64\n'
                 f'arch = {{ family = "llama", hidden = {arch["hidden"]}, layers = {arch["layers"]}, heads = {arch["heads"]} }}\n'
                 f'train = {{ lr = 1e-3, steps = 2, batch_size = 4 }}\nthreads = 1\n')
    return text


def generate_table(name: str, model: str, prompts: int, new: int, seed: int) -> str:
    return (f'\n[generate.{name}]\nmodel = "model:{model}"\n'
            f'template = {{ text = "def f{{i}}(x):\\n    return", vars = {{ i = {{ range = [0, {prompts}] }} }} }}\n'
            f'n = {N}\nseed = {seed}\nsampling = {{ temperature = 1.0, top_p = 0.95, max_new_tokens = {new} }}\n'
            f'batch_size = {BATCH}\nthreads = 1\n')


def write(folder: str, text: str) -> None:
    with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
        f.write(text)


def write_text(folder: str) -> None:
    import glob
    import sysconfig

    os.makedirs(os.path.join(folder, "text"), exist_ok=True)
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:40]:
        with open(path, encoding="utf-8", errors="replace") as src, \
                open(os.path.join(folder, "text", os.path.basename(path) + ".txt"), "w", encoding="utf-8") as dst:
            dst.write(src.read()[:6000])


def ours(folder: str, base: str, size: str, seed: int) -> float:
    write(folder, base + generate_table("g", size, PROMPTS, NEW, seed))
    proc = run([*FORGE, "generate:g", "--json"], folder)
    built = next(json.loads(line) for line in proc.stdout.splitlines() if '"event": "built"' in line
                 and '"generate:g"' in line)
    if built["metrics"]["generated"] != PROMPTS * N:
        raise RuntimeError(f"expected {PROMPTS * N} samples generated, got {built['metrics']}")
    return built["metrics"]["samples_per_s"]


def plain(folder: str, size: str, seed: int) -> float:
    model = run([*FORGE, "path", f"model:{size}"], folder).stdout.strip()
    prompts = [f"def f{i}(x):\n    return" for i in range(PROMPTS) for _ in range(N)]
    proc = run([sys.executable, "-c", PLAIN, model, json.dumps(prompts), str(BATCH), str(NEW), str(seed)], folder,
               env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(proc.stdout.strip().splitlines()[-1])["samples_per_s"]


def generation(folder: str, base: str, sizes: list[str]) -> list[list]:
    rows = []
    for size in sizes:
        found = {"ours": [], "plain": []}
        for rnd in range(3):
            order = ("ours", "plain") if rnd % 2 == 0 else ("plain", "ours")
            for which in order:
                seed = 100 + rnd
                found[which].append(ours(folder, base, size, seed) if which == "ours" else plain(folder, size, seed))
        a, b = statistics.median(found["ours"]), statistics.median(found["plain"])
        rows.append([size, f"{a:.0f}", f"{b:.0f}", f"{a / b:.2f}", verdict(a / b, 0.95, higher_is_better=True)])
    return rows


def filter_only(folder: str, base: str, size: str) -> list[list]:
    gen = generate_table("many", size, FILTER_PROMPTS, 8, 7)
    write(folder, base + gen)
    run([*FORGE, "generate:many"], folder)
    times = []
    for pattern in FILTER_PATTERNS:
        curate = f'\n[curate.kept]\nsamples = "generate:many"\nverify = [{{ kind = "regex", pattern = {json.dumps(pattern)} }}]\nshape = "samples"\n'
        write(folder, base + gen + curate)
        seconds, summary = forge(folder, "curate:kept")
        actions = {t["target"]: t["action"] for t in summary["targets"]}
        if actions.get("generate:many") != "cached" or actions.get("curate:kept") != "built":
            raise RuntimeError(f"a filter-only change should rebuild the curate target alone: {actions}")
        times.append(seconds)
    median = statistics.median(times)
    return [[f"{FILTER_PROMPTS * N:,}", f"{median:.2f}", f"{min(times):.2f}-{max(times):.2f}", verdict(median, 2.0)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,small")
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    header("generation through the per-sample cache, and a filter-only change")
    with scratch_dir("forge-bench-synth-") as folder:
        write_text(folder)
        base = base_forgefile(sizes)
        write(folder, base)
        run([*FORGE, *[f"model:{s}" for s in sizes]], folder)
        print(f"\ngeneration: {PROMPTS} prompts x {N} samples, batches of {BATCH}, {NEW} new tokens, one thread; "
              "samples/s, median of 3")
        print(table(generation(folder, base, sizes), ["model", "forgebuild", "plain generate", "ratio", "goal >= 0.95"]))
        print("\nfilter-only change: `forgebuild curate:NAME` after its regex changed, the generate target cached; "
              "median of 5")
        print(table(filter_only(folder, base, sizes[0]), ["samples", "seconds", "range", "goal < 2 s"]))


if __name__ == "__main__":
    main()
