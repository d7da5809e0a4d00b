"""GPU training throughput: a ~100M-parameter pretrain target built by forgebuild, its tokens/s and MFU.

A throw-away project (in a temporary folder) holds Python's standard library as
a corpus, a byte-level BPE tokenizer, a `tokens` target and one `pretrain`
target: llama, hidden 768, 12 layers, 12 heads, MLP 3072, seq_len 1024, batch
16, 50 steps, `device = "cuda"`, `threads` left at its default. Each of the four
is built by its own `forgebuild TARGET --json` call, so every phase has its time.

  corpus     standard-library *.py files (sorted paths, tests included), as many as
             the steps need: steps x batch x seq_len tokens at ~3.7 bytes a token
             (8 MB gave 2.2 M tokens with vocab 8192 in bench_tokenize), x 1.5, so
             no row is trained on twice (--mb to choose)
  tokenizer  BPE with vocab 8192, not a 32000 of a real model: training the vocabulary
             is the slow part of the tokenizer and buys nothing here; the model's
             embedding (and output head) is then 6.3 M of its ~120 M parameters
  model      the pretrain target: figures from its build record (`forgebuild show
             model:gpu --json`: tokens_per_second, train_seconds,
             seconds_before_first_step) and from the stage log, whose `step N/M`
             lines (every log_every = 10 steps) the script timestamps as they are
             written: steps 11..50 give a steady tokens/s without the first steps'
             warm-up (kernel selection, allocator growth)

MFU = achieved FLOP/s / peak FLOP/s. Achieved FLOP/s = tokens/s x FLOPs per token,
with FLOPs per token as in PaLM (Chowdhery et al. 2022, appendix B):
6 N + 12 L H Q T, where N counts every weight matrix that is multiplied (the
blocks' projections and the output head; with tied embeddings the embedding
matrix is counted once, as the head, since the input lookup does no arithmetic;
norm weights are left out, 0.02%), and 12 L H Q T is the attention scores and
mixing (L layers, H heads x Q head size = hidden, T = seq_len), forward and
backward. For the default model: 6 x 119.5 M = 717 M + 113 M = 830 M FLOPs a
token (6 x the non-embedding 113 M alone would be 679 M: the output head is 5%
of the work at vocab 8192). PaLM counts the whole T x T score matrix; a causal
kernel skips about half of it, so that term (14% here) is an upper bound on
the attention work done. The peak comes from a table of datasheet figures by
torch.cuda.get_device_name() (dense, no sparsity), for three precisions, the
values of the target's `train.precision` (one pretrain target is built at each,
model:gpu_fp32, model:gpu_tf32, model:gpu_bf16; --precision picks them):

  fp32   IEEE float32 on CUDA cores (float32 weights, bf16/fp16 off, TF32 turned off)
  tf32   the same float32 tensors on tensor cores (TrainingArguments tf32=True)
  bf16   mixed precision: bfloat16 autocast, float32 master weights (bf16=True), the
         figure MFU is usually quoted against

Each run's MFU is against the peak of the precision it used, read, not assumed: a
probe process builds forgebuild's own TrainingArguments (training.trainer_args) at
each precision and prints bf16, fp16 and tf32 (a tf32 request where there is no
TF32, as on a CPU, trains as fp32 and is judged so). --peak-tflops adds a column.

Several GPUs: a stage runs on one process, and transformers' Trainer wraps the model
in nn.DataParallel over every visible GPU when there are several. The single-GPU run
therefore gets CUDA_VISIBLE_DEVICES of one GPU. A multi-GPU figure needs forgebuild
to launch one process per GPU (torchrun, DDP): when its recipes have the `launch`
runtime key, a second target with launch = { processes = N } and N x the batch (the
same micro-batch per GPU) is built and its scaling printed; otherwise the script says
the figure needs that feature and skips it.

Generation (issue 15): after training, `generate` targets sample from the first trained model:
1024 prompts x n = 4, 64 new tokens, temperature 1, batches of 256, with engine = "transformers" on
the same device, and with engine = "vllm" when vLLM imports; their build records' samples/s, and a
check that both keep the outputs contract (every sample present, `finish` one of stop, eos,
length). The two engines' samples are not compared byte for byte: they are not meant to agree.

While the model stage runs, nvidia-smi is sampled every 500 ms (peak memory used,
median utilisation): the evidence that the stage ran on the GPU at all, since
forgebuild's `device = "cuda"` falls back to the CPU without a word when torch
sees no GPU.

After the builds, one child process measures what the run did not time: one
checkpoint of this model (save_pretrained of the weights + torch.save of the AdamW
state, as the Trainer writes every `checkpoint_every` steps; the benchmark's own
target sets checkpoint_every past the last step so tokens/s is training alone) and
the data loader's time per batch (forgebuild's PackedRows + default_data_collator).

Run: python benchmarks/bench_gpu.py               # on a GPU machine
     python benchmarks/bench_gpu.py --cpu-smoke   # anywhere: hidden 64, 2 layers, 10 steps, 1 thread, CPU
The GPU path stops after ~4 s, with a message, when torch sees no CUDA GPU.
Goal: the whole script under 5 minutes on an H100-class GPU. Measured on one H200
(2026-12-04, docs/performance.md has the figures): 112 s, of which the probe 15 s, the
three 50-step targets 25.5, 15.1 and 14.9 s (each ~7 s before its first step), the
generation 22.8 s. --cpu-smoke (fp32 only unless --precision): ~40 s on 2 cores.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

from _common import ENV, FORGE, REPO, header, scratch_dir, table, verdict

GOAL_SECONDS = 300
BYTES_PER_TOKEN = 3.7  # standard-library Python, BPE vocab 8192 (bench_tokenize: 8 MB -> 2.2 M tokens)
NEVER = 1_000_000  # checkpoint_every past the last step: the Trainer saves nothing while it is timed

# Dense datasheet peaks in TFLOP/s (sparsity figures halved), by precision. Matched in order
# against torch.cuda.get_device_name(): GH200 before H200, NVL and PCIe before the SXM part
# of the same chip, L40S before L40. Not listed (A10G, T4, ...): give --peak-tflops.
# fp32 = CUDA cores; tf32 and bf16 = tensor cores (bf16 with fp32 accumulate).
PEAKS = [
    (r"GH200", "GH200 (H100 SXM figures)", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    (r"H200 NVL", "H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    (r"H200", "H200 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    (r"H100 NVL", "H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5}),
    (r"H100 PCIe", "H100 PCIe", {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0}),
    (r"H100|H800", "H100 SXM", {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4}),
    (r"A100|A800", "A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}),
    (r"L40S", "L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.0}),
    (r"L40\b", "L40", {"fp32": 90.5, "tf32": 90.5, "bf16": 181.0}),
    (r"\bL4\b", "L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0}),
    (r"\bA10\b", "A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0}),
    (r"RTX 4090", "RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2}),
    (r"V100", "V100 SXM2", {"fp32": 15.7, "tf32": None, "bf16": None}),
]
PRECISIONS = ("fp32", "tf32", "bf16")

GPU_PROFILE = dict(hidden=768, layers=12, heads=12, intermediate=3072, seq_len=1024, batch=16, steps=50,
                   vocab=8192, device="cuda", threads=None, lr=6e-4, warmup_steps=5, log_every=10)
# ~30 s on 2 cores: the same project and the same code path, at toy size.
SMOKE_PROFILE = dict(hidden=64, layers=2, heads=4, intermediate=256, seq_len=128, batch=8, steps=10,
                     vocab=1024, device="cpu", threads=1, lr=3e-3, warmup_steps=2, log_every=2)

FORGEFILE = """
[forge]
seed = 7
{warm}

