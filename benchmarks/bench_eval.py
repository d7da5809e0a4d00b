"""Generation-task evaluation: forgebuild's own scorer against calling lm-eval directly, on the same model and rows.

A lab project (built once, in a temporary folder, by forgebuild itself) holds the tests' tiny lab:
standard-library text, a BPE tokenizer, a 2-layer llama `model:base` and `model:sft`, fine-tuned on
tests/tinylab.py's arithmetic records so that exact match is not 0 everywhere. --rows arithmetic
questions ("What is a+b?\\nAnswer:", answer a+b, another seed than the SFT records) are written once as
JSONL and as an lm-eval task folder (the team's reference arith_gen.yaml: greedy, stop at "<|eos|>" or
"\\n", max_gen_toks, exact_match ignoring spaces). The model is loaded once; then, alternating (forge
first in even rounds, lm-eval first in odd ones), --repeats timed rounds after --warmup unmeasured ones:

  forge    forgebuild.rules.eval.scoring: read_rows(JSONL) -> generate(model, tokenizer, prompts,
           max_new_tokens, stop, batch_size) -> score_output(output, answer, "exact_match") per row
  lm-eval  lm_eval.simple_evaluate(HFLM(pretrained=<the same model object>, tokenizer, batch_size),
           tasks=["arith_gen"], task_manager=TaskManager(include_path=<task folder>,
           include_defaults=False), log_samples=True): task loading (HF datasets reads the JSONL),
           request building, generation, metrics, result assembly

examples/s = rows / seconds of one side's call (imports and the model load are outside both clocks).
Each side's time is split (medians; "other" is the rest):
  rows/task load  forge: read_rows; lm-eval: TaskManager.load (builds the Task; HF datasets reads the
                  JSONL, from its Arrow cache after the warm-up round)
  generation      forge: generate(); lm-eval: HFLM.generate_until (wrapped, progress bar off)
  env info        lm-eval only: add_env_info, torch's collect_env for results["pretty_env_info"], which
                  runs `pip list` and other commands in subprocesses, once per simple_evaluate
  other           forge: score_output; lm-eval: request building (its Jinja templates are compiled
                  again for every document), metrics, result assembly
Each round's outputs are compared row by row: both sides must produce the same text (after stripping
surrounding whitespace) and the same exact-match per row; every difference is printed with its reason.

Once, after the rounds (not in the ratio):
  - TaskManager(include_path=...) WITH lm-eval's built-in task index (its default, and what the
    reference probe did): the seconds it adds to every run, why forgebuild's harness passes
    include_defaults=False
  - forgebuild.rules.eval.harness.run_tasks on the model folder (the eval rule's lm-eval bridge: model load
    from disk + the lm-eval call + collecting samples): its seconds and that it reports the same
    exact match as the direct call

Progress bars are off (TQDM_DISABLE=1, and disable_tqdm for lm-eval's generate_until, which ignores it);
lm-eval's and transformers' logging at ERROR.
Run: python benchmarks/bench_eval.py [--rows 512] [--repeats 5] [--batch-size 8] [--model MODEL_FOLDER]
Defaults: about 1.5 minutes on 2 cores (the lab build is ~35 s of it; --model skips it).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import statistics
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # before anything imports tqdm
for _key in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_key, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import ENV, FORGE, REPO, header, run, scratch_dir, table  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tests"))
import tinylab  # noqa: E402  (the tests' tiny lab: standard-library text, arithmetic records)

CHILD_ENV = {**ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
             "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

SFT = """
[model.sft]
recipe = "sft"
base = "model:base"
data = "dataset:sft"
max_length = 32
train = {{ lr = 2e-3, epochs = {epochs}, batch_size = 16 }}
threads = 1
"""

# The team's reference task (arith_gen.yaml, run offline with lm-eval 0.4.13); data path, stop strings and
# token budget filled in.
TASK_YAML = """\
task: arith_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: {until}
  max_gen_toks: {max_new_tokens}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    regexes_to_ignore: [" "]
