"""The select recipe's rule on synthetic per-example scores (forgebuild.rules.model.select.choose): a
clear winner, a tie refused or broken (first, cheapest), a lower-is-better metric, examples one
candidate did not score, and the same answer every time; and its Forgefile checks."""
from __future__ import annotations

import json
import random

import pytest

from forgebuild.errors import ForgefileError
from forgebuild.rules.model.select import SelectError, choose
from unitlab import lab  # noqa: F401  (a fixture)


def bernoulli(p: float, n: int = 200, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [1.0 if rng.random() < p else 0.0 for _ in range(n)]


def pick(scores, goal="max", tie_break="refuse", **kwargs):
    return choose(scores, "arith.exact_match", goal, 0.95, tie_break, **kwargs)


def test_a_clear_winner_is_picked_wherever_it_is_listed():
    scores = {"model:a": bernoulli(0.3, seed=1), "model:b": bernoulli(0.8, seed=2), "model:c": bernoulli(0.35, seed=3)}
    found = pick(scores)
    assert found["winner"] == found["best"] == "model:b" and found["tied"] == ["model:b"]
    rows = {r["address"]: r for r in found["rows"]}
    assert rows["model:b"]["within_noise"] is None and rows["model:b"]["diff_vs_best"] == 0.0
    for other in ("model:a", "model:c"):
        assert rows[other]["within_noise"] is False and rows[other]["bound"] > 0.3 and rows[other]["pairs"] == 200
        assert rows[other]["diff_vs_best"] == pytest.approx(
            sum(scores["model:b"]) / 200 - sum(scores[other]) / 200)
    assert found["reason"].startswith("model:b has the highest arith.exact_match (0.")
    assert "beats every other candidate beyond noise" in found["reason"]


def test_a_tie_within_noise_is_refused_unless_told():
    # 0.52 vs 0.50 on 200 examples: the 95% lower bound of the difference is well below 0
    scores = {"model:a": bernoulli(0.50, seed=4), "model:b": bernoulli(0.52, seed=5), "model:c": bernoulli(0.05, seed=6)}
    found = pick(scores)
    best = found["best"]
    assert found["winner"] is None and set(found["tied"]) == {"model:a", "model:b"}
    assert found["tied"] == ["model:a", "model:b"]  # in candidates order
    other = next(r for r in found["rows"] if r["address"] in found["tied"] and r["address"] != best)
    assert other["within_noise"] is True and other["bound"] <= 0
    assert "none chosen" in found["reason"]
    assert pick(scores, tie_break="first")["winner"] == "model:a"
    # the clear loser is never among the tied, whatever the tie-break
    assert "model:c" not in pick(scores, tie_break="first")["tied"]


def test_cheapest_takes_the_least_compute_and_declaration_order_on_equal_compute():
    scores = {"model:a": bernoulli(0.50, seed=4), "model:b": bernoulli(0.52, seed=5)}
    assert pick(scores, tie_break="cheapest", compute={"model:a": 9e9, "model:b": 1e9})["winner"] == "model:b"
    assert pick(scores, tie_break="cheapest", compute={"model:a": 9e9, "model:b": 9e9})["winner"] == "model:a"
    found = pick(scores, tie_break="cheapest", compute={"model:a": 9e9, "model:b": 1e9})
    assert found["reason"].endswith("least training compute (parameters x examples seen): model:b (1e+09)")
    with pytest.raises(SelectError, match=r"the training compute of model:b is unknown"):
        pick(scores, tie_break="cheapest", compute={"model:a": 9e9, "model:b": None})


def test_goal_min_picks_the_lowest_and_bounds_its_advantage():
    losses = {"model:a": [2.0 + 0.1 * (i % 5) for i in range(50)], "model:b": [1.0 + 0.1 * (i % 5) for i in range(50)]}
    found = pick(losses, goal="min")
    assert found["winner"] == "model:b" and found["reason"].startswith("model:b has the lowest")
    row = next(r for r in found["rows"] if r["address"] == "model:a")
    assert row["diff_vs_best"] == pytest.approx(1.0) and row["bound"] == pytest.approx(1.0)
    # the same scores read as higher-is-better pick the other one
    assert pick(losses, goal="max")["winner"] == "model:a"


def test_examples_one_candidate_did_not_score_are_paired_away():
    # b is better on every example both scored; the examples only a scored (where a is perfect) must
    # neither count for a nor break the pairing
    a = [0.0] * 40 + [1.0] * 40
    b = [1.0] * 40 + [None] * 40
    found = pick({"model:a": a, "model:b": b}, values={"model:a": 0.0, "model:b": 1.0})
    row = next(r for r in found["rows"] if r["address"] == "model:a")
    assert found["winner"] == "model:b" and row["pairs"] == 40 and row["diff_vs_best"] == 1.0
    nan = float("nan")  # a scorer's NaN is an example it could not judge, like None
    found = pick({"model:a": [0.0, 1.0, nan] * 20, "model:b": [1.0, 1.0, 1.0] * 20})
    assert next(r for r in found["rows"] if r["address"] == "model:a")["pairs"] == 40
    with pytest.raises(SelectError, match="model:b and model:a have no example both scored"):
        pick({"model:a": [1.0, None], "model:b": [None, 1.0]}, values={"model:a": 0.5, "model:b": 0.9})
    with pytest.raises(SelectError, match="model:a has no score on arith.exact_match"):
        pick({"model:a": [None, None], "model:b": [1.0, 0.0]})


def test_the_same_scores_give_the_same_selection():
    scores = {"model:a": bernoulli(0.50, seed=4), "model:b": bernoulli(0.56, seed=5)}
    assert pick(scores, seed=3) == pick(scores, seed=3)
    # equal point estimates: the first listed is the best
    assert pick({"model:x": [1.0, 0.0], "model:y": [0.0, 1.0]}, tie_break="first")["best"] == "model:x"


PROJECT = """
[dataset.d]
source = "d.jsonl"
format = "prompt_completion"

[model.m1]
recipe = "import"
path = "m"

[model.m2]
recipe = "import"
path = "m"

[model.m3]
recipe = "import"
path = "m"

[eval.e]
models = ["model:m1", "model:m2"]
benchmarks = ["bench/arith.jsonl", { name = "lm", kind = "lm-eval", path = "tasks", tasks = ["t"] }]

[eval.short]
models = ["model:m3"]
benchmarks = ["bench/arith.jsonl"]
generation = { max_new_tokens = 2 }

[eval.same]
models = ["model:m3"]
benchmarks = ["bench/arith.jsonl"]
"""


def table(candidates, evals=("eval:e",), metric="arith.exact_match", extra="") -> str:
    """[model.best], a select; its `candidates` on line 33 of the Forgefile, `evals` 34, `metric` 35."""
    return (f'\n[model.best]\nrecipe = "select"\ncandidates = {json.dumps(candidates)}\nevals = {json.dumps(evals)}\n'
            f'metric = "{metric}"\n{extra}')


def planned(lab, table: str):
    lab.write("d.jsonl", '{"prompt": "1+1=", "completion": "2"}\n')
    lab.write("bench/arith.jsonl", '{"prompt": "1+1=", "answer": "2"}\n')
    lab.write("m/config.json", "{}")
    lab.write("tasks/t.yaml", "task: t\n")
    return lab.plan(PROJECT + table)


@pytest.mark.parametrize("select, expected", [
    (table(["model:m1", "model:m1", "m3"], metric="exact_match", extra='confidence = 1.0\ntie_break = "cheap"\n'), [
        "Forgefile.toml:36: error: model:best: key 'confidence': expected a number < 1, got float 1.0",
        "Forgefile.toml:37: error: model:best: key 'tie_break': expected one of refuse, first, cheapest, got "
        "string \"cheap\" (did you mean 'cheapest'?)"]),
    (table(["model:m1", "model:m1", "m3"], metric="exact_match"), [
        "Forgefile.toml:33: error: model:best: key 'candidates[1]': model:m1 is listed twice",
        "Forgefile.toml:33: error: model:best: key 'candidates[2]': 'm3' is not a target reference: write KIND:NAME",
        "Forgefile.toml:35: error: model:best: key 'metric': 'exact_match' is not a metric: write BENCH.METRIC as "
        "the eval's report names it, e.g. \"arith.exact_match\""]),
    (table(["model:m1"]), [
        "Forgefile.toml:33: error: model:best: key 'candidates': a selection needs two candidates or more, got 1"]),
    (table(["model:m1", "dataset:d"], evals=["eval:e", "model:m2"]), [
        "Forgefile.toml:33: error: model:best: key 'candidates[1]': dataset:d is a dataset target, not a model",
        "Forgefile.toml:34: error: model:best: key 'evals[1]': model:m2 is a model target, not an eval"]),
    (table(["model:m1", "model:m3"], metric="arith.accuracy"), [
        "Forgefile.toml:35: error: model:best: key 'metric': no eval in evals produces 'arith.accuracy'; they "
        "produce arith.exact_match, lm.t.*"]),
    (table(["model:m1", "model:m3"], metric="lm.t.acc"), [
        "Forgefile.toml:35: error: model:best: key 'metric': lm is an lm-eval benchmark of eval:e: select "
        "compares the per-example scores of generate, choice and perplexity benchmarks"]),
    (table(["model:m1", "model:m3"]), [
        "Forgefile.toml:33: error: model:best: key 'candidates[1]': no eval in evals scores model:m3 on "
        "arith.exact_match: add it to the models of eval:e"]),
    (table(["model:m1", "model:m3"], evals=["eval:e", "eval:short"]), [
        "Forgefile.toml:34: error: model:best: key 'evals[1]': eval:short scores benchmark 'arith' differently from "
        "eval:e (its definition or generation settings): select pairs the same examples scored the same way"]),
])
def test_forgefile_errors_name_the_key(lab, select, expected):
    with pytest.raises(ForgefileError) as e:
        planned(lab, select)
    assert str(e.value).splitlines() == expected


def test_a_select_reads_its_candidates_and_the_evals_that_scored_them(lab):
    plan = planned(lab, table(["model:m1", "model:m3"], evals=["eval:e", "eval:same"]))
    assert sorted(plan.targets["model:best"].deps) == ["eval:e", "eval:same", "model:m1", "model:m3"]