[corpus.stdlib]
sources = ["src/**/*.py"]
encoding_errors = "replace"   # a few test modules hold deliberately invalid UTF-8
dedup = "exact"
holdout = 0.02
{workers}

[tokenizer.bpe]
corpus = "corpus:stdlib"
vocab_size = {vocab}
{threads}

[tokens.text]
corpus = "corpus:stdlib"
tokenizer = "tokenizer:bpe"
seq_len = {seq_len}
{threads}
"""

MODEL = """
[model.{name}]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
tokens = "tokens:text"
arch = {{ family = "llama", hidden = {hidden}, layers = {layers}, heads = {heads}, intermediate = {intermediate} }}
train = {{ lr = {lr}, steps = {steps}, batch_size = {batch}, warmup_steps = {warmup_steps}, precision = "{precision}" }}
eval_rows = 64
device = "{device}"
log_every = {log_every}
checkpoint_every = {checkpoint_every}
{threads}
{launch}
"""

# What torch sees, and the precision forgebuild's own TrainingArguments ask for.
PROBE = r'''
import json, os, sys, tempfile, types
out = {"python": sys.version.split()[0]}
try:
    import torch
except ImportError as e:
    print(json.dumps({**out, "error": f"torch does not import: {e}"})); sys.exit()
out.update(torch=torch.__version__, cuda_build=torch.version.cuda, cuda=torch.cuda.is_available(),
           count=torch.cuda.device_count() if torch.cuda.is_available() else 0,
           matmul_precision=torch.get_float32_matmul_precision(),
           allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32))
out["devices"] = [{"name": torch.cuda.get_device_name(i),
                   "memory_gib": torch.cuda.get_device_properties(i).total_memory / 2**30,
                   "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                  for i in range(out["count"])]
if sys.argv[1] == "cuda" and not out["cuda"]:  # the caller stops here: no need for the rest
    print(json.dumps(out)); sys.exit()
try:
    import transformers
    from transformers import TrainingArguments
    from forgebuild.rules.model import training
    from forgebuild.rules.model.pretrain import Params
    out["transformers"] = transformers.__version__
    out["launch_feature"] = "launch" in Params.model_fields
    from forgebuild.rules.model.common import Train
    out["precision_feature"] = "precision" in Train.model_fields
    out["trainer"] = {}
    for precision in sys.argv[2].split(","):  # the last one built sets torch's TF32 switch: read above
        train = {"precision": precision} if out["precision_feature"] else {}
        p = Params(recipe="pretrain", tokenizer="tokenizer:a", tokens="tokens:a", arch={"family": "llama"},
                   device=sys.argv[1], train=train)
        with tempfile.TemporaryDirectory() as work:
            ctx = types.SimpleNamespace(params=p, work=work, seed=0, log=lambda line: None)
            a = training.trainer_args(ctx, TrainingArguments)
        out["trainer"][precision] = {"bf16": a.bf16, "fp16": a.fp16, "tf32": a.tf32,
                                     "optim": str(getattr(a.optim, "value", a.optim)),
                                     "logging_steps": a.logging_steps, "pin_memory": a.dataloader_pin_memory}
except Exception as e:  # the figures do not depend on it: report and go on
    out["trainer_error"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
'''

# One checkpoint of the trained model, written as the Trainer writes it, and the data loader's pace.
EXTRAS = r'''
import json, os, sys, tempfile, time
import torch
from transformers import AutoModelForCausalLM, default_data_collator
from forgebuild.rules.model.packed import PackedRows
model_dir, tokens_dir, device = sys.argv[1], sys.argv[2], sys.argv[4]
batch, threads = int(sys.argv[3]), int(sys.argv[5])
if threads:
    torch.set_num_threads(threads)
meta = json.load(open(os.path.join(tokens_dir, "meta.json")))
rows = PackedRows(tokens_dir, "train", meta)
n = min(20, max(1, len(rows) // batch))
start = time.perf_counter()
for b in range(n):
    default_data_collator([rows[(b * batch + i) % len(rows)] for i in range(batch)])
loader = (time.perf_counter() - start) / n
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
ids = torch.randint(0, model.config.vocab_size, (1, min(128, meta["seq_len"])), device=device)
model(input_ids=ids, labels=ids).loss.backward()
opt.step()  # AdamW's two moments now exist, as in any checkpoint after step 1
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
sync()
times = []
for attempt in range(2):  # the first save also pays one-time imports and allocations: both are printed
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_SCRATCH")) as folder:
        start = time.perf_counter()
        model.save_pretrained(folder, safe_serialization=True)
        weights = time.perf_counter() - start
        torch.save(opt.state_dict(), os.path.join(folder, "optimizer.pt"))
        times.append((time.perf_counter() - start, weights))
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
print(json.dumps({"loader_s": loader, "loader_batches": n, "ckpt_first_s": times[0][0], "ckpt_s": times[1][0],
                  "ckpt_weights_s": times[1][1], "ckpt_bytes": size}))
'''


# ---------------------------------------------------------------- running forgebuild

class LogWatch:
    """Timestamps the stage log's `step N/M` lines as they are written (polled every 50 ms).

    The log is appended one line at a time by the worker; the Trainer writes a step's line
    after the loss is read back (`.item()`), so the GPU has finished that step by then."""

    def __init__(self, path: str):
        self.path, self.steps, self.stop = path, {}, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        offset, partial = 0, ""
        while not self.stop.is_set():
            if os.path.exists(self.path):
                with open(self.path, encoding="utf-8", errors="replace") as f:
                    f.seek(offset)
                    data = f.read()
                    offset = f.tell()
                now = time.perf_counter()
                lines = (partial + data).split("\n")
                partial = lines.pop()
                for line in lines:
                    m = re.match(r"step (\d+)/(\d+) ", line)
                    if m:
                        self.steps.setdefault(int(m.group(1)), now)
            self.stop.wait(0.05)

    def close(self) -> dict:
        self.stop.set()
        self.thread.join()
        return self.steps


class GpuMonitor:
    """nvidia-smi sampling every 500 ms while a stage runs: peak memory used and utilisation."""

    def __init__(self):
        self.proc = None
        if shutil.which("nvidia-smi"):
            self.out = tempfile.TemporaryFile(mode="w+")
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used",
                                          "--format=csv,noheader,nounits", "-lms", "500"],
                                         stdout=self.out, stderr=subprocess.DEVNULL, text=True)

    def close(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.terminate()
        self.proc.wait()
        self.out.seek(0)
        per_gpu = {}
        for line in self.out:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 3 and all(p.isdigit() for p in parts):
                per_gpu.setdefault(int(parts[0]), []).append((int(parts[1]), int(parts[2])))
        self.out.close()
        return {i: {"peak_mib": max(m for _, m in s),
                    "util_median": statistics.median([u for u, _ in s if u > 0] or [0]),
                    "samples": len(s)} for i, s in per_gpu.items()}


def build(folder: str, target: str, env: dict, watch: bool = False) -> dict:
    """`forgebuild TARGET --json`: wall seconds, and (watch=True) the stage log's step times."""
    name = target.split(":", 1)
    log = LogWatch(os.path.join(folder, ".forge", "logs", *name) + ".log") if watch else None
    gpu = GpuMonitor() if watch and env.get("BENCH_DEVICE") == "cuda" else None
    started = time.perf_counter()
    proc = subprocess.run([*FORGE, target, "--json"], cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    steps = log.close() if log else {}
    smi = gpu.close() if gpu else None
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip().startswith("{")]
    if proc.returncode != 0 or not any(e.get("event") == "built" and e.get("target") == target for e in events):
        path = os.path.join(folder, ".forge", "logs", *name) + ".log"
        tail = open(path, encoding="utf-8", errors="replace").read()[-4000:] if os.path.exists(path) else "(no log)"
        raise SystemExit(f"forgebuild {target} exited {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}\n"
                         f"stage log {path}:\n{tail}")
    return {"wall": wall, "steps_at": {s: t - started for s, t in steps.items()}, "smi": smi}


