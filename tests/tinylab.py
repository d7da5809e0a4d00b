"""Tiny real models for recipe tests: a corpus of Python's own standard-library sources
(real text on every machine), a BPE tokenizer and a 2-layer llama pretrained on it by
forgebuild itself, plus arithmetic datasets for SFT, preference and RL tests."""
from __future__ import annotations

import glob
import json
import os
import random
import sysconfig

BASE_FORGEFILE = """
[forge]
seed = 11

[corpus.stdlib]
sources = ["text/*.txt"]
holdout = 0.1

[tokenizer.bpe]
corpus = "corpus:stdlib"
vocab_size = 512
fim = true

[model.base]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
corpus = "corpus:stdlib"
seq_len = 64
arch = { family = "llama", hidden = 64, layers = 2, heads = 4 }
train = { lr = 3e-3, steps = 30, batch_size = 8, warmup_steps = 3 }
threads = 1
"""


def write_stdlib_text(root: str, files: int = 40, max_chars: int = 6000) -> None:
    os.makedirs(os.path.join(root, "text"), exist_ok=True)
    sources = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:files]
    for path in sources:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()[:max_chars]
        with open(os.path.join(root, "text", os.path.basename(path) + ".txt"), "w", encoding="utf-8") as f:
            f.write(text)


def arithmetic(n: int, seed: int = 0) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(0, 50), rng.randint(0, 50)) for _ in range(n)]


def write_jsonl(path: str, rows) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_arith_data(root: str, n: int = 96) -> None:
    """data/sft.jsonl (prompt/completion), data/chat.jsonl (messages), data/pref.jsonl (with scores),
    data/prompts.jsonl (prompt/answer)."""
    pairs = arithmetic(n)
    rng = random.Random(1)
    write_jsonl(os.path.join(root, "data/sft.jsonl"),
                ({"prompt": f"What is {a}+{b}?\nAnswer:", "completion": f" {a + b}"} for a, b in pairs))
    write_jsonl(os.path.join(root, "data/chat.jsonl"),
                ({"messages": [{"role": "user", "content": f"What is {a}+{b}?"},
                               {"role": "assistant", "content": str(a + b)}]} for a, b in pairs))
    write_jsonl(os.path.join(root, "data/pref.jsonl"),
                ({"prompt": f"What is {a}+{b}?\nAnswer:", "chosen": f" {a + b}", "rejected": f" {a + b + d}",
                  "score_chosen": 1.0, "score_rejected": round(1.0 - d / 10, 2)}
                 for (a, b), d in zip(pairs, (rng.randint(1, 9) for _ in pairs))))
    write_jsonl(os.path.join(root, "data/prompts.jsonl"),
                ({"prompt": f"What is {a}+{b}?\nAnswer:", "answer": str(a + b)} for a, b in pairs))


DATASETS = """
[dataset.sft]
source = "data/sft.jsonl"
format = "prompt_completion"

[dataset.chat]
source = "data/chat.jsonl"
format = "messages"

[dataset.pref]
source = "data/pref.jsonl"
format = "preference"

[dataset.prompts]
source = "data/prompts.jsonl"
format = "prompts"
"""


def imported_base(path: str) -> str:
    """Forgefile text that makes the session's tiny base model `model:base` in another project."""
    return f'\n[model.base]\nrecipe = "import"\npath = "{path}"\n'


def store_problems(store_dir: str) -> list[str]:
    """What `forgebuild verify` would call corrupt in a local store, without a process: every blob hashes to its
    name, every cache entry's blobs exist, and every materialised file that is not a hardlink of its blob
    holds the blob's bytes."""
    from forgebuild.hashing import file_digest

    problems = []
    for blob in glob.glob(os.path.join(store_dir, "cas", "*", "*")):
        name = os.path.basename(blob)
        if file_digest(blob) != name:
            problems.append(f"{blob}: does not hash to its name")
    for path in glob.glob(os.path.join(store_dir, "ac", "*", "*.json")):
        try:
            with open(path, encoding="utf-8") as f:
                entry = json.load(f)
        except ValueError:
            problems.append(f"{path}: not JSON")
            continue
        folder = os.path.join(store_dir, "artifacts", entry["digest"])
        for item in entry["files"]:
            blob = os.path.join(store_dir, "cas", item["digest"][:2], item["digest"])
            copy = os.path.join(folder, *item["path"].split("/"))
            if not os.path.exists(blob):
                problems.append(f"{path}: blob of {item['path']} is missing")
            elif os.path.exists(copy) and not os.path.samefile(copy, blob) and file_digest(copy) != item["digest"]:
                problems.append(f"{copy}: the materialised copy differs from its blob")
    return problems
