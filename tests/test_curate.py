"""The curate rule end to end, in real processes: a samples file that looks like a generation (several
samples per prompt, some right, some wrong) verified, filtered and shaped; its rejected samples and
their reasons; a verifier change rebuilding only the curate target; a tiny SFT model trained on it
and a dataset reading it as a source; a self-contained report. (generate -> curate is tested with
the generate rule.)"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re

VERIFIERS = '''
def digits(completions, **columns):
    """A reason string for a completion that is not all digits, else ''."""
    return ["" if c.strip().isdigit() else "not a number" for c in completions]


def close(completions, answer):
    return [1 / (1 + abs(int(c) - int(a))) if c.strip().isdigit() else 0.0 for c, a in zip(completions, answer)]
'''


def generation(n_prompts: int = 12, n: int = 4, seed: int = 0) -> list[dict]:
    """samples.jsonl as a generate target writes it: per prompt, a right answer, a near miss, a repeat
    of the right one, and (every third prompt) words instead of a number."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_prompts):
        a, b = rng.randint(0, 40), rng.randint(0, 40)
        right = str(a + b)
        completions = [right, str(a + b + 1), right, "many" if i % 3 == 0 else str(a + b + 10)][:n]
        for j, completion in enumerate(completions):
            key = hashlib.sha256(f"{i}/{j}".encode()).hexdigest()
            rows.append({"columns": {"answer": right, "a": a, "b": b}, "completion": completion, "finish": "stop",
                         "key": key, "prompt": f"What is {a}+{b}?\nAnswer: ", "prompt_index": i, "sample": j})
    return rows


