"""`forgebuild metrics diff`'s table, from plain data: which values a build contributes, how two reports'
models line up, the change with its test (paired bootstrap over the same examples, else interval
overlap), the timing mark, and the rendered table."""
from __future__ import annotations

import random

from forgebuild.cli.metrics import metric_rows, metric_values, model_labels, paired_change, render_text
from forgebuild.rules.eval.scoring import bootstrap_mean

REPORT = {"results": {"model:a": {"arith.exact_match": {"value": 0.5, "low": 0.4, "high": 0.6, "n": 100},
                                  "holdout.perplexity": {"value": 12.0, "low": None, "high": None, "n": 0}}},
          "benchmarks": [{"name": "arith", "kind": "generate"}, {"name": "holdout", "kind": "perplexity"}]}
RECORD = {"metrics": {"model:a arith.exact_match": 0.5, "loss": 1.25, "seconds": {"train": 3.0},
                      "tokens_per_second": 900.0, "done": True}, "seconds": 4.5}


def test_a_builds_values_report_first_then_its_record():
    values = metric_values(RECORD, REPORT, {"model:a": "model:a"})
    assert list(values) == ["model:a arith.exact_match", "model:a holdout.perplexity", "loss", "seconds.train",
                            "tokens_per_second", "build_seconds"]
    assert values["model:a arith.exact_match"] == {"value": 0.5, "interval": [0.4, 0.6], "n": 100, "model": "model:a",
                                                   "bench": "arith", "metric": "exact_match"}
    assert values["model:a holdout.perplexity"]["interval"] is None  # no interval recorded: none invented
    assert values["build_seconds"]["value"] == 4.5
    # without its report an eval's record keeps its own copies (no interval); a record without metrics has none
    assert metric_values(RECORD, None, {})["model:a arith.exact_match"]["interval"] is None
    assert metric_values({}, None, {}) == {}


def test_models_line_up_by_address_and_the_one_left_on_each_side():
    assert model_labels(["model:base", "model:s[lr=0.1]"], ["model:base", "model:s[lr=0.01]"]) == (
        {"model:base": "model:base", "model:s[lr=0.1]": "model:s[lr=0.1] -> model:s[lr=0.01]"},
        {"model:base": "model:base", "model:s[lr=0.01]": "model:s[lr=0.1] -> model:s[lr=0.01]"})
    # two left on a side: nothing to pair them by, each keeps its address
    assert model_labels(["model:x", "model:y"], ["model:z"]) == (
        {"model:x": "model:x", "model:y": "model:y"}, {"model:z": "model:z"})


def entry(value, low=None, high=None):
    return {"value": value, "interval": None if low is None else [low, high], "n": 10}


def test_rows_change_intervals_timing_and_a_side_missing():
    va = {"m acc": entry(0.5, 0.4, 0.6), "m f1": entry(0.5, 0.4, 0.6), "train_seconds": entry(3.0)}
    vb = {"m acc": entry(0.8, 0.7, 0.9), "m f1": entry(0.55, 0.45, 0.65), "steps": entry(60)}
    rows = {r["metric"]: r for r in metric_rows("eval:e", va, vb, {})}
    assert list(rows) == ["m acc", "m f1", "train_seconds", "steps"]
    assert rows["m acc"]["change"] == 0.8 - 0.5 and rows["m acc"]["test"] == "intervals" and rows["m acc"]["apart"]
    assert rows["m f1"]["apart"] is False
    assert rows["train_seconds"]["timing"] and not rows["steps"]["timing"]
    assert [rows["train_seconds"][k] for k in ("b", "change", "apart")] == [None, None, None]
    assert rows["steps"]["a"] is None and rows["steps"]["b"] == 60
    paired = {"m f1": {"diff": 0.05, "low": 0.01, "high": 0.09, "n": 10}}
    row = {r["metric"]: r for r in metric_rows("eval:e", va, vb, paired)}["m f1"]
    assert (row["test"], row["apart"], row["change_interval"], row["pairs"]) == ("paired", True, [0.01, 0.09], 10)


