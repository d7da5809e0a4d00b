"""Training throughput: the pretrain and sft recipes run by forgebuild against plain transformers / TRL scripts.

A lab project (built once, in a temporary folder) holds tinylab-like data: the
first --text-files modules of Python's standard library as a corpus, a BPE
tokenizer, a `tokens` target (train.bin / holdout.bin), a small pretrained
`model:base` and the arithmetic SFT records of tests/tinylab.py as a dataset.
Then, alternating, N repeats each (after --warmup unmeasured rounds):

  forge         `forgebuild model:pt` (or model:sft) in a copy of the lab, with
                forgebuild's defaults: every step logged, a checkpoint every
                `checkpoint_every` (50) steps and, because the save strategy is
                "steps", one more at the last step (transformers saves there; the
                build then deletes it with the work folder)
  plain         the same training written as a user would: the same model config,
                rows (train.bin through a numpy memmap; the dataset's train split),
                batch, steps, schedule, seed and threads; logging_steps=10,
                save_strategy="no", the progress bar on, trainer.save_model() at the end
  plain-fargs   the plain script with forgebuild's TrainingArguments (logging_steps=1,
                save_steps=checkpoint_every, save_total_limit=2, no progress bar):
                how much of a gap is the settings and how much forgebuild itself
  forge-nockpt  (only with --variants) forgebuild with checkpoint_every = 10**6: only
                the final checkpoint is written
  plain-trl     (only with --variants; sft only) the plain SFT script with SFTConfig's
                own defaults left in: bf16=True (autocast, on CPU too) and
                gradient_checkpointing=True. plain and plain-fargs set both off, as
                forgebuild does, so that the configuration is the same

Both sides time trainer.train() alone (forgebuild: `train_seconds` of the build
record, read with `show --json`; plain: the script's own clock around
trainer.train()), and the whole process from launch to exit. tokens/s:
  pretrain  steps x batch x seq_len / train seconds (forgebuild's own
            `tokens_per_second` formula; it is also printed from the record)
  sft       the non-padding tokens of the tokenized train rows x epochs / train
            seconds. The sft recipe records no tokens/s, so the count comes from the
            plain side's tokenized dataset: the rows are the same on both sides
            (same split file, same tokenizer, same max_length), so the tokens/s
            ratio is the train-seconds ratio.
Both sides use the same seed (forgebuild.planning.keys.derive_seed of the target's
address), so on CPU they train to bit-identical weights: a digest of each run's
model.safetensors tensors is compared, as the proof that the two did the same
work (losses are printed too). Before anything is timed the training libraries
are imported once, because ENV's fresh PYTHONPYCACHEPREFIX would otherwise make
the first process compile transformers and trl into it.

seconds before first step: forgebuild's `seconds_before_first_step` counts from
the worker process's main() (after its interpreter start and `import
forgebuild.engine.worker`, printed at the top, ~0.1 s); the plain figure counts from
the script's first line (after its interpreter start). Both are mostly the
import of torch + transformers (+ trl): ~3.5-4 s here. "plan" is launch -> the
`start` event on forgebuild's --json stream; "other" = wall - before first step
- train: interpreter start, planning, the final evaluate and save, and
(forgebuild) storing the artifact in its cache.

The tiny default model (hidden 128) makes a checkpoint cheap (a few MB, ~10 ms):
with --hidden 256 --layers 4 --heads 8 one is 52 MB, still ~30 ms. Timings on a
loaded machine move by +-5% from run to run; the A/B alternation keeps drift out
of the ratio, not noise: use --repeats 5 or more to see a 3% difference.

Run: python benchmarks/bench_train.py [--stages pretrain,sft] [--repeats 3] [--steps 60]
Defaults: about 5 minutes on 2 cores (estimated from the per-run times). A quick check
(2 minutes): --repeats 2 --warmup 0 --hidden 64 --text-files 20 --text-chars 4000
--vocab 512 --sft-rows 256
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _common import ENV, FORGE, REPO, header, run, scratch_dir, table, verdict

sys.path.insert(0, os.path.join(REPO, "tests"))
import tinylab  # noqa: E402  (the tests' tiny lab: standard-library text, arithmetic records)

from forgebuild.planning.keys import derive_seed  # noqa: E402

PROJECT_SEED = 11
GOAL = 0.97  # forgebuild tokens/s over plain tokens/s
# OMP/MKL: one thread everywhere, as the Forgefile's threads = 1; unbuffered so --json events arrive as emitted.
CHILD_ENV = {**ENV, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
             "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

LAB_FORGEFILE = """
[forge]
seed = {seed}