def write_samples(project, rows: list[dict], rel: str = "samples.jsonl") -> None:
    project.write(rel, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


CURATE = """
[curate.sums]
samples = "samples.jsonl"
verify = [{ kind = "answer", match = "numeric" }, "verifiers.py:digits", { kind = "dedup" }]
shape = "prompt_completion"
splits = { train = 0.75, test = 0.25 }

[curate.pairs]
samples = "samples.jsonl"
verify = [{ kind = "code", function = "verifiers.py:close", threshold = 1.0 }]
shape = "preference"
score = "close"

[dataset.again]
source = "curate:sums"
splits = { all = 1.0 }
"""


def lines(project, target: str, rel: str) -> list[dict]:
    folder = project.run("path", target).stdout.strip()
    with open(os.path.join(folder, rel), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def read(project, target: str, rel: str) -> str:
    folder = project.run("path", target).stdout.strip()
    with open(os.path.join(folder, rel), encoding="utf-8") as f:
        return f.read()


def test_verify_filter_shape_and_keep_the_rejected_with_reasons(project):
    rows = generation()
    write_samples(project, rows)
    project.write("verifiers.py", VERIFIERS)
    project.forgefile(CURATE)
    assert project.build() == {"curate:sums": "built", "curate:pairs": "built", "dataset:again": "built"}

    rejected = lines(project, "curate:sums", "rejected.jsonl")
    # per prompt: the near miss, the repeat and the last one are rejected; the first right answer passes
    assert [(r["prompt_index"], r["sample"]) for r in rejected] == [(i, j) for i in range(12) for j in (1, 2, 3)]
    by_key = {r["key"]: r for r in rejected}
    for row in rows:
        if row["sample"] == 0:
            assert row["key"] not in by_key
            continue
        reasons = by_key[row["key"]]["reasons"]
        answer, completion = row["columns"]["answer"], row["completion"]
        if row["sample"] == 2:
            assert reasons == ["dedup: the same as sample 0"]
        elif completion == "many":
            assert reasons == [f'answer: expected {answer}, got "many"', "digits: not a number"]
        else:
            assert reasons == [f'answer: expected {answer}, got "{completion}"']

    stats = json.loads(read(project, "curate:sums", "stats.json"))
    assert (stats["samples"], stats["prompts"], stats["passed"]) == (48, 12, 12)
    rate = stats["pass_rate"]
    assert rate["value"] == 0.25 and rate["low"] <= 0.25 <= rate["high"]
    assert {v["name"]: v["passed"] for v in stats["verifiers"]} == {"answer": 24, "digits": 44, "dedup": 36}
    assert stats["rejections"]["by_verifier"] == {"answer": 24, "digits": 4, "dedup": 12}

    meta = json.loads(read(project, "curate:sums", "dataset.json"))
    assert meta["format"] == "prompt_completion" and meta["trainer"] == "SFTTrainer"
    records = [r for split in meta["splits"] for r in lines(project, "curate:sums", f"{split}.jsonl")]
    assert sorted((r["prompt"], r["completion"]) for r in records) == \
        sorted((r["prompt"], r["completion"]) for r in rows if r["sample"] == 0)
    assert set(meta["columns"]) == {"prompt", "completion", "answer", "a", "b"}
    # a dataset reads the curate target's splits as it reads a dataset's (its extra columns but `answer`,
    # a record field of the prompts format only)
    again = lines(project, "dataset:again", "all.jsonl")
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == \
        sorted(json.dumps({k: v for k, v in r.items() if k != "answer"}, sort_keys=True) for r in records)

    pairs = [r for split in ("train",) for r in lines(project, "curate:pairs", f"{split}.jsonl")]
    assert len(pairs) == 12 and all(p["score_chosen"] == 1.0 and p["score_rejected"] < 1.0 for p in pairs)
    assert all(p["chosen"] == p["answer"] for p in pairs)


def test_changing_only_a_verifier_rebuilds_only_the_curate_target(project):
    write_samples(project, generation())
    project.write("verifiers.py", VERIFIERS)
    project.forgefile(CURATE)
    project.build()
    # a looser answer check (tolerance 1 lets the near misses through): the samples are not read again by
    # anything but this target, the other curate target is untouched
    project.forgefile(CURATE.replace('match = "numeric" }', 'match = "numeric", tolerance = 1 }'))
    assert project.build() == {"curate:sums": "built", "curate:pairs": "cached", "dataset:again": "built"}
    stats = json.loads(read(project, "curate:sums", "stats.json"))
    assert {v["name"]: v["passed"] for v in stats["verifiers"]}["answer"] == 36
    # a verifier file edit that only changes the code verifier's text rebuilds the targets that use it
    project.write("verifiers.py", VERIFIERS + "\n# a comment\n")
    assert project.build() == {"curate:sums": "built", "curate:pairs": "built", "dataset:again": "cached"}


def test_bad_samples_are_named_by_file_and_line(project):
    rows = generation(2, 2)
    del rows[2]["completion"]
    write_samples(project, rows)
    project.write("verifiers.py", VERIFIERS)
    project.forgefile('[curate.sums]\nsamples = "samples.jsonl"\nverify = ["verifiers.py:digits"]\n')
    proc = project.run("curate:sums", expect=2)
    assert "samples.jsonl:3: a sample needs completion" in proc.stdout + proc.stderr


def test_the_report_is_self_contained(project, no_torch_env):
    """...and a curate build without a reward-model verifier never imports the ML stack."""
    write_samples(project, generation())
    project.write("verifiers.py", VERIFIERS)
    project.forgefile(CURATE)
    project.run("curate:sums", env=no_torch_env)
    page = read(project, "curate:sums", "report.html")
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"(src|href)=\"(?!data:|#)", page) and "http://" not in page and "https://" not in page
    assert "answer: expected" in page  # a rejected example, with its reason
    assert re.search(r'class="whisker" style="left:\d+\.\d+%;width:\d+\.\d+%"', page)


def test_a_curate_target_trains_a_tiny_sft_model(recipe_project):
    p = recipe_project
    write_samples(p, generation(24, 3))
    p.write("verifiers.py", VERIFIERS)
    p.forgefile(p.preamble + """
        [curate.sums]
        samples = "samples.jsonl"
        verify = [{ kind = "answer", match = "numeric" }]
        shape = "samples"

        [model.sft]
        recipe = "sft"
        base = "model:base"
        data = "curate:sums"
        max_length = 32
        train = { lr = 1e-3, steps = 3, batch_size = 8 }
        threads = 1
    """)
    p.run("model:sft", timeout=300)
    config = json.loads(read(p, "model:sft", "training_config.json"))
    assert config["format"] == "prompt_completion"
    assert config["rows"] == len(lines(p, "curate:sums", "train.jsonl")) == 24
