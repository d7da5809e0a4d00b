"""The curate rule in process: each verifier, each shape, the stats and their intervals on in-memory
samples, and the Forgefile's error texts (exit 2 through the planner)."""
from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forgebuild.errors import ForgefileError
from forgebuild.rules.synth import curate_report
from forgebuild.rules.synth.shapes import Judged, shape
from forgebuild.rules.synth.verifiers import Env, Verifier, VerifierError, run, run_python
from unitlab import lab  # noqa: F401  (a fixture)


def sample(prompt_index: int, n: int, completion, prompt=None, **columns) -> dict:
    return {"prompt": prompt if prompt is not None else f"q{prompt_index}", "completion": completion,
            "prompt_index": prompt_index, "sample": n, "columns": columns, "key": None}


def env(root: str = ".", path: str | None = None, logged: list | None = None) -> Env:
    ctx = types.SimpleNamespace(project_dir=root, scratch_dir=None, log=(logged if logged is not None else []).append)
    return Env(ctx, path, workers=2)


def verdicts(spec, samples, **kw):
    out = run(Verifier.model_validate(spec), samples, env(**kw))
    return out.passed, out.reasons, out.scores


# ------------------------------------------------------------------ verifiers

SUMS = [sample(0, 0, "17", answer="17"), sample(0, 1, "71", answer="17"), sample(0, 2, "it is 17", answer="17"),
        sample(1, 0, " 2,000", answer=2000), sample(1, 1, "about 1999", answer=2000), sample(1, 2, "x")]


def test_answer_exact_agrees_with_the_grpo_reward_and_says_expected_and_got():
    passed, reasons, scores = verdicts({"kind": "answer"}, SUMS)
    assert passed == [True, False, False, True, False, False]
    assert reasons[1] == 'answer: expected 17, got "71"'
    assert reasons[5] == "answer: the row has no 'answer'"
    assert scores == [None] * 6


def test_answer_numeric_reads_the_leading_number_within_the_tolerance():
    assert verdicts({"kind": "answer", "match": "numeric"}, SUMS)[0] == [True, False, False, True, False, False]
    assert verdicts({"kind": "answer", "match": "numeric"}, [sample(0, 0, "17.0 is it\n", answer="17")])[0] == [True]
    near = [sample(0, 0, "1999", answer=2000), sample(0, 1, "1997", answer="2000")]
    assert verdicts({"kind": "answer", "match": "numeric", "tolerance": 1}, near)[0] == [True, False]
    assert verdicts({"kind": "answer", "match": "numeric"}, [sample(0, 0, "a", answer="b")])[1] == \
        ["answer: expected b, which is not a number"]


def test_regex_searches_or_matches_the_whole_completion():
    rows = [sample(0, 0, "42"), sample(0, 1, "x 42"), sample(0, 2, "none")]
    assert verdicts({"kind": "regex", "pattern": r"\d+"}, rows)[0] == [True, True, False]
    passed, reasons, _ = verdicts({"kind": "regex", "pattern": r"\d+", "full": True}, rows)
    assert passed == [True, False, False]
    assert reasons[1] == r'regex: "x 42" does not match \d+'


def test_length_bounds_characters_and_words():
    rows = [sample(0, 0, "a b c"), sample(0, 1, "abcdefgh"), sample(0, 2, "")]
    passed, reasons, _ = verdicts({"kind": "length", "max_chars": 6, "min_words": 1}, rows)
    assert passed == [True, False, False]
    assert reasons[1:] == ["length: 8 characters > max_chars 6", "length: 0 words < min_words 1"]


def test_dedup_against_prompts_and_earlier_samples_within_a_prompt_or_across_all():
    rows = [sample(0, 0, "Four"), sample(0, 1, "four "), sample(0, 2, "q0"), sample(1, 0, "four"), sample(1, 1, "q0")]
    passed, reasons, _ = verdicts({"kind": "dedup"}, rows)
    assert passed == [True, False, False, True, True]
    assert reasons[1:3] == ["dedup: the same as sample 0", "dedup: repeats a prompt"]
    passed, reasons, _ = verdicts({"kind": "dedup", "scope": "all"}, rows)
    assert passed == [True, False, False, False, False]
    assert reasons[3] == "dedup: the same as prompt 0 sample 0"
    assert verdicts({"kind": "dedup", "against": ["samples"]}, rows)[0] == [True, False, True, True, True]


