"""The select recipe end to end, on tiny models really trained: of three SFTs of one base, one learns
to answer " yes" (lr 5e-3) and two barely move (lr 1e-7); an eval scores all three, and select
targets pick the learner, refuse to choose between the two that did not learn (their scores are
equal: within noise) unless told how, and stand for the winner downstream."""
from __future__ import annotations

import json
import os

import tinylab
from forgebuild.hashing import file_digest, walk_files
from test_eval import YES_MODEL, taught_yes

# the learner is test_eval's model:yes (lr 5e-3, 25 steps: exact match 1 on its 8 benchmark prompts)
TRAINED = YES_MODEL.split("[model.yes]")[1]


def flat(name: str, steps: int) -> str:
    """An SFT of the same data at lr 1e-7: it barely moves from the base, which never answers " yes"."""
    return f"\n[model.{name}]" + TRAINED.replace("lr = 5e-3, steps = 25", f"lr = 1e-7, steps = {steps}")


def select(name: str, candidates: list[str], metric: str = "yes.exact_match", extra: str = "") -> str:
    return (f'\n[model.{name}]\nrecipe = "select"\ncandidates = {json.dumps(candidates)}\nevals = ["eval:all"]\n'
            f'metric = "{metric}"\n{extra}')


FLATS = ["model:flat-a", "model:flat-b"]
FORGEFILE = YES_MODEL + flat("flat-a", 6) + flat("flat-b", 3) + """
[corpus.text]
sources = ["text/*.txt"]
holdout = 0.3

[eval.all]
models = ["model:flat-a", "model:yes", "model:flat-b"]
benchmarks = ["bench/yes.jsonl", { name = "holdout", kind = "perplexity", corpus = "corpus:text", seq_len = 32 }]
generation = { max_new_tokens = 4 }
threads = 1

[model.next]
recipe = "sft"
base = "model:best"
data = "dataset:yes"
""" + (select("best", ["model:flat-a", "model:yes", "model:flat-b"]) + select("flat", FLATS)
       + select("flat-first", FLATS, extra='tie_break = "first"\n')
       + select("flat-cheap", FLATS, extra='tie_break = "cheapest"\n')
       + select("fluent", ["model:yes", "model:flat-a"], metric="holdout.perplexity"))

REFUSED = """\
model:flat: 2 candidates are within noise on yes.exact_match (max) at 95%; none chosen:
  model:flat-a  0 [0, 0] n=8  best
  model:flat-b  0 [0, 0] n=8  model:flat-a better by +0, 95% lower bound +0 on 8 paired examples
set tie_break = "first" or "cheapest" to choose among them"""


def files_of(folder: str) -> dict[str, str]:
    return {rel: file_digest(path) for rel, path, _ in walk_files(folder)}