[corpus.stdlib]
sources = ["text/*.txt"]
holdout = 0.1

[tokenizer.bpe]
corpus = "corpus:stdlib"
vocab_size = {vocab}

[tokens.text]
corpus = "corpus:stdlib"
tokenizer = "tokenizer:bpe"
seq_len = {seq_len}

[dataset.sft]
source = "data/sft.jsonl"
format = "prompt_completion"

# the base the SFT stage fine-tunes (and a warm-up of the pretrain path)
[model.base]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
tokens = "tokens:text"
arch = {{ family = "llama", hidden = {hidden}, layers = {layers}, heads = {heads} }}
train = {{ lr = 3e-3, steps = 20, batch_size = 8, warmup_steps = 2 }}
threads = 1

[model.pt]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
tokens = "tokens:text"
arch = {{ family = "llama", hidden = {hidden}, layers = {layers}, heads = {heads} }}
train = {{ lr = 3e-3, steps = {steps}, batch_size = {batch}, warmup_steps = {warmup} }}
eval_rows = {eval_rows}
threads = 1
{runtime}

[model.sft]
recipe = "sft"
base = "model:base"
data = "dataset:sft"
max_length = {sft_max_length}
train = {{ lr = 2e-3, epochs = {sft_epochs}, batch_size = {sft_batch} }}
threads = 1
{runtime}
"""

# ---------------------------------------------------------------- the plain scripts, as a user writes them

PLAIN_PRETRAIN = r'''
import time
T0 = time.time()
import argparse, json, os
import numpy as np
import torch
from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback,
                          TrainingArguments, default_data_collator, set_seed)

ap = argparse.ArgumentParser()
for name in ("tokens", "tokenizer", "out"):
    ap.add_argument("--" + name)
for name in ("seed", "steps", "batch", "warmup", "hidden", "layers", "heads", "eval_rows", "threads",
             "logging_steps", "save_steps"):
    ap.add_argument("--" + name.replace("_", "-"), type=int, default=0)
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--forge-args", action="store_true")
a = ap.parse_args()


class PackedRows(torch.utils.data.Dataset):
    """Fixed-length rows of token ids in a flat binary file, read through a memory map."""
    def __init__(self, path, seq_len, dtype, limit=None):
        self.rows = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r").reshape(-1, seq_len)
        self.count = len(self.rows) if limit is None else min(limit, len(self.rows))

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        ids = torch.from_numpy(self.rows[i].astype(np.int64))
        return {"input_ids": ids, "labels": ids.clone()}


class FirstStep(TrainerCallback):
    at = None

    def on_step_begin(self, args, state, control, **kw):
        if FirstStep.at is None:
            FirstStep.at = time.time()


torch.set_num_threads(a.threads)
set_seed(a.seed)
with open(os.path.join(a.tokens, "meta.json")) as f:
    meta = json.load(f)
seq_len = meta["seq_len"]
tokenizer = AutoTokenizer.from_pretrained(a.tokenizer)
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=a.hidden, num_hidden_layers=a.layers,
                     num_attention_heads=a.heads, num_key_value_heads=a.heads, head_dim=a.hidden // a.heads,
                     intermediate_size=4 * a.hidden, max_position_embeddings=seq_len, tie_word_embeddings=True,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id)
model = LlamaForCausalLM(config)
train = PackedRows(os.path.join(a.tokens, meta["splits"]["train"]["file"]), seq_len, meta["dtype"])
holdout = PackedRows(os.path.join(a.tokens, meta["splits"]["holdout"]["file"]), seq_len, meta["dtype"], a.eval_rows)
common = dict(output_dir=os.path.join(a.out, "checkpoints"), per_device_train_batch_size=a.batch,
              per_device_eval_batch_size=a.batch, learning_rate=a.lr, lr_scheduler_type="cosine",
              warmup_steps=a.warmup, max_steps=a.steps, seed=a.seed, data_seed=a.seed, report_to="none",
              use_cpu=True, dataloader_num_workers=0)
if a.forge_args:  # forgebuild's settings: every step logged, periodic checkpoints (and one at the end)
    args = TrainingArguments(**common, logging_steps=1, logging_nan_inf_filter=False, save_strategy="steps",
                             save_steps=a.save_steps, save_total_limit=2, disable_tqdm=True)
else:             # a user's: a log line every 10 steps, the final model saved once
    args = TrainingArguments(**common, logging_steps=a.logging_steps, save_strategy="no")
trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=holdout,
                  data_collator=default_data_collator, callbacks=[FirstStep()])
started = time.time()
result = trainer.train()
seconds = time.time() - started
holdout_loss = trainer.evaluate()["eval_loss"] if len(holdout) else None
trainer.save_model(a.out)
tokenizer.save_pretrained(a.out)
print(json.dumps({"t0": T0, "first_step": FirstStep.at, "train_seconds": seconds, "steps": trainer.state.global_step,
                  "params": sum(p.numel() for p in model.parameters()),
                  "tokens": trainer.state.global_step * a.batch * seq_len, "train_loss": result.training_loss,
                  "holdout_loss": holdout_loss}))
'''

PLAIN_SFT = r'''
import time
T0 = time.time()
import argparse, json, os
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback, set_seed
from trl import SFTConfig, SFTTrainer

ap = argparse.ArgumentParser()
for name in ("base", "data", "out"):
    ap.add_argument("--" + name)
for name in ("seed", "epochs", "batch", "max_length", "threads", "logging_steps", "save_steps"):
    ap.add_argument("--" + name.replace("_", "-"), type=int, default=0)
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--forge-args", action="store_true")
ap.add_argument("--trl-defaults", action="store_true")
a = ap.parse_args()


class FirstStep(TrainerCallback):
    at = None

    def on_step_begin(self, args, state, control, **kw):
        if FirstStep.at is None:
            FirstStep.at = time.time()


torch.set_num_threads(a.threads)
set_seed(a.seed)
with open(a.data) as f:
    data = Dataset.from_list([json.loads(line) for line in f if line.strip()])
tokenizer = AutoTokenizer.from_pretrained(a.base)
model = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32)
common = dict(output_dir=os.path.join(a.out, "checkpoints"), per_device_train_batch_size=a.batch,
              learning_rate=a.lr, lr_scheduler_type="cosine", num_train_epochs=a.epochs, seed=a.seed,
              data_seed=a.seed, report_to="none", use_cpu=True, dataloader_num_workers=0,
              max_length=a.max_length, packing=False, padding_free=False, completion_only_loss=True)
if not a.trl_defaults:
    # SFTConfig's own defaults are bf16=True (autocast, also on CPU) and gradient_checkpointing=True;
    # forgebuild sets both off, so the same configuration means setting them off here too.
    common.update(bf16=False, gradient_checkpointing=False)
if a.forge_args:
    args = SFTConfig(**common, logging_steps=1, logging_nan_inf_filter=False, save_strategy="steps",
                     save_steps=a.save_steps, save_total_limit=2, disable_tqdm=True)
else:
    args = SFTConfig(**common, logging_steps=a.logging_steps, save_strategy="no")
trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[FirstStep()])
tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"]) * a.epochs
started = time.time()
result = trainer.train()
seconds = time.time() - started
trainer.save_model(a.out)
tokenizer.save_pretrained(a.out)
print(json.dumps({"t0": T0, "first_step": FirstStep.at, "train_seconds": seconds, "steps": trainer.state.global_step,
                  "params": sum(p.numel() for p in trainer.model.parameters()), "tokens": tokens,
                  "train_loss": result.training_loss}))
'''


# ---------------------------------------------------------------- running one side

def lab_forgefile(args, runtime: str = "") -> str:
    return LAB_FORGEFILE.format(seed=PROJECT_SEED, vocab=args.vocab, seq_len=args.seq_len, hidden=args.hidden,
                                layers=args.layers, heads=args.heads, steps=args.steps, batch=args.batch,
                                warmup=args.warmup, eval_rows=args.eval_rows, sft_max_length=args.sft_max_length,
                                sft_epochs=args.sft_epochs, sft_batch=args.sft_batch, runtime=runtime)


def forge_json(folder: str, *argv: str) -> list[dict]:
    proc = run([*FORGE, *argv, "--json"], folder, CHILD_ENV)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def run_forge(lab: str, args, stage: str, runtime: str) -> dict:
    """`forgebuild model:<stage>` in a copy of the lab (its dependencies cached); the events timed as they arrive."""
    target = {"pretrain": "model:pt", "sft": "model:sft"}[stage]
    with scratch_dir("forge-bench-train-run-") as folder:
        shutil.copytree(lab, folder, dirs_exist_ok=True, symlinks=True)
        with open(os.path.join(folder, "Forgefile.toml"), "w", encoding="utf-8") as f:
            f.write(lab_forgefile(args, runtime))
        events, stamps = [], {}
        with tempfile.TemporaryFile() as err:
            launched = time.perf_counter()
            proc = subprocess.Popen([*FORGE, target, "--json"], cwd=folder, env=CHILD_ENV, stdout=subprocess.PIPE,
                                    stderr=err, text=True)
            for line in proc.stdout:
                if line.strip():
                    event = json.loads(line)
                    events.append(event)
                    stamps.setdefault((event.get("event"), event.get("target")), time.perf_counter() - launched)
            code = proc.wait()
            wall = time.perf_counter() - launched
            err.seek(0)
            stderr = err.read().decode(errors="replace")
        built = [e for e in events if e.get("event") == "built" and e.get("target") == target]
        if code != 0 or not built:
            log = os.path.join(folder, ".forge", "logs", "model", target.split(":")[1] + ".log")
            tail = open(log, encoding="utf-8", errors="replace").read()[-3000:] if os.path.exists(log) else ""
            raise RuntimeError(f"forgebuild {target} exited {code}\nstderr:\n{stderr[-2000:]}\nlog:\n{tail}")
        others = {e["target"]: e["event"] for e in events if e.get("event") in ("built", "cached")}
        if [t for t, what in others.items() if what == "built"] != [target]:
            raise RuntimeError(f"expected only {target} to build, got {others}")
        record = next(e for e in forge_json(folder, "show", target) if e.get("event") == "record")
        path = next(e for e in forge_json(folder, "path", target) if e.get("event") == "summary")["paths"][target]
        with open(os.path.join(path, "metrics.json"), encoding="utf-8") as f:
            final = json.load(f)
        m = record["metrics"]
        weights = fingerprint(path)
        return {"weights": weights, "wall": wall, "train": m["train_seconds"], "first": m["seconds_before_first_step"],
                "plan": stamps.get(("start", target)), "steps": m["steps"], "rule_tps": m.get("tokens_per_second"),
                "train_loss": final.get("train_loss"), "holdout_loss": final.get("holdout_loss"), "stage": built[0]["seconds"]}


def run_plain(lab: str, paths: dict, args, stage: str, variant: str, scripts: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="forge-bench-train-plain-") as out:
        if stage == "pretrain":
            argv = [sys.executable, os.path.join(scripts, "plain_pretrain.py"), "--tokens", paths["tokens:text"],
                    "--tokenizer", paths["tokenizer:bpe"], "--out", out,
                    "--seed", str(derive_seed(PROJECT_SEED, "model:pt")), "--steps", str(args.steps),
                    "--batch", str(args.batch), "--warmup", str(args.warmup), "--hidden", str(args.hidden),
                    "--layers", str(args.layers), "--heads", str(args.heads), "--eval-rows", str(args.eval_rows)]
        else:
            argv = [sys.executable, os.path.join(scripts, "plain_sft.py"), "--base", paths["model:base"],
                    "--data", paths["sft_rows"], "--out", out, "--seed", str(derive_seed(PROJECT_SEED, "model:sft")),
                    "--epochs", str(args.sft_epochs), "--batch", str(args.sft_batch),
                    "--max-length", str(args.sft_max_length)]
        argv += ["--threads", "1", "--logging-steps", "10", "--save-steps", str(args.checkpoint_every)]
        if variant == "plain-fargs":
            argv.append("--forge-args")
        if variant == "plain-trl":
            argv.append("--trl-defaults")
        launched_wall = time.time()
        launched = time.perf_counter()
        proc = run(argv, lab, CHILD_ENV)
        wall = time.perf_counter() - launched
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        weights = fingerprint(out)
        checkpoints = [os.path.join(out, "checkpoints", c) for c in os.listdir(os.path.join(out, "checkpoints"))] \
            if os.path.isdir(os.path.join(out, "checkpoints")) else []
        checkpoint_bytes = max((folder_bytes(c) for c in checkpoints), default=None)
    return {"weights": weights, "params": result["params"], "checkpoint_bytes": checkpoint_bytes, "wall": wall,
            "train": result["train_seconds"], "first": result["first_step"] - result["t0"],
            "from_launch": result["first_step"] - launched_wall, "plan": None, "steps": result["steps"],
            "tokens": result["tokens"], "train_loss": result["train_loss"], "holdout_loss": result.get("holdout_loss")}


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def fingerprint(folder: str) -> str:
    """A digest of the saved weights (names and bytes): equal only if both sides trained the same."""
    import hashlib

    from safetensors.numpy import load_file

    tensors = load_file(os.path.join(folder, "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode() + tensors[name].tobytes())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------- the lab

def build_lab(lab: str, args) -> dict:
    tinylab.write_stdlib_text(lab, files=args.text_files, max_chars=args.text_chars)
    tinylab.write_arith_data(lab, n=args.sft_rows)
    with open(os.path.join(lab, "Forgefile.toml"), "w", encoding="utf-8") as f:
        f.write(lab_forgefile(args))
    started = time.perf_counter()
    run([*FORGE, "tokens:text", "model:base", "dataset:sft", "-q"], lab, CHILD_ENV)
    seconds = time.perf_counter() - started
    found = next(e for e in forge_json(lab, "path", "tokens:text", "tokenizer:bpe", "model:base", "dataset:sft")
                 if e.get("event") == "summary")["paths"]
    with open(os.path.join(found["tokens:text"], "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    with open(os.path.join(found["dataset:sft"], "dataset.json"), encoding="utf-8") as f:
        dataset = json.load(f)
    found["sft_rows"] = os.path.join(found["dataset:sft"], dataset["splits"]["train"]["path"])
    with open(found["sft_rows"], encoding="utf-8") as f:
        rows = sum(1 for line in f if line.strip())
    print(f"lab: {args.text_files} stdlib files (<= {args.text_chars} chars each), BPE vocab {args.vocab}, "
          f"{meta['splits']['train']['sequences']} train rows x {meta['seq_len']} tokens "
          f"({meta['splits']['holdout']['sequences']} holdout); {rows} SFT rows after dedup; "
          f"built in {seconds:.1f} s (with a 20-step model:base)")
    steps_per_epoch = math.ceil(rows / args.sft_batch)
    print(f"pretrain: llama hidden {args.hidden} x {args.layers} layers, batch {args.batch}, {args.steps} steps; "
          f"sft: batch {args.sft_batch}, {args.sft_epochs} epoch(s) = {steps_per_epoch * args.sft_epochs} steps, "
          f"max_length {args.sft_max_length}; threads 1 everywhere; forgebuild checkpoint_every "
          f"{args.checkpoint_every} (its default 50 unless --checkpoint-every)")
    return found


def warm_libraries() -> float:
    """Import the training libraries once: ENV's PYTHONPYCACHEPREFIX is a fresh folder, and the first
    process to import transformers and trl would otherwise compile them there (seconds, not timed on
    either side in a real install). Returns the seconds of a second, warm import."""
    code = ("import torch, transformers, datasets, peft, trl; from transformers import Trainer, LlamaForCausalLM; "
            "from trl import SFTTrainer")
    run([sys.executable, "-c", code], REPO, CHILD_ENV)
    started = time.perf_counter()
    run([sys.executable, "-c", code], REPO, CHILD_ENV)
    return time.perf_counter() - started


def worker_startup() -> float:
    """What forgebuild's worker pays before its clock starts: interpreter start and `import forgebuild.engine.worker`."""
    def once():
        t = time.perf_counter()
        run([sys.executable, "-c", "import forgebuild.engine.worker"], REPO, CHILD_ENV)
        return time.perf_counter() - t
    return statistics.median(once() for _ in range(5))


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default="pretrain,sft")
    ap.add_argument("--variants", default="forge,plain,plain-fargs",
                    help="of forge, plain, plain-fargs, forge-nockpt, plain-trl (forge and plain always run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (imports into page cache)")
    ap.add_argument("--steps", type=int, default=60, help="pretrain optimizer steps (> 50: one periodic checkpoint)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup-steps", dest="warmup", type=int, default=6)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--eval-rows", type=int, default=64, help="holdout rows of the final evaluate (both sides)")
    ap.add_argument("--text-files", type=int, default=60)
    ap.add_argument("--text-chars", type=int, default=12000)
    ap.add_argument("--sft-rows", type=int, default=512, help="arithmetic records written (fewer after dedup)")
    ap.add_argument("--sft-epochs", type=int, default=1)
    ap.add_argument("--sft-batch", type=int, default=16)
    ap.add_argument("--sft-max-length", type=int, default=32)
    ap.add_argument("--checkpoint-every", type=int, default=50,
                    help="forgebuild's checkpoint_every (50 is its default; other values are written to the Forgefile)")
    args = ap.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    all_variants = ["forge", "plain"] + [v for v in args.variants.split(",") if v not in ("forge", "plain", "")]
    runtime = {"forge": "" if args.checkpoint_every == 50 else f"checkpoint_every = {args.checkpoint_every}",
               "forge-nockpt": "checkpoint_every = 1000000"}

    header("bench_train: tokens/s of forgebuild's pretrain and sft recipes against plain transformers / TRL")
    print(f"load:       {os.getloadavg()[0]:.2f} (1-min load average at start, {os.cpu_count()} CPUs)")
    print(f"libraries: torch, transformers, datasets, peft, trl (Trainer, SFTTrainer) import in "
          f"{warm_libraries():.2f} s, warm")
    startup = worker_startup()
    print(f"forgebuild worker start-up (python -c 'import forgebuild.engine.worker'): {startup:.2f} s, "
          f"before its seconds_before_first_step clock starts")
    with scratch_dir("forge-bench-train-") as lab, tempfile.TemporaryDirectory(prefix="forge-bench-train-py-") as scripts:
        for name, text in (("plain_pretrain.py", PLAIN_PRETRAIN), ("plain_sft.py", PLAIN_SFT)):
            with open(os.path.join(scripts, name), "w", encoding="utf-8") as f:
                f.write(text)
        paths = build_lab(lab, args)

        def one(stage: str, variant: str) -> dict:
            if variant.startswith("forge"):
                return run_forge(lab, args, stage, runtime[variant])
            return run_plain(lab, paths, args, stage, variant, scripts)

        for stage in stages:
            variants = [v for v in all_variants if not (stage == "pretrain" and v == "plain-trl")]
            results = {v: [] for v in variants}
            loads = []
            for rnd in range(args.warmup + args.repeats):
                order = variants if rnd % 2 == 0 else variants[::-1]  # A/B then B/A: drift under load cancels
                for v in order:
                    r = one(stage, v)
                    if rnd >= args.warmup:
                        results[v].append(r)
                loads.append(os.getloadavg()[0])
                print(f"  {stage}: round {rnd + 1}/{args.warmup + args.repeats}"
                      f"{' (warm-up)' if rnd < args.warmup else ''} done, load {loads[-1]:.2f}", flush=True)
            report(stage, variants, results, args, loads)


