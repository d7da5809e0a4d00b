"""An eval's gates: conditions parsed from generated text (every malformed one gets one message naming
its key), the paired no-regression gate that catches a 5-point drop on 1,000 examples a fixed tolerance
lets through, a real gain passing a margin, perplexity against the base and the vocabulary, and the
planner's checks that a compared model (a parent, an ancestor) is evaluated; a fixed threshold as a
percentage ("<= 0.1%": contamination)."""
from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forgebuild.errors import ForgefileError
from forgebuild.rules import eval as eval_rule
from forgebuild.rules.eval.gate import Condition, GateError, parse_condition
from test_recipe_deps import PROJECT
from unitlab import lab  # noqa: F401  (a fixture)

METRIC = "arith.exact_match"
NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True)
NUMBER = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
SPACE = st.sampled_from(["", " ", "  ", "\t"])


def params(gate: dict, **extra) -> eval_rule.Params:
    return eval_rule.Params(models=["model:base", "model:sft"], benchmarks=["bench/arith.jsonl"], gate=gate,
                            **extra)


def gate_messages(value) -> list[tuple]:
    return [p for p in eval_rule.gate_problems(params({METRIC: value})) if p[0][:2] == ("gate", METRIC)]


# ------------------------------------------------------------------ parsing

@st.composite
def relative_conditions(draw):
    op, against = draw(st.sampled_from([">=", "<="])), draw(st.one_of(st.just("parent"), NAME.map("model:{}".format)))
    margin, confidence = draw(NUMBER), draw(st.floats(min_value=50.01, max_value=99.0))  # 1000 resamples allow 99%
    s = [draw(SPACE) for _ in range(6)]
    if against != "parent":  # a name may hold '-' and '.': "model:base-0.1" is the model named base-0.1
        s[2] = s[2] or " "
    text = (f"{s[0]}{op}{s[1]}{against}{s[2]}{'-' if margin < 0 else '+'}{s[3]}{abs(margin)!r}"
            f"{s[4]}@{s[5]}{confidence!r}%")
    return text, Condition(text, op, abs(margin) * (-1 if margin < 0 else 1), against, confidence)


@given(relative_conditions())
def test_a_generated_relative_condition_parses_to_its_parts(case):
    text, expected = case
    assert parse_condition(text) == expected
    # models = [model:base, model:sft]: the check names any other model (and model:sft, the judged one)
    assert len(gate_messages(text)) == (expected.against not in ("parent", "model:base"))
    assert len(gate_messages([">= 0.5", text])) == (expected.against not in ("parent", "model:base"))


@given(st.sampled_from([">=", "<=", ">", "<", "=="]), NUMBER, SPACE, st.booleans())
def test_generated_fixed_and_vocabulary_conditions(op, number, space, vocab):
    if vocab:
        multiplier = abs(number) or 1.0
        condition = parse_condition(f"{op}{space}{multiplier!r}{space}*{space}vocab")
        assert (condition.op, condition.number, condition.against) == (op, multiplier, "vocab")
    else:
        condition = parse_condition(f"{space}{op}{space}{number!r}{space}")
        assert (condition.op, condition.number, condition.against, condition.relative) == (op, number, None, False)


@given(st.sampled_from([">=", "<=", ">", "<", "=="]), NUMBER, SPACE)
def test_a_fixed_threshold_may_be_a_percentage(op, number, space):
    condition = parse_condition(f"{op}{space}{number!r}{space}%")
    assert (condition.op, condition.against, condition.relative) == (op, None, False)
    assert condition.number == pytest.approx(number / 100, rel=1e-12, abs=1e-300)
    assert parse_condition("<= 0.1%").number == pytest.approx(0.001)
    with pytest.raises(GateError, match="drop the '@'"):
        parse_condition(f"{op} {number!r}% @ 95%")
    # contamination: a count of the benchmark's examples, held against a number only
    assert [m for _, m in eval_rule.gate_problems(params(
        {"contamination": ["<= 0.1%", "<= parent + 0.01 @ 95%"], "arith.contamination": "== 0"}))] == [
        "'<= parent + 0.01 @ 95%': contamination is a count of this benchmark's examples, not an estimate: hold it "
        "against a number (\"<= 0.1%\")"]