"""
UNTIL = ["<|eos|>", "\n"]


def build_lab(root: str, args) -> str:
    tinylab.write_stdlib_text(root)
    tinylab.write_arith_data(root, n=args.sft_rows)
    with open(os.path.join(root, "Forgefile.toml"), "w", encoding="utf-8") as f:
        f.write(tinylab.BASE_FORGEFILE + tinylab.DATASETS + SFT.format(epochs=args.sft_epochs))
    started = time.perf_counter()
    run([*FORGE, "model:sft", "-q"], root, CHILD_ENV)
    path = run([*FORGE, "path", "model:sft"], root, CHILD_ENV).stdout.strip()
    print(f"lab: tinylab's model:base (llama hidden 64 x 2 layers, BPE vocab 512) + model:sft on "
          f"{args.sft_rows} arithmetic records x {args.sft_epochs} epochs, built in "
          f"{time.perf_counter() - started:.1f} s")
    return path


def write_rows(root: str, args) -> tuple[str, str, list[dict]]:
    task_dir = os.path.join(root, "tasks")
    rows = [{"prompt": f"What is {a}+{b}?\nAnswer:", "answer": str(a + b)}
            for a, b in tinylab.arithmetic(args.rows, seed=args.row_seed)]
    data = tinylab.write_jsonl(os.path.join(task_dir, "arith.jsonl"), rows)
    with open(os.path.join(task_dir, "arith_gen.yaml"), "w", encoding="utf-8") as f:
        f.write(TASK_YAML.format(data=data, until=json.dumps(UNTIL), max_new_tokens=args.max_new_tokens))
    return task_dir, data, rows


# ---------------------------------------------------------------- the two sides

def forge_side(model, tokenizer, data: str, args) -> dict:
    from forgebuild.rules.eval import scoring

    started = time.perf_counter()
    rows = scoring.read_rows(data, "generate")
    gen_started = time.perf_counter()
    outputs = scoring.generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=args.max_new_tokens,
                               stop=tuple(UNTIL), batch_size=args.batch_size)
    gen = time.perf_counter() - gen_started
    scores = [scoring.score_output(o, r["answer"], "exact_match") for o, r in zip(outputs, rows)]
    return {"seconds": time.perf_counter() - started, "generate": gen, "load": gen_started - started, "env": 0.0,
            "outputs": outputs, "scores": scores}


def lm_eval_side(model, tokenizer, task_dir: str, args) -> dict:
    import lm_eval.evaluator as evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    started = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size, device=str(model.device))
    spent = []
    generate_until = lm.generate_until

    def timed_generate_until(requests, disable_tqdm=False):
        t = time.perf_counter()
        try:
            return generate_until(requests, disable_tqdm=True)  # its progress bar ignores TQDM_DISABLE
        finally:
            spent.append(time.perf_counter() - t)

    lm.generate_until = timed_generate_until
    manager = TaskManager(include_path=task_dir, include_defaults=False)
    loading = []
    load = manager.load

    def timed_load(spec):
        t = time.perf_counter()
        try:
            return load(spec)
        finally:
            loading.append(time.perf_counter() - t)

    manager.load = timed_load
    env_info = []
    add_env_info = getattr(evaluator, "add_env_info", None)
    if add_env_info is not None:  # results["pretty_env_info"]: torch's collect_env, which runs pip and others

        def timed_env_info(*a, **k):
            t = time.perf_counter()
            try:
                return add_env_info(*a, **k)
            finally:
                env_info.append(time.perf_counter() - t)

        evaluator.add_env_info = timed_env_info
    try:
        result = evaluator.simple_evaluate(model=lm, tasks=["arith_gen"], task_manager=manager, log_samples=True,
                                           random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                           fewshot_random_seed=0)
    finally:
        if add_env_info is not None:
            evaluator.add_env_info = add_env_info
    seconds = time.perf_counter() - started
    samples = sorted(result["samples"]["arith_gen"], key=lambda s: s["doc_id"])
    return {"seconds": seconds, "generate": sum(spent), "load": sum(loading), "env": sum(env_info),
            "outputs": [s["filtered_resps"][0] for s in samples], "scores": [float(s["exact_match"]) for s in samples],
            "value": result["results"]["arith_gen"]["exact_match,none"]}


def compare(rows: list[dict], forge: dict, lmev: dict) -> list[str]:
    """Row-by-row differences, each with its reason; [] when both sides agree on every output and score."""
    problems = []
    for i, (row, fo, lo, fs, ls) in enumerate(zip(rows, forge["outputs"], lmev["outputs"], forge["scores"],
                                                  lmev["scores"])):
        if fo.strip() != lo.strip():
            problems.append(f"row {i} ({row['prompt']!r}): outputs differ: forge {fo!r}, lm-eval {lo!r}")
        elif fs != ls:
            problems.append(f"row {i}: same output {fo!r} for answer {row['answer']!r} but exact match forge {fs} "
                            f"(strip, casefold, trailing punctuation, first line), lm-eval {ls} "
                            f"(every space removed, nothing else)")
    if len(forge["outputs"]) != len(lmev["outputs"]):
        problems.append(f"forge has {len(forge['outputs'])} outputs, lm-eval {len(lmev['outputs'])}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=512, help="arithmetic questions evaluated (default 512)")
    ap.add_argument("--row-seed", type=int, default=7, help="seed of the questions (the SFT records use 0)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds, each side once per round (median)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=5, help="max_gen_toks on the lm-eval side")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both sides, same process)")
    ap.add_argument("--model", help="a model folder to evaluate instead of building the lab's model:sft")
    ap.add_argument("--sft-rows", type=int, default=600)
    ap.add_argument("--sft-epochs", type=int, default=8)
    ap.add_argument("--no-harness", action="store_true", help="skip the one-off forgebuild.rules.eval.harness run")
    args = ap.parse_args()

    header("bench_eval: examples/s of a generation task, forgebuild's scorer against lm-eval called directly")
    with scratch_dir("forge-bench-eval-") as root:
        os.environ["HF_DATASETS_CACHE"] = os.path.join(root, "hf-datasets")  # before datasets is imported
        model_path = args.model or build_lab(os.path.join(root, "lab"), args)
        task_dir, data, rows = write_rows(root, args)

        started = time.perf_counter()
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        import datasets
        import lm_eval

        torch.set_num_threads(args.threads)
        transformers.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        logging.getLogger("lm-eval").setLevel(logging.ERROR)
        model = AutoModelForCausalLM.from_pretrained(model_path).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        print(f"imports + model load: {time.perf_counter() - started:.1f} s (outside both clocks); torch "
              f"{torch.__version__}, transformers {transformers.__version__}, lm_eval "
              f"{getattr(lm_eval, '__version__', '?')}, threads {args.threads}, device {model.device}")
        print(f"{args.rows} rows, batch size {args.batch_size}, greedy, max {args.max_new_tokens} new tokens, "
              f"stop {UNTIL}; {args.warmup} warm-up + {args.repeats} timed rounds, alternating")

        timings = {"forge": [], "lm-eval": []}
        gen_timings = {"forge": [], "lm-eval": []}
        load_timings = {"forge": [], "lm-eval": []}
        env_timings = {"forge": [], "lm-eval": []}
        problems: list[str] = []
        last = {}
        for i in range(args.warmup + args.repeats):
            order = ["forge", "lm-eval"] if i % 2 == 0 else ["lm-eval", "forge"]
            for side in order:
                if side == "forge":
                    last[side] = forge_side(model, tokenizer, data, args)
                else:
                    last[side] = lm_eval_side(model, tokenizer, task_dir, args)
                if i >= args.warmup:
                    timings[side].append(last[side]["seconds"])
                    gen_timings[side].append(last[side]["generate"])
                    load_timings[side].append(last[side]["load"])
                    env_timings[side].append(last[side]["env"])
            round_problems = compare(rows, last["forge"], last["lm-eval"])
            if round_problems and not problems:
                problems = round_problems

        n = len(rows)
        med = {side: statistics.median(t) for side, t in timings.items()}
        gen = {side: statistics.median(t) for side, t in gen_timings.items()}
        loads = {side: statistics.median(t) for side, t in load_timings.items()}
        envs = {side: statistics.median(t) for side, t in env_timings.items()}
        table_rows = [[side, f"{med[side]:.3f}", f"{n / med[side]:.0f}", f"{loads[side]:.3f}", f"{gen[side]:.3f}",
                       f"{envs[side]:.3f}", f"{med[side] - gen[side] - loads[side] - envs[side]:.3f}",
                       " ".join(f"{t:.3f}" for t in timings[side])]
                      for side in ("forge", "lm-eval")]
        print()
        print(table(table_rows, ["side", "median s", "examples/s", "rows/task load s", "generation s", "env info s",
                                 "other s", "all rounds s"]))
        print(f"\nforge / lm-eval examples/s: {med['lm-eval'] / med['forge']:.2f}x  "
              f"(generation alone: {gen['lm-eval'] / gen['forge']:.2f}x)")

        em_forge = sum(last["forge"]["scores"]) / n
        em_lm = last["lm-eval"]["value"]
        pairs = list(zip(last["forge"]["outputs"], last["lm-eval"]["outputs"]))
        same_text, same_raw = sum(f.strip() == lo.strip() for f, lo in pairs), sum(f == lo for f, lo in pairs)
        print(f"exact match: forge {em_forge:.4f}, lm-eval {em_lm:.4f}; identical outputs (stripped) "
              f"{same_text}/{n}; identical raw {same_raw}/{n}")
        if problems:
            print(f"DIFFERENCES ({len(problems)} rows, first round that had any):")
            for line in problems[:10]:
                print("  " + line)
        else:
            print("PARITY: every row has the same output and the same exact match on both sides, in every round")

        from lm_eval.tasks import TaskManager

        t = time.perf_counter()
        TaskManager(include_path=task_dir)
        with_defaults = time.perf_counter() - t
        t = time.perf_counter()
        TaskManager(include_path=task_dir, include_defaults=False)
        without = time.perf_counter() - t
        print(f"\nTaskManager index: with lm-eval's built-in tasks {with_defaults:.2f} s, task folder only "
              f"{without:.4f} s (once each, not in the table)")

        if not args.no_harness:
            from forgebuild.rules.eval.harness import run_tasks

            t = time.perf_counter()
            with contextlib.redirect_stderr(io.StringIO()):  # lm-eval's progress bar
                result = run_tasks(model_path, task_dir, ["arith_gen"], limit=None, batch_size=args.batch_size,
                                   seed=0, log=lambda _line: None)
            seconds = time.perf_counter() - t
            value = result["metrics"]["arith_gen.exact_match"]["value"]
            same = result["per_example"]["arith_gen.exact_match"] == last["lm-eval"]["scores"]
            print(f"forgebuild.rules.eval.harness.run_tasks (once, model loaded from disk inside): {seconds:.2f} s, "
                  f"{n / seconds:.0f} examples/s; exact match {value:.4f} "
                  f"({'same per-row scores as' if same else 'DIFFERENT per-row scores from'} the direct lm-eval call)")


if __name__ == "__main__":
    main()