def test_select_picks_the_learner_and_refuses_a_tie_unless_told(project, tiny_base):
    p = project
    taught_yes(p)
    tinylab.write_stdlib_text(p.root, files=12, max_chars=3000)
    p.forgefile(tinylab.imported_base(tiny_base) + FORGEFILE)
    built = p.build("model:best", "model:flat-first", "model:flat-cheap", "model:fluent", timeout=600)
    assert {built[t] for t in ("model:best", "model:flat-first", "model:flat-cheap", "model:fluent")} == {"built"}

    # the eval really separates the learner: its interval lies above both of the others'
    results = json.loads(p.read(".forge/out/eval/all/report.json"))["results"]
    learner = results["model:yes"]["yes.exact_match"]
    assert learner["n"] == 8 and learner["low"] >= 0.8
    for flat in ("model:flat-a", "model:flat-b"):
        assert results[flat]["yes.exact_match"]["high"] < learner["low"]

    selection = json.loads(p.read(".forge/out/model/best/selection.json"))
    assert selection["winner"] == "model:yes" and selection["goal"] == "max" and selection["tied"] == ["model:yes"]
    rows = {r["address"]: r for r in selection["candidates"]}
    assert [r["address"] for r in selection["candidates"]] == ["model:flat-a", "model:yes", "model:flat-b"]
    assert all(rows[f]["within_noise"] is False and rows[f]["bound"] > 0.5 for f in ("model:flat-a", "model:flat-b"))
    assert selection["reason"].startswith("model:yes has the highest yes.exact_match (")
    # model:best is the learner: the same files (their digests), beside selection.json
    learner_files = files_of(p.run("path", "model:yes").stdout.strip())
    best_files = files_of(p.run("path", "model:best").stdout.strip())
    assert set(best_files) == set(learner_files) | {"selection.json"} and "model.safetensors" in learner_files
    assert all(best_files[name] == digest for name, digest in learner_files.items())
    record = json.loads(p.run("show", "model:best").stdout)
    assert record["metrics"]["selected"] == "model:yes" and record["metrics"]["reason"] == selection["reason"]
    # and it stands for the learner downstream: a model built on it plans
    assert "would build model:next" in p.run("-n", "model:next").stdout

    first = json.loads(p.read(".forge/out/model/flat-first/selection.json"))
    cheap = json.loads(p.read(".forge/out/model/flat-cheap/selection.json"))
    assert first["winner"] == "model:flat-a" and cheap["winner"] == "model:flat-b"  # 3 steps cost less than 6
    compute = {r["address"]: r["compute"] for r in cheap["candidates"]}
    assert compute["model:flat-a"] == 2 * compute["model:flat-b"] > 0

    # by perplexity (lower is better) on held-out text, the model taught one word is the worse one
    fluent = json.loads(p.read(".forge/out/model/fluent/selection.json"))
    assert fluent["goal"] == "min" and fluent["winner"] == "model:flat-a"
    assert results["model:yes"]["holdout.perplexity"]["low"] > results["model:flat-a"]["holdout.perplexity"]["high"]
    worse = next(r for r in fluent["candidates"] if r["address"] == "model:yes")
    assert worse["pairs"] == results["model:yes"]["holdout.perplexity"]["n"] and worse["bound"] > 0

    # between the two that did not learn: refused, with the evidence; asked again, the same from the cache
    for _ in range(2):
        refused = p.run("model:flat", expect=1)
        assert REFUSED in refused.stdout, refused.stdout
    assert json.loads(p.read(".forge/out/model/flat/selection.json"))["winner"] is None


def test_select_forgefile_error_exits_2(project):
    project.forgefile("""
        [model.a]
        recipe = "import"
        path = "m"

        [model.pick]
        recipe = "select"
        candidates = ["model:a"]
        evals = ["eval:none"]
        metric = "acc"
    """)
    os.makedirs(os.path.join(project.root, "m"))
    lines = project.run("-n", expect=2).stderr.strip().splitlines()
    assert "Forgefile.toml:8: error: model:pick: key 'candidates': a selection needs two candidates or more, " \
           "got 1" in lines, lines
    assert "Forgefile.toml:10: error: model:pick: key 'metric': 'acc' is not a metric: write BENCH.METRIC as the " \
           "eval's report names it, e.g. \"arith.exact_match\"" in lines, lines


SWEEP = YES_MODEL.replace("[model.yes]", "[model.sweep]") + """
        matrix = { "train.lr" = [1e-7, 5e-3] }

        [eval.sweep]
        models = ["model:sweep"]
        benchmarks = ["bench/yes.jsonl"]
        generation = { max_new_tokens = 4 }
        threads = 1

        [model.sweep-best]
        recipe = "select"
        candidates = ["model:sweep"]
        evals = ["eval:sweep"]
        metric = "yes.exact_match"
"""


def test_select_picks_the_cell_of_a_sweep_that_clearly_wins(project, tiny_base):
    p = project
    taught_yes(p)
    p.forgefile(tinylab.imported_base(tiny_base) + SWEEP)
    p.run("model:sweep-best", timeout=600)
    selection = json.loads(p.read(".forge/out/model/sweep-best/selection.json"))
    assert [r["address"] for r in selection["candidates"]] == ["model:sweep[lr=1e-07]", "model:sweep[lr=0.005]"]
    assert selection["winner"] == "model:sweep[lr=0.005]" and selection["tied"] == ["model:sweep[lr=0.005]"]
    winner = p.run("path", "model:sweep[lr=0.005]").stdout.strip()
    chosen = files_of(p.run("path", "model:sweep-best").stdout.strip())
    assert {k: v for k, v in chosen.items() if k != "selection.json"} == files_of(winner)