VALID = [">= 0.6", "<= 0.1 * vocab", ">= model:base + 0.2 @ 95%", ">= parent - 0.02 @ 95%", "<= parent - 50 @ 99%"]


@settings(max_examples=300)
@given(st.one_of(
    st.text(max_size=30),
    st.builds(lambda valid, i, junk: valid[:i] + junk + valid[i + 1:], st.sampled_from(VALID),
              st.integers(0, 26), st.sampled_from(["", " ", "@", "%", "*", "x", "-", "+", ":", "1e999", "=", "\n"])),
))
def test_every_condition_gets_at_most_one_message_naming_its_key(text):
    """Whatever the text: it parses, or the parser says why quoting it; either way the check says at
    most one thing about the condition, under gate.METRIC (gate.METRIC[1] in a list)."""
    try:
        parse_condition(text)
        parsed = True
    except GateError as e:
        parsed = False
        assert str(e).startswith(f"'{text}'")
    alone, listed = gate_messages(text), gate_messages([">= 0.5", text])
    assert len(alone) <= 1 and all(key == ("gate", METRIC) for key, _ in alone)
    assert [m for _, m in alone] == [m for _, m in listed] and all(key == ("gate", METRIC, 1) for key, _ in listed)
    assert parsed or alone


@pytest.mark.parametrize("text, message", [
    ("below 10", "'below 10' is not a condition: write e.g. \">= 0.6\" (>=, <=, >, <, ==, then a number)"),
    (">= parent", "'>= parent' compares with parent without a confidence: add e.g. \"@ 95%\""),
    ("> parent @ 95%", "'> parent @ 95%': a condition against a model takes >= or <= (the margin is held against "
                       "a one-sided bound of the difference), not >"),
    (">= 0.6 @ 95%", "'>= 0.6 @ 95%': a confidence is for a condition against a model (model:NAME or parent); "
                     "a number is compared with the measured value: drop the '@'"),
    (">= parent @ 100%", "'>= parent @ 100%': the confidence must be a percentage above 50 and below 100, "
                         "e.g. \"@ 95%\""),
    (">= corpus:c + 1 @ 95%", "'>= corpus:c + 1 @ 95%': corpus:c is not a model: compare with model:NAME or parent"),
    (">= parent + 1e999 @ 95%", "'>= parent + 1e999 @ 95%': +1e999 is out of range for a number"),
    (">= parent @ 99.5%", "'>= parent @ 99.5%': a 99.5% bound from 1000 bootstrap resamples rests on the 5 beyond "
                          "it: set bootstrap to 2000 or more, or lower the confidence"),
    (">= model:other + 0.1 @ 95%", "'>= model:other + 0.1 @ 95%' compares with model:other, which is not "
                                   "evaluated: add it to models (or set ancestors = true if it is an ancestor of "
                                   "one of them)"),
    (">= model:sft @ 95%", "'>= model:sft @ 95%' judges model:sft against itself: gate_models names it"),
    ("<= 2 * vocab", f"'<= 2 * vocab': a multiple of the vocabulary size is a perplexity's scale (a uniform guess "
                     f"scores the vocabulary size); {METRIC} is not a perplexity"),
    ([], "an empty list: write one condition or more"),
])
def test_each_mistake_has_its_message(text, message):
    assert gate_messages(text) == [(("gate", METRIC), message)]