def test_json_parses_and_validates_against_the_schema(tmp_path):
    rows = [sample(0, 0, '{"name": "a"}'), sample(0, 1, '{"nam": 1}'), sample(0, 2, "not json"),
            sample(0, 3, '{"name": 3}')]
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    passed, reasons, _ = verdicts({"kind": "json", "schema": schema}, rows)
    assert passed == [True, False, False, False]
    assert reasons[1] == "json: 'name' is a required property"
    assert reasons[2].startswith("json: not JSON (Expecting value")
    assert reasons[3] == "json: name: 3 is not of type 'string'"
    path = tmp_path / "s.json"
    path.write_text(json.dumps(schema))
    assert verdicts({"kind": "json", "schema_file": "s.json"}, rows, path=str(path))[0] == passed
    with pytest.raises(VerifierError, match="the schema is not a valid JSON schema"):
        verdicts({"kind": "json", "schema": {"type": "nothing"}}, rows)


def test_python_runs_the_completion_with_its_tests_and_kills_what_hangs():
    tests = "assert add(2, 3) == 5"
    rows = [sample(0, 0, "def add(a, b):\n    return a + b", tests=tests),
            sample(0, 1, "def add(a, b):\n    return a - b", tests=tests),
            sample(0, 2, "import time\ndef add(a, b):\n    time.sleep(60)", tests=tests),
            sample(0, 3, "def add(a, b) return", tests=tests)]
    passed, reasons, _ = verdicts({"kind": "python", "timeout": 1.5}, rows)
    assert passed == [True, False, False, False]
    assert reasons[1] == "python: AssertionError"
    assert reasons[2] == "python: timed out after 1.5 s"
    assert reasons[3].startswith("python: SyntaxError")


def test_python_runs_isolated_in_a_fresh_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.txt").write_text("x")
    assert run_python("import os\nassert not os.path.exists('secret.txt'), os.getcwd()", 10) == (True, None)
    assert run_python("import sys\nsys.exit(3)", 10) == (False, "exit status 3")


def test_code_verifiers_take_bools_numbers_and_reasons(tmp_path):
    (tmp_path / "v.py").write_text(
        "def even(completions, answer):\n    return [int(c) % 2 == 0 for c in completions]\n"
        "def close(prompts, completions, **columns):\n"
        "    return [1 / (1 + abs(int(c) - int(a))) for c, a in zip(completions, columns['answer'])]\n"
        "def why(completions, **kw):\n    return ['' if c != '3' else 'three is odd' for c in completions]\n"
        "def broken(completions, **kw):\n    return [None for c in completions]\n")
    rows = [sample(0, 0, "4", answer="4"), sample(0, 1, "3", answer="4"), sample(1, 0, "8", answer="4")]
    root = str(tmp_path)
    assert verdicts("v.py:even", rows, root=root)[:2] == ([True, False, True], [None, "even: rejected", None])
    passed, reasons, scores = verdicts({"kind": "code", "function": "v.py:close", "threshold": 0.5}, rows, root=root)
    assert passed == [True, True, False] and scores == [1.0, 0.5, 0.2]
    assert reasons[2] == "close: score 0.2 < threshold 0.5"
    assert verdicts("v.py:why", rows, root=root)[1] == [None, "why: three is odd", None]
    with pytest.raises(VerifierError, match=r"^verifier v.py:broken returned None for sample 0; a verifier returns"):
        verdicts("v.py:broken", rows, root=root)
    with pytest.raises(VerifierError, match="verifier v.py:gone: v.py has no function 'gone'"):
        verdicts("v.py:gone", rows, root=root)


def test_reward_model_scores_each_prompt_and_completion_as_one_unpadded_forward(tmp_path):
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<unk>", *"0123456789+= abcxyz"]
    inner = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    inner.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, num_labels=1,
                         pad_token_id=0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    rows = [sample(i, j, c, prompt=f"{i}+{i}=") for i in range(3) for j, c in enumerate(["12", "abc xyz 9", "0"])]
    model = LlamaForSequenceClassification.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.inference_mode():
        alone = [model(**tokenizer(r["prompt"] + r["completion"], return_tensors="pt")).logits[0, 0].item()
                 for r in rows]
    threshold = float(np.median(alone))
    ctx = types.SimpleNamespace(project_dir=str(tmp_path), log=print, bad_input=ValueError)
    out = run(Verifier.model_validate({"kind": "reward_model", "model": "model:rm", "threshold": threshold}), rows,
              Env(ctx, str(tmp_path)))
    assert out.scores == pytest.approx(alone, abs=1e-4)
    assert out.passed == [s >= threshold for s in out.scores] and 0 < sum(out.passed) < len(rows)


