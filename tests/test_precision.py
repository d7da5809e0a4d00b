"""train.precision: fp32, tf32, bf16 on this CPU, through the real CLI.

bf16 is mixed precision (autocast to bfloat16, float32 master weights): it trains on a CPU too, to
other numbers than fp32, and saves float32 weights. tf32 needs CUDA tensor cores: on a CPU it trains
exactly as fp32. All three are different keys."""
from __future__ import annotations

import json
import math
import os

SFT = """
[model.{name}]
recipe = "sft"
base = "model:base"
data = "dataset:sft"
max_length = 32
train = {{ lr = 1e-3, steps = 4, batch_size = 8{precision} }}
threads = 1
"""


def sft(name: str, precision: str | None = None) -> str:
    return SFT.format(name=name, precision=f', precision = "{precision}"' if precision else "")


def losses(folder: str) -> list[float]:
    with open(os.path.join(folder, "training_log.jsonl")) as f:
        return [row["loss"] for row in map(json.loads, f) if "loss" in row]


def built(p, precision: str | None) -> tuple[str, str]:
    """Build model:sft at this precision (the same target: the seed, hence the data order, is the
    target's): its artifact folder and its action key."""
    p.forgefile(p.preamble + sft("sft", precision))
    p.run("model:sft", timeout=300)
    record = next(e for e in map(json.loads, p.run("show", "model:sft", "--json").stdout.splitlines())
                  if e.get("event") == "record")
    return p.run("path", "model:sft").stdout.strip(), record["key"]


def test_bf16_trains_other_numbers_and_saves_float32_master_weights(recipe_project):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    p = recipe_project
    full_path, full_key = built(p, None)  # the default: fp32
    full = losses(full_path)
    # precision is in the key: asking for bf16 makes the built target stale, and says why
    p.forgefile(p.preamble + sft("sft", "bf16"))
    assert 'param train.precision "fp32" -> "bf16"' in p.run("explain", "model:sft").stdout
    half_path, half_key = built(p, "bf16")
    half = losses(half_path)
    assert half_key != full_key and len(half) == len(full) == 4 and all(math.isfinite(x) for x in half)
    # bfloat16 products: the same curve to within 1e-3 (measured 9.5e-4), but not the same numbers
    assert 0 < max(abs(a - b) for a, b in zip(full, half)) < 0.05

    weights = load_file(os.path.join(half_path, "model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float32}
    # the float32 master weights, not bfloat16 ones widened: hardly any value is a bfloat16 number
    exact = sum((v.to(torch.bfloat16).float() == v).sum().item() for v in weights.values())
    assert exact < 0.01 * sum(v.numel() for v in weights.values())
    assert AutoModelForCausalLM.from_pretrained(half_path).dtype == torch.float32
    with open(os.path.join(half_path, "training_config.json")) as f:
        assert json.load(f)["params"]["train"]["precision"] == "bf16"

    # no TF32 on a CPU: "tf32" trains exactly as "fp32" (and the log says so), under another key
    tf_path, tf_key = built(p, "tf32")
    assert losses(tf_path) == full and tf_key not in (full_key, half_key)
    assert 'train.precision = "tf32": no TF32 on this CPU' in p.read(".forge/logs/model/sft.log")


def test_an_unknown_precision_is_a_forgefile_error(recipe_project):
    p = recipe_project
    p.forgefile(p.preamble + sft("x", "fp16"))
    proc = p.run("model:x", expect=2)
    line = len((p.preamble + sft("x", "fp16")).splitlines()) - 1  # the train line: threads = 1 follows
    assert (f"Forgefile.toml:{line}: error: model:x: key 'train.precision': expected one of fp32, tf32, bf16, "
            f"got string \"fp16\" (did you mean 'bf16'?)") in proc.stderr.splitlines()
