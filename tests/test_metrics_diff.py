"""`forgebuild metrics diff A B` end to end: a tiny llama pretrained 2 steps, then 40, each evaluated
(a choice benchmark and held-out perplexity); the two evals by TARGET@N and the two lock files side by
side, the perplexity drop found apart by the paired bootstrap, every metric one JSON event, a lock
entry this store has no record of said so, and a bad name one line, exit 2."""
from __future__ import annotations

import json
import os
import random

import pytest
import tinylab
from conftest import Project

# the session's tiny base (tinylab), pretrained STEPS steps with more held-out documents (12 of 40), evaluated
BASE = tinylab.BASE_FORGEFILE.replace("holdout = 0.1", "holdout = 0.3").replace("steps = 30", "steps = STEPS")
FORGEFILE = BASE + """
[eval.code]
models = ["model:base"]
benchmarks = [
    { name = "code", kind = "choice", data = "bench/code.jsonl" },
    { name = "holdout", kind = "perplexity", corpus = "corpus:stdlib", seq_len = 64 },
]
threads = 1
"""
REPORT_METRICS = ["model:base code.accuracy", "model:base code.accuracy_norm", "model:base code.contamination",
                  "model:base contamination", "model:base holdout.loss", "model:base holdout.perplexity"]


def write_choices(root: str, n: int = 80) -> None:
    """Which of two 16-character endings follows a line's first 20 characters: its own or another line's."""
    lines = [line.rstrip() for name in sorted(os.listdir(os.path.join(root, "text")))
             for line in open(os.path.join(root, "text", name), encoding="utf-8") if len(line.rstrip()) >= 40]
    random.Random(0).shuffle(lines)
    tinylab.write_jsonl(os.path.join(root, "bench/code.jsonl"),
                        ({"prompt": a[:20], "choices": [a[20:36], b[20:36]], "answer": 0}
                         for a, b in zip(lines[:n], lines[1:n + 1])))


@pytest.fixture(scope="module")
def two_evals(tmp_path_factory):
    p = Project(str(tmp_path_factory.mktemp("metrics-diff")))
    tinylab.write_stdlib_text(p.root)
    write_choices(p.root)
    reports = []
    for steps, lock in ((2, "a.lock"), (40, "b.lock")):
        p.forgefile(FORGEFILE.replace("STEPS", str(steps)))
        p.run("eval:code", timeout=300)
        p.run("lock", "--lock", lock)
        reports.append(json.loads(p.read(".forge/out/eval/code/report.json")))
    p.reports = reports
    return p


def test_two_builds_of_an_eval_side_by_side(two_evals):
    p = two_evals
    (a,), (b,) = (r["results"].values() for r in p.reports)
    n = b["holdout.perplexity"]["n"]
    events = p.events("metrics", "diff", "eval:code@2", "eval:code@1")
    rows, summary = events[:-1], events[-1]
    assert [r["metric"] for r in rows] == REPORT_METRICS + ["build_seconds"]
    assert all(r["event"] == "metric" and r["target"] == "eval:code" for r in rows)
    ppl = rows[5]
    assert (ppl["a"], ppl["b"]) == (a["holdout.perplexity"]["value"], b["holdout.perplexity"]["value"])
    assert ppl["a_interval"] == [a["holdout.perplexity"]["low"], a["holdout.perplexity"]["high"]]
    # 38 more steps: perplexity falls by far more than the noise of its held-out documents
    assert ppl["b"] < ppl["a"] and ppl["change_interval"][1] < 0
    assert (ppl["test"], ppl["apart"], ppl["pairs"]) == ("paired", True, n)
    # the choice benchmark's examples are paired too (by line, prompt and reference)
    assert (rows[0]["test"], rows[0]["pairs"]) == ("paired", b["code.accuracy"]["n"])
    assert rows[-1]["timing"] and rows[-1]["apart"] is None
    assert summary["ok"] and summary["metrics"] == 7 and "eval:code model:base holdout.perplexity" in summary["apart"]
    text = p.run("metrics", "diff", "eval:code@2", "eval:code@1").stdout.splitlines()
    assert text[0] == "forgebuild metrics diff eval:code@2 eval:code@1"
    line = next(x for x in text if x.startswith("  model:base holdout.perplexity "))
    assert line.endswith(f"  apart (paired, {n} examples)")
    assert text[-1] == "timing: depends on the machine and its load; not comparable across machines"


def test_two_lock_files_every_target(two_evals):
    p = two_evals
    text = p.run("metrics", "diff", "a.lock", "b.lock", "--format", "markdown").stdout
    assert "### model:base" in text and "### eval:code" in text
    assert "| steps | 2 | 40 | +38 |  |" in text
    assert "the same build on both sides: corpus:stdlib, tokenizer:bpe" in text
    # an entry this store has no record of, and a target only one lock file lists: said, no crash
    with open(os.path.join(p.root, "b.lock"), encoding="utf-8") as f:
        lock = json.load(f)
    lock["targets"]["model:base"]["digest"] = "0" * 64
    del lock["targets"]["corpus:stdlib"]
    with open(os.path.join(p.root, "c.lock"), "w", encoding="utf-8") as f:
        json.dump(lock, f)
    summary = p.events("metrics", "diff", "a.lock", "c.lock")[-1]
    assert summary["notes"] == [
        {"target": "corpus:stdlib", "note": "B: not in its lock file"},
        {"target": "model:base", "note": "B: no build record of model:base with output 000000000000 in this store "
                                       "(built elsewhere, or its record was removed)"}]
    assert [t["target"] for t in summary["targets"]] == ["corpus:stdlib", "eval:code", "model:base", "tokenizer:bpe"]


def test_a_bad_name_is_one_line_and_exit_2(two_evals):
    p = two_evals
    proc = p.run("metrics", "diff", "nope", "eval:code@1", expect=2)
    assert proc.stdout == ""
    assert proc.stderr.splitlines()[:2] == ["forgebuild: no build record, TARGET@N or lock file 'nope'",
                                            "recent builds (`forgebuild log` lists more):"]
    proc = p.run("metrics", "diff", "eval:code@3", "eval:code@1", expect=2)
    assert proc.stderr.splitlines()[0] == "forgebuild: 'eval:code@3': eval:code has 2 builds in the history"