def child_json(argv: list[str], env: dict, what: str) -> dict:
    """The last line of a child's stdout, as JSON; its stderr when it fails."""
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SystemExit(f"bench_gpu: {what} exited {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def forge_json(folder: str, env: dict, *argv: str) -> list[dict]:
    proc = subprocess.run([*FORGE, *argv, "--json"], cwd=folder, env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def record(folder: str, env: dict, target: str) -> dict:
    return next(e for e in forge_json(folder, env, "show", target) if e.get("event") == "record")


def path_of(folder: str, env: dict, target: str) -> str:
    return next(e for e in forge_json(folder, env, "path", target) if e.get("event") == "summary")["paths"][target]


# ---------------------------------------------------------------- the model's size and work

def param_counts(cfg: dict) -> dict:
    """Parameters of a llama config.json (transformers' LlamaForCausalLM, no biases)."""
    d, layers, vocab, inter = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or d // heads
    attn = d * heads * hd + 2 * d * kv * hd + heads * hd * d  # q, k, v, o
    mlp = 3 * d * inter  # gate, up, down
    norms = layers * 2 * d + d
    embedding = vocab * d
    head = 0 if cfg.get("tie_word_embeddings", True) else vocab * d
    total = embedding + head + layers * (attn + mlp) + norms
    matmul = layers * (attn + mlp) + vocab * d  # what is multiplied: the blocks and the output head
    return {"total": total, "embedding": embedding + head, "blocks": layers * (attn + mlp), "norms": norms,
            "matmul": matmul, "attn_width": heads * hd}


def flops_per_token(counts: dict, layers: int, seq_len: int) -> dict:
    dense = 6 * counts["matmul"]
    attention = 12 * layers * counts["attn_width"] * seq_len
    return {"dense": dense, "attention": attention, "total": dense + attention}


def unit(a, n: int) -> str:
    if a.device == "cuda":
        return f"{n} GPU" + ("s" if n > 1 else "")
    return f"{n} process" + ("es" if n > 1 else "") + " (CPU)"


def size_text(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def peaks_for(name: str) -> tuple[str, dict] | None:
    for pattern, label, peaks in PEAKS:
        if re.search(pattern, name):
            return label, peaks
    return None


def run_precision(probe: dict, asked: str) -> tuple[str, str]:
    """(precision key, how it was found) for the MFU the run at train.precision = `asked` is judged
    against: what forgebuild's TrainingArguments turn on, not what was asked (tf32 without TF32 is fp32)."""
    t = (probe.get("trainer") or {}).get(asked)
    if not t:
        return asked, f"assumed (forgebuild's TrainingArguments could not be built: {probe.get('trainer_error')})"
    how = (f"train.precision = \"{asked}\" -> TrainingArguments bf16={t['bf16']}, fp16={t['fp16']}, tf32={t['tf32']}"
           + ("" if probe.get("precision_feature") else " (this forgebuild has no train.precision: fp32 recipes)"))
    if t["bf16"]:
        return "bf16", how
    if t["fp16"]:
        return "bf16", how + " (fp16: judged against the bf16 peak, the same on these GPUs)"
    if t["tf32"]:
        return "tf32", how
    if t["tf32"] is None and (probe["allow_tf32"] or probe["matmul_precision"] != "highest"):
        return "tf32", how + (f"; torch float32 matmul precision '{probe['matmul_precision']}', "
                              f"allow_tf32={probe['allow_tf32']}")
    return "fp32", how


# ---------------------------------------------------------------- the project

def write_sources(folder: str, megabytes: float) -> tuple[int, int]:
    """Standard-library .py files, in path order, up to the size asked; (files, bytes)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    files = total = 0
    for path in sorted(glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)):
        if "site-packages" in path:
            continue
        target = os.path.join(folder, "src", os.path.relpath(path, stdlib))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
        files, total = files + 1, total + os.path.getsize(path)
        if total >= megabytes * 1e6:
            break
    return files, total


def target_name(precision: str, multi: int = 0) -> str:
    return f"gpus_{precision}" if multi else f"gpu_{precision}"


def forgefile(a, multi: int) -> str:
    threads = f"threads = {a.threads}" if a.threads is not None else ""
    text = FORGEFILE.format(vocab=a.vocab, seq_len=a.seq_len, threads=threads,
                            workers=f"workers = {a.threads}" if a.threads is not None else "",
                            warm=f'workers = "{a.workers}"' if a.workers else "")
    common = dict(hidden=a.hidden, layers=a.layers, heads=a.heads, intermediate=a.intermediate, lr=a.lr,
                  steps=a.steps, warmup_steps=a.warmup_steps, device=a.device, log_every=a.log_every,
                  checkpoint_every=a.checkpoint_every, threads=threads)
    for precision in a.precisions:  # one target per precision: the precision is in the key
        text += MODEL.format(name=target_name(precision), batch=a.batch, launch="", precision=precision, **common)
    if multi > 1:  # the same micro-batch on each process: N x the global batch; at the first precision
        text += MODEL.format(name=target_name(a.precisions[0], multi), batch=a.batch * multi,
                             launch=f"launch = {{ processes = {multi} }}", precision=a.precisions[0], **common)
    return text


def child_env(a) -> dict:
    env = {**ENV, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "BENCH_DEVICE": a.device}
    if a.threads is not None:
        env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    return env


def one_gpu_env(env: dict) -> dict:
    """The first visible GPU only: with several visible, the Trainer would use nn.DataParallel on all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = visible.split(",")[0].strip() if visible else "0"
    return {**env, "CUDA_VISIBLE_DEVICES": first}


# ---------------------------------------------------------------- generation (issue 15)

GENERATE = """
[generate.{name}]
model = "{model}"
template = {{ text = "def f{{i}}(x):\\n    return", vars = {{ i = {{ range = [0, {prompts}] }} }} }}
n = 4
sampling = {{ temperature = 1.0, max_new_tokens = 64 }}
engine = "{engine}"
batch_size = 256
device = "{device}"
"""


def generation(lab: str, env: dict, model: str, device: str, prompts: int) -> list[list]:
    """Build a generate target per engine on the trained model; (engine, samples/s, samples, contract)."""
    engines = ["transformers"]
    if subprocess.run([sys.executable, "-c", "import vllm"], env=env, capture_output=True).returncode == 0:
        engines.append("vllm")
    with open(os.path.join(lab, "Forgefile.toml"), "a", encoding="utf-8") as f:
        for engine in engines:
            f.write(GENERATE.format(name=f"gen-{engine}", model=model, prompts=prompts, engine=engine,
                                    device="cuda" if device == "cuda" else "cpu"))
    rows = []
    for engine in engines:
        target = f"generate:gen-{engine}"
        r = build(lab, target, env)
        found = record(lab, env, target)["metrics"]
        with open(os.path.join(path_of(lab, env, target), "samples.jsonl"), encoding="utf-8") as f:
            samples = [json.loads(line) for line in f]
        kept = len(samples) == prompts * 4 and all(s["finish"] in ("stop", "eos", "length") for s in samples)
        rows.append([engine, f"{found.get('samples_per_s', 0):,.0f}", f"{found['generated']:,}", f"{r['wall']:.1f} s",
                     "kept" if kept else "BROKEN"])
    return rows


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="a toy config on the CPU (hidden 64, 2 layers, 10 steps, 1 thread) to check the script")
    for name, kind in (("hidden", int), ("layers", int), ("heads", int), ("intermediate", int), ("seq_len", int),
                       ("batch", int), ("steps", int), ("vocab", int), ("threads", int), ("lr", float),
                       ("warmup_steps", int), ("log_every", int)):
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                        help=f"default {GPU_PROFILE[name]} (--cpu-smoke: {SMOKE_PROFILE[name]})")
    ap.add_argument("--mb", type=float, default=None,
                    help="corpus size in MB (default: enough for steps x batch x seq_len tokens, x 1.5)")
    ap.add_argument("--checkpoint-every", type=int, default=NEVER,
                    help=f"the target's checkpoint_every (default {NEVER}: no checkpoint while timed; "
                         f"forgebuild's own default is 50)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="peak TFLOP/s to judge MFU against, instead of the table (also makes MFU on CPU)")
    ap.add_argument("--processes", type=int, default=None,
                    help="processes for the multi-process figure (default: every GPU when there are several; "
                         "with --cpu-smoke, 2 exercises the launch on CPU)")
    ap.add_argument("--workers", choices=("cold", "run", "resident"), default=None,
                    help="[forge] workers of the project (default: forgebuild's, run). resident: the model targets' "
                         "forgebuild calls share one warm server, so the second and later start warm")
    ap.add_argument("--precision", default=None,
                    help="train.precision of the targets, comma-separated: one pretrain target is built at each "
                         "(default fp32,tf32,bf16; --cpu-smoke: fp32); the multi-process one at the first")
    a = ap.parse_args()
    profile = SMOKE_PROFILE if a.cpu_smoke else GPU_PROFILE
    for key, value in profile.items():
        if getattr(a, key, None) is None:
            setattr(a, key, value)
    a.precisions = [p.strip() for p in (a.precision or ("fp32" if a.cpu_smoke else ",".join(PRECISIONS))).split(",")]
    if not a.precisions or any(p not in PRECISIONS for p in a.precisions) or len(set(a.precisions)) < len(a.precisions):
        ap.error(f"--precision: a comma-separated list of distinct {', '.join(PRECISIONS)}, got {a.precision!r}")
    began = time.perf_counter()
    env = child_env(a)

    header("bench_gpu: tokens/s and MFU of a pretrain target" + (" (CPU smoke run)" if a.cpu_smoke else ""))
    t = time.perf_counter()
    probe = child_json([sys.executable, "-c", PROBE, a.device, ",".join(a.precisions)], env, "the probe")
    if "error" in probe:
        raise SystemExit(f"bench_gpu: {probe['error']}")
    print(f"torch:      {probe['torch']} (CUDA build {probe['cuda_build']})"
          + (f", transformers {probe['transformers']}" if "transformers" in probe else "")
          + f"; probe {time.perf_counter() - t:.1f} s")
    if not a.cpu_smoke and not probe["cuda"]:
        raise SystemExit("bench_gpu: torch sees no CUDA GPU here (torch.cuda.is_available() is False, "
                         f"torch {probe['torch']}, CUDA build {probe['cuda_build']}). This benchmark measures "
                         "training on a GPU; run it on a GPU machine, or with --cpu-smoke to check the script.")
    for i, dev in enumerate(probe["devices"]):
        print(f"GPU {i}:      {dev['name']}, {dev['memory_gib']:.0f} GiB, compute capability {dev['capability']}")
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True)
        for line in smi.stdout.strip().splitlines():
            print(f"nvidia-smi: {line}")
    elif not a.cpu_smoke:
        print("nvidia-smi: not on PATH (no memory/utilisation samples)")
    used = {}  # train.precision asked -> the precision whose peak its MFU is judged against
    for asked in a.precisions:
        used[asked], how = run_precision(probe, asked)
        print(f"precision:  {asked}: runs as {used[asked]} ({how})")
    if probe.get("trainer"):
        tr = probe["trainer"][a.precisions[0]]
        print(f"trainer:    optim {tr['optim']}, logging_steps {tr['logging_steps']} (a loss read-back, "
              f"i.e. a device sync, every step), pin_memory {tr['pin_memory']}")

    gpus = probe["count"]
    multi = 0
    if a.processes and a.processes > 1:
        multi = a.processes
    elif not a.cpu_smoke and gpus > 1:
        multi = gpus
    if multi and a.device == "cuda" and multi > gpus:
        print(f"several GPUs: {multi} processes asked, {gpus} GPU(s) visible: no multi-GPU figure")
        multi = 0
    if multi and not probe.get("launch_feature"):
        print(f"several GPUs: {gpus} visible, but forgebuild runs a stage in one process and has no multi-process "
              f"launch (`launch` runtime key) yet: the {multi}-GPU figure needs that feature and is skipped. "
              f"(Without it the Trainer would wrap the model in nn.DataParallel over all visible GPUs, with "
              f"{multi} x the batch; the single-GPU run below pins CUDA_VISIBLE_DEVICES to one GPU.)")
        multi = 0
    elif multi:
        print(f"several {'GPUs' if a.device == 'cuda' else 'processes'}: model:{target_name(a.precisions[0], multi)} "
              f"runs with launch = {{ processes = {multi} }} and batch {a.batch} x {multi} (the same micro-batch "
              f"per process)")
    elif not a.cpu_smoke and gpus <= 1:
        print("several GPUs: only one visible: no multi-GPU figure")

    need_tokens = a.steps * a.batch * a.seq_len * max(1, multi)
    mb = a.mb or max(1.0, 1.5 * need_tokens * BYTES_PER_TOKEN / 1e6 / (1 - 0.02))
    phases = []
    with scratch_dir("forge-bench-gpu-") as lab:
        env["BENCH_SCRATCH"] = lab
        t = time.perf_counter()
        files, size = write_sources(lab, mb)
        with open(os.path.join(lab, "Forgefile.toml"), "w", encoding="utf-8") as f:
            f.write(forgefile(a, multi))
        phases.append(("write sources", time.perf_counter() - t, f"{files} stdlib files, {size / 1e6:.1f} MB "
                                                                  f"(asked {mb:.1f} MB)"))
        for target, what in (("corpus:stdlib", "NFC, exact dedup, 2% holdout"),
                             ("tokenizer:bpe", f"BPE vocab {a.vocab}"),
                             ("tokens:text", f"seq_len {a.seq_len}")):
            r = build(lab, target, env)
            phases.append((target, r["wall"], what))
            print(f"  built {target} in {r['wall']:.1f} s", flush=True)
        tokens_dir = path_of(lab, env, "tokens:text")
        with open(os.path.join(tokens_dir, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        train_rows = meta["splits"]["train"]["sequences"]
        phases[-1] = (*phases[-1][:2], f"seq_len {a.seq_len}: {train_rows} train rows "
                                       f"({meta['splits']['train']['tokens'] / 1e6:.2f} M tokens)")

        single_env = one_gpu_env(env) if a.device == "cuda" else env
        runs = []
        for precision, n in [(p, 1) for p in a.precisions] + ([(a.precisions[0], multi)] if multi else []):
            name = "model:" + target_name(precision, multi if n > 1 else 0)
            r = build(lab, name, single_env if n == 1 else env, watch=True)
            phases.append((name, r["wall"], f"{a.steps} steps, {unit(a, n)}, train.precision {precision}"))
            print(f"  built {name} in {r['wall']:.1f} s", flush=True)
            runs.append({**r, "record": record(lab, env, name)["metrics"], "batch": a.batch * n, "n": n,
                         "precision": precision, "used": used[precision], "target": name})

        first = runs[0]["target"]
        model_dir = path_of(lab, env, first)
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
        with open(os.path.join(lab, ".forge", "logs", "model", first.split(":")[1] + ".log"), encoding="utf-8") as f:
            logged = re.search(r"llama: ([\d,]+) parameters", f.read())
        t = time.perf_counter()
        extras = child_json([sys.executable, "-c", EXTRAS, model_dir, tokens_dir, str(a.batch), a.device,
                             str(a.threads or 0)], single_env, "the checkpoint and loader measurement")
        phases.append(("checkpoint + loader", time.perf_counter() - t, "a checkpoint written twice, 20 batches loaded"))
        t = time.perf_counter()
        generated = generation(lab, single_env, first, a.device, 64 if a.cpu_smoke else 1024)
        phases.append(("generation", time.perf_counter() - t, ", ".join(row[0] for row in generated)))
        print("\ngeneration (generate targets on " + first + "): samples/s from the build record")
        print(table(generated, ["engine", "samples/s", "samples", "build", "outputs contract"]), flush=True)
        if a.workers == "resident":  # the servers would outlive the folder they serve
            forge_json(lab, env, "worker", "stop")

    total = time.perf_counter() - began
    report(a, probe, cfg, logged, meta, runs, extras, phases, total, multi)


def report(a, probe, cfg, logged, meta, runs, extras, phases, total, multi) -> None:
    counts = param_counts(cfg)
    flops = flops_per_token(counts, cfg["num_hidden_layers"], meta["seq_len"])
    print()
    print(table([[name, f"{seconds:.1f}", what] for name, seconds, what in phases], ["phase", "seconds", "what"]))
    print()
    check = ("matches the stage log" if logged and int(logged.group(1).replace(",", "")) == counts["total"]
             else f"stage log says {logged.group(1) if logged else '?'}")
    print(f"model: llama hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
          f"{cfg['num_attention_heads']} heads, MLP {cfg['intermediate_size']}, vocab {cfg['vocab_size']}, "
          f"tied embeddings {cfg.get('tie_word_embeddings', True)}, seq_len {meta['seq_len']}, "
          f"weights {cfg.get('dtype') or cfg.get('torch_dtype')}")
    print(f"parameters: {counts['total']:,} ({check}): blocks {counts['blocks']:,}, embedding "
          f"{counts['embedding']:,}, norms {counts['norms']:,}; non-embedding "
          f"{counts['total'] - counts['embedding']:,}")
    print(f"FLOPs per token: {flops['total'] / 1e6:,.1f} M = 6 x {counts['matmul']:,} matmul weights (blocks + "
          f"output head) {flops['dense'] / 1e6:,.1f} M + attention 12 x L x hidden x T "
          f"{flops['attention'] / 1e6:,.1f} M"
          f"; 6 x the blocks alone (non-embedding) would be {6 * counts['blocks'] / 1e6:,.1f} M")

    name = probe["devices"][0]["name"] if probe["devices"] else "CPU"
    found = peaks_for(name) if probe["devices"] else None
    peaks = dict(found[1]) if found else {}
    if a.peak_tflops:
        peaks = {"given": a.peak_tflops, **peaks}
    label = "--peak-tflops" if a.peak_tflops and not found else (found[0] if found else None)
    print(f"peak: {name}: " + (f"table row {label}: " + ", ".join(f"{k} {v} TFLOP/s" for k, v in peaks.items()
                                                                    if v) if peaks else
                              "not in the table: MFU needs --peak-tflops"))
    print("MFU: against the peak of the precision each run used (a tf32 request without TF32 runs as fp32)")

    rows = []
    base = None
    for r in runs:
        m = r["record"]
        n = r["n"]
        tokens_per_step = r["batch"] * meta["seq_len"]
        variants = [("record", m.get("tokens_per_second"))]
        at = r["steps_at"]
        marks = sorted(s for s in at if s > 0)
        if len(marks) >= 2:
            s0, s1 = marks[0], marks[-1]
            variants.append((f"steps {s0 + 1}-{s1}", (s1 - s0) * tokens_per_step / (at[s1] - at[s0])))
        shown = r["precision"] + ("" if r["used"] == r["precision"] else f" (runs as {r['used']})")
        for what, tps in variants:
            if not tps:
                continue
            achieved = tps * flops["total"] / n  # per device
            peak = peaks.get(r["used"])
            cells = [unit(a, n), shown, what, f"{tps:,.0f}", f"{tps / n:,.0f}", f"{achieved / 1e12:.2f}",
                     f"{100 * achieved / (peak * 1e12):.1f}%" if peak else "-"]
            if "given" in peaks:
                cells.append(f"{100 * achieved / (peaks['given'] * 1e12):.1f}%")
            rows.append(cells)
            if n == 1 and what == "record" and r is runs[0]:
                base = tps
        if n > 1 and base and m.get("tokens_per_second"):
            rows.append(["", "", f"scaling: / ({n} x 1)", f"{m['tokens_per_second'] / (n * base):.3f}", "", "", "",
                         *([""] if "given" in peaks else [])])
    print()
    print(table(rows, ["devices", "train.precision", "tokens/s from", "tokens/s", "per device", "TFLOP/s per device",
                       "MFU (its precision)", *(["MFU (given peak)"] if "given" in peaks else [])]))
    singles = [r for r in runs if r["n"] == 1 and r["record"].get("tokens_per_second")]
    if len(singles) > 1:
        ref = singles[0]
        print("speed vs " + ref["precision"] + ": " + ", ".join(
            f"{r['precision']} {r['record']['tokens_per_second'] / ref['record']['tokens_per_second']:.2f}x"
            for r in singles[1:]) + " (build-record tokens/s)")
    print()
    one = runs[0]
    m = one["record"]
    other = one["wall"] - (m.get("seconds_before_first_step") or 0) - (m.get("train_seconds") or 0)
    print(f"{one['target']} stage: wall {one['wall']:.1f} s = before first step {m.get('seconds_before_first_step')} s "
          f"(worker imports, model init on CPU, to the device) + train {m.get('train_seconds')} s "
          f"({m.get('steps')} steps) + other {other:.1f} s (planning, final eval, save, storing the artifact)")
    print("before the first step, each model stage (spawn to first optimizer step; --workers "
          f"{a.workers or 'default'}): " + ", ".join(f"{r['target']} {r['record'].get('seconds_before_first_step')} s"
                                                    for r in runs))
    for r in runs:
        if r["smi"]:
            for i, s in sorted(r["smi"].items()):
                print(f"nvidia-smi, {r['target']} ({r['n']} GPU), GPU {i}: peak memory used {s['peak_mib']:,} MiB, "
                      f"median utilisation {s['util_median']}% ({s['samples']} samples, those at 0% left out)")
    # forgebuild's default checkpoint_every is 50; it writes none at the last step (the artifact follows)
    ckpt_steps = [s for s in range(50, a.steps, 50)]
    train_s = m.get("train_seconds") or 0
    step_s = train_s / max(1, m.get("steps") or a.steps)
    print(f"one checkpoint (weights + AdamW moments, as the Trainer writes it): {size_text(extras['ckpt_bytes'])} in "
          f"{extras['ckpt_s']:.2f} s (weights alone {extras['ckpt_weights_s']:.2f} s; the first save "
          f"{extras['ckpt_first_s']:.2f} s) = "
          f"{100 * extras['ckpt_s'] / (50 * step_s):.1f}% on top of 50 steps ({50 * step_s:.1f} s): the cost of "
          f"forgebuild's default checkpoint_every = 50; in this {a.steps}-step run it would write "
          f"{len(ckpt_steps) or 'none'}{' (step ' + ', '.join(map(str, ckpt_steps)) + ')' if ckpt_steps else ''}, "
          f"none at the last step")
    print(f"data loader: {1000 * extras['loader_s']:.2f} ms per batch of {a.batch} rows (PackedRows + "
          f"default_data_collator, in the main process: dataloader_workers 0) against {1000 * step_s:.0f} ms per step")
    trained = a.steps * a.batch * max(1, multi)
    if meta["splits"]["train"]["sequences"] < trained:
        print(f"note: {meta['splits']['train']['sequences']} train rows < {trained} trained: some rows were seen "
              f"twice (no effect on speed)")
    print()
    goal = "" if a.cpu_smoke else f" (goal < {GOAL_SECONDS} s on an H100-class GPU): {verdict(total, GOAL_SECONDS)}"
    print(f"whole script: {total:.1f} s{goal}")


if __name__ == "__main__":
    main()