def fmt(loss) -> str:
    return "-" if loss is None else f"{loss:.5f}"


def report(stage: str, variants: list[str], results: dict, args, loads: list[float]) -> None:
    med = lambda v, key: statistics.median(r[key] for r in results[v] if r[key] is not None)  # noqa: E731
    tokens = results["plain"][0]["tokens"]  # the same rows on both sides (pretrain: steps x batch x seq_len)
    base_tps = tokens / med("plain", "train")
    rows = []
    for v in variants:
        rs = results[v]
        tps = tokens / med(v, "train")
        plan = f"{med(v, 'plan'):.2f}" if any(r["plan"] is not None for r in rs) else "-"
        other = statistics.median(r["wall"] - r["first"] - r["train"] for r in rs)
        rows.append([v, f"{tps:,.0f}", f"{tps / base_tps:.3f}", f"{med(v, 'train'):.2f}",
                     " ".join(f"{r['train']:.2f}" for r in rs), f"{med(v, 'first'):.2f}", plan, f"{other:.2f}",
                     f"{med(v, 'wall'):.2f}", f"{tokens / med(v, 'wall'):,.0f}", fmt(rs[0]["train_loss"]),
                     fmt(rs[0]["holdout_loss"])])
    print()
    sizes = [r["checkpoint_bytes"] for r in results.get("plain-fargs", []) if r["checkpoint_bytes"]]
    print(f"{stage}: {results['plain'][0]['params']:,} parameters, {tokens:,} tokens per run, "
          f"{results['plain'][0]['steps']} steps, median of {len(results['plain'])} "
          f"(load average {min(loads):.2f}-{max(loads):.2f} during the rounds)"
          + (f"; one checkpoint (weights, optimizer, scheduler, RNG) = {sizes[0] / 1e6:.1f} MB" if sizes else ""))
    print(table(rows, ["variant", "train tok/s", "vs plain", "train s", "each run", "before 1st step s", "plan s",
                       "other s", "wall s", "wall tok/s", "train loss", "holdout loss"]))
    ratio = med("plain", "train") / med("forge", "train")
    print(f"forge / plain train tokens/s: {ratio:.3f} (goal >= {GOAL}): {verdict(ratio, GOAL, higher_is_better=True)}")
    print(f"forge / plain wall: {med('forge', 'wall') / med('plain', 'wall'):.3f}  "
          f"(+{med('forge', 'wall') - med('plain', 'wall'):.2f} s)")
    if "plain-fargs" in results:
        print(f"forgebuild's settings in plain transformers (plain-fargs / plain train s): "
              f"{med('plain-fargs', 'train') / med('plain', 'train'):.3f}; forge / plain-fargs train tokens/s: "
              f"{med('plain-fargs', 'train') / med('forge', 'train'):.3f}")
    if stage == "pretrain":
        print(f"forgebuild's own tokens_per_second (record): {med('forge', 'rule_tps'):,.0f}")
    weights = {v: sorted({r["weights"] for r in results[v]}) for v in variants if v != "plain-trl"}
    same = len({w for ws in weights.values() for w in ws}) == 1
    print(f"bit-identical final weights on every side and run (same rows, seed, config): "
          f"{'yes' if same else 'NO: ' + json.dumps(weights)}")
    plain_launch = statistics.median(r["from_launch"] for r in results["plain"])
    print(f"plain: launch -> first step {plain_launch:.2f} s")
    print()


if __name__ == "__main__":
    main()