def samples(scores, start=1):
    return [{"line": start + i, "prompt": f"q{i}", "reference": str(i), "output": "?", "scores": {"exact_match": s}}
            for i, s in enumerate(scores)]


def test_paired_bootstrap_sees_a_small_consistent_gain_that_overlapping_intervals_hide():
    rng = random.Random(3)
    a = [float(rng.random() < 0.5) for _ in range(400)]
    # B gets 24 of A's misses right and loses none: +0.06, inside both ~0.1-wide intervals
    misses = [i for i, x in enumerate(a) if x == 0][:24]
    b = [1.0 if i in misses else x for i, x in enumerate(a)]
    found = paired_change("generate", "exact_match", samples(a), samples(b))
    assert found["n"] == 400 and abs(found["diff"] - 0.06) < 1e-9 and found["low"] > 0
    ia, ib = bootstrap_mean(a), bootstrap_mean(b)
    assert ib["low"] < ia["high"]  # each side's own interval overlaps the other's
    # the same scores on other examples (other lines) are not paired
    assert paired_change("generate", "exact_match", samples(a), samples(b, start=2)) is None
    # an example a side could not judge (None) is left out of the pairs
    b[0] = None
    assert paired_change("generate", "exact_match", samples(a), samples(b))["n"] == 399
    # lm-eval's rows carry no "scores": intervals only
    assert paired_change("lm-eval", "acc", [{"doc_id": 0, "score": 1}], [{"doc_id": 0, "score": 0}]) is None


def test_perplexity_is_paired_as_a_ratio_over_the_same_documents():
    docs = [(30.0 + i, 10 + i % 3) for i in range(20)]
    a = [{"document": i, "tokens": t, "nll": n, "scores": {"loss": n / t}} for i, (n, t) in enumerate(docs)]
    b = [{**r, "nll": r["nll"] * 0.9} for r in a]
    found = paired_change("perplexity", "perplexity", a, b)
    pa = 2.718281828459045 ** (sum(n for n, _ in docs) / sum(t for _, t in docs))
    pb = 2.718281828459045 ** (0.9 * sum(n for n, _ in docs) / sum(t for _, t in docs))
    assert abs(found["diff"] - (pb - pa)) < 1e-6 and found["low"] <= found["diff"] <= found["high"] < 0
    # another tokenizer counts other tokens: not the same examples
    assert paired_change("perplexity", "loss", a, [{**r, "tokens": r["tokens"] + 1} for r in b]) is None


def test_text_table_columns_and_marks():
    rows = metric_rows("eval:e", {"m acc": entry(0.5, 0.4, 0.6), "build_seconds": entry(3.0)},
                       {"m acc": entry(0.75, 0.65, 0.85), "build_seconds": entry(2.5)},
                       {"m acc": {"diff": 0.25, "low": 0.125, "high": 0.375, "n": 40}})
    result = {"a": {"arg": "eval:e@2", "kind": "record", "id": "r1", "target": "eval:e", "started": "t1"},
              "b": {"arg": "eval:e@1", "kind": "record", "id": "r2", "target": "eval:e", "started": "t2"},
              "rows": rows, "same": [], "notes": [{"target": "model:m", "note": "A: not in its lock file"}]}
    assert render_text(result).splitlines() == [
        "forgebuild metrics diff eval:e@2 eval:e@1",
        "  A  r1  eval:e  t1",
        "  B  r2  eval:e  t2",
        "",
        "eval:e",
        "  metric         A               B                  change",
        "  m acc          0.5 [0.4, 0.6]  0.75 [0.65, 0.85]  +0.25 [+0.125, +0.375]  apart (paired, 40 examples)",
        "  build_seconds  3               2.5                -0.5                    timing",
        "",
        "notes:",
        "  model:m: A: not in its lock file",
        "",
        "timing: depends on the machine and its load; not comparable across machines"]
