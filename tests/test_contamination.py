"""Contamination across the graph, end to end: benchmark prompts planted in the corpus a model was pretrained
on (corpus -> tokenizer and tokens -> pretrain -> eval) fail the eval's `contamination <= 0.1%` gate (exit 1),
and report.json, report.md and the log name each planted example and where it was found; without them the
same Forgefile passes (the corpus changed, so the eval was rebuilt) and the release card lists the check."""
from __future__ import annotations

import glob
import json
import os

import tinylab

FORGEFILE = """
[corpus.web]
sources = ["text/*.txt"]

[tokenizer.bpe]
corpus = "corpus:web"
vocab_size = 300

[tokens.web]
corpus = "corpus:web"
tokenizer = "tokenizer:bpe"
seq_len = 32

[model.pre]
recipe = "pretrain"
tokenizer = "tokenizer:bpe"
tokens = "tokens:web"
arch = { family = "llama", hidden = 32, layers = 1, heads = 2 }
train = { lr = 1e-3, steps = 2, batch_size = 4 }
threads = 1

[eval.check]
models = ["model:pre"]
benchmarks = ["bench/qa.jsonl"]
generation = { max_new_tokens = 2 }
gate = { contamination = "<= 0.1%" }
threads = 1

[release.pre]
model = "model:pre"
gates = ["eval:check"]
to = "released"
"""

LONG = "Which planet in our solar system has the largest number of known moons orbiting it right now"
SHORT = "What is 17+25?"


def write_project(p) -> None:
    tinylab.write_stdlib_text(p.root, files=6, max_chars=2000)
    questions = [LONG, SHORT, *(f"What is {a}+{b}?" for a, b in tinylab.arithmetic(8, seed=3))]
    tinylab.write_jsonl(os.path.join(p.root, "bench/qa.jsonl"), ({"prompt": q, "answer": "x"} for q in questions))
    # the long prompt inside a sentence (a 13-word run), the short one alone on a line of a document
    p.write("text/planted.txt", f"Notes.\nA quiz asked: {LONG.lower()}, and more.\n  {SHORT}\nThe end.\n")
    p.forgefile(FORGEFILE)


def test_a_benchmark_planted_in_an_upstream_corpus_fails_the_gate_and_is_named(project):
    p = project
    write_project(p)
    failed = p.run("release:pre", expect=1, timeout=300)
    assert "eval:check: 1 of 1 gates failed" in failed.stdout, failed.stdout
    report = json.loads(p.read(".forge/out/eval/check/report.json"))
    results = report["results"]["model:pre"]
    assert results["contamination"] == {"value": 0.2, "n": 10} and results["qa.contamination"] == {"value": 0.2, "n": 10}
    assert [(g["metric"], g["threshold"], g["passed"]) for g in report["gates"]] == [("contamination", 0.001, False)]
    found = report["contamination"]["models"]["model:pre"]
    assert found["data"] == ["corpus:web"] and report["contamination"]["ngram"] == 13
    matches = found["benchmarks"]["qa"]["matches"]
    assert [(m["line"], m["prompt"], m["how"], m["address"]) for m in matches] == [
        (1, LONG, "13-gram", "corpus:web"), (2, SHORT, "exact prompt", "corpus:web")]
    assert all(m["file"].startswith("train/") and m["where"].startswith("document ") for m in matches)
    md = p.read(".forge/out/eval/check/report.md")
    assert "## Contamination" in md and "| model:pre | qa | 10 | 2 | 20.00% | corpus:web |" in md
    assert f"- qa line 2 '{SHORT}': exact prompt in corpus:web {matches[1]['file']} ({matches[1]['where']})" in md
    assert 'id="contamination"' in p.read(".forge/out/eval/check/report.html")
    log = p.read(".forge/logs/eval/check.log")
    assert "contaminated examples of model:pre:" in log and f"qa line 1 '{LONG}': 13-gram in corpus:web" in log
    assert not os.path.exists(os.path.join(p.root, "released"))  # the release never ran

    os.remove(os.path.join(p.root, "text/planted.txt"))  # only the corpus's files change
    built = p.build("release:pre", timeout=300)
    assert built["eval:check"] == "built" and built["release:pre"] == "built"
    report = json.loads(p.read(".forge/out/eval/check/report.json"))
    assert report["passed"] and report["results"]["model:pre"]["contamination"] == {"value": 0.0, "n": 10}
    card = p.read("released/README.md")
    assert ("Contamination (13-word runs shared with a benchmark prompt, or a shorter prompt equal to a text), "
            "data checked: `corpus:web`") in card
    assert "| qa | 10 | 0 | 0.00% |" in card
    assert glob.glob(os.path.join(p.root, "released", "*.safetensors"))