def test_the_planning_path_imports_no_numeric_library():
    code = ("import sys; from forgebuild.rules import eval; from forgebuild.rules.eval import gate; "
            "print(sorted(m for m in ('numpy', 'torch', 'transformers') if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


# ------------------------------------------------------------------ judging: the fixture of issue 13

def judged(text: str, child: list, parent: list, samples: int = 1000) -> dict:
    from forgebuild.rules.eval.evaluate import judge
    from forgebuild.rules.eval.scoring import bootstrap_mean

    results = {m: {METRIC: bootstrap_mean(v, samples, 0)} for m, v in (("model:p", parent), ("model:c", child))}
    scores = {"model:p": {METRIC: parent}, "model:c": {METRIC: child}}
    return judge(parse_condition(text), METRIC, "model:c", results, scores, samples, 0, against="model:p")


def flipped(scores: list[float], ones_to_zero: int, zeros_to_one: int, seed: int = 3) -> list[float]:
    """The same examples with some answers changed: a child model scored where its parent was."""
    rng = np.random.default_rng(seed)
    ones, zeros = [i for i, v in enumerate(scores) if v], [i for i, v in enumerate(scores) if not v]
    out = list(scores)
    for i in rng.choice(ones, ones_to_zero, replace=False):
        out[i] = 0.0
    for i in rng.choice(zeros, zeros_to_one, replace=False):
        out[i] = 1.0
    return out


PARENT = [1.0] * 700 + [0.0] * 300  # 0.70 on n = 1,000


def test_a_five_point_drop_passes_a_fixed_tolerance_and_fails_the_paired_gate():
    child = flipped(PARENT, 80, 30)  # 0.65: 80 answers lost, 30 gained
    assert sum(child) / len(child) == pytest.approx(0.65)
    fixed = judged(">= 0.6", child, PARENT)  # the parent's 0.70 less a 0.1 tolerance
    paired = judged(">= parent - 0.02 @ 95%", child, PARENT)
    assert fixed["passed"] and not paired["passed"]
    assert paired["diff"] == pytest.approx(-0.05) and paired["pairs"] == 1000 and paired["side"] == "lower"
    # the lower bound sits about 1.645 standard errors of the paired difference below it (normal approximation)
    se = np.std(np.array(child) - np.array(PARENT)) / math.sqrt(1000)
    assert paired["bound"] == pytest.approx(-0.05 - 1.645 * se, abs=0.004) and paired["bound"] < -0.06
    # unpaired, the two models' own 95% intervals overlap: no test on them alone could call the drop
    assert paired["high"] > judged(">= 0.6", PARENT, PARENT)["low"]


def test_a_child_no_worse_than_its_parent_passes_the_same_gate():
    child = flipped(PARENT, 25, 25)  # 0.70 again, 50 answers changed
    row = judged(">= parent - 0.02 @ 95%", child, PARENT)
    assert row["passed"] and row["diff"] == 0 and -0.02 < row["bound"] < 0


def test_a_true_twenty_point_gain_passes_a_ten_point_margin():
    child = flipped(PARENT, 20, 220)  # 0.90
    row = judged(">= model:p + 0.1 @ 95%", child, PARENT)
    assert row["passed"] and row["diff"] == pytest.approx(0.2) and row["bound"] > 0.17
    assert row["threshold"] == pytest.approx(0.8) and row["against"] == "model:p" and row["against_value"] == 0.7
    assert not judged(">= model:p + 0.25 @ 95%", child, PARENT)["passed"]  # more than it gained
    # `<=` holds the upper bound against the margin: "no more than 10 points better" fails, 30 passes
    assert not judged("<= model:p + 0.1 @ 95%", child, PARENT)["passed"]
    assert judged("<= model:p + 0.3 @ 95%", child, PARENT)["passed"]


def test_the_bound_is_one_sided():
    """@ 95% is the 5th percentile of the resampled differences, above a two-sided interval's 2.5th."""
    from forgebuild.rules.eval.scoring import paired_bound, paired_difference

    child = flipped(PARENT, 80, 30)
    two_sided = paired_difference(PARENT, child, 2000, 0)
    lower = paired_bound(PARENT, child, 95, "lower", 2000, 0)["bound"]
    upper = paired_bound(PARENT, child, 95, "upper", 2000, 0)["bound"]
    assert two_sided["low"] < lower < -0.05 < upper < two_sided["high"]
    assert paired_bound(PARENT, child, 97.5, "lower", 2000, 0)["bound"] == pytest.approx(two_sided["low"])


def test_perplexity_against_the_base_resamples_the_same_documents():
    """Documents vary in difficulty far more than the models differ: resampled together, a 10% lower
    perplexity on every document is certain; resampled apart, their intervals would overlap."""
    from forgebuild.rules.eval.evaluate import judge
    from forgebuild.rules.eval.scoring import bootstrap_ratio

    rng = np.random.default_rng(0)
    tokens = rng.integers(50, 400, 200).astype(float)
    per_token = rng.uniform(3.0, 7.0, 200)  # each document's own difficulty
    base_nll = tokens * per_token
    child_nll = tokens * (per_token - 0.105)  # ~10% lower perplexity everywhere
    metric = "holdout.perplexity"
    results = {m: {metric: bootstrap_ratio(n, tokens, 1000, 0, transform=math.exp)}
               for m, n in (("model:base", base_nll), ("model:sft", child_nll))}
    assert results["model:sft"][metric]["high"] > results["model:base"][metric]["low"]  # intervals overlap
    scores = {"model:base": {metric: (base_nll, tokens)}, "model:sft": {metric: (child_nll, tokens)}}
    margin = -0.05 * results["model:base"][metric]["value"]
    row = judge(parse_condition(f"<= model:base - {-margin} @ 95%"), metric, "model:sft", results, scores, 1000, 0,
                against="model:base")
    expected = results["model:sft"][metric]["value"] - results["model:base"][metric]["value"]
    assert row["passed"] and row["diff"] == pytest.approx(expected) and row["side"] == "upper"
    assert expected < row["bound"] < margin
    vocab = judge(parse_condition("<= 0.2 * vocab"), metric, "model:sft", results, scores, 1000, 0, vocab=1024)
    assert vocab["threshold"] == pytest.approx(204.8) and vocab["vocab_size"] == 1024
    assert vocab["passed"] == (results["model:sft"][metric]["value"] <= 204.8)


# ------------------------------------------------------------------ the planner: compared models are evaluated

# corpus:c, tokenizer:plain, model:p (pretrain) and dataset:sft, planned only; then sft on p, rl on sft
CHAIN = PROJECT.split("[model.adapter]")[0] + """
[model.sft]
recipe = "sft"
base = "model:p"
data = "dataset:sft"

[model.rl]
recipe = "sft"
base = "model:sft"
data = "dataset:sft"

[eval.e]
models = MODELS
benchmarks = ["bench/arith.jsonl"]
gate = { "arith.exact_match" = GATE }
"""
BOTH = '[">= parent - 0.02 @ 95%", ">= model:p + 0.2 @ 95%"]'


def chain(lab, models: str, extra: str = "", gate: str = BOTH) -> None:
    lab.write("data/sft.jsonl", '{"prompt": "1+1=", "completion": "2"}\n')
    lab.write("bench/arith.jsonl", '{"prompt": "1+1=", "answer": "2"}\n')
    lab.plan(CHAIN.replace("MODELS", models).replace("GATE", gate) + extra)


def test_a_compared_model_must_be_evaluated(lab):
    with pytest.raises(ForgefileError) as e:
        chain(lab, '["model:rl"]')
    assert str(e.value).splitlines() == [
        "Forgefile.toml:34: error: eval:e: key 'gate.arith.exact_match[0]': '>= parent - 0.02 @ 95%': the parent "
        "of model:rl is model:sft, which is not evaluated: add it to models, or set ancestors = true",
        "Forgefile.toml:34: error: eval:e: key 'gate.arith.exact_match[1]': '>= model:p + 0.2 @ 95%' compares with "
        "model:p, which is not evaluated: add it to models (or set ancestors = true if it is an ancestor of one "
        "of them)",
    ]
    chain(lab, '["model:p", "model:sft", "model:rl"]')  # listed: valid
    chain(lab, '["model:rl"]', "ancestors = true\n")  # or found in its base chain


def test_with_ancestors_a_model_outside_the_chain_or_without_a_parent_is_named(lab):
    with pytest.raises(ForgefileError) as e:
        chain(lab, '["model:p", "model:rl"]', 'ancestors = true\ngate_models = ["model:p"]\n')
    assert str(e.value).splitlines() == [
        "Forgefile.toml:34: error: eval:e: key 'gate.arith.exact_match[0]': '>= parent - 0.02 @ 95%': model:p "
        "has no parent (it is built on no base model)",
        "Forgefile.toml:34: error: eval:e: key 'gate.arith.exact_match[1]': '>= model:p + 0.2 @ 95%' judges "
        "model:p against itself: gate_models names it",
    ]
    with pytest.raises(ForgefileError) as e:
        chain(lab, '["model:sft"]', "ancestors = true\n", gate='">= model:rl @ 95%"')
    assert "neither among models nor an ancestor of them" in str(e.value)


def test_a_margin_written_against_the_name_is_pointed_out():
    """A target's name may hold '-': "model:base-0.1" is a model of that name, but model:base was meant."""
    (_, message), = gate_messages(">= model:base-0.1 @ 95%")
    assert message.endswith("; for model:base less a margin, put spaces around the sign: model:base - 0.1")