# ------------------------------------------------------------------ shapes

def judged(rows):
    return [Judged(sample(p, n, c, **cols), ok, score) for p, n, c, ok, score, cols in rows]


GROUPS = judged([
    (0, 0, "17", True, 0.5, {"answer": 17, "id": "a"}),
    (0, 1, "17 ", True, 0.9, {"answer": 17, "id": "a"}),
    (0, 2, "71", False, 0.95, {"answer": 17, "id": "a"}),
    (1, 0, "3", False, 0.1, {"answer": 4, "id": "b"}),
    (2, 0, "8", True, 0.7, {"answer": 8, "id": "c"}),
    (2, 1, "8", True, 0.7, {"answer": 8, "id": "c"}),
])


def test_prompt_completion_takes_the_best_passing_sample_ties_to_the_lower_index():
    rows, kept = shape("prompt_completion", GROUPS)
    assert rows == [{"prompt": "q0", "completion": "17 ", "answer": 17, "id": "a"},
                    {"prompt": "q2", "completion": "8", "answer": 8, "id": "c"}]
    assert kept == {"kept": 2, "dropped": {"no passing sample": 1}}
    tie = judged([(0, 0, "a", True, 0.5, {}), (0, 1, "b", True, 0.5, {})])
    assert shape("prompt_completion", tie)[0][0]["completion"] == "a"


def test_samples_keeps_every_distinct_passing_sample():
    rows, _ = shape("samples", GROUPS)
    assert [(r["prompt"], r["completion"]) for r in rows] == [("q0", "17"), ("q2", "8")]


def test_preference_pairs_the_best_passing_with_the_worst_a_failing_one_below_any_passing():
    rows, kept = shape("preference", GROUPS)
    # prompt 0: a failing "71" scored 0.95 still ranks below both passing ones
    assert rows == [{"prompt": "q0", "chosen": "17 ", "rejected": "71", "score_chosen": 0.9,
                     "score_rejected": 0.95, "answer": 17, "id": "a"}]
    assert kept["dropped"] == {"no passing sample": 1, "no sample differing from the best": 1}


def test_prompts_carry_the_answer_as_text_and_the_pass_rate_within_the_range():
    rows, kept = shape("prompts", GROUPS)
    assert rows[0] == {"prompt": "q0", "answer": "17", "id": "a", "pass_rate": 2 / 3}
    assert [r["pass_rate"] for r in rows] == [2 / 3, 0.0, 1.0]
    rows, kept = shape("prompts", GROUPS, (0.1, 0.9))
    assert [r["prompt"] for r in rows] == ["q0"] and kept["dropped"] == {"pass rate outside pass_rate": 2}


def test_a_conversation_prompt_gives_conversational_records():
    chat = [{"role": "user", "content": "2+2?"}]
    rows, _ = shape("prompt_completion", [Judged(sample(0, 0, "4", prompt=chat), True, 1.0)])
    assert rows == [{"prompt": chat, "completion": [{"role": "assistant", "content": "4"}]}]


# ------------------------------------------------------------------ stats

def test_intervals_resample_prompts_so_correlated_samples_widen_them():
    """Ten prompts of ten samples each, all right or all wrong: 100 samples, but the evidence of ten. The
    interval must be as wide as ten independent draws give, far wider than 100 would."""
    rng = np.random.default_rng(0)
    right = rng.random(10) < 0.5
    passes = np.array([[10.0 * r] for r in right])
    (rate,) = curate_report.pass_rates(passes, np.full(10, 10.0), seed=3)
    assert rate["value"] == right.mean() and rate["n"] == 10
    assert rate["high"] - rate["low"] > 0.4  # ~0.6 for n = 10; ~0.2 for 100 independent samples
    independent = curate_report.pass_rates(np.array([[float(x)] for x in rng.random(100) < 0.5]), np.ones(100), 3)[0]
    assert independent["high"] - independent["low"] < 0.3
    assert curate_report.pass_rates(passes, np.full(10, 10.0), seed=3) == [rate]  # seeded: the same bytes


