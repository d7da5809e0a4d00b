"""generate targets end to end: a tiny model samples, each sample is cached on its own key (adding prompts
makes only theirs, a killed build resumes after its last batch), and a sample does not depend on the batch
it was made in. The model is the session's tiny base (tests/tinylab.py), imported."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import ENV
import tinylab

NAMES = ["f", "g", "h", "add", "mul", "sub", "div", "neg", "inv", "abs", "sq", "cube", "half", "dbl", "inc"]


def forgefile(names, temperature=1.0, batch_size=8, n=2) -> str:
    quoted = ", ".join(f'"{name}"' for name in names)
    return f"""
[generate.code]
model = "model:base"
template = {{ text = "def {{name}}(x):\\n    return", vars = {{ name = [{quoted}] }} }}
n = {n}
sampling = {{ temperature = {temperature}, top_p = 0.9, max_new_tokens = 12, stop = ["\\n"] }}
batch_size = {batch_size}
threads = 1
"""


def samples(p, target="generate:code") -> list[dict]:
    with open(os.path.join(p.run("path", target).stdout.strip(), "samples.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def metrics(events: list[dict], target: str = "generate:code") -> dict:
    return next(e["metrics"] for e in events if e.get("event") == "built" and e["target"] == target)


def test_a_model_generates_and_new_prompts_generate_only_their_samples(project, tiny_base):
    p = project
    p.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES[:5]))
    first = metrics(p.events("generate:code"))
    assert first == {**first, "samples": 10, "generated": 10, "cached": 0, "model_calls": 2}
    before = samples(p)
    assert [(s["prompt_index"], s["sample"]) for s in before] == [(j, i) for j in range(5) for i in range(2)]
    assert all(s["prompt"] == f"def {s['columns']['name']}(x):\n    return" and "\n" not in s["completion"]
               and s["finish"] in ("stop", "eos", "length") for s in before)
    assert len({s["key"] for s in before}) == 10 and len({s["completion"] for s in before}) > 5  # sampled, not greedy

    p.run("gc", "--grace", "0")  # the samples' cache entries are the target's: gc keeps them
    p.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES))  # 10 more prompts
    second = metrics(p.events("generate:code"))
    assert second == {**second, "samples": 30, "generated": 10 * 2, "cached": 10}
    assert samples(p)[:10] == before  # the first five prompts' samples, as they were

    assert p.run("verify").returncode == 0


def test_a_changed_temperature_generates_every_sample_again(project, tiny_base):
    p = project
    p.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES[:4]))
    p.build("generate:code")
    before = samples(p)
    p.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES[:4], temperature=0.7))
    found = metrics(p.events("generate:code"))
    assert (found["generated"], found["cached"]) == (8, 0)
    assert [s["key"] for s in samples(p)] != [s["key"] for s in before]
    # back to the first temperature: the target is the first build, from the cache
    p.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES[:4]))
    assert p.build("generate:code")["generate:code"] == "cached" and samples(p) == before
    # the same prompts in another order: a new target, but every sample is in the cache, and no model is loaded
    p.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES[:4][::-1]))
    found = metrics(p.events("generate:code"))
    assert (found["generated"], found["cached"], found["model_calls"]) == (0, 8, 0)
    by_key = {s["key"]: s["completion"] for s in samples(p)}
    assert by_key == {s["key"]: s["completion"] for s in before}

def test_a_killed_generation_resumes_after_its_last_batch_and_matches_any_batching(project, tiny_base, tmp_path):
    p = project
    p.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES, batch_size=2))
    p.build("model:base")
    log = os.path.join(p.root, ".forge", "logs", "generate", "code.log")
    proc = subprocess.Popen([sys.executable, "-m", "forgebuild", "generate:code"], cwd=p.root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "batch 4/15" not in (open(log).read() if os.path.exists(log) else ""):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert "batch 4/15" in p.read(".forge/logs/generate/code.log")
    resumed = metrics(p.events("generate:code"))
    assert resumed["cached"] >= 8 and resumed["cached"] % 2 == 0 and resumed["generated"] == 30 - resumed["cached"]

    other = type(p)(str(tmp_path / "other"))  # the same samples made in batches of 7, in one go
    other.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES, batch_size=7))
    assert metrics(other.events("generate:code"))["model_calls"] == 5
    assert samples(other) == samples(p)


VERIFY = '''
def short(prompts, completions, name, **_):
    return [len(c) <= 10 + len(n) for c, n in zip(completions, name)]


def has_e(prompts, completions, **_):
    return ["" if "e" in c else "no letter e" for c in completions]
'''


def test_changing_only_a_verifier_calls_no_model(project, tiny_base):
    """generate -> curate: the verifiers are the curate target's, so a changed verifier rebuilds it alone and
    the samples come from the generate target's cache entry (no model loaded, no sample made)."""
    p = project
    p.write("verify.py", VERIFY)
    curate = '\n[curate.code]\nsamples = "generate:code"\nverify = ["verify.py:short"]\nshape = "samples"\n'
    p.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES[:6], n=4) + curate)
    events = p.events("curate:code")
    assert metrics(events)["generated"] == 24
    stats = json.loads(p.read(os.path.join(p.run("path", "curate:code").stdout.strip(), "stats.json")))
    assert stats["samples"] == 24

    p.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES[:6], n=4)
                + curate.replace('["verify.py:short"]', '["verify.py:has_e"]'))
    events = p.events("curate:code")
    built = {e["target"] for e in events if e.get("event") == "built"}
    assert built == {"curate:code"}, built  # generate:code is a cache hit: zero generation calls
    summary = {t["target"]: t["action"] for t in events[-1]["targets"]}
    assert summary["generate:code"] == "cached"
    folder = p.run("path", "curate:code").stdout.strip()
    rejected = [json.loads(line) for line in open(os.path.join(folder, "rejected.jsonl"), encoding="utf-8")]
    kept = [json.loads(line) for line in open(os.path.join(folder, "train.jsonl"), encoding="utf-8")]
    assert len(rejected) + len(kept) == 24
    assert rejected and kept
    assert all("e" not in r["completion"] and "no letter e" in " ".join(r["reasons"]) for r in rejected)
    assert all("e" in r["completion"] for r in kept)


def test_planning_a_generation_imports_no_ml_stack(project, tiny_base, no_torch_env):
    p = project
    p.forgefile(tinylab.imported_base(tiny_base) + forgefile(NAMES[:3])
                + '\n[curate.c]\nsamples = "generate:code"\nverify = [{ kind = "length", max_chars = 9 }]\n')
    assert "generate:code" in p.run("status", env=no_torch_env).stdout
    assert "3 to build" in p.run("-n", env=no_torch_env).stdout