def test_statistics_count_verifiers_rejections_and_splits():
    from forgebuild.rules.synth.verifiers import Outcome

    a, b = Outcome("a"), Outcome("b")
    for ok_a, ok_b in [(True, True), (False, True), (True, False), (False, False)]:
        a.add(ok_a, "no a")
        b.add(ok_b, "no b")
    js = [Judged(sample(i // 2, i % 2, str(i)), a.passed[i] and b.passed[i], 0.0) for i in range(4)]
    stats = curate_report.statistics(js, [a, b], {"kept": 1, "dropped": {}}, {"train": 1}, seed=0)
    assert (stats["samples"], stats["prompts"], stats["passed"]) == (4, 2, 1)
    assert [(v["name"], v["passed"], v["pass_rate"]["value"]) for v in stats["verifiers"]] == \
        [("a", 2, 0.5), ("b", 2, 0.5)]
    assert stats["rejections"] == {"samples": 3, "by_verifier": {"a": 2, "b": 2},
                                   "reasons": ["a: no a", "b: no b", "a: no a", "b: no b"]}
    html = curate_report.render_html("curate:x", {**stats, "shape": "prompts"}, [])
    assert "<script" not in html and "http" not in html and html == curate_report.render_html(
        "curate:x", {**stats, "shape": "prompts"}, [])


# ------------------------------------------------------------------ Forgefile errors

def errors(lab, text: str) -> list[str]:
    lab.write("s.jsonl", '{"prompt": "a", "completion": "b"}\n')
    with pytest.raises(ForgefileError) as e:
        lab.plan(text)
    return str(e.value).splitlines()


def test_verifier_errors_name_the_entry(lab):
    assert errors(lab, """
        [curate.a]
        samples = "s.jsonl"
        verify = [
          { kind = "regx", pattern = "x" },
          { kind = "regex", pattern = "(" },
          { kind = "regex" },
          "regx",
          { kind = "answer", pattern = "a" },
          { kind = "length" },
        ]
    """) == [
        "Forgefile.toml:4: error: curate:a: key 'verify[0]': unknown verifier kind 'regx' (did you mean 'regex'?); "
        "kinds: answer, regex, code, length, dedup, json, python, reward_model",
        "Forgefile.toml:4: error: curate:a: key 'verify[1]': pattern '(' is not a valid regular expression: "
        "missing ), unterminated subpattern at position 0",
        "Forgefile.toml:4: error: curate:a: key 'verify[2]': regex needs a pattern: "
        "write { kind = \"regex\", pattern = \"REGEX\" }",
        "Forgefile.toml:4: error: curate:a: key 'verify[3]': 'regx' is not a verifier: write FILE.py:FUNCTION or a "
        "table { kind = ... }; kinds: answer, regex, code, length, dedup, json, python, reward_model "
        "(did you mean 'regex'?)",
        "Forgefile.toml:4: error: curate:a: key 'verify[4]': key 'pattern' does not apply to kind \"answer\" "
        "(its keys: name, field, match, tolerance)",
        "Forgefile.toml:4: error: curate:a: key 'verify[5]': length needs a bound: min_chars, max_chars, min_words "
        "or max_words",
    ]


def test_names_score_and_pass_rate_errors(lab):
    lab.write("v.py", "def close(completions):\n    return [1.0 for c in completions]\n")
    assert errors(lab, """
        [curate.a]
        samples = "s.jsonl"
        verify = ["answer", { kind = "length", max_chars = 3, name = "x" }, { kind = "dedup", name = "x" }]
        score = "answer"
        pass_rate = [0.9, 0.1]

        [curate.b]
        samples = "s.jsonl"
        verify = ["v.py:close"]
        score = "clse"
    """) == [
        "Forgefile.toml:4: error: curate:a: key 'verify[2]': verify[1] and verify[2] are both named 'x': give one "
        "of them another name",
        "Forgefile.toml:5: error: curate:a: key 'score': verifier 'answer' (answer) gives no number, only pass or "
        "fail; score by a code or reward_model verifier",
        "Forgefile.toml:6: error: curate:a: key 'pass_rate': expected [lo, hi] with 0 <= lo <= hi <= 1, got [0.9, 0.1]",
        "Forgefile.toml:6: error: curate:a: key 'pass_rate': applies to shape \"prompts\" only (this shape is "
        "\"prompt_completion\")",
        "Forgefile.toml:11: error: curate:b: key 'score': 'clse' names no verifier (did you mean 'close'?); "
        "verifiers: close",
    ]


def test_dependency_errors(lab):
    lab.write("m/config.json", "{}")
    assert errors(lab, """
        [model.x]
        recipe = "import"
        path = "m"

        [generate.g]
        model = "model:x"
        template = { text = "{a}=", vars = { a = [1, 2] } }

        [dataset.d]
        source = "s.jsonl"

        [curate.pairs]
        samples = "generate:g"
        shape = "preference"
        verify = [{ kind = "reward_model", model = "model:x" }]

        [curate.wrong]
        samples = "dataset:d"

        [curate.rl]
        samples = "s.jsonl"
        shape = "prompts"

        [model.sft]
        recipe = "sft"
        base = "model:x"
        data = "curate:rl"

        [model.dpo]
        recipe = "dpo"
        base = "model:x"
        data = "generate:g"
    """) == [
        "Forgefile.toml:15: error: curate:pairs: key 'shape': a preference pair needs two samples of a prompt, and "
        "generate:g makes one (n = 1); raise its n",
        "Forgefile.toml:16: error: curate:pairs: key 'verify[0]': model:x is not a reward model (its recipe is "
        "\"import\"): build one with recipe = \"reward\"",
        "Forgefile.toml:19: error: curate:wrong: key 'samples': dataset:d is a dataset target; 'samples' takes a "
        "generate target or a JSONL file",
        "Forgefile.toml:28: error: model:sft: key 'data': curate:rl is a 'prompts' dataset; recipe \"sft\" trains on "
        "'prompt_completion' or 'messages' data",
        "Forgefile.toml:33: error: model:dpo: key 'data': generate:g is a generate target; 'data' takes a dataset, "
        "curate or images target",
    ]


def test_recipes_take_a_curate_target_of_the_right_shape(lab):
    lab.write("s.jsonl", '{"prompt": "a", "completion": "b"}\n')
    lab.write("m/config.json", "{}")
    plan = lab.plan("""
        [model.x]
        recipe = "import"
        path = "m"

        [curate.pairs]
        samples = "s.jsonl"
        shape = "preference"

        [curate.rl]
        samples = "s.jsonl"
        shape = "prompts"

        [curate.all]
        samples = "s.jsonl"
        shape = "samples"

        [model.sft]
        recipe = "sft"
        base = "model:x"
        data = "curate:all"

        [model.dpo]
        recipe = "dpo"
        base = "model:x"
        data = "curate:pairs"

        [model.rl]
        recipe = "grpo"
        base = "model:x"
        prompts = "curate:rl"
        rewards = ["exact"]
    """)
    assert {"curate:all", "model:x"} <= set(plan.targets["model:sft"].deps)
    assert "curate:rl" in plan.targets["model:rl"].deps


# Generated verifier tables: each plans (exit 0) or is one Forgefile error at its key, never a traceback.
KEYS = {"kind": st.sampled_from(["answer", "regex", "code", "length", "dedup", "json", "python", "reward_model",
                                 "regx", 3]),
        "pattern": st.sampled_from(["a+", "(", "^\\d+$"]), "max_chars": st.integers(-2, 50),
        "min_chars": st.integers(0, 60), "function": st.sampled_from(["v.py:f", "v.py", "f"]),
        "threshold": st.floats(allow_nan=True), "timeout": st.floats(-1, 10), "name": st.sampled_from(["", "n"]),
        "match": st.sampled_from(["exact", "numeric", "fuzzy"]), "against": st.sampled_from([["prompts"], ["x"]]),
        "model": st.sampled_from(["model:rm", "rm"]), "schema": st.sampled_from([{"type": "object"}, "x"])}


@settings(max_examples=60, deadline=None)
@given(tables=st.lists(st.fixed_dictionaries({}, optional=KEYS), min_size=1, max_size=3))
def test_generated_verifiers_plan_or_say_where(tmp_path_factory, tables):
    from forgebuild.planning import forgefile as ff

    root = tmp_path_factory.mktemp("gen")
    (root / "s.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    (root / "v.py").write_text("def f(**kw):\n    return []\n")
    (root / "Forgefile.toml").write_text("[curate.c]\nsamples = \"s.jsonl\"\nverify = " + toml_list(tables) + "\n")
    try:
        ff.load(os.path.join(root, "Forgefile.toml"))
    except ForgefileError as e:
        lines = str(e).splitlines()
        assert lines and all("Forgefile.toml:3: error: curate:c: key 'verify" in line for line in lines), lines


def toml_list(tables: list[dict]) -> str:
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, float) and v != v:
            return "nan"
        if isinstance(v, float) and v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return json.dumps(v)

    return "[" + ", ".join(value(t) for t in tables) + "]"


def test_every_curate_key_and_verifier_key_is_documented():
    from forgebuild.rules import curate

    doc = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "docs", "rules", "curate.md")
    text = open(doc, encoding="utf-8").read()
    keys = [*curate.Params.model_fields, *(f.alias or name for name, f in Verifier.model_fields.items())]
    assert [key for key in keys if f"`{key}`" not in text] == []
